"""Per-sequence mean-field ELBO terms computed through NumPyro's effect handlers.

The mirror of pyro_elbo.py. Works on any model with a latent site and an observed site inside a
plate at dim -1 (the LTM, or the linear-Gaussian test model): the guide is traced (seeded, or with
its draw of the latent substituted), the model replayed against it, the observed site's log_prob
read off, and KL(q || p) taken analytically per latent site, as TraceMeanField_ELBO does, but kept
per sequence rather than summed (or per latent vector, for free bits). Particles are a plate at
dim -2. `log_joint` is the unscaled log p(x, z) per sequence that Langevin targets, read from a
trace of the model with z substituted, without the plate's subsample scale. Pure and jit-able.
"""
from __future__ import annotations

import jax
import numpyro
from numpyro import handlers
from numpyro.distributions import kl_divergence


def _with_particles(fn, num_particles: int):
    def wrapped(*args):
        with numpyro.plate("particles", num_particles, dim=-2):
            return fn(*args)

    return wrapped


def traced(model, guide, *args, num_particles: int = 1, latent_value=None, latent: str = "z", rng_key=None):
    """Guide and model traces with `num_particles` draws in a plate at dim -2.

    latent_value, if given, fixes the guide's draw of `latent` (injected noise); otherwise the guide
    draws it with rng_key. (`substitute`, not `condition`: NumPyro's replay refuses an observed
    guide site.)
    """
    if latent_value is not None:
        guide = handlers.substitute(guide, data={latent: latent_value})
    if rng_key is None:
        if latent_value is None:
            raise ValueError("traced: give rng_key or latent_value")
        rng_key = jax.random.PRNGKey(0)
    guide_key, model_key = jax.random.split(rng_key)
    guide_trace = handlers.trace(handlers.seed(_with_particles(guide, num_particles), guide_key)).get_trace(*args)
    replayed = handlers.replay(_with_particles(model, num_particles), trace=guide_trace)
    model_trace = handlers.trace(handlers.seed(replayed, model_key)).get_trace(*args)
    return guide_trace, model_trace


def elbo_terms(model, guide, *args, num_particles: int = 1, latent_value=None, latent="z", obs="x", rng_key=None):
    """(log-likelihood [P, B], KL [B]) of each sequence: ELBO_i = mean_p loglik[p, i] - kl[i]."""
    guide_trace, model_trace = traced(
        model, guide, *args, num_particles=num_particles, latent_value=latent_value, latent=latent, rng_key=rng_key
    )
    site = model_trace[obs]
    loglik = site["fn"].log_prob(site["value"])
    kl = kl_divergence(guide_trace[latent]["fn"], model_trace[latent]["fn"])
    loglik = loglik.reshape(-1, loglik.shape[-1])
    loglik = jax.numpy.broadcast_to(loglik, (num_particles, loglik.shape[-1])) if loglik.shape[0] == 1 else loglik
    return loglik, kl.reshape(-1, kl.shape[-1])[0]


def log_weights(model, guide, *args, num_particles: int, latent_value=None, latent="z", obs="x", rng_key=None):
    """log p(x, z_k) - log q(z_k) per particle and sequence [P, B], z_k from the guide."""
    guide_trace, model_trace = traced(
        model, guide, *args, num_particles=num_particles, latent_value=latent_value, latent=latent, rng_key=rng_key
    )
    g, m, o = guide_trace[latent], model_trace[latent], model_trace[obs]
    return o["fn"].log_prob(o["value"]) + m["fn"].log_prob(m["value"]) - g["fn"].log_prob(g["value"])


def _base_normal(fn):
    """The elementwise distribution under Independent / expand wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def kl_per_latent_vector(guide_trace, model_trace, latent: str = "z"):
    """Analytic KL(q || p) per sequence and latent vector [B, V] from the two traces: the
    elementwise KL summed over the last event dim (d_model for the LTM: V = n_z; a latent with one
    event dim counts as one vector, V = 1). For free bits. Both sites Independent over a Normal."""
    q, p = guide_trace[latent]["fn"], model_trace[latent]["fn"]
    kl = kl_divergence(_base_normal(q), _base_normal(p)).sum(-1)
    kl = kl.reshape(kl.shape[: kl.ndim - (len(q.event_shape) - 1)] + (-1,))  # [..., B, V]
    return kl.reshape(-1, *kl.shape[-2:])[0]  # drop a particle dim


def elbo_terms_by_vector(model, guide, *args, num_particles: int = 1, latent_value=None, latent="z", obs="x", rng_key=None):
    """(log-likelihood [P, B], KL [B, V]): elbo_terms with the KL kept per latent vector."""
    guide_trace, model_trace = traced(
        model, guide, *args, num_particles=num_particles, latent_value=latent_value, latent=latent, rng_key=rng_key
    )
    site = model_trace[obs]
    loglik = site["fn"].log_prob(site["value"])
    loglik = loglik.reshape(-1, loglik.shape[-1])
    loglik = jax.numpy.broadcast_to(loglik, (num_particles, loglik.shape[-1])) if loglik.shape[0] == 1 else loglik
    return loglik, kl_per_latent_vector(guide_trace, model_trace, latent)


def log_joint_terms(model, args, latent_value, latent: str = "z", obs: str = "x", kwargs=None):
    """(log p(z), log p(x | z)) per sequence at z = latent_value [*lead, B, *event]: shapes [*lead, B].

    The model runs with its latent site set to the value (`substitute`: NumPyro treats it as a
    sample site, as a guide's draw replayed), and each site's own `log_prob` is read off the
    trace. The plate's subsample scale N/B (site["scale"], which log_density and the ELBOs apply)
    is deliberately not applied: this is the unscaled joint of the sequences given. Extra leading
    dimensions of the value (chains, draws) broadcast through the model.
    """
    model = handlers.substitute(handlers.seed(model, jax.random.PRNGKey(0)), data={latent: latent_value})
    trace = handlers.trace(model).get_trace(*args, **(kwargs or {}))
    z, x = trace[latent], trace[obs]
    return z["fn"].log_prob(z["value"]), x["fn"].log_prob(x["value"])


def log_joint(model, args, latent_value, latent: str = "z", obs: str = "x", kwargs=None):
    """log p(x, z) per sequence (and leading chain/draw dims), unscaled: see log_joint_terms."""
    log_prior, loglik = log_joint_terms(model, args, latent_value, latent, obs, kwargs)
    return log_prior + loglik
