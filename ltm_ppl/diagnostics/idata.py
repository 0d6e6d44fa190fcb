"""ArviZ InferenceData of one method's posterior draws (written by `ltm diagnose` as NetCDF)."""
from __future__ import annotations

import numpy as np

from .measures import import_arviz

HMC_STATS = ("energy", "diverging", "tree_depth", "n_steps")


def inference_data(method: str, post: dict, log_weights: np.ndarray | None = None):
    """ArviZ InferenceData: posterior z (chain, draw, seq, latent, dim); sample_stats with the log
    joint, acceptance and step size for chains (HMC / NUTS add energy, diverging, n_steps, NUTS
    tree_depth), log importance weights for variational methods."""
    az = import_arviz()
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
