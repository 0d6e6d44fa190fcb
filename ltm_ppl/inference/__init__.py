"""The registry of inference methods: (backend, method) -> class, imported lazily so that the
Pyro path never imports jax and the NumPyro path never imports torch.

Every class offers the same interface (docs/design.md, "Inference interface"):
`step(batch) -> metrics`, `bound(batch, steps, num_samples, noise=None) -> per-sequence terms`,
`posterior_latents(batch, steps)`, `prior_latents(n)`, `generate(...)`, `weights()`,
`load_weights()`, `optimizer_state()`, `load_optimizer_state()`, and an `iteration` counter.
"""
from __future__ import annotations

import importlib

from ..errors import LtmError

REGISTRY: dict[tuple[str, str], str] = {
    ("pyro", "local"): "ltm_ppl.inference.local_pyro:PyroLocal",
    ("pyro", "amortized"): "ltm_ppl.inference.amortized_pyro:PyroAmortized",
    ("pyro", "langevin"): "ltm_ppl.inference.langevin_pyro:PyroLangevin",
    ("pyro", "none"): "ltm_ppl.inference.none_pyro:PyroNone",
    ("numpyro", "local"): "ltm_ppl.inference.local_numpyro:NumPyroLocal",
    ("numpyro", "amortized"): "ltm_ppl.inference.amortized_numpyro:NumPyroAmortized",
    ("numpyro", "langevin"): "ltm_ppl.inference.langevin_numpyro:NumPyroLangevin",
    ("numpyro", "none"): "ltm_ppl.inference.none_numpyro:NumPyroNone",
}

# Methods whose weights include the amortized encoder (`encoder.*` tensors).
def needs_encoder(cfg) -> bool:
    return cfg.inference.method == "amortized" or (cfg.inference.method == "local" and cfg.inference.init == "amortized")


def methods() -> tuple[str, ...]:
    return tuple(sorted({method for _, method in REGISTRY}))


def backends() -> tuple[str, ...]:
    return tuple(sorted({backend for backend, _ in REGISTRY}))


def inference_class(backend: str, method: str):
    if backend not in backends():
        raise LtmError(f"unknown backend {backend!r} (choose from {', '.join(backends())})")
    if (backend, method) not in REGISTRY:
        known = ", ".join(m for b, m in sorted(REGISTRY) if b == backend)
        raise LtmError(f"unknown inference method {method!r} for backend {backend} (choose from {known})")
    module, name = REGISTRY[(backend, method)].split(":")
    return getattr(importlib.import_module(module), name)


def create(cfg):
    """A fresh inference object (decoder initialised from cfg.train.seed) for cfg."""
    return inference_class(cfg.train.backend, cfg.inference.method)(cfg)
