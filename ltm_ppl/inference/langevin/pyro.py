"""`langevin` in Pyro: (Metropolis-adjusted) Langevin dynamics on log p(x, z), chains vectorised as
a batch dimension, and Monte Carlo EM for the decoder.

One step at z, with g = grad_z log p(x, z) of each sequence:
    z' = z + (s^2 / 2) g + s * eps
MALA accepts z' per chain and sequence with the Metropolis-Hastings ratio of this proposal. The
step size s of each chain and sequence adapts toward `target_accept` during warm-up only
(log s += 2 (alpha - target) / sqrt(t + 1)); adapting while sampling would break stationarity.
Pyro's own MCMC runner puts chains in separate processes and HMC with one leapfrog step accepts
or rejects a whole batch jointly, so the kernel is written here on the PPL's log joint. Kernel
`hmc` is pyro_hmc.py (the same per-pair vectorisation); `nuts` is refused on this backend (its
trajectories differ per pair, which a vectorised torch loop cannot batch; the NumPyro backend
runs blackjax's NUTS).

Chains may start at draws of a fitted q (init "local" or "amortized") and then run in its
standardised coordinates u = (z - loc) / scale, so q's scale preconditions every kernel.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ... import noise as noise_lib
from ... import stop_signals

from ...errors import LtmError
from ..gaussian import fit_to_draws
from ..local.fast_fit import FastFit
from ..local.pyro import fit_local_posterior
from ..pyro_backend import PyroBackend, frozen
from ..weights import TOO_FEW_DRAWS
from . import training_schedule
from .pyro_hmc import hmc_chains


def _value_and_grad(log_joint_fn, z):
    z = z.detach().requires_grad_(True)
    lp = log_joint_fn(z)
    (grad,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), grad.detach()


class KeyedSteps:
    """noise[t] of langevin_chains drawn on demand from noise.py, keyed by (seed, iteration,
    base + t, global row): [C, B, *shape] normals, or their log Phi (log-uniforms) for MALA."""

    def __init__(self, rows, base: int, count: int, shape: tuple, chains: int, device, log_uniform: bool = False):
        self.rows, self.base, self.count, self.shape, self.chains = rows, base, count, shape, chains
        self.device, self.log_uniform = device, log_uniform

    def __getitem__(self, t: int):
        e = noise_lib.torch_eps(self.rows, self.base + t, self.count, self.shape, self.chains, self.device)
        return torch.special.log_ndtr(e) if self.log_uniform else e


def keyed_chain_noise(rows, count: int, shape: tuple, chains: int, device):
    """(u0 [C, B, *shape], (proposal eps, accept log-uniforms)) of every sequence, keyed."""
    u0 = noise_lib.torch_eps(rows, noise_lib.CHAIN_START, count, shape, chains, device)
    return u0, (KeyedSteps(rows, noise_lib.LANGEVIN, count, shape, chains, device),
                KeyedSteps(rows, noise_lib.ACCEPT, count, (), chains, device, log_uniform=True))


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
        stop_signals.check()
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
            "last": z, "last_log_joint": lp, "step_size": log_s.exp(),
            "gradient_evaluations": torch.full((C, B), 1 + warmup + draws, dtype=torch.int64, device=z0.device)}


class PyroLangevin(PyroBackend):
    method = "langevin"
    posterior_kind = "chains"  # draws from Markov chains: R-hat and ESS apply

    def __init__(self, cfg, model=None):
        if cfg.inference.kernel == "nuts":
            raise LtmError("--kernel nuts runs on --backend numpyro only (blackjax); the pyro backend has mala and hmc")
        super().__init__(cfg, model)

    def start(self, tokens, fit_steps: int, rows=None):
        """(loc, scale) [B, *event] of the q whose draws start the chains and whose scale
        preconditions them: the prior, a local q fitted by fit_steps fast steps, or the encoder's."""
        init = self.cfg.inference.init
        if init == "local" and fit_steps > 0:
            loc, log_scale, _ = fit_local_posterior(self.model, tokens, self.latent_shape, self.cfg.inference, fit_steps,
                                                    self.device, FastFit(noise_lib.FastNoise(key=rows)))  # rows None: the stream
            return loc, log_scale.exp()
        if init == "amortized" and self.encoder is not None:
            with torch.no_grad():
                loc, log_scale = self.encoder(tokens)
            return loc.float(), log_scale.float().exp()
        shape = (tokens.shape[0], *self.latent_shape)
        return torch.zeros(shape, device=self.device), torch.ones(shape, device=self.device)

    def sample(self, tokens, fit_steps: int, warmup: int, draws: int, num_chains: int, fast_noise=None, rows=None) -> dict:
        """Chains from draws of the start q: z [C, D, B, n_z, d] the kept draws, log_joint and
        accept_prob [C, D, B], step_size [C, B], last [C, B, n_z, d], gradient_evaluations [C, B]
        (hmc adds energy, diverging, n_steps [C, D, B]). fast_noise = (u0 [C, B, n_z, d], eps
        [W + D, C, B, n_z, d], log_u [W + D, C, B]) fixes all the randomness of MALA, as in the
        NumPyro backend. rows (noise.Rows) keys the start, proposals and accept uniforms of each
        sequence instead (MALA / ULA proposals, HMC momenta)."""
        inf = self.cfg.inference
        noise = None
        with frozen(self.decoder):
            loc, scale = self.start(tokens, fit_steps, rows)
            if fast_noise is None and rows is not None:
                u0, noise = keyed_chain_noise(rows, tokens.shape[0], self.latent_shape, num_chains, self.device)
            elif fast_noise is None:
                u0 = torch.randn((num_chains, tokens.shape[0], *self.latent_shape), device=self.device)
            else:
                u0, *noise = (torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.device) for a in fast_noise)
            log_joint = lambda u: self.log_joint(tokens, loc + scale * u)  # noqa: E731
            if inf.kernel == "hmc":
                run = hmc_chains(log_joint, u0, warmup, draws, inf.step_size, inf.leapfrog_steps, inf.target_accept, noise)
            else:
                run = langevin_chains(log_joint, u0, warmup, draws, inf.step_size, inf.mala, inf.target_accept, noise)
        run["last"] = loc + scale * run["last"]
        if run["z"] is not None:
            run["z"] = loc + scale * run["z"]
        return run

    def chains(self, tokens, warmup: int, draws: int, num_chains: int, fast_noise=None) -> dict:
        """The hook: `warmup` is the interface's inner steps: the warm-up (unless inference.warmup
        sets it) and the fast steps of a local start."""
        return self.sample(tokens, warmup, self.cfg.inference.warmup or warmup, draws, num_chains, fast_noise,
                           rows=self.noise_rows)

    def step(self, batch: np.ndarray) -> dict:
        """Monte Carlo EM: the chains of training_schedule (by default K steps, the first K // 2
        adapting), then one slow step on log p(x | z_K) averaged over chains."""
        tokens = self.tensor(batch)
        inf = self.cfg.inference
        warmup, kept = training_schedule(inf)
        run = self.sample(tokens, inf.steps, warmup, kept, inf.chains, rows=self.training_rows(tokens.shape[0]))
        z = run["last"]
        site_loglik = self.log_joint(tokens, z) - self.log_prior(z)
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
        loss = -site_loglik.mean(0).sum() / n_tokens
        metrics = {"loss": loss.detach(), "nll": loss.detach(), "log_prior": self.log_prior(z).mean().detach(),
                   "accept": run["accept_prob"].mean().detach(), "step_size": run["step_size"].mean().detach()}
        metrics.update(self.slow_update(loss, metrics))  # skipped on the device unless finite
        return metrics

    @staticmethod
    def log_prior(z):
        return torch.distributions.Normal(0.0, 1.0).log_prob(z).sum((-1, -2))

    def proposal(self, tokens, steps: int, fast_noise=None):
        """The q of its bounds: a diagonal Gaussian per sequence fitted to its kept draws (`steps`
        inner steps, then `draws` draws of each chain), so the reported number is a true lower
        bound whatever the chains did."""
        inf = self.cfg.inference
        if inf.chains * inf.draws < 2:
            raise LtmError(TOO_FEW_DRAWS)
        draws = self.chains(tokens, steps, inf.draws, inf.chains, fast_noise)["z"].flatten(0, 1)  # [C * D, B, n_z, d]
        return fit_to_draws(draws, torch)
