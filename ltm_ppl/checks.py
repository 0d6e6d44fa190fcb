"""The one range checker of user numbers, shared by the CLI, the config and the library, so a
flag and its Python argument fail with the same line."""
from __future__ import annotations

import math

from .errors import LtmError


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require_positive(name: str, value, integer: bool = True, required: bool = False) -> None:
    """`value` must be > 0 (an int when `integer`) and finite; None means "not given" and passes
    unless `required` (a setting with no default to fall back on)."""
    if value is None and not required:
        return
    if integer and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise LtmError(f"{name} must be a positive integer, got {value!r}")
    if not _finite_number(value) or value <= 0:
        raise LtmError(f"{name} must be positive and finite, got {value!r}")


def require_non_negative(name: str, value, integer: bool = False) -> None:
    if value is None:
        return
    if integer and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise LtmError(f"{name} must be a non-negative integer, got {value!r}")
    if not _finite_number(value):
        raise LtmError(f"{name} must be a finite number, got {value!r}")
    if value < 0:
        raise LtmError(f"{name} must not be negative, got {value!r}")


def require_at_most(name: str, value, limit) -> None:
    if value is not None and value > limit:
        raise LtmError(f"{name} must be at most {limit}, got {value!r}")


MAX_SEED = 2**32 - 1  # what every random generator here (numpy, torch, jax) accepts
# Inner steps (fast optimiser steps, Langevin steps) per sequence: the published and studied
# settings use at most 64; 10,000 is already hours per batch on a CPU, and a typo beyond it would
# otherwise run until killed.
MAX_STEPS = 10_000
# Draws of z per window for a bound (--samples): IWAE_K's bias shrinks like 1/K, and K = 100,000
# already takes 12,500 decoder passes per batch.
MAX_SAMPLES = 100_000


def require_steps(name: str, value) -> None:
    require_positive(name, value)
    require_at_most(name, value, MAX_STEPS)


def require_seed(name: str, value) -> None:
    require_non_negative(name, value, integer=True)
    require_at_most(name, value, MAX_SEED)
