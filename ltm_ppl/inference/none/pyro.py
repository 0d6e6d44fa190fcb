"""`none` in Pyro: the decoder without latents, trained by maximum likelihood. The autoregressive
baseline: the same loop, the same windows and the same predicted tokens as the LTM methods."""
from __future__ import annotations


import numpy as np
import pyro
import torch
from pyro import poutine

from ...errors import LtmError
from ..pyro_backend import PyroBackend


class PyroNone(PyroBackend):
    method = "none"
    posterior_kind = None  # no latent

    def __init__(self, cfg):
        if cfg.model.latent:
            raise LtmError("--inference none needs a decoder without latents (model.latent = false)")
        super().__init__(cfg)

    def loglik(self, tokens) -> torch.Tensor:
        """log p(x_i) per sequence [B], read off the model's observed site."""
        with pyro.validation_enabled(False):
            site = poutine.trace(self.model).get_trace(tokens).nodes["x"]
        return site["fn"].log_prob(site["value"])

    def step(self, batch: np.ndarray) -> dict:
        tokens = self.tensor(batch)
        loss = -self.loglik(tokens).sum() / (tokens.shape[0] * (tokens.shape[1] - 1))
        metrics = {"loss": loss.detach(), "nll": loss.detach(), "kl": 0.0}
        metrics.update(self.slow_update(loss, metrics))  # skipped on the device unless finite
        return metrics

    def bound(self, batch: np.ndarray, steps: int = 0, num_samples: int = 1, noise=None, fast_noise=None,
              at_fast_noise: bool = False) -> dict:
        tokens = self.tensor(batch)
        with torch.no_grad():
            loglik = self.loglik(tokens)
        return {"loglik": loglik.cpu().numpy(), "kl": np.zeros(len(batch), np.float32), "num_tokens": tokens.shape[1] - 1}

    def log_weights(self, batch: np.ndarray, steps: int, num_samples: int) -> np.ndarray:
        """No latent: every 'weight' is the exact log-likelihood, so IWAE = ELBO = log p(x)."""
        loglik = self.bound(batch)["loglik"]
        return np.broadcast_to(loglik, (num_samples, len(loglik))).copy()
