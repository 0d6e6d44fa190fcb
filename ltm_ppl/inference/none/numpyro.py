"""`none` in NumPyro: the decoder without latents (no cross-attention, no "z" site), trained by
maximum likelihood through the model's observed site. The autoregressive baseline: the same loop,
windows and predicted tokens as the LTM methods. The mirror of none_pyro.py.

Nothing here imports torch.
"""
from __future__ import annotations

import jax
import numpy as np
from numpyro import handlers

from ...errors import LtmError
from ..numpyro_backend import NumPyroBackend
from ..numpyro_programs import Programs


class NonePrograms(Programs):
    def build(self):
        self.step = jax.jit(self._step, donate_argnums=self.donate)
        self.loglik = jax.jit(self._loglik)

    def _loglik(self, params, tokens):
        """log p(x_i) per sequence [B], read off the model's observed site."""
        self.traces["loglik"] += 1  # Python runs only while jit traces
        site = handlers.trace(self.model(params)).get_trace(tokens)["x"]
        return site["fn"].log_prob(site["value"])

    def _step(self, params, opt_state, tokens, lr):
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
        loss, grads = jax.value_and_grad(lambda p: -self._loglik(p, tokens).sum() / n_tokens)(params)
        params, opt_state, guard = self.update(params, opt_state, grads, lr, loss)
        return params, opt_state, {"loss": loss, "nll": loss, "kl": jax.numpy.zeros((), jax.numpy.float32)} | guard


class NumPyroNone(NumPyroBackend):
    method = "none"
    posterior_kind = None  # no latent
    programs_class = NonePrograms

    def __init__(self, cfg):
        if cfg.model.latent:
            raise LtmError("--inference none is the decoder without latents: it needs model.latent = false")
        super().__init__(cfg)

    def step(self, batch: np.ndarray) -> dict:
        lr = self.slow_lr()
        self.params, self.opt_state, out = self.programs.step(self.params, self.opt_state, self.tensor(batch), np.float32(lr))
        return self.finish_step(out, lr)

    def bound(self, batch: np.ndarray, steps: int = 0, num_samples: int = 1, noise=None, fast_noise=None,
              at_fast_noise: bool = False) -> dict:
        """The exact log-likelihood per sequence (nothing to bound: no latent); kl is zero."""
        tokens, n = self.padded(batch)
        loglik = np.asarray(self.programs.loglik(self.params, tokens))[:n]
        return {"loglik": loglik, "kl": np.zeros(len(loglik), np.float32), "num_tokens": int(tokens.shape[1] - 1)}

    def log_weights(self, batch: np.ndarray, steps: int, num_samples: int) -> np.ndarray:
        """No latent: every 'weight' is the exact log-likelihood, so IWAE = ELBO = log p(x)."""
        loglik = self.bound(batch)["loglik"]
        return np.broadcast_to(loglik, (num_samples, len(loglik))).copy()
