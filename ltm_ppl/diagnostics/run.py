"""`ltm diagnose`: each method's posterior draws for a few windows, their measures (measures.py),
InferenceData as NetCDF (idata.py), plots (plots.py) and the amortization gap, in a new directory;
the settings it takes and the record it returns."""
from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .. import durable, resources
from ..config import apply_overrides
from ..checks import require_positive, require_seed, require_steps
from ..data import eval_batches, load_corpus, split_tokens
from ..destination import check_creatable
from ..errors import LtmError
from ..eval_runs import open_run
from ..evaluate import corpus_bound
from ..inference import descriptor, methods as known_methods
from ..plots import plot_method
from ..run import Run, commit_run, stage_run
from .idata import inference_data
from .measures import (MIN_KHAT_DRAWS, chain_diagnostics, collapse, collapse_from_q, collapse_noise_floor, psis_khat,
                       verdict)

DEFAULT_WARMUP = 200  # warm-up steps of chain methods in `diagnose` unless --steps says otherwise
BOUND_SAMPLES = 16  # draws of each method's q for the ELBO estimate and K of IWAE_K in `diagnose`
ACTIVE_SEQUENCES = 64  # windows whose q means give the active units of a variational posterior


@dataclass
class DiagnoseSettings:
    """What `ltm diagnose` asks for; None takes the run's value (methods: the run's own; steps:
    eval_steps for variational methods, DEFAULT_WARMUP for chains). Numbers are checked here."""
    methods: list[str] | None = None
    sequences: int = 8
    chains: int = 4
    draws: int = 100
    steps: int | None = None
    split: str = "val"
    data: str | None = None
    out: str | None = None  # new directory (default diagnostics/<run name>-<timestamp>, never inside the run)
    backend: str | None = None
    device: str | None = None
    seed: int = 0
    overrides: dict | None = None  # method options, "inference.<field>": value (None skipped): kernel, warm-up, init
    bounds: bool = True  # ELBO and IWAE_K of each method's q (chain methods run their chains twice more)

    def __post_init__(self):
        for name, value in (("--sequences", self.sequences), ("--chains", self.chains), ("--draws", self.draws),
                            ("--steps", self.steps)):
            require_positive(name, value)
        require_steps("--steps", self.steps)
        require_seed("--seed", self.seed)


@dataclass(frozen=True)
class DiagnoseResult:
    """What `ltm diagnose` found: per method (its draws' shape and steps, collapse, chain
    diagnostics or PSIS k-hat, bounds, files), and the amortization gap where two methods allow it.
    `to_dict()` is the `--json` object and summary.json; report.diagnose_text the text. The
    per-method reports are JSON objects (non-finite numbers as None)."""
    run: str
    split: str
    sequences: int
    methods: dict[str, dict]
    out: str
    amortization_gap: dict | None = None  # absent from the JSON when not measured

    def to_dict(self) -> dict:
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.amortization_gap is None:
            del record["amortization_gap"]
        return record


def check_diagnose_options(methods: list[str], draws: int) -> None:
    if draws < MIN_KHAT_DRAWS and any(descriptor(m).posterior_kind == "variational" for m in methods):
        raise LtmError(f"--draws {draws} is below {MIN_KHAT_DRAWS}, the draws PSIS k-hat of a variational posterior needs")


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# Per-coordinate arrays are summarised (max, min, shares) in summary.json, not stored: recompute
# them from the NetCDF posterior with az.rhat / az.ess.
SUMMARY_KEYS = ("rhat", "rhat_log_joint", "ess_bulk", "ess_tail")


