"""The JAX runners of bench/gpu_speed.py (the one GPU speed script): the NumPyro backend's
`local` iteration and the plain-JAX baseline (bench/plain_jax_step.py), bf16 on the GPU (the
NumPyro backend's GPU precision). Kept apart so that the torch runners never import jax.

    python bench/gpu_speed.py --only ltm-m-numpyro,ltm-m-plain-jax --out "$OUT"
"""
from __future__ import annotations

import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))


def build_jax(runner: str, shape: str, steps: int, batch: int, device: str):
    """(step(), synchronize, peak-memory reader in GiB, device, cfg) of a JAX runner."""
    import jax
    import numpy as np

    sys.path.insert(0, BENCH)
    from plain_jax_step import PlainRunner, config

    from ltm_ppl.inference import create

    cfg = config(shape, batch, device)
    if steps:
        cfg.inference.steps = steps
    inference = create(cfg)
    dev = inference.device

    def peak():
        stats = dev.memory_stats() or {}
        return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None

    tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, size=(batch, cfg.model.block_size + 1))
    if runner == "numpyro":
        return (lambda: inference.step(tokens)), inference.synchronize, peak, dev, cfg
    plain = PlainRunner(inference)
    del inference.params, inference.opt_state  # the plain runner's own copies only: a fair peak memory
    on_device = jax.device_put(np.asarray(tokens, np.int32), dev)
    return (lambda: plain.run(on_device)), (lambda: jax.block_until_ready(plain.params)), peak, dev, cfg
