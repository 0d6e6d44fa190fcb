"""The compiled programs of the NumPyro backend, one `Programs` per (model, inference,
optimiser, precision) setting, cached per process (`programs_for`): the model, guides, ELBO,
draws from a Gaussian q, the guarded AdamW update, and `bound`, `log_weights`, `posterior`,
`posterior_latents` derived from a method's hooks:

    Programs.proposal(params, data, key, fast_noise, fit, static) -> (loc, log_scale, eps or None)
    Programs.chains(params, data, key, fast_noise, warmup, draws, chains, keep_z) -> dict, chain
        methods only, with the keys of the Pyro hook: z [C, D, B, *event] (when keep_z), log_joint
        and accept_prob [C, D, B], step_size [C, B], last [C, B, *event]

A method's numpyro.py subclasses it beside its NumPyroBackend (numpyro_backend.py). Nothing here
imports torch.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp

from ..models.jax import encoder as jax_encoder
from ..models.jax.program import amortized_guide, local_guide, ltm_model
from .latent_model import LatentModel
from .numpyro_elbo import elbo_terms, log_joint
from .numpyro_optim import apply_update, guarded, slow_optimizer


class Programs:
    """The compiled programs of one (model, inference, optimiser, precision) setting, shared by
    every inference object with that setting (`programs_for`), so a second instance (evaluation
    after training, tests) reuses the traces; jit recompiles only for new shapes. Subclasses
    define `build()`, which jits their methods."""

    def __init__(self, model_cfg, inf_cfg, train_cfg, dtype, platform: str, injected: LatentModel | None = None):
        self.model_cfg, self.inf, self.train = model_cfg, inf_cfg, train_cfg
        self.dtype = dtype
        self.injected = injected
        self.shape = (model_cfg.n_z, model_cfg.d_model) if injected is None else tuple(injected.event_shape)
        self.sites = {"latent": "z", "obs": "x"} if injected is None else {"latent": injected.latent, "obs": injected.obs}
        self.optimizer = slow_optimizer(train_cfg)
        # On accelerators the step updates weights and optimiser state in place (donated buffers).
        self.donate = (0, 1) if platform != "cpu" else ()
        # The interface, derived from the hooks: jit compiles on first call, so unused ones cost nothing.
        self.bound = jax.jit(self._bound, static_argnames=("num_samples", "static", "at_fast_noise"))
        self.log_weights = jax.jit(self._log_weights, static_argnames=("num_samples", "static"))
        self.posterior = jax.jit(self._posterior, static_argnames=("num_draws", "static"))
        self.posterior_latents = jax.jit(self._posterior_latents, static_argnames=("static",))
        self.proposal_program = jax.jit(self.proposal, static_argnames=("static",))
        self.run_chains = jax.jit(self.chains, static_argnames=("warmup", "draws", "chains", "keep_z"))
        self.variational_step = jax.jit(self._variational_step, static_argnames=("static",), donate_argnums=self.donate)
        self.traces = collections.Counter()  # how often each program was traced (tests: no recompiles)
        self.build()

    def build(self) -> None:
        """A method's own compiled programs (its training step)."""

    def model(self, params):
        if self.injected is not None:
            return self.injected.fn
        return functools.partial(ltm_model, params, self.model_cfg, dtype=self.dtype)

    # ----- hooks ------------------------------------------------------------------------------
    def proposal(self, params, data, key, fast_noise, fit, static):
        """The method's Gaussian q: (loc, log_scale, eps or None) [B, *event]; eps fixes the
        reported estimate's noise when bound asks (at_fast_noise; local with inference.fixed_noise)."""
        raise NotImplementedError(f"{type(self).__name__} defines no proposal")

    def chains(self, params, data, key, fast_noise, warmup, draws, chains, keep_z):
        raise NotImplementedError(f"{type(self).__name__} runs no chains")

    # ----- derived from the hooks -------------------------------------------------------------
    def _bound(self, params, data, key, fast_noise, noise, fit, num_samples, static, at_fast_noise=False):
        self.traces["bound"] += 1  # Python runs only while jit traces
        fit_key, eval_key = jax.random.split(key)
        loc, log_scale, fixed = self.proposal(params, data, fit_key, fast_noise, fit, static)
        eps = noise if noise is not None else (fixed if at_fast_noise else None)
        loglik, kl = self.elbo(params, data, loc, log_scale, num_samples, eps, eval_key)
        return loglik.mean(0), kl

    def _log_weights(self, params, data, key, fit, num_samples, static):
        self.traces["log_weights"] += 1
        fit_key, draw_key = jax.random.split(key)
        loc, log_scale, _ = self.proposal(params, data, fit_key, None, fit, static)
        return self.gaussian_log_weights(params, data, loc, log_scale, num_samples, draw_key)

    def _posterior(self, params, data, key, fit, num_draws, static):
        fit_key, draw_key = jax.random.split(key)
        loc, log_scale, _ = self.proposal(params, data, fit_key, None, fit, static)
        return self.gaussian_posterior(params, data, loc, log_scale, num_draws, draw_key)

    def _posterior_latents(self, params, data, key, fit, static):
        fit_key, draw_key = jax.random.split(key)
        loc, log_scale, _ = self.proposal(params, data, fit_key, None, fit, static)
        return loc + jnp.exp(log_scale) * jax.random.normal(draw_key, loc.shape, jnp.float32)

    def _variational_step(self, params, opt_state, data, key, lr, fit, static):
        """A training iteration for a method whose q needs no gradient of its own: q from the
        proposal (parameters constant), then one slow step on the ELBO at q with fresh noise."""
        fit_key, slow_key = jax.random.split(key)
        loc, log_scale, _ = self.proposal(jax.lax.stop_gradient(params), data, fit_key, None, fit, static)
        loc, log_scale = jax.lax.stop_gradient(loc), jax.lax.stop_gradient(log_scale)
        n_tokens = data.shape[0] * (data.shape[1] - 1)

        def loss_fn(p):
            loglik, kl = self.elbo(p, data, loc, log_scale, self.inf.num_samples, None, slow_key)
            nll = -loglik.mean(0).sum() / n_tokens
            loss = nll + kl.sum() / n_tokens
            return loss, {"loss": loss, "nll": nll, "kl": kl.mean()}

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params, opt_state, guard = self.update(params, opt_state, grads, lr, loss)
        return params, opt_state, out | guard

    def encoder_fn(self, params):
        """tokens [B, L] -> (loc, log_scale) [B, n_z, d_model]: the encoder as the guide's parameter."""
        return lambda tokens: jax_encoder.encode(params, self.model_cfg, tokens, self.dtype)

    def elbo(self, params, tokens, loc, log_scale, num_samples, noise, key):
        """(loglik [S, B], kl [B]) of q = N(loc, exp(log_scale)^2); noise [S, B, ...] fixes z = loc + exp(log_scale) * noise."""
        guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
        value = None if noise is None else loc + jnp.exp(log_scale) * noise
        particles = num_samples if noise is None else noise.shape[0]
        return elbo_terms(self.model(params), guide, tokens, num_particles=particles, latent_value=value, rng_key=key,
                          **self.sites)

    def encoder_elbo(self, params, tokens, num_samples, key):
        """(loglik [S, B], kl [B]) of the encoder's q through the amortized guide, fresh noise."""
        guide = functools.partial(amortized_guide, encoder_fn=self.encoder_fn(params))
        return elbo_terms(self.model(params), guide, tokens, num_particles=num_samples, rng_key=key)

    def log_joint(self, params, tokens, z):
        """log p(x, z) [*lead, B], unscaled, for z [*lead, B, n_z, d]."""
        return log_joint(self.model(params), (tokens,), z, **self.sites)

    def gaussian_posterior(self, params, tokens, loc, log_scale, num_draws: int, key) -> dict:
        """num_draws draws from q as one chain: z [1, D, B, ...], log p(x, z) and log q(z) [1, D, B],
        and q's own loc and log_scale [B, ...] (diagnostics measure q from them).
        The log joints are computed one draw at a time (lax.map), so memory does not grow with D."""
        eps = jax.random.normal(key, (num_draws, *loc.shape), jnp.float32)
        z = loc + jnp.exp(log_scale) * eps
        event = tuple(range(2, z.ndim))
        log_q = (-0.5 * eps**2 - log_scale - 0.5 * jnp.log(2 * jnp.pi)).sum(event)
        log_p = jax.lax.map(lambda zz: self.log_joint(params, tokens, zz), z)
        return {"z": z[None], "log_joint": log_p[None], "log_q": log_q[None], "loc": loc, "log_scale": log_scale}

    def gaussian_log_weights(self, params, tokens, loc, log_scale, num_samples: int, key):
        """Importance log weights log p(x, z_k) - log q(z_k) [K, B] of K draws z_k ~ q (IWAE, PSIS)."""
        draws = self.gaussian_posterior(params, tokens, loc, log_scale, num_samples, key)
        return draws["log_joint"][0] - draws["log_q"][0]

    def update(self, params, opt_state, grads, lr, loss):
        """One clipped AdamW step, kept only if the loss and every gradient are finite (decided on
        the device: no host sync); returns (params, state, {"grad_norm", "finite"}). The norm of the
        unclipped gradients is finite exactly when every gradient entry is."""
        new_params, new_state, grad_norm = apply_update(self.train, self.optimizer, params, opt_state, grads, lr)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return guarded(ok, new_params, params), guarded(ok, new_state, opt_state), {"grad_norm": grad_norm, "finite": ok}


def _frozen_copy(section) -> str:
    return json.dumps(dataclasses.asdict(section), sort_keys=True)


_PROGRAMS: dict[tuple, Programs] = {}


def programs_for(cls, cfg, dtype, platform: str, injected: LatentModel | None = None):
    """The cached `cls` programs of cfg's setting (and injected model)."""
    t = cfg.train
    key = (cls.__module__, cls.__qualname__, _frozen_copy(cfg.model), _frozen_copy(cfg.inference), t.beta1, t.beta2,
           t.weight_decay, t.grad_clip, t.slow_gradient, jnp.dtype(dtype).name, platform, injected)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = cls(copy.deepcopy(cfg.model), copy.deepcopy(cfg.inference), copy.deepcopy(t), dtype, platform,
                             injected)
    return _PROGRAMS[key]
