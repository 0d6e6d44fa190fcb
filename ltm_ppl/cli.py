"""`ltm` commands, wiring only: parse flags, call ltm_ppl.api, print through ltm_ppl.report (or
the record's JSON). Heavy libraries load lazily, so `ltm --help` imports no torch/jax/pyro/numpyro/arviz.

Every failure a user can cause prints one line `error: ...` on stderr and exits with code 2.
"""
from __future__ import annotations

import functools
from pathlib import Path

import click

from . import __version__, api, report
from .cli_options import (common_options, effective_defaults, fewshot_options, fit_options, json_option, method_choice,
                          method_options, method_overrides, run_options)
from .cli_support import LtmGroup, emit_json, progress_bar, quiet, show
from .fewshot.task import escaped
from .inference import registry


@click.group(cls=LtmGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, "--version", "-V", prog_name="ltm", message="%(prog)s %(version)s")
def cli():
    """Latent-Thought Language Models as probabilistic programs (Pyro / NumPyro)."""


@effective_defaults("config")
@cli.command()
@common_options
@fit_options
def fit(config_file, preset, size, backend, inference, data, tokenizer, iters, lr_decay_iters, steps, batch_size, attention_window, out,
        resume, compile_, log_interval, tensorboard, seed, device, as_json, **kw):
    """Train an LTM; a new run directory unless --resume."""
    overrides = method_overrides(kw) | {
        "train.backend": backend, "inference.method": inference, "data.data": data, "data.tokenizer": tokenizer,
        "train.iters": iters, "train.lr_decay_iters": lr_decay_iters, "inference.steps": steps, "train.batch_size": batch_size, "train.compile": compile_,
        "train.seed": seed, "train.device": device, "model.attention_window": attention_window,
        "train.log_interval": log_interval,
    }
    summary = api.fit(out=out, resume=resume, preset=preset, size=size, config_file=config_file, overrides=overrides,
                      progress=not quiet(), echo=(lambda s: click.echo(s, err=True)) if as_json else click.echo,
                      tensorboard=tensorboard)
    if as_json:
        emit_json(summary)


@effective_defaults("run")
@cli.command(name="eval")
@common_options
@click.argument("run")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", help="Which split to bound.")
@click.option("--data", default=None, help="Evaluate on another corpus.")
@click.option("--steps", default=None, show_default="the run's eval_steps", help="Inference steps per sequence, or a list 4,16,64 (one row each).")
@click.option("--bound", "kind", type=click.Choice(["elbo", "iwae"]), default="elbo", help="ELBO (analytic KL) or IWAE_K.")
@click.option("--samples", type=int, default=1, help="Draws per sequence: the ELBO estimate's, or K of IWAE_K.")
@click.option("--fixed-noise", is_flag=True, help="Also the published reference's fixed-noise number (not a bound), labelled.")
@click.option("--batch-size", type=int, default=None, help="Windows per batch.")
@click.option("--max-windows", type=int, default=None, show_default="all", help="Bound only the first N windows of the split.")
@click.option("--plot", default=None, help="Also write FILE.png: the bound (nats/token) against --steps.")
@click.option("--protocol", type=click.Choice(["honest", "published"]), default="honest",
              help="published: the published zero-shot blocks and per-sequence figure, beside the honest bounds of the same blocks.")
@method_choice
@run_options
def eval_cmd(run, split, data, steps, kind, samples, fixed_noise, batch_size, max_windows, plot, protocol, inference, backend, seed, device, as_json, **kw):
    """Held-out bounds of a run: nats/token and perplexity, corpus-level, fresh noise."""
    record = api.evaluate(run, split=split, data=data, steps=steps, kind=kind, samples=samples, fixed_noise=fixed_noise,
                          batch_size=batch_size, max_windows=max_windows, seed=seed, plot=plot, backend=backend,
                          device=device, inference=inference, overrides=method_overrides(kw),
                          progress=progress_bar("eval", "seq"), protocol=protocol)
    show(record, as_json, report.zeroshot_text if protocol == "published" else report.eval_text)


