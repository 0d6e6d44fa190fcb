"""The LTM decoder in JAX: pure functions over a flat dict of parameters.

The parameters are a plain dict {canonical torch state_dict name: array} with the torch layouts
(a Linear weight is [out, in] and is applied as x @ W.T; the tied embedding `tok_emb.weight` is also
the output head), so one safetensors file serves both backends without any transpose. The maths
mirrors models/torch/decoder.py line for line: pre-norm RMSNorm, causal self-attention with
rotate-half RoPE (float32 tables, same inv_freq), cross-attention to the layer's share of z with
RoPE on the latent keys at the positions latent_positions gives (by model.latent_rope) and no mask, SwiGLU, tied head.
With `attention_window` W > 0 the self-attention sees only the W keys ending at each token (the
published decoder's sliding window); cross-attention to z stays global.

Precision: parameters and the residual stream stay float32; with `dtype=jnp.bfloat16` (the GPU
default of the NumPyro backend, like torch's CUDA autocast) every matmul and attention runs in
bfloat16 and the logits come out in bfloat16; log-probabilities are taken in float32 by the
token-sequence distribution.

Nothing here imports torch.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from ...config import ModelConfig


# ----- parameters ------------------------------------------------------------------------------
def cross_attention_shapes(name: str, d: int) -> dict[str, tuple[int, ...]]:
    """A cross-attention's norm and projections, in torch's order: the decoder's `cross` (to z)
    and the encoder's `pool` (its queries to the tokens)."""
    return {f"{name}_norm.weight": (d,), f"{name}.q.weight": (d, d), f"{name}.kv.weight": (2 * d, d),
            f"{name}.o.weight": (d, d)}


def layer_shapes(prefix: str, d: int, hidden: int, cross: bool) -> dict[str, tuple[int, ...]]:
    """One layer's parameters under `prefix`, in torch's order: self-attention, cross-attention to z
    (the decoder of a latent model), SwiGLU MLP. The encoder's layers are the decoder's without cross."""
    shapes = {"attn_norm.weight": (d,), "attn.qkv.weight": (3 * d, d), "attn.o.weight": (d, d)}
    if cross:
        shapes |= cross_attention_shapes("cross", d)
    shapes |= {"mlp_norm.weight": (d,), "mlp.gate.weight": (hidden, d), "mlp.up.weight": (hidden, d),
               "mlp.down.weight": (d, hidden)}
    return {prefix + name: shape for name, shape in shapes.items()}


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical names and shapes, in the order of the torch Decoder's state_dict."""
    d, h = cfg.d_model, cfg.hidden
    shapes = {"tok_emb.weight": (cfg.vocab_size, d)}
    for i in range(cfg.n_layer):
        shapes |= layer_shapes(f"layers.{i}.", d, h, cross=cfg.latent)
    shapes["final_norm.weight"] = (d,)
    return shapes


def init_params(cfg: ModelConfig, key) -> dict[str, jax.Array]:
    """Same scheme as torch: every matrix N(0, 0.02^2), the residual projections N(0, 0.02^2 /
    (2 n_layer)) with residual_init "scaled" (cross-attention output projections 0 with
    `cross_out_zero`), every norm weight 1; float32."""
    shapes = param_shapes(cfg)
    keys = jax.random.split(key, len(shapes))
    params = {}
    for k, (name, shape) in zip(keys, shapes.items()):
        if len(shape) == 1:
            params[name] = jnp.ones(shape, jnp.float32)
        elif cfg.cross_out_zero and name.endswith("cross.o.weight"):
            params[name] = jnp.zeros(shape, jnp.float32)
        else:
            std = residual_std(cfg) if is_residual_projection(name) else 0.02
            params[name] = std * jax.random.normal(k, shape, jnp.float32)
    return params


def is_residual_projection(name: str) -> bool:
    """torch's decoder.is_residual_projection (its attn.o, cross.o and mlp.up)."""
    return name.endswith(("attn.o.weight", "cross.o.weight", "mlp.up.weight"))


def residual_std(cfg: ModelConfig) -> float:
    """torch's decoder.residual_std: 0.02, or 0.02 / sqrt(2 n_layer) with residual_init "scaled"."""
    return 0.02 / math.sqrt(2 * cfg.n_layer) if cfg.residual_init == "scaled" else 0.02


