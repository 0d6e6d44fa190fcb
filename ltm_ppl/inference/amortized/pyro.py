"""`amortized` in Pyro: SVI with an encoder q_phi(z | x) as the guide, trained jointly with the
decoder on the mean-field ELBO. KL warm-up and free bits shape the training objective only;
every reported bound is the plain ELBO.
"""
from __future__ import annotations

import functools

import numpy as np
import pyro
import torch

from ...models.torch.program import amortized_guide, local_guide
from ...noise import SLOW, torch_eps
from ..pyro_backend import PyroBackend
from ..pyro_elbo import elbo_terms_by_vector
from ..schedules import kl_weight


def amortized_objective(model, encoder, tokens, num_samples: int, beta: float, free_bits: float, n_tokens: int, eps=None):
    """(training objective, nll per token, KL per sequence [B]) of amortized SVI on a batch.
    eps [S, B, *event], if given, is the reparametrised noise (z = loc + sigma eps): keyed per
    sequence by the trainer (noise.py), so the result does not depend on the worker count.

    objective = -(sum_i E_q log p(x_i | z) - beta * sum_ij max(free_bits, KL_ij)) / n_tokens, with
    KL_ij the analytic KL of latent vector j of sequence i. Works on any model with sites "z", "x".
    """
    if eps is None:
        guide = functools.partial(amortized_guide, encoder=encoder)
        loglik, kl_vectors = elbo_terms_by_vector(model, guide, tokens, num_particles=num_samples)
    else:
        loc, log_scale = encoder(tokens)
        guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
        loglik, kl_vectors = elbo_terms_by_vector(model, guide, tokens, num_particles=num_samples,
                                                  latent_value=loc + log_scale.exp() * eps)
    penalty = torch.clamp(kl_vectors, min=free_bits).sum()
    nll = -loglik.mean(0).sum() / n_tokens
    return nll + beta * penalty / n_tokens, nll, kl_vectors.sum(-1)


class PyroAmortized(PyroBackend):
    method = "amortized"
    posterior_kind = "variational"  # independent draws from q: PSIS k-hat applies

    def step(self, batch: np.ndarray) -> dict:
        tokens = self.tensor(batch)
        inf = self.cfg.inference
        beta = kl_weight(self.iteration, inf.kl_warmup_iters)
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
        eps = torch_eps(self.training_rows(tokens.shape[0]), SLOW, tokens.shape[0], self.latent_shape, inf.num_samples, self.device)
        with pyro.validation_enabled(False):
            objective, nll, kl = amortized_objective(
                self.model, self.trained_encoder, tokens, inf.num_samples, beta, inf.free_bits, n_tokens, eps
            )
        metrics = {"loss": objective.detach(), "nll": nll.detach(), "kl": kl.mean().detach(), "beta": beta}
        metrics.update(self.slow_update(objective, metrics))  # skipped on the device unless finite
        return metrics

    def proposal(self, tokens, steps: int = 0, fast_noise=None):
        """The encoder's q (`steps` does not apply: nothing is fitted per sequence)."""
        with torch.no_grad():
            return self.encoder(tokens)
