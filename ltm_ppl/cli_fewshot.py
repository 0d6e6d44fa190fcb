"""`ltm fewshot`: wiring only (parse, call api.fewshot, print through report). A command
of its own module, registered on the `ltm` group by cli.py with `cli.add_command(fewshot)`; the
group turns LtmError and click's usage errors into one `error:` line and exit code 2."""
from __future__ import annotations

import contextlib
import json

import click
from tqdm import tqdm

from . import api
from .report import fewshot_text
from .fewshot.task import escaped
from .inference import registry
from .threads import configure_threads


def _progress(disable: bool):
    @contextlib.contextmanager
    def factory(total: int):
        with tqdm(total=total, desc="fewshot", unit="question", disable=disable, dynamic_ncols=True) as bar:
            yield bar.update

    return factory


@click.command(name="fewshot")
@click.option("--threads", type=int, default=None, callback=lambda ctx, param, value: configure_threads(value),
              expose_value=False, is_eager=True, show_default="$OMP_NUM_THREADS, else the cores available",
              help="CPU threads of torch and XLA.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (it goes to stderr; --json output is unaffected).")
@click.argument("run")
@click.option("--task", required=True,
              help="A folder with train.jsonl and test.jsonl (lines {\"question\", \"answer\"}; GSM8K's own files: the "
                   "final answer after ####), TRAIN.jsonl,TEST.jsonl, or builtin:functions?pairs=8&train=1000&test=200&seed=0.")
@click.option("--shots", type=int, default=8, help="Demonstrations per question, from the train split.")
@click.option("--samples", type=int, default=5, help="Sampled answers per question (each with its own z): pass@1, pass@k.")
@click.option("--temperature", type=float, default=1.0, help="Softmax temperature of the sampled answers (the greedy one uses 0).")
@click.option("--pass-at", "pass_at", type=int, multiple=True, show_default="--samples",
              help="k of pass@k besides 1 (repeatable).")
@click.option("--max-tokens", type=int, default=None, show_default="the task's (32; builtin:functions 2)",
              help="New tokens per answer at most.")
@click.option("--stop", default=None, show_default="the task's (\\n; builtin:functions a space)",
              help="The answer ends before this text (\\n and \\t understood).")
@click.option("--template", default=None, show_default="'Question: {question}\\nAnswer: {answer}\\n\\n'",
              help="How a demonstration is written (\\n and \\t understood); the asked question ends where {answer} goes.")
@click.option("--steps", type=int, default=None, show_default="the run's eval_steps", help="Inference steps fitting z to the prompt.")
@click.option("--max-questions", type=int, default=None, show_default="all", help="Ask only the first N test questions.")
@click.option("--overflow", type=click.Choice(["refuse", "truncate"]), default="refuse",
              help="A prompt longer than the window: refuse, or drop the oldest demonstrations until it fits.")
@click.option("--published-protocol", is_flag=True,
              help="Also a labelled row by the published GSM8K protocol: test-split demonstrations (the asked question "
                   "not excluded), solved if any of --samples answers contains the gold answer as a substring.")
@click.option("--out", default=None, show_default="fewshot-<timestamp>.jsonl", help="The JSONL of every question, prompt, sample and verdict.")
@click.option("--inference", default=None, help=f"Inference method: {', '.join(registry.methods())}.")
@click.option("--backend", type=click.Choice(list(registry.backends())), default=None, help="PPL backend.")
@click.option("--seed", type=int, default=None, show_default="the run's", help="Random seed (demonstrations, z, samples).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Where the decoder runs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object last on stdout.")
def fewshot(run, task, shots, samples, temperature, pass_at, max_tokens, stop, template, steps, max_questions, overflow,
            published_protocol, out, inference, backend, seed, device, as_json, quiet):
    """Few-shot in-context evaluation: demonstrations from the train split, z inferred from the
    prompt, greedy and sampled answers; exact match, pass@1, pass@k with 95% intervals."""
    record = api.fewshot(run, task, backend=backend, device=device, inference=inference, shots=shots, samples=samples,
                         temperature=temperature, pass_at=tuple(pass_at) or None, max_tokens=max_tokens,
                         stop=None if stop is None else escaped(stop),
                         template=None if template is None else escaped(template), steps=steps, seed=seed,
                         max_questions=max_questions, overflow=overflow, published_protocol=published_protocol, out=out,
                         progress=_progress(quiet))
    if as_json:
        click.echo(json.dumps(record.to_dict()))
        return
    click.echo(fewshot_text(record))


__all__ = ["fewshot"]
