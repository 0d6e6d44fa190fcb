"""The inference interface: what the training loop, the evaluator, the generator, diagnostics and
the CLI use of an inference object, and nothing else. Every registered class implements it; the
generic bases (pyro_backend.PyroBackend, numpyro_backend.NumPyroBackend) derive most of it from a
method's `step` and `proposal` (or `chains`) hooks.

Arrays come in as numpy (batches of token windows [B, block_size + 1]) and go out as numpy, except
latents (`prior_latents`, `posterior_latents`), which stay backend tensors for `generate`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Inference(Protocol):
    backend: str  # "pyro" | "numpyro"
    method: str  # the registry name
    posterior_kind: str | None  # "variational" | "chains" | None (no latent): which diagnostics apply
    cfg: Any  # the RunConfig it was built from
    iteration: int  # training iterations done
    compile_note: str | None  # said before the first training step when that step waits for a compiler

    def step(self, batch: np.ndarray) -> dict:
        """One training iteration (inner inference, then one slow step): 0-d values (device
        scalars or floats, never synced to the host here) `loss nll lr grad_norm`, method extras,
        and `finite` (the update was applied only if the loss and gradients were finite)."""

    def bound(self, batch: np.ndarray, steps: int = 0, num_samples: int = 1, noise=None, fast_noise=None,
              at_fast_noise: bool = False) -> dict:
        """Per-sequence ELBO terms at the method's q: `loglik` [B] (mean over num_samples draws, or
        over the injected noise [S, B, *event]), analytic `kl` [B], `num_tokens` predicted per sequence.
        at_fast_noise: the estimate reuses the eps the fast steps used, where the method fixes one
        (local with inference.fixed_noise): eval --fixed-noise's labelled row, not a bound."""

    def log_weights(self, batch: np.ndarray, steps: int, num_samples: int) -> np.ndarray:
        """log p(x, z_k) - log q(z_k) [K, B] for K draws of the method's q (IWAE, PSIS)."""

    def tensor(self, batch: np.ndarray):
        """A batch as the backend's array on its device (what `proposal` takes)."""

    def proposal(self, data, steps: int, fast_noise=None):
        """The method's q for data = tensor(batch): (loc, log_scale) [B, *event], or (loc,
        log_scale, eps) where the method fixes one eps for its inner steps (local with
        inference.fixed_noise), which bound reuses when asked (at_fast_noise); backend arrays.
        Latent methods only."""

    def posterior(self, batch: np.ndarray, steps: int, num_draws: int, num_chains: int = 1) -> dict:
        """Draws `z` [C, D, B, *event] and `log_joint` [C, D, B]; variational methods (C = 1) add
        `log_q` [1, D, B] and q's `loc`, `log_scale` [B, *event]; chain methods add `accept_prob`
        [C, D, B] and `step_size` [C, B]."""

    def posterior_latents(self, batch: np.ndarray, steps: int):
        """One latent per sequence given its window (generation from a prompt); None without latents."""

    def prior_latents(self, num: int):
        """num latents from the prior (generation without a prompt); None without latents."""

    def generate(self, context: np.ndarray, z, max_new: int, temperature: float, top_k: int) -> np.ndarray: ...

    def weights(self) -> dict[str, np.ndarray]:
        """Every parameter under its canonical (torch) name."""

    def load_weights(self, arrays: dict[str, np.ndarray]) -> None: ...

    def optimizer_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(tensors, JSON scalars) of the slow optimiser and the random state."""

    def load_optimizer_state(self, tensors: dict[str, np.ndarray], scalars: dict) -> None: ...

    def rng_scope(self, seed: int) -> contextlib.AbstractContextManager:
        """Draws inside use their own seeded stream and leave the training stream untouched."""

    def synchronize(self) -> None:
        """Wait for queued device work (benchmarks time the work, not its launch)."""
