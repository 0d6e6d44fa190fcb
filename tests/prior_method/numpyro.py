"""`prior` in NumPyro: the proposal is the prior; a training step is the ELBO at it."""
import jax.numpy as jnp

from ltm_ppl.inference.numpyro_backend import NumPyroBackend
from ltm_ppl.inference.numpyro_programs import Programs


class PriorPrograms(Programs):
    def proposal(self, params, tokens, key, fast_noise, fit, static):
        zeros = jnp.zeros((tokens.shape[0], *self.shape), jnp.float32)
        return zeros, zeros, None  # loc 0, log sigma 0, no fixed noise


class NumPyroPrior(NumPyroBackend):
    method = "prior"
    programs_class = PriorPrograms

    def step(self, batch):
        return self.variational_step(batch)