def diagnose_run(run, settings: DiagnoseSettings | None = None, progress=None) -> DiagnoseResult:
    """Posterior draws for the first `sequences` windows of a split with each method, their
    diagnostics, NetCDF files and plots in a new directory. Returns them (also summary.json).
    settings.overrides ("inference.<field>": value, None skipped) set method options (kernel, warm-up, init).
    Everything is checked first; then progress(2 per method, 1 more for the amortization gap) is
    entered and advanced after each method's draws and after its statistics and files."""
    s = settings or DiagnoseSettings()
    sequences, chains, draws, steps, split, seed = s.sequences, s.chains, s.draws, s.steps, s.split, s.seed
    run = Path(run)
    cfg = Run.open(run).cfg
    if not cfg.model.latent:
        raise LtmError(f"this run has no latent to diagnose (trained with --inference {cfg.inference.method})")
    methods = s.methods or [cfg.inference.method]
    latent_methods = [m for m in known_methods() if descriptor(m).posterior_kind is not None]
    for m in methods:
        if m not in latent_methods:
            raise LtmError(f"--inference: no latent posterior for method {m!r} (choose from {', '.join(latent_methods)})")
    check_diagnose_options(methods, draws)
    # Never inside the run: eval, sample and diagnose only read a run (its checkpoints stay as fit left them).
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(s.out) if s.out else Path("diagnostics") / f"{run.resolve().name}-{stamp}"
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LtmError(f"--out {out_dir} exists and is not an empty directory")
    check_creatable(out_dir, "the diagnostics directory")
    overrides = dict(s.overrides or {}) | {"train.backend": s.backend, "train.device": s.device}
    # every chain of every sequence steps at once, and every kept draw of z is held for ArviZ
    m_cfg = cfg.model
    needed = (resources.inference_bytes(m_cfg, sequences * chains)
              + resources.FLOAT * chains * draws * sequences * m_cfg.n_z * m_cfg.d_model * len(methods))
    where = copy.deepcopy(cfg)
    apply_overrides(where, {"train.backend": s.backend, "train.device": s.device})
    resources.check("this diagnosis", needed, where, "fewer --sequences, --chains or --draws")
    opened = {m: open_run(run, overrides | {"inference.method": m, "inference.chains": chains}) for m in methods}
    first = next(iter(opened.values()))
    tokens = split_tokens(load_corpus(s.data or first.cfg.data.data), split, first.tokenizer)
    batch = next(eval_batches(tokens, first.cfg.model.block_size, sequences, sequences), None)
    if batch is None or len(batch) < sequences:
        raise LtmError(f"the {split} split has fewer than {sequences} windows (--sequences)")
    # Active units of a variational q need many windows (8 q means give a variance too noisy to
    # compare with 0.01): up to ACTIVE_SEQUENCES windows, the first `sequences` being the batch.
    more_batches = list(eval_batches(tokens, first.cfg.model.block_size, sequences, max(sequences, ACTIVE_SEQUENCES)))[1:]
    # Built as a hidden sibling and renamed into place at the end: a killed diagnose leaves no
    # half folder at --out (the next diagnose or fit beside it removes the hidden one).
    stage = stage_run(out_dir, "the diagnostics directory")
    try:
        result = _diagnose_into(stage, run, s, opened, batch, more_batches, out_dir, progress)
        commit_run(stage, out_dir, unsynced=tuple(p.name for p in stage.iterdir() if p.name != "summary.json"))
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return result


def _diagnose_into(out_dir: Path, run: Path, s: DiagnoseSettings, opened: dict, batch, more_batches, final: Path,
                   progress) -> DiagnoseResult:
    """diagnose_run's work, its files written into out_dir (the hidden stage of `final`)."""
    sequences, chains, draws, steps, split, seed = s.sequences, s.chains, s.draws, s.steps, s.split, s.seed
    summary = {"run": str(run), "split": split, "sequences": sequences, "methods": {}, "out": str(final)}
    # The amortization gap: a refining method against the encoder it starts from (descriptors say which).
    gaps = [(m, descriptor(m).gap_against) for m in opened if descriptor(m).gap_against in opened][:1]
    with (progress or _no_progress)(2 * len(opened) + len(gaps)) as advance:
        for m, o in opened.items():
            summary["methods"][m] = _diagnose_method(m, o, batch, steps, chains, draws, seed, out_dir, advance, more_batches)
            if s.bounds:
                summary["methods"][m]["bounds"] = method_bounds(o.inference, batch, summary["methods"][m]["steps"], seed)
        for refined, encoder in gaps:  # e.g. local against amortized: the ELBO the refinement gains
            with opened[refined].inference.rng_scope(seed):
                fine = opened[refined].inference.bound(batch, steps=steps or opened[refined].cfg.inference.eval_steps * 4, num_samples=16)
                coarse = opened[encoder].inference.bound(batch, steps=0, num_samples=16)
            gap = (fine["loglik"] - fine["kl"]) - (coarse["loglik"] - coarse["kl"])
            summary["amortization_gap"] = {"nats_per_sequence": float(gap.mean()),
                                           "nats_per_token": float(gap.mean() / fine["num_tokens"]),
                                           "per_sequence": gap}
            advance(1)
    for report in summary["methods"].values():
        if "chains_diagnostics" in report:
            report["chains_diagnostics"] = {k: v for k, v in report["chains_diagnostics"].items() if k not in SUMMARY_KEYS}
    result = DiagnoseResult(**_jsonable(summary))
    durable.write_file(out_dir / "summary.json", (json.dumps(result.to_dict(), indent=2) + "\n").encode())
    return result


