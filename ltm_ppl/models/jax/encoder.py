"""The amortized encoder q_phi(z | x) in JAX: pure functions over the flat parameter dict.

The mirror of models/torch/encoder.py: a small bidirectional (non-causal) Transformer over
the window's tokens, then n_z learned queries cross-attend to its output (the "pool") and a linear
head emits (mu, log sigma) of every latent vector. Parameter names are `encoder.` + the torch
Encoder's state_dict names, in torch layouts (a Linear weight is [out, in]), so one safetensors
file serves both backends. Rotary positions as in torch: token i at position i; latent query j at
the position the decoder gives latent vector j of its layer (decoder.latent_positions).
The head starts at zero: a fresh encoder proposes the prior N(0, I).

Nothing here imports torch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ...config import ModelConfig
from .decoder import (apply_rope, attention_block, cross_attention_shapes, latent_positions, layer_shapes, linear, mlp_block,
                      rms_norm, rope_tables)

PREFIX = "encoder."


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical names and shapes, in the order of the torch Encoder's state_dict (its own
    parameter `queries` first, then the submodules in registration order)."""
    d, h = cfg.d_model, cfg.hidden
    shapes = {"queries": (cfg.n_z, d), "tok_emb.weight": (cfg.vocab_size, d)}
    for i in range(cfg.encoder_layers):
        shapes |= layer_shapes(f"layers.{i}.", d, h, cross=False)
    shapes |= cross_attention_shapes("pool", d)
    shapes["out_norm.weight"] = (d,)
    shapes["head.weight"] = (2 * d, d)
    return {PREFIX + name: shape for name, shape in shapes.items()}


def init_encoder_params(cfg: ModelConfig, key) -> dict[str, jax.Array]:
    """torch's scheme: matrices (and the queries) N(0, 0.02^2), norm weights 1, the head 0."""
    shapes = param_shapes(cfg)
    keys = jax.random.split(key, len(shapes))
    params = {}
    for k, (name, shape) in zip(keys, shapes.items()):
        if name == PREFIX + "head.weight":
            params[name] = jnp.zeros(shape, jnp.float32)
        elif len(shape) == 1:
            params[name] = jnp.ones(shape, jnp.float32)
        else:
            params[name] = 0.02 * jax.random.normal(k, shape, jnp.float32)
    return params


def query_positions(cfg: ModelConfig):
    return jnp.tile(latent_positions(cfg), cfg.n_layer)


def encode(params, cfg: ModelConfig, tokens, dtype=jnp.float32):
    """(loc, log_scale), each float32 [B, n_z, d_model], from token windows tokens [B, L]."""
    p = lambda name: params[PREFIX + name]  # noqa: E731
    B, L = tokens.shape
    D, H = cfg.d_model, cfg.n_head
    hd = D // H
    cos, sin = rope_tables(jnp.arange(L), hd, cfg.rope_base)
    x = p("tok_emb.weight")[tokens]
    bidirectional = lambda q, k, v: (jax.nn.dot_product_attention(q, k, v), None)  # noqa: E731 (no mask)
    for i in range(cfg.encoder_layers):
        # The decoder's own blocks (as torch's Encoder reuses the decoder's modules).
        x, _ = attention_block(params, f"{PREFIX}layers.{i}.", x, cos, sin, cfg, dtype, bidirectional)
        x = mlp_block(params, f"{PREFIX}layers.{i}.", x, cfg, dtype)
    # The pool: keys/values from pool_norm(x) at token positions, n_z queries at latent positions.
    kv = linear(rms_norm(x, p("pool_norm.weight"), cfg.norm_eps), p("pool.kv.weight"), dtype).reshape(B, L, 2, H, hd)
    keys, values = apply_rope(kv[:, :, 0], cos, sin), kv[:, :, 1]
    cos_q, sin_q = rope_tables(query_positions(cfg), hd, cfg.rope_base)
    queries = jnp.broadcast_to(p("queries"), (B, cfg.n_z, D))
    q = apply_rope(linear(queries, p("pool.q.weight"), dtype).reshape(B, cfg.n_z, H, hd), cos_q, sin_q)
    y = jax.nn.dot_product_attention(q, keys, values)
    h = queries + linear(y.reshape(B, cfg.n_z, D), p("pool.o.weight"), dtype).astype(jnp.float32)
    out = linear(rms_norm(h, p("out_norm.weight"), cfg.norm_eps), p("head.weight"), dtype).astype(jnp.float32)
    return out[..., :D], out[..., D:]

