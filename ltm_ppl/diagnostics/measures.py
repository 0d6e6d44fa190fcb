"""Posterior measures, pure functions of arrays: R-hat and ESS of chains, PSIS k-hat of
variational posteriors, the collapse measures, the convergence rule and its verdicts in words.

ArviZ computes every statistic it has (rhat, ess, psislw); written here is only what it lacks:
the collapse measures (KL per latent vector, active units). A variational q is measured from its
own parameters (analytic KL, variance of its means over many windows); MCMC draws are measured
from the draws, beside the same estimator's value on prior draws.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..inference.gaussian import fit_to_draws, kl_per_vector

RHAT_LIMIT = 1.01
ESS_MIN = 400  # bulk ESS summed over chains
COORDINATE_SHARE = 0.99  # of every sequence's latent coordinates
CONVERGENCE_RULE = (f"converged: rank-normalised R-hat <= {RHAT_LIMIT} and bulk ESS >= {ESS_MIN} (summed over chains) "
                    f"on the log joint and on at least {COORDINATE_SHARE:.0%} of the latent coordinates of every sequence")
MIN_KHAT_DRAWS = 100


def import_arviz():
    """ArviZ, imported on first use (it takes a second), without its FutureWarning."""
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
    az = import_arviz()
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
    az = import_arviz()
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
    mean, log_std = fit_to_draws(z.reshape(-1, *z.shape[2:]), np, min_scale=1e-6)  # draws [C * D, B, n_z, d]
    return _collapse_report(gaussian_kl_per_vector(mean, log_std).mean(0), active_units(mean), "draws", mean.shape[0])


def collapse_noise_floor(shape: tuple, seed: int = 0) -> dict:
    """What `collapse` reports for draws of the prior N(0, I) itself, of the same shape [C, D, B,
    n_z, d]: an estimate from draws means little unless it stands clear of this."""
    return collapse(np.random.default_rng(seed).standard_normal(shape))




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
