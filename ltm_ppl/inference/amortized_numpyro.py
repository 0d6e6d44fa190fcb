"""`amortized` in NumPyro: SVI with the encoder q_phi(z | x) as the guide, trained jointly with the
decoder on the mean-field ELBO; the mirror of amortized_pyro.py. KL warm-up and free bits shape the
training objective only; every reported bound is the plain ELBO at the encoder's q.

The objective is generic (`amortized_objective`): any model with a latent and an observed site and
any encoder function of the observed data (tests train a linear encoder on a linear-Gaussian
model through it). Nothing here imports torch.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..models import jax_encoder
from ..models.numpyro_model import amortized_guide
from .numpyro_backend import NumPyroBackend, Programs
from .numpyro_elbo import elbo_terms_by_vector
from .schedules import kl_weight


def amortized_objective(model, encoder_fn, data, *, num_particles: int, rng_key, beta=1.0, free_bits=0.0, n_tokens=1):
    """(objective, (nll per token, KL per sequence [B])) of amortized SVI on a batch.

    objective = -(sum_i mean_s log p(x_i | z_s) - beta * sum_ij max(free_bits, KL_ij)) / n_tokens,
    z_s ~ q_phi(z | x_i) reparameterised (gradients reach the encoder and the model), KL_ij the
    analytic KL of latent vector j of sequence i. The returned KL is the unmodified one.
    """
    guide = functools.partial(amortized_guide, encoder_fn=encoder_fn)
    loglik, kl_vectors = elbo_terms_by_vector(model, guide, data, num_particles=num_particles, rng_key=rng_key)
    nll = -loglik.mean(0).sum() / n_tokens
    objective = nll + beta * jnp.maximum(kl_vectors, free_bits).sum() / n_tokens
    return objective, (nll, kl_vectors.sum(-1))


class AmortizedPrograms(Programs):
    def build(self):
        self.step = jax.jit(self._step, donate_argnums=self.donate)
        self.bound = jax.jit(self._bound, static_argnames=("num_samples",))
        self.posterior = jax.jit(self._posterior, static_argnames=("num_draws",))
        self.posterior_latents = jax.jit(self._posterior_latents)
        self.log_weights = jax.jit(self._log_weights, static_argnames=("num_samples",))

    def encode(self, params, tokens):
        return jax_encoder.encode(params, self.model_cfg, tokens, self.dtype)

    def _step(self, params, opt_state, tokens, key, lr, beta):
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)

        def loss_fn(p):
            return amortized_objective(
                self.model(p), self.encoder_fn(p), tokens, num_particles=self.inf.num_samples, rng_key=key,
                beta=beta, free_bits=self.inf.free_bits, n_tokens=n_tokens,
            )

        (objective, (nll, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params, opt_state, grad_norm = self.update(params, opt_state, grads, lr, objective)
        return params, opt_state, {"loss": objective, "nll": nll, "kl": kl.mean(), "grad_norm": grad_norm}

    def _bound(self, params, tokens, key, noise, num_samples):
        loc, log_scale = self.encode(params, tokens)
        loglik, kl = self.elbo(params, tokens, loc, log_scale, num_samples, noise, key)
        return loglik.mean(0), kl

    def _posterior(self, params, tokens, key, num_draws):
        loc, log_scale = self.encode(params, tokens)
        return self.gaussian_posterior(params, tokens, loc, log_scale, num_draws, key)

    def _log_weights(self, params, tokens, key, num_samples):
        return self.gaussian_log_weights(params, tokens, *self.encode(params, tokens), num_samples, key)

    def _posterior_latents(self, params, tokens, key):
        loc, log_scale = self.encode(params, tokens)
        return loc + jnp.exp(log_scale) * jax.random.normal(key, loc.shape, jnp.float32)


class NumPyroAmortized(NumPyroBackend):
    method = "amortized"
    posterior_kind = "variational"  # independent draws from q: PSIS k-hat applies
    programs_class = AmortizedPrograms

    def step(self, batch: np.ndarray) -> dict:
        lr = self.slow_lr()
        beta = kl_weight(self.iteration, self.cfg.inference.kl_warmup_iters)
        self.params, self.opt_state, out = self.programs.step(
            self.params, self.opt_state, self.tensor(batch), self.next_key(), np.float32(lr), np.float32(beta)
        )
        metrics = {name: float(out[name]) for name in ("loss", "nll", "kl")}
        metrics["beta"] = beta
        return self.finish_step(metrics, lr, out)

    def bound(self, batch: np.ndarray, steps: int = 0, num_samples: int = 1, noise=None, fast_noise=None) -> dict:
        """The ELBO at the encoder's q (`steps` does not apply: nothing is fitted per sequence);
        noise [S, B, n_z, d] fixes z = loc + exp(log_scale) * noise."""
        tokens = self.tensor(batch)
        loglik, kl = self.programs.bound(self.params, tokens, self.next_key(), self.array(noise), num_samples=num_samples)
        return {"loglik": np.asarray(loglik), "kl": np.asarray(kl), "num_tokens": int(tokens.shape[1] - 1)}

    def posterior(self, batch: np.ndarray, steps: int, num_draws: int, num_chains: int = 1) -> dict:
        """num_draws draws from the encoder's q as one chain: z [1, D, B, n_z, d], log_joint and log_q [1, D, B]."""
        out = self.programs.posterior(self.params, self.tensor(batch), self.next_key(), num_draws=num_draws)
        return {name: np.array(value) for name, value in out.items()}

    def log_weights(self, batch: np.ndarray, steps: int, num_samples: int) -> np.ndarray:
        """log p(x, z_k) - log q(z_k) [K, B] for K = num_samples draws of the encoder's q."""
        return np.asarray(self.programs.log_weights(self.params, self.tensor(batch), self.next_key(), num_samples=num_samples))

    def posterior_latents(self, batch: np.ndarray, steps: int):
        return self.programs.posterior_latents(self.params, self.tensor(batch), self.next_key())
