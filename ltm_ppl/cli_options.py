"""Options several `ltm` commands share, as decorators, and the --help defaults of options left at
None (the value a run gets, not nothing). cli.py stacks these; a flag means the same in every command.
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
