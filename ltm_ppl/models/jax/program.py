"""The LTM as a NumPyro program, with the per-sequence Gaussian guide of the local method beside it.

    z_i ~ Normal(0, I)  [n_z, d_z]        site "z", inside plate "seq"
    x_i ~ TokenSequence(f(x_i, z_i))      site "x", observed

The mirror of models/torch/program.py. `tokens` are windows [B, block_size + 1]: the first
token is conditioned on, the rest predicted. Extra leading dimensions of z (vectorised particles,
chains) are folded into the decoder batch. Nothing here imports torch.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from .decoder import decoder_hidden
from .likelihood import TokenSequence


def decode(params, cfg, tokens, z, dtype=jnp.float32):
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
        hidden = decode(params, cfg, tokens, z, dtype)
        numpyro.sample("x", TokenSequence(hidden, params["tok_emb.weight"], dtype), obs=tokens[..., 1:])


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