def layer_fields(cfg: ModelConfig) -> tuple[str, ...]:
    """The per-layer parameter names without their `layers.{i}.` prefix."""
    shapes = param_shapes(dataclasses.replace(cfg, n_layer=1))
    return tuple(name[len("layers.0."):] for name in shapes if name.startswith("layers.0."))


def stack_layers(params, cfg: ModelConfig) -> dict[str, jax.Array]:
    """{field: [n_layer, *shape]}: the canonical per-layer weights stacked for lax.scan. The
    checkpoint, the optimiser and the Pyro side keep the canonical names; stacking happens inside
    the compiled program (a copy of the weights, loop-invariant in the fast loop), so the layer
    loop is traced once whatever the depth."""
    return {f: jnp.stack([params[f"layers.{i}.{f}"] for i in range(cfg.n_layer)]) for f in layer_fields(cfg)}


# ----- building blocks -------------------------------------------------------------------------
def rms_norm(x, weight, eps: float):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps) * weight
    return y.astype(x.dtype)


def linear(x, weight, dtype):
    """x @ W.T with W in torch layout [out, in], computed in `dtype`."""
    return jnp.einsum("...i,oi->...o", x.astype(dtype), weight.astype(dtype))


def rope_tables(positions, head_dim: int, base: float):
    """cos, sin [len(positions), head_dim // 2] in float32 (torch's decoder.rope_tables)."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = jnp.asarray(positions, jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate-half RoPE; x is [B, L, heads, head_dim], cos/sin [L, head_dim/2]; float32 inside."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def latent_positions(cfg: ModelConfig):
    """torch's decoder.Decoder.latent_positions: by cfg.latent_rope."""
    m = cfg.z_per_layer
    if cfg.latent_rope == "published":
        return jnp.arange(m, dtype=jnp.float32) * float(cfg.block_size // cfg.n_z)
    return jnp.arange(m, dtype=jnp.float32) * (cfg.block_size / m)


def latent_kv(params, cfg: ModelConfig, z, dtype=jnp.float32, layers=None):
    """Every layer's cross-attention (keys, values), each [n_layer, B, m, heads, head_dim], of z
    [B, n_z, d_model] (layer i reads z[:, i*m:(i+1)*m]); None without a latent."""
    if not cfg.latent:
        return None
    layers = stack_layers(params, cfg) if layers is None else layers
    B, _, D = z.shape
    H, m, n = cfg.n_head, cfg.z_per_layer, cfg.n_layer
    cos_z, sin_z = rope_tables(latent_positions(cfg), D // H, cfg.rope_base)
    chunks = jnp.moveaxis(z.reshape(B, n, m, D), 1, 0)  # [n_layer, B, m, D]
    kv = jnp.einsum("lbmi,loi->lbmo", chunks.astype(dtype), layers["cross.kv.weight"].astype(dtype))
    kv = kv.reshape(n * B, m, 2, H, D // H)
    keys = apply_rope(kv[:, :, 0], cos_z, sin_z).reshape(n, B, m, H, D // H)
    return keys, kv[:, :, 1].reshape(n, B, m, H, D // H)


def attention_mask(q_start, q_len: int, k_len: int, window: int):
    """Boolean [q_len, k_len]: query q_start + i sees key j when j <= its position and, with a
    window W > 0, j > position - W (torch's decoder.attention_mask). Offset-aware: q_start may be
    traced (a decode step at `position`)."""
    q = q_start + jnp.arange(q_len)[:, None]
    k = jnp.arange(k_len)[None, :]
    allowed = k <= q
    if window:
        allowed &= k > q - window
    return allowed


def cudnn_attention_applies(q) -> bool:
    """cuDNN's fused (flash) attention: on a GPU backend with bf16/fp16 inputs only. Not
    testable on the CPU; jax 0.10 and 0.11 take the same `implementation="cudnn"` argument."""
    return q.dtype in (jnp.bfloat16, jnp.float16) and jax.default_backend() == "gpu"


def fused_attention(q, k, v, **options):
    """jax.nn.dot_product_attention through cuDNN where it applies, XLA's implementation
    otherwise, and also when cuDNN refuses the shapes (it raises while tracing: head_dim not a
    multiple of 8, or above 128, ...)."""
    if cudnn_attention_applies(q):
        try:
            return jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **options)
        except (NotImplementedError, ValueError, TypeError, RuntimeError):
            pass
    if "local_window_size" in options:  # XLA: the sliding window as an explicit mask
        window = options.pop("local_window_size")[0] + 1
        options.pop("is_causal", None)
        options["mask"] = attention_mask(0, q.shape[1], k.shape[1], window)[None, None]
    return jax.nn.dot_product_attention(q, k, v, **options)


def causal_attention(q, k, v, window: int = 0):
    """Causal self-attention of equal-length q, k, v [B, L, heads, head_dim], optionally over a
    sliding window of `window` keys (0: all earlier keys)."""
    if not window:
        return fused_attention(q, k, v, is_causal=True)
    # Equal query and key lengths: cuDNN's top-left alignment is the causal one here.
    return fused_attention(q, k, v, is_causal=True, local_window_size=(window - 1, 0))


def attention_block(params, prefix: str, x, cos, sin, cfg: ModelConfig, dtype, attend):
    """x + SelfAttn(RMSNorm(x)) of one layer (decoder and encoder share it); returns (x, what
    attend returned beside y). attend(q, k, v) -> (y, extra) decides the mask or cache."""
    B, L, D = x.shape
    H = cfg.n_head
    h = rms_norm(x, params[prefix + "attn_norm.weight"], cfg.norm_eps)
    qkv = linear(h, params[prefix + "attn.qkv.weight"], dtype).reshape(B, L, 3, H, D // H)
    q, k, v = apply_rope(qkv[:, :, 0], cos, sin), apply_rope(qkv[:, :, 1], cos, sin), qkv[:, :, 2]
    y, extra = attend(q, k, v)
    return x + linear(y.reshape(B, L, D), params[prefix + "attn.o.weight"], dtype), extra


def mlp_block(params, prefix: str, x, cfg: ModelConfig, dtype):
    """x + SwiGLU(RMSNorm(x)) of one layer (decoder and encoder share it)."""
    h = rms_norm(x, params[prefix + "mlp_norm.weight"], cfg.norm_eps)
    gated = jax.nn.silu(linear(h, params[prefix + "mlp.gate.weight"], dtype)) * linear(h, params[prefix + "mlp.up.weight"], dtype)
    return x + linear(gated, params[prefix + "mlp.down.weight"], dtype)


def unrolled_layers(cfg: ModelConfig) -> int:
    """How many layers one iteration of the layer scan holds: 1 (a real loop: the body is traced
    and compiled once whatever the depth) on accelerators; all of them on the CPU, where the loop
    measured slower (1.6x per iteration at the bench's tiny shape, 1.2x at the `ltm fit` default)
    and XLA's compile was not shorter (bench/jax_compile_time.py; docs/benchmarks.md)."""
    return cfg.n_layer if jax.default_backend() == "cpu" else 1


def _forward(params, cfg: ModelConfig, idx, lkv, start, dtype, attend, per_layer=None):
    """Final hidden states [B, L, D] (float32) and what `attend` returned, stacked over layers.

    The layers run as one lax.scan over their stacked weights (compile time does not grow with
    depth). attend(layer_input, q, k, v) -> (y, extra) does the self-attention of one layer:
    causal over the window, or against a KV cache; layer_input is this layer's slice of
    `per_layer` (a pytree with a leading n_layer axis, e.g. the cache), or None.
    """
    B, L = idx.shape
    D, H = cfg.d_model, cfg.n_head
    cos, sin = rope_tables(start + jnp.arange(L), D // H, cfg.rope_base)
    x = params["tok_emb.weight"][idx]
    layers = stack_layers(params, cfg)
    if cfg.latent and lkv is None:
        raise ValueError("a latent decoder needs the latent keys/values (latent_kv)")

    def layer(x, xs):
        w, kv, extra_in = xs
        x, extra = attention_block(w, "", x, cos, sin, cfg, dtype, functools.partial(attend, extra_in))
        if kv is not None:
            h = rms_norm(x, w["cross_norm.weight"], cfg.norm_eps)
            q = linear(h, w["cross.q.weight"], dtype).reshape(B, L, H, D // H)
            y = fused_attention(apply_rope(q, cos, sin), kv[0], kv[1])
            x = x + linear(y.reshape(B, L, D), w["cross.o.weight"], dtype)
        return mlp_block(w, "", x, cfg, dtype), extra

    x, extras = jax.lax.scan(layer, x, (layers, lkv if cfg.latent else None, per_layer),
                              unroll=unrolled_layers(cfg))
    return rms_norm(x, params["final_norm.weight"], cfg.norm_eps), extras


def _head(params, x, dtype):
    return linear(x, params["tok_emb.weight"], dtype)


def decoder_logits(params, cfg: ModelConfig, idx, z=None, start=0, dtype=jnp.float32, lkv=None):
    """Logits [B, L, vocab] (in `dtype`) for tokens idx [B, L] at positions start.. given z [B, n_z, d]."""
    return _head(params, decoder_hidden(params, cfg, idx, z, start, dtype, lkv), dtype)


def decoder_hidden(params, cfg: ModelConfig, idx, z=None, start=0, dtype=jnp.float32, lkv=None):
    """The final normalised hidden states [B, L, D] (float32) before the tied head: the chunked
    likelihood applies the head itself, a chunk of tokens at a time."""
    if lkv is None and cfg.latent:
        lkv = latent_kv(params, cfg, z, dtype)
    x, _ = _forward(params, cfg, idx, lkv, start, dtype,
                    lambda _, q, k, v: (causal_attention(q, k, v, cfg.attention_window), None))
    return x


# ----- the KV cache (generation) --------------------------------------------------------------
def prefill(params, cfg: ModelConfig, tokens, lkv, dtype=jnp.float32):
    """Encode tokens [B, L] at positions 0..L-1; returns (cache, last logits [B, vocab]).

    The cache holds every layer's self-attention keys/values in fixed-size buffers
    [n_layer, B, block_size, heads, head_dim] (static shapes: one compilation per prompt length).
    """
    B, L = tokens.shape
    shape = (B, cfg.block_size, cfg.n_head, cfg.d_model // cfg.n_head)

    def attend(_, q, k, v):
        pad = ((0, 0), (0, cfg.block_size - L), (0, 0), (0, 0))
        return causal_attention(q, k, v, cfg.attention_window), (jnp.pad(k, pad), jnp.pad(v, pad))

    x, cache = _forward(params, cfg, tokens, lkv, 0, dtype, attend)
    assert cache[0].shape[1:] == shape
    return cache, _head(params, x[:, -1], dtype)


def decode_step(params, cfg: ModelConfig, cache, token, position, lkv, dtype=jnp.float32):
    """One new token [B] at `position` (< block_size): appends to the cache, attends to every cached
    key up to and including itself (the last attention_window of them) through an explicit
    offset-aware mask (no is_causal or local_window_size when the query and key
    lengths differ: both align top-left). Returns (cache, logits [B, vocab])."""
    mask = attention_mask(position, 1, cfg.block_size, cfg.attention_window)[None, None]  # [B, heads, q=1, keys]

    def attend(layer_cache, q, k, v):
        keys, values = layer_cache
        ki = jax.lax.dynamic_update_slice_in_dim(keys, k.astype(keys.dtype), position, axis=1)
        vi = jax.lax.dynamic_update_slice_in_dim(values, v.astype(values.dtype), position, axis=1)
        return jax.nn.dot_product_attention(q, ki, vi, mask=mask), (ki, vi)

    x, cache = _forward(params, cfg, token[:, None], lkv, position, dtype, attend, per_layer=cache)
    return cache, _head(params, x[:, -1], dtype)


def prefill_padded(params, cfg: ModelConfig, buffer, length, lkv, dtype=jnp.float32):
    """prefill of the first `length` tokens of a fixed-size buffer [B, block_size] (the rest is
    padding): causal attention keeps the padding out of every real position, and the cache slots
    past `length` are overwritten by decode_step before any query sees them. `length` may be
    traced, so one compiled program serves every prompt length. Returns (cache, logits [B, vocab]
    at position length - 1)."""
    def attend(_, q, k, v):
        return causal_attention(q, k, v, cfg.attention_window), (k, v)

    x, cache = _forward(params, cfg, buffer, lkv, 0, dtype, attend)
    last = jax.lax.dynamic_index_in_dim(x, length - 1, axis=1, keepdims=False)
    return cache, _head(params, last, dtype)
