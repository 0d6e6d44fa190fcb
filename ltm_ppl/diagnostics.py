"""Posterior quality with ArviZ: R-hat and ESS of Langevin chains, PSIS k-hat of variational
posteriors, collapse measures, the amortization gap; InferenceData as NetCDF, PNG plots.

ArviZ computes every statistic it has (rhat, ess, psislw); written here is only what it lacks:
the collapse measures (KL per latent vector, active units) and the amortization gap. A variational
q is measured from its own parameters (analytic KL, variance of its means over many windows);
MCMC draws are measured from the draws, beside the same estimator's value on prior draws.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import shutil
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from . import durable, resources
from .checkpoint import commit_run, read_config, stage_run
from .config import apply_overrides
from .checks import require_positive, require_seed, require_steps
from .data import eval_batches, load_corpus, split_tokens
from .destination import check_creatable
from .errors import LtmError
from .evaluate import corpus_bound
from .inference import descriptor, methods as known_methods
from .inference.gaussian import kl_per_vector
from .runs import open_run

RHAT_LIMIT = 1.01
ESS_MIN = 400  # bulk ESS summed over chains
COORDINATE_SHARE = 0.99  # of every sequence's latent coordinates
CONVERGENCE_RULE = (f"converged: rank-normalised R-hat <= {RHAT_LIMIT} and bulk ESS >= {ESS_MIN} (summed over chains) "
                    f"on the log joint and on at least {COORDINATE_SHARE:.0%} of the latent coordinates of every sequence")
MIN_KHAT_DRAWS = 100
DEFAULT_WARMUP = 200  # warm-up steps of chain methods in `diagnose` unless --steps says otherwise
BOUND_SAMPLES = 16  # draws of each method's q for the ELBO estimate and K of IWAE_K in `diagnose`


def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its 1.0 refactor
        import arviz as az
    return az


def khat_threshold(num_draws: int) -> float:
    """PSIS reliability threshold for S draws: min(1 - 1 / log10 S, 0.7)."""
    return min(1.0 - 1.0 / math.log10(num_draws), 0.7)


def psis_khat(log_weights: np.ndarray) -> dict:
    """PSIS k-hat per sequence from log weights [S, B].

    Constant weights (q equal to the posterior) make ArviZ return k = inf; they are reported as
    exact, not as a failure.
    """
    az = _arviz()
    S = log_weights.shape[0]
    spread = log_weights.max(0) - log_weights.min(0)
    exact = spread <= 1e-6 * np.maximum(1.0, np.abs(log_weights).max(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, khat = az.psislw(np.ascontiguousarray(log_weights.T, dtype=np.float64))
    khat = np.where(exact, np.nan, np.asarray(khat, dtype=np.float64))
    threshold = khat_threshold(S)
    bad = ~exact & ~(khat <= threshold)  # NaN k-hat outside the exact case counts as bad
    return {
        "khat": khat, "exact": exact, "threshold": threshold, "num_draws": S,
        "share_above_threshold": float(bad.mean()), "khat_max": float(np.nanmax(khat)) if (~exact).any() else None,
        "status": ["exact" if e else ("ok" if k <= threshold else "unreliable") for e, k in zip(exact, khat)],
    }


def converged(rhat_z: np.ndarray, ess_z: np.ndarray, rhat_log_joint: np.ndarray, ess_log_joint: np.ndarray) -> dict:
    """The one convergence rule (CONVERGENCE_RULE), per sequence: R-hat [B, ...] and bulk ESS of
    the latent coordinates, and [B] of the log joint. NaN fails. Returns the verdict, the share of
    good coordinates of each sequence and whether each sequence passed."""
    B = rhat_log_joint.shape[0]
    good = (rhat_z <= RHAT_LIMIT) & (ess_z >= ESS_MIN)  # NaN compares False: fails
    share = good.reshape(B, -1).mean(1)
    joint_ok = (rhat_log_joint <= RHAT_LIMIT) & (ess_log_joint >= ESS_MIN)
    per_sequence = joint_ok & (share >= COORDINATE_SHARE)
    return {"converged": bool(per_sequence.all()), "sequences_converged": per_sequence,
            "share_coordinates_converged": share, "rule": CONVERGENCE_RULE}


def chain_diagnostics(z: np.ndarray, log_joint: np.ndarray) -> dict:
    """R-hat (rank-normalised) and bulk/tail ESS of z [C, D, B, ...] and of the order-free log
    joint [C, D, B]. A NaN R-hat (chains that never moved) counts as failed, never as passed."""
    az = _arviz()
    ds = az.convert_to_dataset({"z": z, "log_joint": log_joint})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = az.rhat(ds)
        ess_bulk = az.ess(ds, method="bulk")
        ess_tail = az.ess(ds, method="tail")
    rz, rlj = rhat["z"].values, rhat["log_joint"].values
    failed = np.isnan(rz) | (rz > RHAT_LIMIT)
    return {
        "rhat": rz, "rhat_log_joint": rlj, "ess_bulk": ess_bulk["z"].values, "ess_tail": ess_tail["z"].values,
        "rhat_max": float(np.nanmax(rz)) if not np.isnan(rz).all() else float("nan"),
        "rhat_nan": int(np.isnan(rz).sum()),
        "share_rhat_above_limit": float(failed.mean()),
        "rhat_log_joint_max": float(np.max(rlj)) if not np.isnan(rlj).any() else float("nan"),
        "ess_bulk_min": float(np.nanmin(ess_bulk["z"].values)), "ess_tail_min": float(np.nanmin(ess_tail["z"].values)),
        "rhat_median": float(np.nanmedian(rz)) if not np.isnan(rz).all() else float("nan"),
        "ess_bulk_log_joint_min": float(np.nanmin(ess_bulk["log_joint"].values)),
        "ess_bulk_median": float(np.nanmedian(ess_bulk["z"].values)),  # the typical coordinate, beside the worst
    } | converged(rz, ess_bulk["z"].values, rlj, ess_bulk["log_joint"].values)


ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016: a unit is active when Var_x(E_q[z_u]) > 0.01
ACTIVE_SEQUENCES = 64  # windows whose q means give the active units of a variational posterior


def gaussian_kl_per_vector(loc: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
    """Analytic KL(N(loc, exp(log_scale)^2) || N(0, I)) per sequence and latent vector [B, n_z]
    (the elementwise KL summed over the last dim)."""
    loc, log_scale = np.asarray(loc, np.float64), np.asarray(log_scale, np.float64)
    return kl_per_vector(loc, log_scale, np)


def active_units(means: np.ndarray) -> np.ndarray:
    """Which coordinates' posterior means vary across sequences: Var over sequences of means
    [N, n_z, d] > ACTIVE_THRESHOLD, as a bool array [n_z, d] (none with one sequence)."""
    means = np.asarray(means, np.float64)
    if means.shape[0] < 2:
        return np.zeros(means.shape[1:], bool)
    return means.var(0) > ACTIVE_THRESHOLD


def _collapse_report(kl_per_vector: np.ndarray, active: np.ndarray, source: str, active_sequences: int) -> dict:
    return {
        "kl_per_latent_vector": np.atleast_1d(kl_per_vector),
        "active_units": int(active.sum()),
        "active_units_per_latent_vector": np.atleast_1d(active.sum(-1) if active.ndim == 2 else active).astype(int),
        "num_units": int(active.size),
        "source": source,
        "active_sequences": int(active_sequences),
    }


def collapse_from_q(loc: np.ndarray, log_scale: np.ndarray, means: np.ndarray | None = None) -> dict:
    """Collapse measures of a variational posterior from q's own parameters, free of sampling
    noise: the analytic KL(q || prior) per latent vector averaged over the sequences of loc /
    log_scale [B, n_z, d], and active units from the variance across sequences of q's mean,
    over `means` [N, n_z, d] (more sequences than B; loc itself when not given)."""
    means = loc if means is None else means
    return _collapse_report(gaussian_kl_per_vector(loc, log_scale).mean(0), active_units(means), "q", len(means))


def collapse(z: np.ndarray) -> dict:
    """KL(q || prior) per latent vector of a Gaussian fitted to each sequence's draws z [C, D, B,
    n_z, d], averaged over sequences, and active units from the draws' means (variance across
    sequences > 0.01, Burda et al. 2016), per latent vector. Both carry sampling noise: compare
    them with collapse_noise_floor of the same shape."""
    draws = z.reshape(-1, *z.shape[2:])  # [C * D, B, n_z, d]
    mean, std = draws.mean(0), np.maximum(draws.std(0), 1e-6)
    return _collapse_report(gaussian_kl_per_vector(mean, np.log(std)).mean(0), active_units(mean), "draws", mean.shape[0])


def collapse_noise_floor(shape: tuple, seed: int = 0) -> dict:
    """What `collapse` reports for draws of the prior N(0, I) itself, of the same shape [C, D, B,
    n_z, d]: an estimate from draws means little unless it stands clear of this."""
    return collapse(np.random.default_rng(seed).standard_normal(shape))


HMC_STATS = ("energy", "diverging", "tree_depth", "n_steps")


def inference_data(method: str, post: dict, log_weights: np.ndarray | None = None):
    """ArviZ InferenceData: posterior z (chain, draw, seq, latent, dim); sample_stats with the log
    joint, acceptance and step size for chains (HMC / NUTS add energy, diverging, n_steps, NUTS
    tree_depth), log importance weights for variational methods."""
    az = _arviz()
    C, D = post["z"].shape[:2]
    stats = {"log_joint": post["log_joint"]}
    dims = {"z": ["seq", "latent", "dim"][: post["z"].ndim - 2], "log_joint": ["seq"]}  # an injected model's z may be 1-d
    if "accept_prob" in post:
        stats["accept_prob"] = post["accept_prob"]
        stats["step_size"] = np.broadcast_to(post["step_size"][:, None, :], (C, D, post["step_size"].shape[-1])).copy()
        dims |= {"accept_prob": ["seq"], "step_size": ["seq"]}
    for name in HMC_STATS:  # HMC / NUTS: ArviZ's own names, so az.plot_energy reads them
        if name in post:
            stats[name] = post[name]
            dims[name] = ["seq"]
    if log_weights is not None:
        stats["log_weight"] = log_weights
        dims["log_weight"] = ["seq"]
    return az.from_dict(posterior={"z": post["z"]}, sample_stats=stats, dims=dims, attrs={"method": method})


def plot_method(method: str, post: dict, report: dict, out: Path) -> list[str]:
    """PNG plots: rank plot of a few coordinates (chains), energy plot of sequence 0 (HMC / NUTS),
    k-hat per sequence (variational), KL per latent vector (all). Returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    az = _arviz()
    written = []
    if post["z"].shape[0] > 1:
        coords = {f"z[0,0,{k}]": post["z"][:, :, 0, 0, k] for k in range(min(3, post["z"].shape[-1]))}
        coords["log_joint[0]"] = post["log_joint"][:, :, 0]
        axes = az.plot_rank(az.convert_to_dataset(coords))
        np.ravel(axes)[0].figure.savefig(out / f"{method}_rank.png", dpi=80)
        plt.close("all")
        written.append(f"{method}_rank.png")
    if "energy" in post:  # HMC / NUTS: marginal energy against energy transitions, sequence 0
        idata = inference_data(method, post)
        ax = az.plot_energy(idata.sel(seq=0))
        np.ravel(ax)[0].figure.savefig(out / f"{method}_energy.png", dpi=80)
        plt.close("all")
        written.append(f"{method}_energy.png")
    if "khat" in report:
        fig, ax = plt.subplots(figsize=(6, 3))
        k = report["khat"]["khat"]
        ax.scatter(np.arange(len(k)), np.nan_to_num(k, nan=-0.5), c=["green" if s == "exact" else "C0" for s in report["khat"]["status"]])
        ax.axhline(report["khat"]["threshold"], color="red", ls="--", label="threshold")
        ax.set(xlabel="sequence", ylabel="PSIS k-hat", title=f"{method}: k-hat per sequence (exact at -0.5)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # sequence numbers: no 0.5 ticks
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{method}_khat.png", dpi=80)
        plt.close(fig)
        written.append(f"{method}_khat.png")
    fig, ax = plt.subplots(figsize=(6, 3))
    kl = report["collapse"]["kl_per_latent_vector"]
    ax.bar(np.arange(len(kl)), kl)
    ax.set(xlabel="latent vector", ylabel="KL(q || prior), nats", title=f"{method}: KL per latent vector")
    fig.tight_layout()
    fig.savefig(out / f"{method}_kl.png", dpi=80)
    plt.close(fig)
    written.append(f"{method}_kl.png")
    return written


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
    cfg, _ = read_config(run)
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


def verdict(diagnostics: dict) -> str:
    """The convergence rule's verdict in words, with the numbers that decide it."""
    numbers = (f"R-hat max {diagnostics['rhat_max']:.3f}, ESS min {diagnostics['ess_bulk_min']:.1f}, "
               f"R-hat of the log joint max {diagnostics['rhat_log_joint_max']:.3f}")
    if diagnostics["converged"]:
        return f"converged ({numbers})"
    return f"NOT converged ({numbers}; needs R-hat <= {RHAT_LIMIT} and ESS >= {ESS_MIN})"


def khat_verdict(khat: dict) -> str:
    """PSIS k-hat (psis_khat's record) in words: is q a usable importance proposal for every
    sequence? Above the threshold, importance-weighted estimates from q (its IWAE) have too heavy a
    tail to trust; IWAE stays a bound, but a noisy one."""
    status, threshold = khat["status"], khat["threshold"]
    bad = sum(s == "unreliable" for s in status)
    if bad == 0:
        return f"reliable: k-hat <= {threshold:.2f} for all {len(status)} sequences (q is a usable importance proposal)"
    return (f"NOT reliable for {bad} of {len(status)} sequences (k-hat > {threshold:.2f}): q is a poor importance "
            f"proposal there, so its IWAE is a noisy bound")


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
    idata.to_netcdf(str(out_dir / f"{m}.nc"))
    report["files"] = [f"{m}.nc"] + plot_method(m, post, report, out_dir)
    advance(1)
    return report
