"""Per-sequence mean-field ELBO terms computed through Pyro's traces.

Works on any model with a latent site and an observed site inside a plate at dim -1 (the LTM, or
the linear-Gaussian test model): the guide is traced, the model replayed against it, the observed
site's log_prob read off, and KL(q || p) taken analytically per latent site, as
TraceMeanField_ELBO does, but kept per sequence rather than summed.
"""
from __future__ import annotations

import pyro
from pyro import poutine
from pyro.distributions.kl import kl_divergence


def traced(model, guide, *args, num_particles: int = 1, latent_value=None, latent: str = "z"):
    """Guide and model traces with `num_particles` draws in a plate at dim -2.

    latent_value, if given, fixes the guide's draw of `latent` (injected noise).
    """
    if latent_value is not None:
        guide = poutine.condition(guide, data={latent: latent_value})
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(*args)
        guide_trace.nodes[latent]["is_observed"] = False  # conditioned draw: replay refuses observed guide sites
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    return guide_trace, model_trace


def elbo_terms(model, guide, *args, num_particles: int = 1, latent_value=None, latent="z", obs="x"):
    """(log-likelihood [P, B], KL [B]) of each sequence: ELBO_i = mean_p loglik[p, i] - kl[i]."""
    guide_trace, model_trace = traced(
        model, guide, *args, num_particles=num_particles, latent_value=latent_value, latent=latent
    )
    site = model_trace.nodes[obs]
    loglik = site["fn"].log_prob(site["value"])
    kl = kl_divergence(guide_trace.nodes[latent]["fn"], model_trace.nodes[latent]["fn"])
    loglik = loglik.expand(num_particles, loglik.shape[-1]) if loglik.dim() == 1 else loglik
    return loglik, kl.reshape(-1, kl.shape[-1])[0]


def log_weights(model, guide, *args, num_particles: int, latent_value=None, latent="z", obs="x"):
    """log p(x, z_k) - log q(z_k) per particle and sequence [P, B], z_k from the guide."""
    guide_trace, model_trace = traced(
        model, guide, *args, num_particles=num_particles, latent_value=latent_value, latent=latent
    )
    g, m, o = guide_trace.nodes[latent], model_trace.nodes[latent], model_trace.nodes[obs]
    return o["fn"].log_prob(o["value"]) + m["fn"].log_prob(m["value"]) - g["fn"].log_prob(g["value"])



def elbo_terms_by_vector(model, guide, *args, num_particles: int = 1, latent_value=None, latent="z", obs="x"):
    """(log-likelihood [P, B], KL [B, V]): elbo_terms with the analytic KL kept per latent vector,
    the elementwise KL summed over the last event dim (V = n_z for the LTM; a latent with one event
    dim is one vector, V = 1), from the same single trace. For free bits. Both sites must be
    Independent over a Normal. latent_value, if given, fixes the guide's draw (injected noise)."""
    guide_trace, model_trace = traced(model, guide, *args, num_particles=num_particles, latent_value=latent_value,
                                      latent=latent)
    site = model_trace.nodes[obs]
    loglik = site["fn"].log_prob(site["value"])
    loglik = loglik.expand(num_particles, loglik.shape[-1]) if loglik.dim() == 1 else loglik
    q, p = guide_trace.nodes[latent]["fn"], model_trace.nodes[latent]["fn"]
    kl = kl_divergence(q.base_dist, p.base_dist).sum(-1)
    kl = kl.reshape(*kl.shape[: kl.dim() - (q.event_dim - 1)], -1)  # [..., B, V]
    return loglik, kl.reshape(-1, *kl.shape[-2:])[0]


def log_joint(model, *args, latent_value, latent="z", obs="x"):
    """log p(x, z) per chain and sequence [C, B] at z = latent_value [C, B, *event].

    The unscaled joint: each site's own log_prob, not multiplied by the plate's subsample scale
    N/B that Pyro applies in ELBOs, since Langevin targets the posterior of these sequences only.
    """
    with pyro.plate("chains", latent_value.shape[0], dim=-2):
        trace = poutine.trace(poutine.condition(model, data={latent: latent_value})).get_trace(*args)
    z, x = trace.nodes[latent], trace.nodes[obs]
    return z["fn"].log_prob(z["value"]) + x["fn"].log_prob(x["value"])
