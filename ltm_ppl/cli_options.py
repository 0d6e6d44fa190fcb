"""Options several `ltm` commands share, as decorators, the --help defaults of options left at
None (the value a run gets, not nothing), and the option tables of the two longest commands (fit,
fewshot). cli.py stacks these; a flag means the same in every command.
"""
from __future__ import annotations

import click

from .cli_support import set_quiet
from .config import FLAGS, RunConfig
from .inference import registry
from .threads import configure_threads


def _set_threads(ctx, param, value):
    """Eager: the thread settings reach the environment before torch or jax is imported."""
    configure_threads(value)


def common_options(command):
    """--threads and --quiet, the same on every command."""
    command = click.option("--quiet", "-q", is_flag=True, callback=set_quiet, expose_value=False,
                           help="No progress bars (they go to stderr; --json output is unaffected).")(command)
    return click.option("--threads", type=int, default=None, callback=_set_threads, expose_value=False, is_eager=True,
                        show_default="$OMP_NUM_THREADS, else the cores available",
                        help="CPU threads of torch and XLA.")(command)


# Settings behind options whose value stays None when not given (so a --config file's value is
# kept); --help shows the value a run gets instead of nothing.
OPTION_SETTINGS = {flag.removeprefix("--").replace("-", "_"): dotted for dotted, flag in FLAGS.items()} | {
    "backend": "train.backend", "data": "data.data", "tokenizer": "data.tokenizer", "mala": "inference.mala",
    "compile_": "train.compile", "kl_warmup": "inference.kl_warmup_iters", "inference": "inference.method",
}


def _unbracketed(option: click.Option) -> None:
    """Show a stated default as `[default: 300]`, not click's `[default: (300)]`."""
    stated = option.get_help_extra

    def get_help_extra(ctx):
        extra = stated(ctx)
        if isinstance(option.show_default, str):
            extra["default"] = option.show_default
        return extra

    option.get_help_extra = get_help_extra


def effective_defaults(source: str, **stated):
    """Fill in --help defaults of options left at None: RunConfig's values ("config", for fit)
    or the run's own ("run", for commands that open a run); `stated` names an option's own text.
    Options that state their own keep it."""
    def decorate(command):
        cfg = RunConfig()
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            dotted = OPTION_SETTINGS.get(param.name)
            if param.name in stated:
                param.show_default = stated[param.name]
            elif param.default is None and not isinstance(param.show_default, str) and dotted is not None:
                section, name = dotted.split(".")
                param.show_default = str(getattr(getattr(cfg, section), name)) if source == "config" else "the run's"
            _unbracketed(param)
        return command

    return decorate


def _method_flag(option):
    """The click option of a method option (descriptor.Option) that has a flag."""
    if option.type is bool:
        name = option.flag.removeprefix("--")
        return click.option(f"{option.flag}/--no-{name}", option.field, default=None, help=option.help)
    return click.option(option.flag, option.field, type=option.type, default=None, help=option.help)


def method_options(command, without: tuple[str, ...] = ()):
    """The flags of every registered method's options (their descriptors), the same in every command
    (`without`: fields a command declares itself, with its own defaults)."""
    for option in reversed([o for o in registry.options() if o.flag and o.field not in without]):
        command = _method_flag(option)(command)
    return command


def method_overrides(kw: dict) -> dict:
    """The method flags' values as config overrides ("inference.<field>"), taken out of kw."""
    return {f"inference.{o.field}": kw.pop(o.field) for o in registry.options() if o.flag and o.field in kw}


