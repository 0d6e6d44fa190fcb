"""The one registry: method name -> descriptor, and through it (backend, method) -> class,
imported only when an object is created, so the Pyro path never imports jax, the NumPyro path
never imports torch, and `ltm --help` imports neither.

A new method is a descriptor (its package's __init__.py), one small class per backend beside it,
and one line in BUILTIN below (or `register(descriptor)` from outside the library).
"""
from __future__ import annotations

import importlib

from ..errors import LtmError
from . import amortized, langevin, local, none
from .descriptor import MethodDescriptor, Option

BACKENDS = ("pyro", "numpyro")
BUILTIN = (local.METHOD, langevin.METHOD, amortized.METHOD, none.METHOD)

_METHODS: dict[str, MethodDescriptor] = {}


def register(method: MethodDescriptor) -> None:
    """Add (or replace) a method. Its options must already be config fields (they are built from
    the methods registered at import), or it must have none of its own."""
    unknown = set(method.classes) - set(BACKENDS)
    if unknown:
        raise ValueError(f"method {method.name}: unknown backend(s) {sorted(unknown)}")
    _METHODS[method.name] = method


def unregister(name: str) -> None:
    _METHODS.pop(name, None)


for _method in BUILTIN:
    register(_method)


def methods() -> tuple[str, ...]:
    return tuple(sorted(_METHODS))


def backends() -> tuple[str, ...]:
    return BACKENDS


def descriptor(method: str) -> MethodDescriptor:
    if method not in _METHODS:
        raise LtmError(f"unknown inference method {method!r} (choose from {', '.join(methods())})")
    return _METHODS[method]


def options() -> tuple[Option, ...]:
    """Every method's options, once each (a field two methods share is declared once), in
    registration order: the method fields of InferenceConfig and the method flags of the CLI."""
    seen: dict[str, Option] = {}
    for method in _METHODS.values():
        for option in method.options:
            seen.setdefault(option.field, option)
    return tuple(seen.values())


def inference_class(backend: str, method: str):
    if backend not in BACKENDS:
        raise LtmError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if method not in _METHODS or backend not in _METHODS[method].classes:
        known = ", ".join(m for m in methods() if backend in _METHODS[m].classes)
        raise LtmError(f"unknown inference method {method!r} for backend {backend} (choose from {known})")
    module, name = _METHODS[method].classes[backend].split(":")
    return getattr(importlib.import_module(module), name)


def needs_encoder(cfg) -> bool:
    """Does cfg's method use the amortized encoder (`encoder.*` weights)?"""
    return descriptor(cfg.inference.method).needs_encoder(cfg)


def training_flops_per_token(cfg) -> float:
    """FLOPs of one training iteration divided by the predicted tokens it trains on (each method's
    count is in its descriptor, built from flops.decoder_forward and flops.encoder_forward)."""
    return descriptor(cfg.inference.method).flops_per_token(cfg)


def create(cfg, model=None):
    """A fresh inference object for cfg (decoder initialised from cfg.train.seed), or, with
    `model` (a LatentModel), the method on that model instead of the LTM."""
    cls = inference_class(cfg.train.backend, cfg.inference.method)
    return cls(cfg) if model is None else cls(cfg, model=model)
