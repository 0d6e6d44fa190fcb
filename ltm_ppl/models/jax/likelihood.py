"""The likelihood of a token sequence given the JAX decoder's final hidden states: log-probabilities
of target tokens under the tied output head, a chunk of tokens at a time, and `TokenSequence`,
the NumPyro distribution whose log_prob it is (models/torch/likelihood.py is the mirror).

log p(x_n) = h_n . W[x_n] - logsumexp_v(h_n . W[v]) for hidden states h [N, D] and the head W
[vocab, D], computed over chunks of tokens with `lax.map` under `jax.checkpoint`: the forward
keeps only each chunk's log-probs, the backward recomputes a chunk's logits, so no float32
[all tokens x vocab] array ever exists (at LTM-M batch 32 on a GPU that would be 32k x 50k x 4 B =
6.6 GB). The head's matmul runs in `dtype` (bf16 on the GPU), the log-softmax in float32: the same
numbers as the unchunked head followed by a float32 log-softmax. Nothing here imports torch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

# Logit elements per chunk (float32: 128 MiB). Smaller problems run as one chunk.
CHUNK_ELEMENTS = 2**25


def chunk_tokens(vocab: int) -> int:
    """Tokens per chunk: CHUNK_ELEMENTS logits (read at trace time), a multiple of 8."""
    return max(8, CHUNK_ELEMENTS // vocab // 8 * 8)


def _log_probs(hidden, weight, targets, dtype):
    logits = jnp.einsum("ni,vi->nv", hidden.astype(dtype), weight.astype(dtype))
    picked = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0].astype(jnp.float32)
    return picked - jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)


def token_log_probs(hidden, weight, targets, dtype=jnp.float32, chunk: int | None = None):
    """log p(targets) float32 of shape targets.shape, for hidden [*targets.shape, D] and the head
    weight [vocab, D]; `chunk` tokens per chunk (default: CHUNK_ELEMENTS logits per chunk)."""
    shape = targets.shape
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = targets.reshape(-1).astype(jnp.int32)
    n = flat_t.shape[0]
    chunk = chunk or chunk_tokens(weight.shape[0])
    if n <= chunk:
        return _log_probs(flat_h, weight, flat_t, dtype).reshape(shape)
    pad = -n % chunk
    flat_h = jnp.pad(flat_h, ((0, pad), (0, 0)))
    flat_t = jnp.pad(flat_t, (0, pad))
    per_chunk = jax.checkpoint(lambda xs: _log_probs(xs[0], weight, xs[1], dtype))
    out = jax.lax.map(per_chunk, (flat_h.reshape(-1, chunk, flat_h.shape[-1]), flat_t.reshape(-1, chunk)))
    return out.reshape(-1)[:n].reshape(shape)


class TokenSequence(dist.Distribution):
    """x_1..x_T given the decoder's final hidden states [..., T, D] and the tied head [vocab, D]:
    the categorical sequence with logits hidden @ head.T, with log_prob computed a chunk of tokens
    at a time (token_log_probs) so the logits of the whole batch never exist.
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
