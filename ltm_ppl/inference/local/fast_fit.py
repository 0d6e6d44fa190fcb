"""How local's fast loop fits q: the settings both backends' `fit_local_posterior` take beside
what they fit (model, tokens, event shape, inference config, steps). Imports neither torch nor jax.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ...noise import FastNoise


@dataclass(frozen=True, eq=False)
class FastFit:
    """How q is fitted (eq=False: the fields hold arrays).

    - noise: where each step's eps come from (noise.FastNoise; default torch's own stream, which
      only the eager Pyro loop has).
    - start: (loc, log_scale) [B, *event] where the steps begin (semi-amortized: the encoder's q);
      None: local's configured start (inference.init, the published one drawn from noise.key).
    - kl_shaping: (beta, free bits) replacing the KL term by gaussian.shaped_kl's (training
      iterations only, never a reported bound); None: the plain ELBO.
    - train_decoder: the published trajectory update: every step's gradient also reaches the
      decoder's weights (Pyro: their .grad accumulate; NumPyro: summed and returned, the loop then
      given the weights as `params`).
    - observe_step: called with t after each step (Pyro only: the compiled-step tests).
    - compiled: a CompiledFastStep running each step as one compiled function (Pyro only, `--compile`).

    Refused when built: kl_shaping or start that is not a pair, and train_decoder with compiled
    (the compiled step never reaches the decoder's weights).
    """
    noise: FastNoise = field(default_factory=FastNoise)
    start: tuple | None = None
    kl_shaping: tuple | None = None
    train_decoder: bool = False
    observe_step: Callable[[int], None] | None = None
    compiled: object = None

    def __post_init__(self):
        if not isinstance(self.noise, FastNoise):
            raise ValueError(f"FastFit: noise must be a noise.FastNoise, got {type(self.noise).__name__}")
        for name in ("start", "kl_shaping"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (tuple, list)) or len(value) != 2):
                raise ValueError(f"FastFit: {name} must be a pair ({'loc, log_scale' if name == 'start' else 'beta, free bits'}) or None")
        if self.train_decoder and self.compiled is not None:
            raise ValueError("FastFit: the compiled fast step does not reach the decoder's weights: give train_decoder or compiled, not both")

    def refuse_pyro_only(self) -> None:
        """The JAX loop's check: observe_step and compiled belong to the torch loop."""
        for name in ("observe_step", "compiled"):
            if getattr(self, name) is not None:
                raise ValueError(f"FastFit: {name} is the Pyro fast loop's only")
