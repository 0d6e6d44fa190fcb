"""Sampling from the JAX decoder with a KV cache (models/torch/generate.py is the mirror, with its
semantics): the latent keys/values computed once, the prompt prefilled into a fixed-size buffer,
then one compiled step per token (sample, append, or refill the window's last half).

Nothing here imports torch.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ...config import ModelConfig
from ..stops import StopRows
from .decoder import decode_step, latent_kv, prefill_padded


def sample_next(logits, temperature: float, top_k: int, key):
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


def generation_step(params, cfg: ModelConfig, state, lkv, utf8, temperature: float, top_k: int, dtype):
    """One new token: sample from the state's logits (UTF-8 mask applied), write it into the
    fixed-size token buffer and the KV cache. When the window is full the last half of the
    history (new token included) is encoded afresh, positions restarting at 0 (torch generate's
    semantics), by lax.cond inside the same program. state = (buffer [B, block], cache, logits,
    position, key, utf8 state); returns (state, token [B])."""
    buffer, cache, logits, position, key, text_state = state
    block, half = cfg.block_size, cfg.block_size // 2
    key, sub = jax.random.split(key)
    if utf8 is not None:
        allowed, next_state = utf8
        logits = jnp.where(allowed[text_state], logits.astype(jnp.float32), -jnp.inf)
    token = sample_next(logits, temperature, top_k, sub).astype(jnp.int32)
    if utf8 is not None:
        text_state = next_state[text_state, token]

    def refill(_):
        kept = jnp.concatenate([buffer[:, block - half + 1:], token[:, None]], axis=1)
        fresh = jnp.pad(kept, ((0, 0), (0, block - half)))
        new_cache, new_logits = prefill_padded(params, cfg, fresh, half, lkv, dtype)
        return fresh, new_cache, new_logits.astype(logits.dtype), jnp.int32(half)

    def append(_):
        fresh = jax.lax.dynamic_update_slice_in_dim(buffer, token[:, None], position, axis=1)
        new_cache, new_logits = decode_step(params, cfg, cache, token, position, lkv, dtype)
        return fresh, new_cache, new_logits.astype(logits.dtype), position + 1

    buffer, cache, logits, position = jax.lax.cond(position >= block, refill, append, None)
    return (buffer, cache, logits, position, key, text_state), token


@functools.lru_cache(maxsize=8)
def _generation_programs(cfg_fields: tuple, dtype, temperature: float, top_k: int):
    """The jitted pieces of generation for one config, built once per process (then shared): the
    latent keys/values, the prefill of a padded prompt (any length, one compilation) and the
    per-token step (one compilation for every token and prompt length)."""
    cfg = ModelConfig(*cfg_fields)
    # Trace counts (tests: no per-token or per-prompt-length compiles).
    traces = {"prefill": 0, "step": 0}

    def prefill(p, buffer, length, kv):
        traces["prefill"] += 1
        return prefill_padded(p, cfg, buffer, length, kv, dtype)

    def step(p, state, kv, utf8):
        traces["step"] += 1
        return generation_step(p, cfg, state, kv, utf8, temperature, top_k, dtype)

    return (jax.jit(lambda p, zz: latent_kv(p, cfg, zz, dtype)), jax.jit(prefill), jax.jit(step), traces)


def generate(params, cfg: ModelConfig, context, z, max_new: int, temperature: float = 1.0, top_k: int = 0,
             key=None, dtype=jnp.float32, stop_id: int | None = None, utf8=None, progress=None, stop_sequences=None):
    """New tokens [B, <= max_new] after context [B, P] (models/torch/generate.py's semantics: when
    the window fills, the last half of it is encoded afresh, positions restarting at 0; stop_id,
    stop_sequences, utf8 and progress as there). The history lives in a fixed [B, block_size] buffer; the host
    reads tokens back only to check the stops."""
    block = cfg.block_size
    context = np.asarray(context)[:, -block:]
    B, P = context.shape
    if max_new <= 0:
        return np.zeros((B, 0), dtype=np.int64)
    if key is None:
        key = jax.random.PRNGKey(0)
    run_lkv, run_prefill, run_step, _ = _generation_programs(dataclasses.astuple(cfg), dtype, float(temperature),
                                                             int(top_k))
    lkv = run_lkv(params, z) if cfg.latent else None
    tables = None if utf8 is None else tuple(jnp.asarray(t) for t in utf8)
    buffer = jnp.asarray(np.pad(context, ((0, 0), (0, block - P))), jnp.int32)
    cache, logits = run_prefill(params, buffer, jnp.int32(P), lkv)
    state = (buffer, cache, logits, jnp.int32(P), key, jnp.zeros(B, jnp.int32))
    stops = StopRows(B, stop_id, stop_sequences)
    out = []
    for _ in range(max_new):
        state, token = run_step(params, state, lkv, tables)
        out.append(token)
        if progress is not None:
            progress(1)
        if stops.active and stops.update(np.asarray(token)):
            break
    return np.asarray(jnp.stack(out, axis=1)).astype(np.int64)