def stacked(*decorators):
    """Several option decorators as one, listed in --help in the order given."""
    def decorate(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate


backend_option = click.option("--backend", type=click.Choice(list(registry.backends())), default=None, help="PPL backend.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Where the decoder runs.")
seed_option = click.option("--seed", type=int, default=None, help="Random seed.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object last on stdout.")
inference_option = click.option(
    "--inference", default=None,
    help=f"Inference method: {', '.join(registry.methods())}.")

# --inference and every method's flags (fit, eval, sample).
method_choice = stacked(inference_option, method_options)
# The last options of the commands that read runs (eval, sample, diagnose, compare).
run_options = stacked(backend_option, seed_option, device_option, json_option)

# `ltm fit`'s options after --threads / --quiet, in --help's order.
fit_options = stacked(
    click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="Settings (TOML); flags override it."),
    click.option("--preset", default=None, help="Named settings under everything else: paper (the published recipe)."),
    click.option("--size", default=None, help="The paper's model shapes: ltm-s, ltm-m or ltm-l (over --preset, under --config)."),
    backend_option,
    method_choice,
    click.option("--data", default=None, help="builtin:kjv, builtin:ptb (extra [ptb]), builtin:topics or builtin:functions (synthetic, exact answers known: docs/data.md), or a .txt / .jsonl / .jsonl.gz / .parquet file, or a directory of such shards (a .txt file is one document, a jsonl line or Parquet row its 'text')."),
    click.option("--tokenizer", default=None, help="gpt2, bytes or bpe:N (trained on the corpus)."),
    click.option("--iters", type=int, default=None, help="Total training iterations (with --resume: continue up to this)."),
    click.option("--lr-decay-iters", type=int, default=None,
                 help="Iteration where the cosine learning rate reaches its minimum (0: --iters). Stored with the run; "
                      "with --resume it moves the horizon."),
    click.option("--steps", type=int, default=None, help="Fast inner steps per iteration (T)."),
    click.option("--batch-size", type=int, default=None, help="Windows per batch."),
    click.option("--attention-window", type=int, default=None, help="Self-attention sees the last W tokens (itself included); 0: all."),
    click.option("--out", default=None, show_default="runs/<timestamp>", help="Directory of the new run."),
    click.option("--resume", default=None, help="Continue this run from its last checkpoint."),
    click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the decoder, and (local, pyro) the whole fast step."),
    click.option("--log-interval", type=int, default=None,
                 help="Iterations between metric records (the device is synchronised only then, and at evaluations and checkpoints)."),
    click.option("--tensorboard", default=None, metavar="DIR",
                 help="Also write the metrics as TensorBoard events into DIR/<run name> (extra [tensorboard]); "
                      "watch with: tensorboard --logdir DIR."),
    seed_option,
    device_option,
    json_option,
)

# `ltm fewshot`'s options after RUN, in --help's order.
fewshot_options = stacked(
    click.option("--task", required=True,
                 help="A folder with train.jsonl and test.jsonl (lines {\"question\", \"answer\"}; GSM8K's own files: the "
                      "final answer after ####), TRAIN.jsonl,TEST.jsonl, or builtin:functions?pairs=8&train=1000&test=200&seed=0."),
    click.option("--shots", type=int, default=8, help="Demonstrations per question, from the train split."),
    click.option("--samples", type=int, default=5, help="Sampled answers per question (each with its own z): pass@1, pass@k."),
    click.option("--temperature", type=float, default=1.0, help="Softmax temperature of the sampled answers (the greedy one uses 0)."),
    click.option("--pass-at", "pass_at", type=int, multiple=True, show_default="--samples", help="k of pass@k besides 1 (repeatable)."),
    click.option("--max-tokens", type=int, default=None, show_default="the task's (32; builtin:functions 2)", help="New tokens per answer at most."),
    click.option("--stop", default=None, show_default="the task's (\\n; builtin:functions a space)",
                 help="The answer ends before this text (\\n and \\t understood)."),
    click.option("--template", default=None, show_default="'Question: {question}\\nAnswer: {answer}\\n\\n'",
                 help="How a demonstration is written (\\n and \\t understood); the asked question ends where {answer} goes."),
    click.option("--steps", type=int, default=None, show_default="the run's eval_steps", help="Inference steps fitting z to the prompt."),
    click.option("--max-questions", type=int, default=None, show_default="all", help="Ask only the first N test questions."),
    click.option("--overflow", type=click.Choice(["refuse", "truncate"]), default="refuse",
                 help="A prompt longer than the window: refuse, or drop the oldest demonstrations until it fits."),
    click.option("--published-protocol", is_flag=True,
                 help="Also a labelled row by the published GSM8K protocol: test-split demonstrations (the asked question "
                      "not excluded), solved if any of --samples answers contains the gold answer as a substring."),
    click.option("--out", default=None, show_default="fewshot-<timestamp>.jsonl", help="The JSONL of every question, prompt, sample and verdict."),
    method_choice,
    run_options,
)