@contextlib.contextmanager
def _no_progress(total: int):
    yield lambda n=1: None


def method_bounds(inference, batch, steps: int, seed: int) -> dict:
    """ELBO (analytic KL) and IWAE_K of the method's q on the diagnosed windows, nats per token, by
    the code of `ltm eval` with its seeding: the same numbers as `ltm eval --inference M --steps
    STEPS --samples 16 [--bound iwae] --max-windows B --batch-size B --seed SEED` (and, for a chain
    method, the same --chains / --draws / kernel options). A chain method's q is the diagonal
    Gaussian fitted to its kept draws (its own bound / log_weights)."""
    elbo = corpus_bound(inference, [batch], steps, BOUND_SAMPLES, seed=seed, kind="elbo")
    iwae = corpus_bound(inference, [batch], steps, BOUND_SAMPLES, seed=seed, kind="iwae")
    return {"steps": steps, "samples": BOUND_SAMPLES, "num_tokens": elbo["num_tokens"],
            "elbo_nll_per_token": elbo["nll_per_token"], "iwae_nll_per_token": iwae["nll_per_token"],
            "kl_per_sequence": elbo["kl_per_sequence"]}


def q_means(inference, batch, steps: int) -> np.ndarray:
    """q's mean [B, n_z, d] for each window of the batch (one draw taken, unused)."""
    return np.asarray(inference.posterior(batch, steps, 1)["loc"])


def _diagnose_method(m: str, o, batch, steps, chains: int, draws: int, seed: int, out_dir: Path,
                     advance=lambda n=1: None, more_batches=()) -> dict:
    """Draws of one method for the batch, its diagnostics, NetCDF file and plots. more_batches:
    further windows whose q means join the active-unit measure of a variational method."""
    inference = o.inference
    chained = inference.posterior_kind == "chains"
    m_steps = steps or (DEFAULT_WARMUP if chained else o.cfg.inference.eval_steps)
    with inference.rng_scope(seed):
        if chained:
            post = inference.posterior(batch, m_steps, draws, chains)
            log_w = None
        else:
            post = inference.posterior(batch, m_steps, draws)
            log_w = post["log_joint"] - post["log_q"]
    advance(1)
    report = {"steps": m_steps, "chains": int(post["z"].shape[0]), "draws": int(post["z"].shape[1])}
    if "loc" in post:  # a variational q: measured from its own parameters, no sampling noise
        with inference.rng_scope(seed + 1):
            means = np.concatenate([post["loc"]] + [q_means(inference, b, m_steps) for b in more_batches])
        report["collapse"] = collapse_from_q(post["loc"], post["log_scale"], means)
    else:
        report["collapse"] = collapse(post["z"])
        report["collapse_noise_floor"] = collapse_noise_floor(post["z"].shape, seed)
    if chained:
        inf = o.cfg.inference
        report["chains_diagnostics"] = chain_diagnostics(post["z"], post["log_joint"])
        report["accept_prob"] = float(post["accept_prob"].mean())
        report["step_size"] = float(post["step_size"].mean())
        report["kernel"], report["init"] = inf.kernel, inf.init if inf.init in ("local", "amortized") else "prior"
        report["warmup"] = inf.warmup or m_steps
        # gradient evaluations of log p(x, z) per chain and sequence (warm-up and draws), the MCMC cost
        report["gradient_evaluations"] = float(post["gradient_evaluations"].mean())
        if "diverging" in post:
            report["divergences"] = int(post["diverging"].sum())
        if "tree_depth" in post:  # NUTS: how deep its trees went against --max-tree-depth
            report["tree_depth_mean"] = float(post["tree_depth"].mean())
            report["tree_depth_max"] = int(post["tree_depth"].max())
            report["max_tree_depth"] = inf.max_tree_depth
        report["verdict"] = verdict(report["chains_diagnostics"])
    else:
        report["khat"] = psis_khat(log_w[0])
    idata = inference_data(m, post, log_w)
    with durable.naming(out_dir / f"{m}.nc"):  # netCDF's own write errors carry no file name
        idata.to_netcdf(str(out_dir / f"{m}.nc"))
    report["files"] = [f"{m}.nc"] + plot_method(m, post, report, out_dir, idata)
    advance(1)
    return report
