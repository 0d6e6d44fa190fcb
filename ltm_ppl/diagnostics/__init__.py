"""Posterior quality with ArviZ (`ltm diagnose`): pure measures of draws and of q's parameters
(measures.py), InferenceData building (idata.py) and the orchestration that draws, measures and
writes a diagnostics directory (run.py); its figures live in plots.py."""
from .idata import HMC_STATS, inference_data
from .measures import (ACTIVE_THRESHOLD, CONVERGENCE_RULE, COORDINATE_SHARE, ESS_MIN, MIN_KHAT_DRAWS, RHAT_LIMIT,
                       active_units, chain_diagnostics, collapse, collapse_from_q, collapse_noise_floor, converged,
                       gaussian_kl_per_vector, khat_threshold, khat_verdict, psis_khat, verdict)
from .run import (ACTIVE_SEQUENCES, BOUND_SAMPLES, DEFAULT_WARMUP, SUMMARY_KEYS, DiagnoseResult, DiagnoseSettings,
                  check_diagnose_options, diagnose_run, method_bounds, q_means)

__all__ = [
    "ACTIVE_SEQUENCES", "ACTIVE_THRESHOLD", "BOUND_SAMPLES", "CONVERGENCE_RULE", "COORDINATE_SHARE", "DEFAULT_WARMUP",
    "ESS_MIN", "HMC_STATS", "MIN_KHAT_DRAWS", "RHAT_LIMIT", "SUMMARY_KEYS", "DiagnoseResult", "DiagnoseSettings",
    "active_units", "chain_diagnostics", "check_diagnose_options", "collapse", "collapse_from_q",
    "collapse_noise_floor", "converged", "diagnose_run", "gaussian_kl_per_vector", "inference_data", "khat_threshold",
    "khat_verdict", "method_bounds", "psis_khat", "q_means", "verdict",
]
