"""A model injected into an inference method in place of the LTM (backend-neutral).

The generic base of each backend runs any method's bound, log weights and posterior on such a
model, so a model with a known evidence (the linear-Gaussian one of the tests) goes through the
very code `ltm eval` uses. The fast loop of `local` and the guides name the sites "z" and "x".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class LatentModel:
    fn: Callable  # fn(data): a Pyro or NumPyro program with the latent and observed sites in a plate at dim -1
    event_shape: tuple[int, ...]  # of one sequence's latent
    latent: str = "z"
    obs: str = "x"
    dtype: str = "float32"  # of the observed data (the LTM's tokens are integers)
