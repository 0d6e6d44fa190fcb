"""`local` in Pyro: the paper's dual-rate variational Bayes.

Fast: per-sequence q_i = N(mu_i, diag sigma_i^2) fitted by T steps of Adam (or SGD) on the ELBO,
cosine-decayed step size, fresh noise at every step, decoder frozen (no weight gradients).
Slow: one AdamW step on the decoder at the fitted q_i with fresh noise.
Semi-amortized (`init = "amortized"`): the fast steps start from the encoder's q; the encoder
learns from its own ELBO at its output (no backpropagation through the refinement), the decoder
from the refined q.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pyro
import torch

from ...models.pyro_model import amortized_guide, local_guide
from ..pyro_backend import PyroBackend, frozen
from ..pyro_elbo import elbo_terms
from ..schedules import fast_lr


def fit_local_posterior(model, tokens, shape, inf_cfg, steps: int, device, observe_step=None, fast_noise=None, start=None):
    """Fit (loc, log_scale) of shape [B, *shape] by `steps` fast steps; model(tokens) is the joint.

    Minimises the negative ELBO per predicted token, summed over sequences (each sequence's
    parameters see only their own term). Starts at `start` = (loc, log_scale) when given, else at
    loc 0 and log_scale inf_cfg.init_log_scale. With inf_cfg.fixed_noise one eps is drawn and
    reused (the published reference's mode, for comparison only); it is returned for the final
    bound. fast_noise [steps, S, B, *shape], if given, is the eps of each step (parity tests).
    """
    B = tokens.shape[0]
    if start is None:
        loc = torch.zeros((B, *shape), device=device)
        log_scale = torch.full((B, *shape), inf_cfg.init_log_scale, device=device)
    else:
        loc, log_scale = (t.detach().clone() for t in start)
    loc.requires_grad_(True)
    log_scale.requires_grad_(True)
    opt_cls = torch.optim.Adam if inf_cfg.optimizer == "adam" else torch.optim.SGD
    opt = opt_cls([loc, log_scale], lr=inf_cfg.fast_lr)
    S = inf_cfg.num_samples
    eps = torch.randn((S, B, *shape), device=device) if inf_cfg.fixed_noise else None
    for t in range(steps):
        for group in opt.param_groups:
            group["lr"] = fast_lr(t, steps, inf_cfg.fast_lr, inf_cfg.final_lr_ratio)
        guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
        step_eps = eps if fast_noise is None else fast_noise[t]
        value = None if step_eps is None else loc + log_scale.exp() * step_eps
        loglik, kl = elbo_terms(model, guide, tokens, num_particles=S if step_eps is None else step_eps.shape[0], latent_value=value)
        n_tokens = max(1, tokens.shape[-1] - 1)
        loss = -(loglik.mean(0) - kl).sum() / n_tokens
        loc.grad, log_scale.grad = torch.autograd.grad(loss, [loc, log_scale])
        opt.step()
        if observe_step is not None:
            observe_step(t)
    return loc.detach(), log_scale.detach(), eps


class PyroLocal(PyroBackend):
    method = "local"
    posterior_kind = "variational"  # independent draws from q: PSIS k-hat applies

    def start(self, tokens):
        """Where the fast steps begin: the encoder's q (semi-amortized) or the configured point."""
        if self.encoder is None:
            return None
        with torch.no_grad():
            return self.encoder(tokens)

    def fit_posterior(self, tokens: torch.Tensor, steps: int, observe_step=None, fast_noise=None):
        """q_i fitted with the decoder frozen; returns (loc, log_scale, fixed eps or None)."""
        if fast_noise is not None:
            fast_noise = torch.as_tensor(fast_noise, dtype=torch.float32, device=self.device)
        # No argument validation in the hot loop: a diverged decoder then yields a non-finite loss
        # that the trainer reports (naming the iteration) instead of a ValueError deep in Pyro.
        with frozen(self.decoder), pyro.validation_enabled(False):
            return fit_local_posterior(
                self.model, tokens, self.latent_shape, self.cfg.inference, steps, self.device, observe_step,
                fast_noise, start=self.start(tokens),
            )

    def step(self, batch: np.ndarray) -> dict:
        tokens = self.tensor(batch)
        loc, log_scale, _ = self.fit_posterior(tokens, self.cfg.inference.steps)
        loglik, kl = self.gaussian_elbo(tokens, loc, log_scale, self.cfg.inference.num_samples)
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
        nll = -loglik.mean(0).sum() / n_tokens
        loss = nll + kl.sum() / n_tokens
        metrics = {"loss": loss.item(), "nll": nll.item(), "kl": kl.mean().item()}
        objective = loss
        if self.encoder is not None:
            # The encoder's own ELBO at its output; the decoder is frozen for this term.
            guide = functools.partial(amortized_guide, encoder=self.encoder)
            with frozen(self.decoder), pyro.validation_enabled(False):
                enc_loglik, enc_kl = elbo_terms(self.model, guide, tokens, num_particles=self.cfg.inference.num_samples)
            encoder_loss = -(enc_loglik.mean(0) - enc_kl).sum() / n_tokens
            metrics["encoder_loss"] = encoder_loss.item()
            objective = loss + encoder_loss
        if not all(math.isfinite(v) for v in metrics.values()):
            return metrics  # the trainer stops before any update reaches the weights
        metrics.update(self.slow_update(objective))
        return metrics

    def proposal(self, tokens, steps: int, fast_noise=None):
        """q fitted by `steps` fast steps: (loc, log_scale, eps), eps the reused noise with
        inference.fixed_noise (the reported estimate reuses it too), else None. fast_noise
        [steps, S, B, n_z, d_z] fixes every fast step's eps."""
        return self.fit_posterior(tokens, steps, fast_noise=fast_noise)
