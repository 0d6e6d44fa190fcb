"""Opening a trained run for evaluation, sampling or diagnosis, with another backend or method
if asked, and bounding it on a split: what `ltm eval` does, callable from Python."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from . import resources
from .checks import MAX_SAMPLES, require_at_most, require_positive, require_seed, require_steps
from .config import RunConfig, apply_overrides, validate
from .data import load_corpus, num_windows, require_windows, split_tokens
from .data.truth import corpus_truth, receptive_field
from .distributed import start
from .errors import LtmError
from .evaluate import paired_difference, unigram_bound, windows_bound
from .flops import decoder_forward
from .inference import descriptor, methods, training_flops_per_token
from .run import Run, check_method_fits_run, load_inference


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
    stored = Run.open(path)
    cfg = copy.deepcopy(stored.cfg)
    apply_overrides(cfg, overrides or {})
    validate(cfg, methods())
    check_method_fits_run(cfg, stored.cfg.inference.method)

    start(cfg.train.backend, cfg.train.device)  # under torchrun: the workers share the windows
    tokenizer = stored.tokenizer(cfg)
    return OpenRun(path, cfg, stored.cfg, tokenizer, stored.inference(cfg))


def check_eval_options(samples: int | None, batch_size: int | None, max_windows: int | None) -> None:
    for name, value in (("--samples", samples), ("--batch-size", batch_size), ("--max-windows", max_windows)):
        require_positive(name, value)
    require_at_most("--samples", samples, MAX_SAMPLES)


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
    # The exact answers on the same windows (split_truth), where the corpus has a law and the
    # tokenizer is bytes; None elsewhere. Never a row: not a bound, never the headline.
    truth: dict | None = None

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
    difference: float | None = None  # nll_per_token minus the first run's (None: the first run)
    paired: dict | None = None  # that difference paired over the windows (evaluate.paired_difference)
    best_window_nll: float | None = None  # the best AR with this run's view on these windows (truth)
    best_window_nll_se: float | None = None
    receptive_field: int | None = None  # tokens this run's decoder sees (where there is a truth)


@dataclass(frozen=True)
class CompareResult:
    """What `ltm compare` measured; `to_dict()` is the `--json` object, report.compare_text the table."""
    split: str
    data: str
    rows: list[CompareRow]
    truth: dict | None = None  # the first run's EvalResult.truth: the true NLL of these windows

    def to_dict(self) -> dict:
        return {"split": self.split, "data": self.data,
                "rows": [{f.name: getattr(r, f.name) for f in fields(r)} for r in self.rows], "truth": self.truth}


def _with_perplexities(row: dict) -> dict:
    """Adds reconstruction_perplexity: exp of the cross-entropy at the drawn z without the KL (not a
    bound, not a likelihood: z has seen the tokens it predicts), where the row has one."""
    if row.get("reconstruction_nll_per_token") is not None:
        row["reconstruction_perplexity"] = float(np.exp(min(row["reconstruction_nll_per_token"], 700.0)))
    return row


def split_truth(opened: OpenRun, corpus, split: str, max_windows: int | None) -> dict | None:
    """The exact answers (data/truth.py) on the windows evaluate_run scores: the true NLL and the
    best AR whose view is the run's receptive field (and with full attention within the window),
    nats/token with standard errors over windows; None when the corpus has none."""
    m = opened.cfg.model
    R = receptive_field(m.n_layer, m.attention_window, m.block_size)
    truth = corpus_truth(corpus, opened.tokenizer, m.block_size, R, splits=(split,), max_windows=max_windows)
    if truth is None:
        return None
    numbers = {k: None if isinstance(v, float) and math.isnan(v) else v  # one window: no se (JSON null)
               for k, v in dataclasses.asdict(truth.splits[split]).items()}
    return {"corpus": truth.corpus, "block_size": truth.block_size, "attention_window": m.attention_window,
            "n_layer": m.n_layer, "receptive_field": truth.receptive_field, "position_known": truth.position_known,
            **numbers}


@contextlib.contextmanager
def no_progress(total: int):
    yield lambda n=1: None


def check_eval_memory(cfg: RunConfig, batch_size: int, samples: int, kind: str) -> None:
    """The ELBO draws all its samples of z at once; IWAE_K runs K in chunks of 8 but keeps every
    draw's log weight; a chain method runs all its chains at once."""
    chains = getattr(cfg.inference, "chains", 1) if descriptor(cfg.inference.method).posterior_kind == "chains" else 1
    at_once = min(samples, 8) if kind == "iwae" else samples
    needed = (resources.inference_bytes(cfg.model, batch_size * max(at_once, chains))
              + resources.FLOAT * batch_size * samples * chains)
    resources.check("this evaluation", needed, cfg, "a smaller --batch-size, --samples or --chains")


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation computes (`ltm eval`'s flags): on which split of which corpus (None: the
    run's), at how many inference steps (one row each; None: the run's eval_steps), with how
    many draws per sequence of which bound ("elbo", or "iwae": IWAE_K with K = samples), with the
    published reference's fixed-noise rows or not, how many windows per batch (None: the run's
    batch size), over the first max_windows windows (None: all), and with which seed (None: the
    run's). The options that need no run are checked when built; fixed_noise is checked against
    the run's method by evaluate_run."""
    split: str = "val"
    data: str | None = None
    steps: tuple[int, ...] | None = None
    samples: int = 1
    kind: str = "elbo"
    fixed_noise: bool = False
    batch_size: int | None = None
    max_windows: int | None = None
    seed: int | None = None

    def __post_init__(self):
        if self.steps is not None:
            object.__setattr__(self, "steps", tuple(self.steps))
        check_eval_options(self.samples, self.batch_size, self.max_windows)
        check_seed(self.seed)
        if self.kind not in ("elbo", "iwae"):
            raise LtmError(f"--bound must be elbo or iwae, got {self.kind!r}")


def evaluate_run(opened: OpenRun, settings: EvalSettings = EvalSettings(), progress=no_progress,
                 per_window: bool = False, with_truth: bool = True) -> EvalResult:
    """Bounds of a run on a split, one row per number of inference steps (and, with fixed_noise,
    the reference's fixed-noise number beside each honest row, labelled), and the corpus' exact
    answers on the same windows where it has them (`truth`), as `settings` asks.

    per_window: the honest rows also hold "window_nll" (evaluate.corpus_bound), for compare.
    with_truth False: truth None without computing it (a caller that has it already).

    Everything is checked before any bound is computed; then progress(windows) is entered once per
    row (each number of steps, and each fixed-noise row), so a bar counts the split's windows, and
    the function it yields is called with the windows done."""
    split, samples, kind, fixed_noise, batch_size, max_windows, seed = (
        settings.split, settings.samples, settings.kind, settings.fixed_noise, settings.batch_size,
        settings.max_windows, settings.seed)
    cfg = opened.cfg
    method = descriptor(cfg.inference.method)
    if fixed_noise and "fixed_noise" not in descriptor(cfg.inference.method).reference_numbers:
        with_it = [m for m in methods() if "fixed_noise" in descriptor(m).reference_numbers]
        raise LtmError(f"--fixed-noise applies to --inference {' and '.join(with_it)} only (the published reference's evaluation)")
    batch_size = batch_size or cfg.train.batch_size
    check_eval_memory(cfg, batch_size, samples, kind)
    corpus = load_corpus(settings.data or cfg.data.data)
    tokens = split_tokens(corpus, split, opened.tokenizer)
    require_windows(tokens, cfg.model.block_size, split, corpus.spec)
    steps = settings.steps or [cfg.inference.eval_steps]
    seed = cfg.train.seed if seed is None else seed
    rows = []
    fixed = None
    if fixed_noise:
        fixed_cfg = copy.deepcopy(cfg)
        fixed_cfg.inference.fixed_noise = True  # the reference's fast loop: one eps per batch
        fixed = load_inference(opened.path, fixed_cfg)
    windows = num_windows(len(tokens), cfg.model.block_size)
    windows = min(windows, max_windows) if max_windows else windows
    truth = split_truth(opened, corpus, split, max_windows) if with_truth else None  # numpy; before any bound
    for T in steps:
        with progress(windows) as advance:
            row = windows_bound(opened.inference, tokens, T, samples, batch_size, max_windows, seed=seed, progress=advance,
                                kind=kind, per_window=per_window)
        label = HONEST_LABEL if method.latent else EXACT_LABEL
        fitted = T if method.inner_steps else None
        if fixed is not None and kind == "iwae":  # the four numbers of docs/replication.md in one command
            with progress(windows) as advance:
                elbo = windows_bound(opened.inference, tokens, T, samples, batch_size, max_windows, seed=seed,
                                     progress=advance, kind="elbo")
            rows.append(_with_perplexities(elbo) | {"label": label, "fitted_steps": fitted})
        rows.append(_with_perplexities(row) | {"label": label, "fitted_steps": fitted})
        if fixed is not None:
            # The reference reuses its one eps (num_samples draws of it) for the reported ELBO too.
            S = cfg.inference.num_samples
            with progress(windows) as advance:
                row = windows_bound(fixed, tokens, T, S, batch_size, max_windows, seed=seed, progress=advance,
                                    at_fast_noise=True)
            rows.append(_with_perplexities(row) | {"label": FIXED_NOISE_LABEL, "fixed_noise": True, "fitted_steps": T})
    unigram = unigram_bound(split_tokens(corpus, "train", opened.tokenizer), tokens, opened.tokenizer.vocab_size,
                            cfg.model.block_size, max_windows)
    return EvalResult(
        rows=rows, backend=cfg.train.backend, inference=cfg.inference.method, trained_with=opened.trained_method,
        split=split, data=corpus.spec, tokenizer=cfg.data.tokenizer, latent_rope=cfg.model.latent_rope,
        split_windows=num_windows(len(tokens), cfg.model.block_size), exact=not method.latent,
        proposal=method.proposal, unigram_nll_per_token=unigram["nll_per_token"],
        unigram_perplexity=unigram["perplexity"], flops_per_token=training_flops_per_token(opened.trained_cfg),
        decoder_flops_per_token=decoder_forward(cfg.model), truth=truth)


def compare_runs(runs: list[str], split: str = "val", data: str | None = None, steps: int | None = None,
                 samples: int = 1, max_windows: int | None = None, batch_size: int | None = None,
                 seed: int | None = None, progress=no_progress, overrides: dict | None = None,
                 kind: str = "elbo") -> CompareResult:
    """Bounds of several runs on the same split and tokens (each with its own method), with their
    training FLOPs per token: token-matched and compute-matched comparisons in one table. Each
    later run's difference from the first, paired over the windows (a standard error and a 95%
    interval), and the corpus' exact answers where it has them. kind: "elbo" or "iwae" (IWAE_K
    with K = samples) for the latent runs; a run without a latent is exact either way."""
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
    if kind not in ("elbo", "iwae"):
        raise LtmError(f"--bound must be elbo or iwae, got {kind!r}")
    rows, windows, first = [], [], None
    for o in opened:
        settings = EvalSettings(split, data, [steps] if steps else None, samples,
                                kind if descriptor(o.cfg.inference.method).latent else "elbo", False, batch_size,
                                max_windows, seed)
        record = evaluate_run(o, settings, progress, per_window=True)
        params = sum(int(np.prod(v.shape)) for k, v in o.inference.weights().items())
        head = record.headline
        first = first or (record, head)
        windows.append(head.pop("window_nll"))
        paired = None
        if len(rows) and windows[0] is not None and windows[-1] is not None and \
                o.cfg.model.block_size == opened[0].cfg.model.block_size and len(windows[-1]) == len(windows[0]):
            paired = paired_difference(windows[0], windows[-1], o.cfg.model.block_size)
        truth = record.truth or {}
        rows.append(CompareRow(
            run=str(o.path), params=params, backend=record.backend, inference=record.inference,
            nll_per_token=head["nll_per_token"], perplexity=head["perplexity"], kl_per_sequence=head["kl_per_sequence"],
            num_tokens=head["num_tokens"], steps=head["steps"], flops_per_token=record.flops_per_token,
            decoder_flops_per_token=record.decoder_flops_per_token, proposal=record.proposal,
            difference=head["nll_per_token"] - first[1]["nll_per_token"] if rows else None, paired=paired,
            best_window_nll=truth.get("best_window_nll"), best_window_nll_se=truth.get("best_window_nll_se"),
            receptive_field=truth.get("receptive_field")))
    if len({r.num_tokens for r in rows}) > 1:
        raise LtmError("the runs predict different numbers of tokens (different block sizes?): their bounds do not compare")
    return CompareResult(split, data, rows, first[0].truth)
