"""Configs and a CLI runner shared by the tests (importable: tests/ is on pytest's pythonpath)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# jit compilations of the NumPyro tests persist here across sessions (tests/conftest.py, jax_caches).
JAX_CACHE = Path(os.environ.get("LTM_JAX_CACHE_DIR") or Path.home() / ".cache" / "ltm-ppl" / "jax-cc")

# cross_out_zero = false: tests that read a model at random weights need z to reach the output
TINY_TOML = """
[model]
n_layer = 2
n_head = 2
d_model = 32
n_z = 4
block_size = 32
cross_out_zero = false

[inference]
steps = 2
eval_steps = 4

[train]
iters = 60
batch_size = 8
lr = 3e-3
warmup_iters = 5
eval_interval = 60
eval_windows = 16
checkpoint_interval = 20

[data]
tokenizer = "bytes"
"""

# Big enough to learn well below the unigram bound in ~15 s on 2 cores (byte tokenizer, KJV).
TRAIN_TOML = """
[model]
n_layer = 2
n_head = 4
d_model = 64
n_z = 4
block_size = 64

[inference]
steps = 2
eval_steps = 4

[train]
iters = 200
batch_size = 16
lr = 3e-3
warmup_iters = 5
eval_interval = 200
eval_windows = 16
checkpoint_interval = 100

[data]
tokenizer = "bytes"
"""


def host_metrics(metrics: dict) -> dict[str, float]:
    """A step's metrics (device scalars by contract: no host sync inside a step) as floats."""
    return {k: float(v) for k, v in metrics.items()}


def load_bench(name: str):
    """bench/<name>.py as a module (bench scripts are files, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str):
    from click.testing import CliRunner

    from ltm_ppl.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


# The linear-Gaussian test model of both backends: z ~ N(0, I_4), y ~ N(W z, sigma^2 I_5); the
# posterior N(m(y), Lambda^-1), Lambda = I + W^T W / sigma^2, is correlated.
W = np.array([[1.0, 0.8, 0.0, 0.0], [0.0, 1.0, 0.7, 0.0], [0.0, 0.0, 1.0, 0.6], [0.5, 0.0, 0.0, 1.0], [1, 1, 1, 1.0]], np.float32)
SIGMA = 0.5
PRECISION = np.eye(4) + W.T @ W / SIGMA**2
COVARIANCE = np.linalg.inv(PRECISION)

# A tiny LTM for backend-parity tests: seconds per test on 2 cores.
# cross_out_zero off: at random weights z must reach the output, or tests of its paths cannot fail
TINY_MODEL = dict(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_z=4, block_size=16, cross_out_zero=False)


def tiny_cfg(method: str = "local", backend: str = "numpyro", train: dict | None = None, **inference):
    """A RunConfig of the tiny LTM on the CPU; keyword arguments set [inference] fields."""
    from ltm_ppl.config import RunConfig

    cfg = RunConfig()
    for name, value in TINY_MODEL.items():
        setattr(cfg.model, name, value)
    cfg.model.latent = method != "none"
    cfg.inference.method = method
    for name, value in inference.items():
        setattr(cfg.inference, name, value)
    cfg.train.backend, cfg.train.device = backend, "cpu"
    for name, value in (train or {}).items():
        setattr(cfg.train, name, value)
    return cfg


def random_weights(names_shapes: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights far from the N(0, 0.02) init (norms near 1, matrices N(0, 0.3^2)), so that z and
    every layer matter: parity comparisons on them have teeth."""
    rng = np.random.default_rng(seed)
    return {name: ((1.0 if len(shape) == 1 else 0.0) + 0.3 * rng.standard_normal(shape)).astype(np.float32)
            for name, shape in names_shapes.items()}


def twin_decoders(seed: int, **model):
    """The tiny decoder in both backends with the same random weights: (cfg, weights, torch
    Decoder, JAX params); keyword arguments set ModelConfig fields (e.g. attention_window)."""
    import jax.numpy as jnp
    import torch

    from ltm_ppl.config import ModelConfig
    from ltm_ppl.models.jax import decoder as jax_decoder
    from ltm_ppl.models.torch.decoder import Decoder

    cfg = ModelConfig(**(TINY_MODEL | model))
    weights = random_weights(jax_decoder.param_shapes(cfg), seed=seed)
    decoder = Decoder(cfg)
    decoder.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return cfg, weights, decoder, {k: jnp.asarray(v) for k, v in weights.items()}
