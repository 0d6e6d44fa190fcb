"""Inference methods: one package per method (its descriptor in __init__.py, its Pyro and NumPyro
classes in pyro.py and numpyro.py), one registry (registry.py), one interface (protocol.py), one
generic base per backend (pyro_backend.py, numpyro_backend.py). Importing this package loads
neither torch nor jax."""
from __future__ import annotations

from .registry import backends, create, descriptor, inference_class, methods, needs_encoder, options, register, training_flops_per_token

__all__ = ["backends", "create", "descriptor", "inference_class", "methods", "needs_encoder", "options", "register",
           "training_flops_per_token"]
