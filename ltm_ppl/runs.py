"""Opening a trained run for evaluation, sampling or diagnosis, with another backend or method
if asked, and bounding it on a split: what `ltm eval` does, callable from Python."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .checkpoint import read_config
from .checks import require_positive, require_seed, require_steps
from .config import RunConfig, apply_overrides, validate
from .data import load_corpus, num_windows, split_tokens
from .distributed import start
from .errors import LtmError
from .evaluate import unigram_bound, windows_bound
from .flops import decoder_forward
from .inference import descriptor, methods, training_flops_per_token
from .train import check_method_fits_run, load_inference, require_windows, run_tokenizer


@dataclass
class OpenRun:
    path: Path
    cfg: RunConfig  # as used now (backend, method and options possibly overridden)
    trained_cfg: RunConfig  # as trained: its FLOPs per token are the run's
    tokenizer: object
    inference: object

    @property
    def trained_method(self) -> str:
        return self.trained_cfg.inference.method


def open_run(run: str | Path, overrides: dict | None = None) -> OpenRun:
    """The run at `run` with its weights loaded; overrides ("section.field": value, None skipped)
    may switch backend, device or inference method (and its options)."""
    path = Path(run)
    cfg, _ = read_config(path)
    trained_cfg = copy.deepcopy(cfg)
    apply_overrides(cfg, overrides or {})
    validate(cfg, methods())
    check_method_fits_run(cfg, trained_cfg.inference.method)

    start(cfg.train.backend, cfg.train.device)  # under torchrun: the workers share the windows
    tokenizer = run_tokenizer(path, cfg)
    return OpenRun(path, cfg, trained_cfg, tokenizer, load_inference(path, cfg))


def check_eval_options(samples: int | None, batch_size: int | None, max_windows: int | None) -> None:
    for name, value in (("--samples", samples), ("--batch-size", batch_size), ("--max-windows", max_windows)):
        require_positive(name, value)


def check_seed(seed: int | None) -> None:
    require_seed("--seed", seed)


def parse_steps(text: str | None, default: int) -> list[int]:
    """`--steps 4,16,64` -> [4, 16, 64]; None -> [default]."""
    if text is None:
        return [default]
    try:
        steps = [int(part) for part in str(text).split(",")]
    except ValueError:
        steps = []
    if not steps or any(s <= 0 for s in steps):
        raise LtmError(f"--steps must be a positive integer or a comma-separated list of them, got {text!r}")
    for s in steps:
        require_steps("--steps", s)
    return steps


FIXED_NOISE_LABEL = ("fixed noise: the published reference's evaluation (one eps reused for every fast "
                     "step and for the reported number); not a bound")
HONEST_LABEL = "honest bound, fresh noise"
EXACT_LABEL = "exact log-likelihood (no latent)"


def is_headline_candidate(row: dict) -> bool:
    """An honest bound or exact row (not the reference's fixed-noise number, nor any other
    labelled figure a later row kind adds): the last such row heads the JSON record."""
    return row["label"] in (HONEST_LABEL, EXACT_LABEL)


@dataclass(frozen=True)
class EvalResult:
    """What `ltm eval` measured: one row per number of steps (bound or exact log-likelihood, and
    the labelled fixed-noise rows), and what they were measured on. `to_dict()` is the `--json`
    object; report.eval_text the table. Rows are the JSON objects of evaluate.corpus_bound plus
    label, fitted_steps (None: the method fits nothing) and, where measured, reconstruction_perplexity."""
    rows: list[dict]
    backend: str
    inference: str
    trained_with: str
    split: str
    data: str
    tokenizer: str
    latent_rope: str  # the decoder function's latent positions (old runs: per_layer)
    split_windows: int  # the rows cover the first num_sequences of these
    exact: bool  # the rows are the exact log-likelihood, not bounds
    proposal: str
    unigram_nll_per_token: float
    unigram_perplexity: float
    flops_per_token: float  # the run's training, as trained
    decoder_flops_per_token: float

    @property
    def headline(self) -> dict:
        """The honest (or exact) row with the most steps: the last one."""
        return [row for row in self.rows if is_headline_candidate(row)][-1]

    def to_dict(self) -> dict:
        """The `ltm eval --json` object: the headline row's numbers at the top level, then the rest."""
        return {**self.headline, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass(frozen=True)
class CompareRow:
    """One run of `ltm compare`: its bound (or exact NLL) on the shared tokens, and its cost."""
    run: str
    params: int
    backend: str
    inference: str
    nll_per_token: float
    perplexity: float
    kl_per_sequence: float | None
    num_tokens: int
    steps: int
    flops_per_token: float
    decoder_flops_per_token: float
    proposal: str


@dataclass(frozen=True)
class CompareResult:
    """What `ltm compare` measured; `to_dict()` is the `--json` object, report.compare_text the table."""
    split: str
    data: str
    rows: list[CompareRow]

    def to_dict(self) -> dict:
        return {"split": self.split, "data": self.data,
                "rows": [{f.name: getattr(r, f.name) for f in fields(r)} for r in self.rows]}


def _with_perplexities(row: dict) -> dict:
    """Adds reconstruction_perplexity: exp of the cross-entropy at the drawn z without the KL (not a
    bound, not a likelihood: z has seen the tokens it predicts), where the row has one."""
    if row.get("reconstruction_nll_per_token") is not None:
        row["reconstruction_perplexity"] = float(np.exp(min(row["reconstruction_nll_per_token"], 700.0)))
    return row


@contextlib.contextmanager
def no_progress(total: int):
    yield lambda n=1: None


def evaluate_run(opened: OpenRun, split: str = "val", data: str | None = None, steps: list[int] | None = None,
                 samples: int = 1, kind: str = "elbo", fixed_noise: bool = False, batch_size: int | None = None,
                 max_windows: int | None = None, seed: int | None = None, progress=no_progress) -> EvalResult:
    """Bounds of a run on a split, one row per number of inference steps (and, with fixed_noise,
    the reference's fixed-noise number beside each honest row, labelled).

    Everything is checked before any bound is computed; then progress(windows) is entered once per
    row (each number of steps, and each fixed-noise row), so a bar counts the split's windows, and
    the function it yields is called with the windows done."""
    cfg = opened.cfg
    method = descriptor(cfg.inference.method)
    check_eval_options(samples, batch_size, max_windows)
    check_seed(seed)
    if kind not in ("elbo", "iwae"):
        raise LtmError(f"--bound must be elbo or iwae, got {kind!r}")
    if fixed_noise and "fixed_noise" not in descriptor(cfg.inference.method).reference_numbers:
        with_it = [m for m in methods() if "fixed_noise" in descriptor(m).reference_numbers]
        raise LtmError(f"--fixed-noise applies to --inference {' and '.join(with_it)} only (the published reference's evaluation)")
    corpus = load_corpus(data or cfg.data.data)
    tokens = split_tokens(corpus, split, opened.tokenizer)
    require_windows(tokens, cfg.model.block_size, split, corpus.spec)
    steps = steps or [cfg.inference.eval_steps]
    batch_size = batch_size or cfg.train.batch_size
    seed = cfg.train.seed if seed is None else seed
    rows = []
    fixed = None
    if fixed_noise:
        fixed_cfg = copy.deepcopy(cfg)
        fixed_cfg.inference.fixed_noise = fixed_cfg.inference.report_fixed_noise = True
        fixed = load_inference(opened.path, fixed_cfg)
    windows = num_windows(len(tokens), cfg.model.block_size)
    windows = min(windows, max_windows) if max_windows else windows
    for T in steps:
        with progress(windows) as advance:
            row = windows_bound(opened.inference, tokens, T, samples, batch_size, max_windows, seed=seed, progress=advance, kind=kind)
        label = HONEST_LABEL if method.latent else EXACT_LABEL
        fitted = T if method.inner_steps else None
        rows.append(_with_perplexities(row) | {"label": label, "fitted_steps": fitted})
        if fixed is not None:
            # The reference reuses its one eps (num_samples draws of it) for the reported ELBO too.
            S = cfg.inference.num_samples
            with progress(windows) as advance:
                row = windows_bound(fixed, tokens, T, S, batch_size, max_windows, seed=seed, progress=advance)
            rows.append(_with_perplexities(row) | {"label": FIXED_NOISE_LABEL, "fixed_noise": True, "fitted_steps": T})
    unigram = unigram_bound(split_tokens(corpus, "train", opened.tokenizer), tokens, opened.tokenizer.vocab_size,
                            cfg.model.block_size, max_windows)
    return EvalResult(
        rows=rows, backend=cfg.train.backend, inference=cfg.inference.method, trained_with=opened.trained_method,
        split=split, data=corpus.spec, tokenizer=cfg.data.tokenizer, latent_rope=cfg.model.latent_rope,
        split_windows=num_windows(len(tokens), cfg.model.block_size), exact=not method.latent,
        proposal=method.proposal, unigram_nll_per_token=unigram["nll_per_token"],
        unigram_perplexity=unigram["perplexity"], flops_per_token=training_flops_per_token(opened.trained_cfg),
        decoder_flops_per_token=decoder_forward(cfg.model))


def compare_runs(runs: list[str], split: str = "val", data: str | None = None, steps: int | None = None,
                 samples: int = 1, max_windows: int | None = None, batch_size: int | None = None,
                 seed: int | None = None, progress=no_progress, overrides: dict | None = None) -> CompareResult:
    """Bounds of several runs on the same split and tokens (each with its own method), with their
    training FLOPs per token: token-matched and compute-matched comparisons in one table."""
    if len(runs) < 2:
        raise LtmError("ltm compare needs at least two runs")
    require_steps("--steps", steps)
    check_eval_options(samples, batch_size, max_windows)
    check_seed(seed)
    opened = [open_run(run, overrides) for run in runs]
    fingerprints = {o.tokenizer.fingerprint for o in opened}
    if len(fingerprints) > 1:
        raise LtmError("the runs use different tokenizers, so their bounds per token do not compare")
    data = data or opened[0].cfg.data.data
    rows = []
    for o in opened:
        record = evaluate_run(o, split, data, [steps] if steps else None, samples, "elbo", False, batch_size,
                              max_windows, seed, progress)
        params = sum(int(np.prod(v.shape)) for k, v in o.inference.weights().items())
        head = record.headline
        rows.append(CompareRow(
            run=str(o.path), params=params, backend=record.backend, inference=record.inference,
            nll_per_token=head["nll_per_token"], perplexity=head["perplexity"], kl_per_sequence=head["kl_per_sequence"],
            num_tokens=head["num_tokens"], steps=head["steps"], flops_per_token=record.flops_per_token,
            decoder_flops_per_token=record.decoder_flops_per_token, proposal=record.proposal))
    if len({r.num_tokens for r in rows}) > 1:
        raise LtmError("the runs predict different numbers of tokens (different block sizes?): their bounds do not compare")
    return CompareResult(split, data, rows)
