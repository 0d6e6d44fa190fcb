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

from ...models.jax import encoder as jax_encoder
from ...models.jax.program import amortized_guide
from ..numpyro_backend import NumPyroBackend
from ..numpyro_elbo import elbo_terms_by_vector
from ..numpyro_programs import Programs
from ..schedules import kl_weight


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

    def proposal(self, params, tokens, key=None, fast_noise=None, fit=None, static=None):
        """The encoder's q (nothing is fitted per sequence)."""
        loc, log_scale = jax_encoder.encode(params, self.model_cfg, tokens, self.dtype)
        return loc, log_scale, None

    def _step(self, params, opt_state, tokens, key, lr, beta):
        n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)

        def loss_fn(p):
            return amortized_objective(
                self.model(p), self.encoder_fn(p), tokens, num_particles=self.inf.num_samples, rng_key=key,
                beta=beta, free_bits=self.inf.free_bits, n_tokens=n_tokens,
            )

        (objective, (nll, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params, opt_state, guard = self.update(params, opt_state, grads, lr, objective)
        return params, opt_state, {"loss": objective, "nll": nll, "kl": kl.mean()} | guard


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
        return self.finish_step(out | {"beta": beta}, lr)
