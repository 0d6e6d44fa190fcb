"""Per-sequence noise: the eps of a batch as a pure function of (seed, iteration, step, global row).

No worker draws from a stream of its own, so N workers sharing a global batch draw exactly the
noise one worker would, and the weights after k iterations do not depend on the worker count.

- torch (`torch_eps`): a generator on the device, seeded from (seed, iteration, step), draws the
  eps of the whole global batch [S, B_global, *event] and the worker keeps its rows. One kernel,
  tiny next to the decoder (LTM-M at 8 workers: 3M floats per step); host-side seeding only, and
  the draw stays outside any compiled / captured region (its result is an input there).
- JAX (`jax_eps`): the iteration's key folded with the step and then with each global row index,
  vmapped over the rows; under jit on a sharded batch every device computes its own rows.

`step` names the draw inside an iteration: the fast steps are 0..T-1, the others below.
Importing this module imports neither torch nor jax.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

SLOW = 1 << 20  # the slow step's eps
INIT = SLOW + 1  # the published random start of the fast steps
ENCODER = SLOW + 2  # the encoder's own ELBO (semi-amortized)
FIXED = SLOW + 3  # local's fixed_noise mode: one eps for every fast step
CHAIN_START = SLOW + 4  # Langevin: the chains' starting draws
LANGEVIN = 1 << 21  # + t: Langevin's proposal eps at sampler step t
ACCEPT = 1 << 22  # + t: MALA's accept uniforms at sampler step t (log Phi of a normal)
EVAL = 1 << 30  # evaluation draws: iteration is then the eval batch's index


@dataclass(frozen=True)
class Rows:
    """Which rows of a global batch a worker holds: rows [offset, offset + count) of `total`."""
    seed: int
    iteration: int
    offset: int = 0
    total: int | None = None  # None: the local batch is the global batch


@dataclass(frozen=True, eq=False)
class FastNoise:
    """Where the eps of local's fast steps come from (fit_local_posterior, both backends).

    The rule: each step's eps has exactly one source, the first given of
    - per_step: every step's eps [steps, S, B, *event] (backend parity tests): `injected`;
    - fixed: one eps [S, B, *event] reused at every step (the published reference's fixed-noise
      mode and the trajectory update; JAX only: the torch loop draws its own, inference.fixed_noise):
      `reused`;
    - key: drawn per step as a function of (seed, iteration, step, global row), so the eps do not
      depend on the worker count: a Rows (torch_eps) or the iteration's JAX key (jax_eps): `fresh`;
    - none of them: torch's own random stream (the eager Pyro loop only): `stream`.
    per_step and fixed exclude each other. key also draws what the fit draws besides the steps'
    eps (the published random start; the torch loop's fixed eps), so it may come with either:
    the published path needs a key and a fixed eps together. Refused when built: fixed with
    per_step, a key that is a plain number (a seed is not a key: give Rows or a JAX key), and eps
    with too few axes for their source (fixed [S, B, ...], per_step one more). eq=False: the
    fields are arrays.
    """
    key: object = None
    fixed: object = None
    per_step: object = None

    def __post_init__(self):
        if self.fixed is not None and self.per_step is not None:
            raise ValueError("FastNoise: give fixed (one eps for every step) or per_step (each step's eps), not both")
        if isinstance(self.key, numbers.Number):
            raise ValueError(f"FastNoise: key must be a noise.Rows or a JAX key, not the number {self.key!r}")
        for name, axes in (("fixed", 2), ("per_step", 3)):
            ndim = getattr(getattr(self, name), "ndim", None)
            if ndim is not None and ndim < axes:
                raise ValueError(f"FastNoise: {name} eps need at least {axes} axes "
                                 f"({'[S, B, *event]' if axes == 2 else '[steps, S, B, *event]'}), got {ndim}")

    @classmethod
    def stream(cls) -> FastNoise:
        """torch's own random stream (the eager Pyro loop only; nothing keyed)."""
        return cls()

    @classmethod
    def fresh(cls, key) -> FastNoise:
        """Fresh eps at every step, drawn from key (Rows or a JAX key) per (step, global row)."""
        if key is None:
            raise ValueError("FastNoise.fresh needs a key (noise.Rows or a JAX key); FastNoise.stream() has none")
        return cls(key=key)

    @classmethod
    def reused(cls, eps, key=None) -> FastNoise:
        """One eps [S, B, *event] at every step; key (if any) draws the published start."""
        if eps is None:
            raise ValueError("FastNoise.reused needs the eps reused at every step")
        return cls(key=key, fixed=eps)

    @classmethod
    def injected(cls, per_step, key=None) -> FastNoise:
        """Every step's eps given [steps, S, B, *event]; key (if any) draws the start and torch's fixed eps."""
        if per_step is None:
            raise ValueError("FastNoise.injected needs every step's eps")
        return cls(key=key, per_step=per_step)

    @property
    def source(self) -> str:
        """The one source of each step's eps: "per_step", "fixed", "key" or "stream"."""
        for name in ("per_step", "fixed", "key"):
            if getattr(self, name) is not None:
                return name
        return "stream"


def seed_of(seed: int, iteration: int, step: int) -> int:
    """A 63-bit seed mixed from the three numbers (numpy's SeedSequence: well spread, host-only)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, iteration, step]).generate_state(2, np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


_GENERATORS: dict = {}


def torch_eps(rows: Rows, step: int, count: int, shape: tuple, num_samples: int, device):
    """eps [num_samples, count, *shape] float32 of this worker's `count` rows at `step`."""
    import torch

    device = torch.device(device)
    total = rows.total if rows.total is not None else rows.offset + count
    gen = _GENERATORS.get(device)
    if gen is None:
        gen = _GENERATORS[device] = torch.Generator(device=device)
    gen.manual_seed(seed_of(rows.seed, rows.iteration, step))
    eps = torch.randn((num_samples, total, *shape), generator=gen, device=device)
    return eps if (rows.offset == 0 and count == total) else eps[:, rows.offset : rows.offset + count]


def jax_eps(key, step, rows, shape: tuple, num_samples: int):
    """eps [num_samples, len(rows), *shape] float32 for global row indices `rows` (a jax array):
    row r's eps comes from fold_in(fold_in(key, step), r) alone. `key` is the iteration's key (the
    trainer splits one per iteration from the seeded chain it checkpoints: a function of (seed,
    iteration)). Jit-able; step may be a traced value."""
    import jax
    import jax.numpy as jnp

    base = jax.random.fold_in(key, step)

    def one(row):
        return jax.random.normal(jax.random.fold_in(base, row), (num_samples, *shape), jnp.float32)

    return jnp.moveaxis(jax.vmap(one)(rows), 0, 1)