@effective_defaults("run")
@cli.command()
@common_options
@click.argument("run")
@click.option("--prompt", default=None, help="Continue this text; z is inferred from it (fast local inference).")
@click.option("--num", type=int, default=1, help="How many samples.")
@click.option("--max-tokens", type=int, default=100, help="New tokens per sample (at most 100000).")
@click.option("--temperature", type=float, default=1.0, help="Softmax temperature (0: greedy).")
@click.option("--top-k", type=int, default=0, help="Sample among the k likeliest tokens (0: all).")
@click.option("--steps", type=int, default=None, show_default="the run's eval_steps", help="Fast steps inferring z from the prompt.")
@click.option("--stop-at-eos/--no-stop-at-eos", default=True,
              help="Stop at end-of-text; --no-stop-at-eos goes on, documents separated by <|endoftext|>.")
@method_choice
@run_options
def sample(run, prompt, num, max_tokens, temperature, top_k, steps, stop_at_eos, inference, backend, seed, device, as_json, **kw):
    """Generate text: latents from the prior, or from the posterior given --prompt. Tokens whose
    bytes cannot continue valid UTF-8 are never sampled."""
    record = api.sample(run, prompt=prompt, num=num, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                        steps=steps, seed=seed, stop_at_eos=stop_at_eos, backend=backend, device=device,
                        inference=inference, overrides=method_overrides(kw), progress=progress_bar("sample", "tok"))
    for note in report.sample_notes(record):
        click.echo(note, err=True)
    if as_json:
        emit_json(record)
        return
    click.echo(report.sample_text(record))


@effective_defaults("run", seed="0")
@cli.command()
@common_options
@click.argument("run")
@click.option("--inference", "methods", default=None, show_default="the run's", help="Methods, comma-separated: "
              + ", ".join(m for m in registry.methods() if registry.descriptor(m).posterior_kind) + ".")
@click.option("--sequences", type=int, default=8, help="Held-out windows to diagnose.")
@click.option("--chains", type=int, default=4, help="Chains per sequence (langevin).")
@click.option("--draws", type=int, default=100, help="Draws per chain (at least 100 for k-hat of variational methods).")
@click.option("--steps", type=int, default=None, show_default="the run's eval_steps; langevin: 200 warm-up",
              help="Fitting steps (local, amortized); langevin: warm-up steps unless --warmup, and the fast steps of --init local.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val")
@click.option("--data", default=None, help="Another corpus.")
@click.option("--out", default=None, show_default="diagnostics/<run name>-<timestamp>", help="New directory for NetCDF, plots and summary (never inside the run).")
@click.option("--bounds/--no-bounds", default=True, show_default=True,
              help="ELBO and IWAE_16 of each method's q (a chain method runs its chains twice more).")
@run_options
@functools.partial(method_options, without=("chains", "draws"))
def diagnose(run, methods, sequences, chains, draws, steps, split, data, out, bounds, backend, seed, device, as_json, **kw):
    """Posterior quality: R-hat / ESS of chains, PSIS k-hat of variational posteriors, collapse."""
    names = [m.strip() for m in methods.split(",")] if methods else None
    summary = api.diagnose(run, methods=names, sequences=sequences, chains=chains, draws=draws, steps=steps, split=split,
                           data=data, out=out, backend=backend, device=device, seed=0 if seed is None else seed,
                           overrides=method_overrides(kw), bounds=bounds, progress=progress_bar("diagnose", "part"))
    show(summary, as_json, report.diagnose_text)


@effective_defaults("run")
@cli.command()
@common_options
@click.argument("runs", nargs=-1, required=True)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val")
@click.option("--data", default=None, show_default="the first run's", help="Corpus.")
@click.option("--steps", type=int, default=None, show_default="each run's eval_steps", help="Inference steps.")
@click.option("--bound", "kind", type=click.Choice(["elbo", "iwae"]), default="elbo",
              help="ELBO (analytic KL) or IWAE_K of the latent runs (runs without a latent: exact either way).")
@click.option("--samples", type=int, default=1, help="Draws per sequence: the ELBO estimate's, or K of IWAE_K.")
@click.option("--max-windows", type=int, default=None, show_default="all", help="Bound only the first N windows of the split.")
@click.option("--batch-size", type=int, default=None, show_default="each run's", help="Windows per batch.")
@click.option("--plot", default=None, help="Also write FILE.png: each run's bound (or exact NLL) side by side.")
@click.option("--protocol", type=click.Choice(["honest", "published"]), default="honest",
              help="published: every run by the published zero-shot protocol on the same blocks (ltm eval --protocol).")
