"""Where the NumPyro backend's arrays live: the JAX device a run asks for (--device), the
placements of weights and batches on one device or a Mesh of several (distributed.world), and
device arrays read back to the host. The Pyro side's resolve_device sits in pyro_backend.py.
Nothing here imports torch.
"""
from __future__ import annotations

import jax
import numpy as np

from ..distributed import world
from ..errors import LtmError


def resolve_device(name: str):
    if name == "cpu":
        return jax.devices("cpu")[0]
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if name == "cuda" and not gpus:
        raise LtmError("--device cuda asked for, but jax sees no CUDA device (install jax[cuda12] or jax[cuda13])")
    return gpus[0] if gpus else jax.devices("cpu")[0]


def placements(device):
    """(where weights go, where batches go): the device and None on one device; on a Mesh of
    several (distributed.world), replicated weights and batches split along the "batch" axis."""
    mesh = world().mesh
    if mesh is None:
        return device, None
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("batch"))


def host(x) -> np.ndarray:
    """A device array on the host, gathered from every process when it is split across them."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
