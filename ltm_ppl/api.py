"""The Python API: every `ltm` command as a function, the very ones the CLI calls.

    from ltm_ppl import fit, open_run, evaluate, sample

    fit(overrides={"train.iters": 20, "data.tokenizer": "bytes"}, out="runs/tiny")
    print(evaluate("runs/tiny", max_windows=8).headline["nll_per_token"])
    print(sample("runs/tiny", prompt="And God said", max_tokens=20).samples[0])

Each function checks everything it is given before any work, and refuses bad input with one
LtmError (the CLI's `error:` line). Results are records (eval_runs.EvalResult, eval_runs.CompareResult,
diagnostics.DiagnoseResult, generate.SampleResult): `to_dict()` is the command's `--json` object,
report.py renders the text the command prints. A `run` argument is a run directory, or an
OpenRun from `open_run` (loaded once, used many times).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from .config import RunConfig, apply_overrides, build_config
from .diagnostics import DiagnoseResult, DiagnoseSettings, diagnose_run
from .errors import LtmError
from .eval_runs import (CompareResult, EvalResult, EvalSettings, OpenRun, check_eval_options, compare_runs, evaluate_run,
                        no_progress, parse_steps)
from .eval_runs import open_run as _open_run
from .fewshot import FewshotResult, FewshotSettings, fewshot_run, load_task
from .generate import SampleResult, SampleSettings, sample_run
from .inference import descriptor
from .plots import check_plot_path, plot_compare, plot_eval_steps, plot_training, training_series
from .published_checkpoint import import_checkpoint
from .run import Run
from .study import rebuild_tables, run_study
from .train import fit as _train
from .zeroshot import ZeroShotComparison, ZeroShotResult, check_protocol, zero_shot_compare, zero_shot_run


def fit(config: RunConfig | None = None, out: str | None = None, resume: str | None = None, *,
        preset: str | None = None, size: str | None = None, config_file: str | None = None,
        overrides: dict | None = None, progress: bool = False, echo=print, tensorboard: str | Path | None = None) -> dict:
    """Train a new run into `out` (default runs/<timestamp>), or continue `resume` from its last
    checkpoint. Returns the summary `ltm fit --json` prints.

    Args:
        config: the settings; default: built from defaults < preset < size < config_file (TOML) <
            overrides, as `ltm fit` does.
        overrides: {"section.field": value} (None skipped), e.g. {"train.iters": 20}; with
            `resume`, over the run's own settings (its [model] and [data] cannot change).
        progress: a progress bar on stderr. echo: where the run's lines go.
        tensorboard: a folder; the metrics also go to TensorBoard event files in
            tensorboard/<run name> (the extra `ltm-ppl[tensorboard]`).

    Raises Interrupted after SIGINT / SIGTERM, with a checkpoint committed."""
    overrides = overrides or {}
    if resume is not None:
        if out is not None:
            raise LtmError("--out and --resume exclude each other: --resume continues the run in place")
        for flag, value in (("--config", config_file), ("--tokenizer", overrides.get("data.tokenizer")),
                            ("--data", overrides.get("data.data")),
                            ("--attention-window", overrides.get("model.attention_window")),
                            ("--preset", preset), ("--size", size)):
            if value is not None:
                raise LtmError(f"{flag} cannot change a run being resumed")
        if config is None:
            config = copy.deepcopy(Run.open(resume).cfg)
            apply_overrides(config, overrides)
    elif config is None:
        config = build_config(preset, size, config_file, overrides)
    return _train(config, out=out, resume=resume, progress=progress, echo=echo, tensorboard=tensorboard)


def open_run(run: str | Path | OpenRun, overrides: dict | None = None, *, backend: str | None = None,
             device: str | None = None, inference: str | None = None) -> OpenRun:
    """A saved run with its weights loaded, for evaluate or sample; another backend, device or
    inference method (and method options: overrides {"inference.<field>": value}, None skipped)
    if asked. An OpenRun is returned as it is."""
    if isinstance(run, OpenRun):
        return run
    return _open_run(run, {"train.backend": backend, "train.device": device, **(overrides or {}),
                           "inference.method": inference})


def evaluate(run: str | Path | OpenRun, *, split: str = "val", data: str | None = None,
             steps: int | str | list[int] | None = None, kind: str = "elbo", samples: int = 1,
             fixed_noise: bool = False, batch_size: int | None = None, max_windows: int | None = None,
             seed: int | None = None, plot: str | Path | None = None, backend: str | None = None,
             device: str | None = None, inference: str | None = None, overrides: dict | None = None,
             progress: Callable = no_progress, protocol: str = "honest") -> EvalResult | ZeroShotResult:
    """Held-out bounds of a run (`ltm eval`): nats/token and perplexity on a split, one row per
    number of inference steps (a list, or "4,16,64"; default the run's eval_steps).

    Args:
        kind: "elbo" (analytic KL) or "iwae" (IWAE_K with K = samples).
        fixed_noise: also the published reference's fixed-noise numbers (not bounds), labelled.
        plot: also write this PNG: the bound against the steps.
        protocol: "honest" (the above) or "published": the published zero-shot protocol's blocks
            and per-sequence figure beside the honest ELBO, IWAE_K and exact NLL of the same
            blocks, a zeroshot.ZeroShotResult (one steps value; kind, fixed_noise and plot
            do not apply: every number is reported).
        progress: a context manager factory, entered once per row with the windows of the
            split; it yields a function called with the windows done."""
    check_eval_options(samples, batch_size, max_windows)
    check_protocol(protocol)
    if protocol == "published" and plot is not None:
        raise LtmError("--plot draws the bound against --steps; it does not apply to --protocol published")
    plot = check_plot_path(plot)
    opened = open_run(run, backend=backend, device=device, inference=inference, overrides=overrides)
    if isinstance(steps, (list, tuple)):
        steps = ",".join(str(s) for s in steps)
    steps = parse_steps(steps, opened.cfg.inference.eval_steps)
    if protocol == "published":
        if len(steps) > 1:
            raise LtmError(f"--protocol published takes one --steps value, got {len(steps)}")
        return zero_shot_run(opened, split, data, steps[0], samples, batch_size, max_windows, seed, progress)
    settings = EvalSettings(split, data, steps, samples, kind, fixed_noise, batch_size, max_windows, seed)
    result = evaluate_run(opened, settings, progress)
    if plot is not None:
        plot_eval_steps(result.to_dict(), plot)
    return result


def compare(runs: list[str | Path], *, split: str = "val", data: str | None = None, steps: int | None = None,
            samples: int = 1, max_windows: int | None = None, batch_size: int | None = None,
            seed: int | None = None, plot: str | Path | None = None, backend: str | None = None,
            device: str | None = None, kind: str = "elbo", progress: Callable = no_progress,
            protocol: str = "honest") -> CompareResult | ZeroShotComparison:
    """Bounds of several runs on the same tokens, with their training FLOPs per token (`ltm
    compare`); each run with its own method and eval_steps unless `steps` is given. Each later
    run's difference from the first, paired over the windows (standard error, 95% interval), and
    the corpus' exact answers where it has them. kind: "elbo" or "iwae" (K = samples) for latent runs.
    protocol "published": every run by the published zero-shot protocol on the same blocks, a
    zeroshot.ZeroShotComparison (kind and plot do not apply)."""
    check_protocol(protocol)
    if protocol == "published":
        if plot is not None:
            raise LtmError("--plot does not apply to --protocol published")
        return zero_shot_compare([str(r) for r in runs], split, data, steps, samples, max_windows, batch_size, seed,
                                 progress=progress, overrides={"train.backend": backend, "train.device": device})
    plot = check_plot_path(plot)
    result = compare_runs([str(r) for r in runs], split, data, steps, samples, max_windows, batch_size, seed,
                          progress=progress, overrides={"train.backend": backend, "train.device": device}, kind=kind)
    if plot is not None:
        plot_compare(result.to_dict(), plot)
    return result


def diagnose(run: str | Path, *, progress: Callable | None = None, **settings) -> DiagnoseResult:
    """Posterior quality of a run (`ltm diagnose`): R-hat / ESS of chains, PSIS k-hat of variational
    posteriors, collapse, bounds; NetCDF files, plots and summary.json in a new directory.
    `settings` are the fields of diagnostics.DiagnoseSettings (methods, sequences, chains, draws, ...)."""
    return diagnose_run(run, DiagnoseSettings(**settings), progress)


def sample(run: str | Path | OpenRun, *, prompt: str | None = None, num: int = 1, max_tokens: int = 100,
           temperature: float = 1.0, top_k: int = 0, steps: int | None = None, seed: int | None = None,
           stop_at_eos: bool = True, backend: str | None = None, device: str | None = None,
           inference: str | None = None, overrides: dict | None = None, progress: Callable = no_progress) -> SampleResult:
    """Text from a run (`ltm sample`): latents from the prior, or from the posterior given `prompt`
    (fitted by `steps` fast steps); temperature 0 is greedy, top_k 0 samples among all tokens."""
    settings = SampleSettings(prompt, num, max_tokens, temperature, top_k, steps, seed, stop_at_eos)  # checks first
    opened = open_run(run, backend=backend, device=device, inference=inference, overrides=overrides)
    return sample_run(opened, settings, progress)


def fewshot(run: str | Path | OpenRun, task: str, *, backend: str | None = None, device: str | None = None,
            inference: str | None = None, overrides: dict | None = None, progress: Callable = no_progress,
            **settings) -> FewshotResult:
    """Few-shot in-context evaluation (`ltm fewshot`): for each test question of `task` (a folder
    with train.jsonl / test.jsonl, "TRAIN.jsonl,TEST.jsonl", or builtin:functions), K train-split
    demonstrations, z inferred from the prompt, greedy and N sampled answers; exact match, pass@1 and
    pass@k with 95% intervals, and a JSONL of every question (settings.out). `settings` are the
    fields of fewshot.FewshotSettings (shots, samples, temperature, published_protocol, ...)."""
    settings = FewshotSettings(**settings)  # checks first
    loaded = load_task(task)
    opened = open_run(run, backend=backend, device=device, inference=inference, overrides=overrides)
    return fewshot_run(opened, loaded, settings, progress)


def plot(runs: list[str | Path], out: str | Path, *, x: str = "iters") -> dict:
    """Training curves of one or more runs overlaid (`ltm plot`): loss, val bound, KL, learning rate
    and gradient norm from each run's metrics.jsonl, against iterations (x="iters") or training
    tokens (x="tokens"), as a PNG at `out`. Returns what was drawn: per run its label and the
    series (plots.training_series), the numbers of metrics.jsonl as they are."""
    if x not in ("iters", "tokens"):
        raise LtmError(f"--x must be iters or tokens, got {x!r}")
    if not runs:
        raise LtmError("ltm plot needs at least one run")
    out = check_plot_path(out, flag="--out")
    paths = [Path(r) for r in runs]
    names = [p.name or str(p) for p in paths]
    drawn = []
    for path, name in zip(paths, names):
        opened = Run.open(path)  # refuses a missing folder or one that is not a run
        cfg, records = opened.cfg, opened.metrics()
        series = training_series(records, cfg.train.batch_size, cfg.model.block_size)
        if not series["train"] and not series["val"]:
            raise LtmError(f"{path}/metrics.jsonl has no training or validation record yet")
        drawn.append({"run": str(path), "label": name if names.count(name) == 1 else str(path),
                      "method": cfg.inference.method, "backend": cfg.train.backend,
                      "exact": not descriptor(cfg.inference.method).latent, "grad_clip": cfg.train.grad_clip,
                      "series": series})
    plot_training(drawn, out, x)
    return {"out": str(out), "x": x, "runs": drawn}


def import_run(checkpoint: str | Path, out: str | None = None, data: str | None = None) -> dict:
    """A checkpoint of the published LTM code as a run (`ltm import`); returns its summary."""
    return import_checkpoint(checkpoint, out, data)


def study(grid: str | Path, out: str | Path, only: list[str] | None = None, table_only: bool = False,
          echo=print) -> dict:
    """A grid of fits from one recipe, each bounded, into `out` (`ltm study`): resumable;
    table_only rebuilds the table and plots from the points done, training nothing."""
    if table_only:
        return rebuild_tables(grid, out)
    return run_study(grid, out, only, echo)


__all__ = ["fit", "open_run", "evaluate", "compare", "diagnose", "sample", "fewshot", "plot", "import_run", "study"]