@run_options
def compare(runs, split, data, steps, kind, samples, max_windows, batch_size, plot, protocol, backend, seed, device, as_json):
    """Bounds of several runs on the same tokens, with FLOPs per token (e.g. an LTM vs its baseline),
    each later run's difference from the first paired over the windows (se, 95% interval)."""
    table = api.compare(list(runs), split=split, data=data, steps=steps, samples=samples, max_windows=max_windows,
                        batch_size=batch_size, seed=seed, plot=plot, backend=backend, device=device, kind=kind,
                        progress=progress_bar("compare", "seq"), protocol=protocol)
    show(table, as_json, report.zeroshot_compare_text if protocol == "published" else report.compare_text)


@cli.command()
@common_options
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", required=True, help="FILE.png to write.")
@click.option("--x", "x", type=click.Choice(["iters", "tokens"]), default="iters",
              help="Horizontal axis: iterations, or training tokens predicted (batch size x block size per iteration).")
@json_option
def plot(runs, out, x, as_json):
    """Training curves from metrics.jsonl: loss, val bound, KL, learning rate and gradient norm,
    several runs overlaid. Reads only; a run still training is read as far as it has logged."""
    summary = api.plot(list(runs), out, x=x)
    show(summary, as_json, report.plot_text)


@cli.command("import")
@common_options
@click.argument("checkpoint_file", metavar="CHECKPOINT")
@click.option("--out", default=None, show_default="runs/<timestamp>", help="Directory of the new run.")
@click.option("--data", default=None, show_default="builtin:kjv",
              help="The run's corpus (eval's default --data); the checkpoint does not say what it was trained on.")
@json_option
def import_cmd(checkpoint_file, out, data, as_json):
    """A checkpoint of the published LTM code (torch.save of model, model_args, ...) as a run that
    eval, sample, diagnose and compare read. Loaded with weights_only=True: code is never run."""
    summary = api.import_run(checkpoint_file, out, data)
    show(summary, as_json, report.import_text)


@cli.command()
@common_options
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option("--out", required=True, help="Study folder: runs/, points/<id>.json, study.json, study.md, plots (reused to resume).")
@click.option("--only", default=None, help="Run only these points (comma-separated names); the table covers every point done.")
@click.option("--table-only", is_flag=True, help="Train nothing: rebuild the table and plots from the points done.")
@json_option
def study(grid, out, only, table_only, as_json):
    """A grid of `ltm fit` runs from one base recipe (TOML), each bounded as `ltm eval` does, with
    its autoregressive twin; one table (JSON + Markdown) and plots. Resumable."""
    echo = functools.partial(click.echo, err=True)  # one line per run started, on stderr
    summary = api.study(grid, out, [n.strip() for n in only.split(",")] if only else None, table_only, echo)
    if as_json:
        emit_json({k: v for k, v in summary.items() if k not in ("ltm", "twins")})
        return
    click.echo(report.study_text(summary, str(Path(out) / "study.md")))


@effective_defaults("run")
@cli.command()
@common_options
@click.argument("run")
@fewshot_options
def fewshot(run, task, shots, samples, temperature, pass_at, max_tokens, stop, template, steps, max_questions, overflow,
            published_protocol, out, inference, backend, seed, device, as_json, **kw):
    """Few-shot in-context evaluation: demonstrations from the train split, z inferred from the
    prompt, greedy and sampled answers; exact match, pass@1, pass@k with 95% intervals."""
    record = api.fewshot(run, task, backend=backend, device=device, inference=inference, overrides=method_overrides(kw),
                         shots=shots, samples=samples, temperature=temperature, pass_at=tuple(pass_at) or None,
                         max_tokens=max_tokens, stop=None if stop is None else escaped(stop),
                         template=None if template is None else escaped(template), steps=steps, seed=seed,
                         max_questions=max_questions, overflow=overflow, published_protocol=published_protocol, out=out,
                         progress=progress_bar("fewshot", "question"))
    show(record, as_json, report.fewshot_text)


def main():
    cli()
