"""HMC per (chain, sequence) pair in torch, the Pyro backend's mirror of blackjax's HMC.

Pyro's HMC kernel accepts or rejects the whole batch at once with one step size, so as with MALA
the kernel is written here on the PPL's log joint, vectorised: the state is [C, B, *event] and
every pair has its own step size, diagonal inverse mass matrix, momentum and accept/reject.

Warm-up (first `warmup` steps only; then everything is frozen; a warm-up shorter than
MIN_ADAPT_WARMUP only burns in at the given step size, as in blackjax_kernels.py):
- step size: dual averaging (Hoffman & Gelman 2014, as Stan and blackjax: gamma 0.05, t0 10,
  kappa 0.75, mu = log(10 s)) toward `target_accept`, restarted when the mass matrix changes;
- diagonal inverse mass matrix: the variance of the draws in the middle window (15% to 90% of
  warm-up, Stan's fast/slow/fast split with one slow window instead of doubling ones),
  regularised as Stan does (n / (n + 5) var + 1e-3 * 5 / (n + 5)), set at 90% of warm-up.
"""
from __future__ import annotations

import math

import torch

from ... import stop_signals
from . import MIN_ADAPT_WARMUP

DIVERGENCE = 1000.0  # an energy error above this is a divergent transition (Stan, blackjax)


def _value_and_grad(log_joint_fn, z):
    z = z.detach().requires_grad_(True)
    lp = log_joint_fn(z)
    (grad,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), grad.detach()


class DualAveraging:
    """Per-pair dual averaging of log step size [C, B]."""

    def __init__(self, log_step, target: float):
        self.target = target
        self.reset(log_step)

    def reset(self, log_step):
        self.mu = math.log(10.0) + log_step
        self.log_step = log_step.clone()
        self.h_bar = torch.zeros_like(log_step)
        self.log_avg = torch.zeros_like(log_step)
        self.t = 0

    def update(self, alpha):
        self.t += 1
        t, t0 = self.t, 10.0
        self.h_bar = (1 - 1 / (t + t0)) * self.h_bar + (self.target - alpha) / (t + t0)
        self.log_step = self.mu - math.sqrt(t) / 0.05 * self.h_bar
        eta = t ** -0.75
        self.log_avg = eta * self.log_step + (1 - eta) * self.log_avg


def hmc_chains(log_joint_fn, z0: torch.Tensor, warmup: int, draws: int, step_size: float, leapfrog_steps: int,
               target_accept: float = 0.8, noise=None) -> dict:
    """Run HMC pairs z0 [C, B, *event]: `warmup` adapting steps, then `draws` kept steps.

    log_joint_fn(z) -> [C, B]. Returns z [C, D, B, *event], log_joint, accept_prob, energy,
    diverging, n_steps [C, D, B], step_size [C, B], last [C, B, *event], last_log_joint,
    warmup_accept_prob [C, W, B], gradient_evaluations [C, B].
    noise = (momentum normals, accept log-uniforms), each indexable by sampler step t ([C, B,
    *event] and [C, B]), keys every sequence's randomness (langevin/pyro.py keyed_chain_noise);
    None: the torch stream.
    """
    C, B = z0.shape[:2]
    event = tuple(range(2, z0.dim()))
    expand = lambda a: a.view((C, B) + (1,) * len(event))  # noqa: E731
    inv_mass = torch.ones_like(z0)
    adapt = DualAveraging(torch.full((C, B), math.log(step_size), device=z0.device), target_accept)
    log_step = adapt.log_step
    window = (int(0.15 * warmup), int(0.9 * warmup))
    adapting = warmup >= MIN_ADAPT_WARMUP
    mean = torch.zeros_like(z0)
    m2 = torch.zeros_like(z0)
    n_window = 0
    z = z0
    lp, grad = _value_and_grad(log_joint_fn, z)
    kept = {k: [] for k in ("z", "log_joint", "accept_prob", "energy", "diverging", "n_steps")}
    warm_alpha = []
    for t in range(warmup + draws):
        stop_signals.check()
        s = expand(log_step.exp())
        normal = torch.randn_like(z) if noise is None else noise[0][t]
        p = normal / inv_mass.sqrt()  # momentum ~ N(0, M), M = 1 / inv_mass
        h0 = -lp + 0.5 * (p * p * inv_mass).sum(event)
        z_new, lp_new, g_new = z, lp, grad
        p_new = p + 0.5 * s * g_new
        for i in range(leapfrog_steps):
            z_new = z_new + s * inv_mass * p_new
            lp_new, g_new = _value_and_grad(log_joint_fn, z_new)
            p_new = p_new + (s if i < leapfrog_steps - 1 else 0.5 * s) * g_new
        h1 = -lp_new + 0.5 * (p_new * p_new * inv_mass).sum(event)
        delta = h0 - h1
        delta = torch.where(torch.isnan(delta), torch.full_like(delta, -math.inf), delta)
        alpha = delta.clamp(max=0).exp()
        log_u = torch.rand_like(lp).log() if noise is None else noise[1][t]
        accept = log_u < delta
        z = torch.where(expand(accept), z_new, z)
        grad = torch.where(expand(accept), g_new, grad)
        lp = torch.where(accept, lp_new, lp)
        energy = torch.where(accept, h1, h0)
        if t < warmup and not adapting:
            warm_alpha.append(alpha)  # a burn-in too short to adapt (MIN_ADAPT_WARMUP)
        elif t < warmup:
            warm_alpha.append(alpha)
            adapt.update(alpha)
            log_step = adapt.log_step
            if window[0] <= t < window[1]:  # Welford's running variance of this window's draws
                n_window += 1
                d = z - mean
                mean = mean + d / n_window
                m2 = m2 + d * (z - mean)
            if t == window[1] - 1 and n_window >= 2:
                n = n_window
                inv_mass = (n / (n + 5.0)) * (m2 / (n - 1)) + 1e-3 * (5.0 / (n + 5.0))
                adapt.reset(adapt.log_step)
            if t == warmup - 1:
                log_step = adapt.log_avg  # the averaged iterate: frozen from here on
        else:
            kept["z"].append(z)
            kept["log_joint"].append(lp)
            kept["accept_prob"].append(alpha)
            kept["energy"].append(energy)
            kept["diverging"].append(-delta > DIVERGENCE)
            kept["n_steps"].append(torch.full_like(lp, leapfrog_steps))
    out = {k: torch.stack(v, dim=1) if v else None for k, v in kept.items()}
    out["warmup_accept_prob"] = torch.stack(warm_alpha, dim=1) if warm_alpha else torch.zeros((C, 0, B))
    evaluations = 1 + (warmup + draws) * leapfrog_steps
    return out | {"last": z, "last_log_joint": lp, "step_size": log_step.exp(),
                  "gradient_evaluations": torch.full((C, B), evaluations, dtype=torch.int64)}
