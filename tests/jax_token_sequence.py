"""A test oracle: the token-sequence distribution over full logits, in NumPyro. The library's
program uses models/jax/likelihood.TokenSequence (chunked, no [tokens x vocab] logits); tests
check it and the torch TokenSequence against this plain one."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints


class TokenSequence(dist.Distribution):
    """x_1..x_T given logits [..., T, vocab]; event shape [T], batch shape logits.shape[:-2].

    log_prob is one fused cross-entropy (logsumexp minus the picked logit) in float32, even when
    the logits are bfloat16: no normalised [tokens x vocab] copy is kept.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, logits, validate_args=None):
        self.logits = logits
        super().__init__(jnp.shape(logits)[:-2], jnp.shape(logits)[-2:-1], validate_args=False)

    def token_log_probs(self, value):
        """log p(x_t | x_<t, z) for every position: shape batch_shape + [T], float32."""
        shape = self.batch_shape + self.event_shape
        value = jnp.broadcast_to(jnp.asarray(value, jnp.int32), shape)
        logits = jnp.broadcast_to(self.logits, shape + self.logits.shape[-1:])
        picked = jnp.take_along_axis(logits, value[..., None], axis=-1)[..., 0].astype(jnp.float32)
        return picked - jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)

    def log_prob(self, value):
        return self.token_log_probs(value).sum(-1)

    def sample(self, key, sample_shape=()):
        raise NotImplementedError("TokenSequence is autoregressive: generate with ltm_ppl.generate")
