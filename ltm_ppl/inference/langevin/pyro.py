"""`langevin` in Pyro: (Metropolis-adjusted) Langevin dynamics on log p(x, z), chains vectorised as
a batch dimension, and Monte Carlo EM for the decoder.

One step at z, with g = grad_z log p(x, z) of each sequence:
    z' = z + (s^2 / 2) g + s * eps
MALA accepts z' per chain and sequence with the Metropolis-Hastings ratio of this proposal. The
step size s of each chain and sequence adapts toward `target_accept` during warm-up only
(log s += 2 (alpha - target) / sqrt(t + 1)); adapting while sampling would break stationarity.
Pyro's own MCMC runner puts chains in separate processes and HMC with one leapfrog step accepts
or rejects a whole batch jointly, so the kernel is written here on the PPL's log joint.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import LtmError
from ..pyro_backend import PyroBackend, frozen
from ..weights import TOO_FEW_DRAWS


def _value_and_grad(log_joint_fn, z):
    z = z.detach().requires_grad_(True)
    lp = log_joint_fn(z)
    (grad,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), grad.detach()


def langevin_chains(log_joint_fn, z0: torch.Tensor, warmup: int, draws: int, step_size: float,
                    mala: bool = True, target_accept: float = 0.57, noise=None) -> dict:
    """Run chains z0 [C, B, *event] for `warmup` adapting steps, then `draws` kept steps.

    log_joint_fn(z) -> log p per chain and sequence [C, B]. Returns the kept draws z [C, D, B,
    *event], their log joint and acceptance probability [C, D, B], the final state and the adapted
    step sizes [C, B]. noise = (eps [warmup + draws, C, B, *event], log_u [warmup + draws, C, B])
    fixes the randomness (backend parity tests).
    """
    C, B = z0.shape[:2]
    event = tuple(range(2, z0.dim()))
    expand = (C, B) + (1,) * len(event)
    log_s = torch.full((C, B), math.log(step_size), device=z0.device)
    z = z0
    lp, grad = _value_and_grad(log_joint_fn, z)
    kept_z, kept_lp, kept_alpha = [], [], []
    for t in range(warmup + draws):
        s2 = (2 * log_s).exp()
        mean_forward = z + 0.5 * s2.view(expand) * grad
        eps = torch.randn_like(z) if noise is None else noise[0][t]
        proposal = mean_forward + log_s.exp().view(expand) * eps
        lp_new, grad_new = _value_and_grad(log_joint_fn, proposal)
        if mala:
            mean_backward = proposal + 0.5 * s2.view(expand) * grad_new
            log_alpha = (lp_new - lp - ((z - mean_backward) ** 2).sum(event) / (2 * s2)
                         + ((proposal - mean_forward) ** 2).sum(event) / (2 * s2))
            alpha = torch.nan_to_num(log_alpha.clamp(max=0).exp(), nan=0.0)
            log_u = torch.rand_like(lp).log() if noise is None else noise[1][t]
            accept = log_u < log_alpha
        else:
            alpha = torch.ones_like(lp)
            accept = torch.ones_like(lp, dtype=torch.bool)
        z = torch.where(accept.view(expand), proposal, z)
        grad = torch.where(accept.view(expand), grad_new, grad)
        lp = torch.where(accept, lp_new, lp)
        if t < warmup and mala:
            log_s = log_s + 2.0 * (alpha - target_accept) / math.sqrt(t + 1)
        if t >= warmup:
            kept_z.append(z)
            kept_lp.append(lp)
            kept_alpha.append(alpha)
    stack = (lambda xs: torch.stack(xs, dim=1)) if draws else (lambda xs: None)
    return {"z": stack(kept_z), "log_joint": stack(kept_lp), "accept_prob": stack(kept_alpha),
            "last": z, "last_log_joint": lp, "step_size": log_s.exp()}


class PyroLangevin(PyroBackend):
    method = "langevin"
    posterior_kind = "chains"  # draws from Markov chains: R-hat and ESS apply

    def chains(self, tokens, warmup: int, draws: int, num_chains: int, fast_noise=None) -> dict:
        """Chains from prior draws: z [C, D, B, n_z, d] the kept draws, log_joint and accept_prob
        [C, D, B], step_size [C, B], last [C, B, n_z, d] (langevin_chains' own keys, which both
        backends' hooks return). fast_noise = (z0 [C, B, n_z, d], eps [W + D, C, B, n_z, d],
        log_u [W + D, C, B]) fixes all their randomness, as in the NumPyro backend."""
        inf = self.cfg.inference
        noise = None
        if fast_noise is None:
            z0 = torch.randn((num_chains, tokens.shape[0], *self.latent_shape), device=self.device)
        else:
            z0, *noise = (torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.device) for a in fast_noise)
        with frozen(self.decoder):
            return langevin_chains(lambda z: self.log_joint(tokens, z), z0, warmup, draws,
                                   inf.step_size, inf.mala, inf.target_accept, noise)

    def step(self, batch: np.ndarray) -> dict:
        """Monte Carlo EM: K Langevin steps (the first K // 2 adapt), then one slow step on
        log p(x | z_K) averaged over chains."""
        tokens = self.tensor(batch)
        inf = self.cfg.inference
        warmup = inf.steps // 2
        run = self.chains(tokens, warmup, inf.steps - warmup, inf.chains)
        z = run["last"]
        site_loglik = self.log_joint(tokens, z) - self.log_prior(z)
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
        loss = -site_loglik.mean(0).sum() / n_tokens
        metrics = {"loss": loss.item(), "nll": loss.item(), "log_prior": self.log_prior(z).mean().item(),
                   "accept": run["accept_prob"].mean().item(), "step_size": run["step_size"].mean().item()}
        if not all(math.isfinite(v) for v in metrics.values()):
            return metrics
        metrics.update(self.slow_update(loss))
        return metrics

    @staticmethod
    def log_prior(z):
        return torch.distributions.Normal(0.0, 1.0).log_prob(z).sum((-1, -2))

    def proposal(self, tokens, steps: int, fast_noise=None):
        """The q of its bounds: a diagonal Gaussian per sequence fitted to its kept draws (`steps`
        warm-up steps, then `draws` draws of each chain), so the reported number is a true lower
        bound whatever the chains did."""
        inf = self.cfg.inference
        if inf.chains * inf.draws < 2:
            raise LtmError(TOO_FEW_DRAWS)
        draws = self.chains(tokens, steps, inf.draws, inf.chains, fast_noise)["z"].flatten(0, 1)  # [C * D, B, n_z, d]
        return draws.mean(0), draws.std(0, unbiased=False).clamp(min=1e-4).log()
