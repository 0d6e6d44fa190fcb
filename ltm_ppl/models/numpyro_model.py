"""The LTM as a NumPyro program, with the per-sequence Gaussian guide of the local method beside it.

    z_i ~ Normal(0, I)  [n_z, d_z]        site "z", inside plate "seq"
    x_i ~ HeadTokenSequence(f(x_i, z_i))  site "x", observed

The mirror of ltm_ppl/models/pyro_model.py. `tokens` are windows [B, block_size + 1]: the first
token is conditioned on, the rest predicted. Extra leading dimensions of z (vectorised particles,
chains) are folded into the decoder batch. Nothing here imports torch.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .jax_chunked_ce import token_log_probs
from .jax_decoder import decoder_hidden


class HeadTokenSequence(dist.Distribution):
    """x_1..x_T given the decoder's final hidden states [..., T, D] and the tied head [vocab, D]:
    the categorical sequence with logits hidden @ head.T, with log_prob computed a chunk of tokens
    at a time (models/jax_chunked_ce.py) so the logits of the whole batch never exist.
    Event shape [T], batch shape hidden.shape[:-2]."""

    arg_constraints = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, hidden, head, dtype=jnp.float32, validate_args=None):
        self.hidden, self.head, self.dtype = hidden, head, dtype
        super().__init__(jnp.shape(hidden)[:-2], jnp.shape(hidden)[-2:-1], validate_args=False)

    def token_log_probs(self, value):
        """log p(x_t | x_<t, z) for every position: shape batch_shape + [T], float32."""
        shape = self.batch_shape + self.event_shape
        value = jnp.broadcast_to(jnp.asarray(value, jnp.int32), shape)
        hidden = jnp.broadcast_to(self.hidden, shape + self.hidden.shape[-1:])
        return token_log_probs(hidden, self.head, value, self.dtype)

    def log_prob(self, value):
        return self.token_log_probs(value).sum(-1)

    def sample(self, key, sample_shape=()):
        raise NotImplementedError("TokenSequence is autoregressive: generate with ltm_ppl.generate")


def decode_hidden(params, cfg, tokens, z, dtype=jnp.float32):
    """Final hidden states [*lead, B, T, D] for windows tokens [B, T+1] given z [*lead, B, n_z, d_z]."""
    inputs = tokens[..., :-1]
    if z is None:
        return decoder_hidden(params, cfg, inputs, None, dtype=dtype)
    lead = z.shape[:-2]
    flat_inputs = jnp.broadcast_to(inputs, lead + inputs.shape[-1:]).reshape(-1, inputs.shape[-1])
    hidden = decoder_hidden(params, cfg, flat_inputs, z.reshape(-1, *z.shape[-2:]), dtype=dtype)
    return hidden.reshape(*lead, *hidden.shape[-2:])


def ltm_model(params, cfg, tokens, dtype=jnp.float32):
    """The joint p(x, z) of windows tokens [B, T+1] for decoder parameters `params` (cfg: ModelConfig)."""
    with numpyro.plate("seq", tokens.shape[0]):
        z = None
        if cfg.latent:
            z = numpyro.sample("z", dist.Normal(jnp.zeros((), jnp.float32), 1.0).expand([cfg.n_z, cfg.d_model]).to_event(2))
        hidden = decode_hidden(params, cfg, tokens, z, dtype)
        numpyro.sample("x", HeadTokenSequence(hidden, params["tok_emb.weight"], dtype), obs=tokens[..., 1:])


def local_guide(tokens, loc, log_scale):
    """q(z_i) = N(loc_i, diag exp(log_scale_i)^2): the fast local variational parameters."""
    with numpyro.plate("seq", tokens.shape[0]):
        numpyro.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(jnp.ndim(loc) - 1))


def amortized_guide(tokens, encoder_fn):
    """q_phi(z_i | x_i) = N(mu_phi(x_i), diag sigma_phi(x_i)^2); encoder_fn(tokens) -> (loc, log_scale).

    The encoder is a parameter (any function of the observed data), so the same guide serves the
    LTM (the Transformer encoder over the whole window) and small test models."""
    loc, log_scale = encoder_fn(tokens)
    with numpyro.plate("seq", tokens.shape[0]):
        numpyro.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(jnp.ndim(loc) - 1))
