"""Our decoder against the published decoder function, written out here from reading the authors'
model.py (not copied): separate q/k/v projections, rotary embedding on interleaved pairs, the
latent keys at positions j * (max_seq_len // max_z_len) with max_z_len counting every layer's
vectors, pre-norm self -> cross -> SwiGLU, RMSNorm eps 1e-5, sliding-window causal mask, tied head.

Our weights are carried across by splitting the fused projections and permuting each head's query
and key rows from rotate-half order (pair (i, i + hd/2)) to interleaved order (pair (2i, 2i + 1)):
the same function, so the log-probabilities agree to float32 precision under latent_rope
"published", and not under the old "per_layer" rule (docs/replication.md, the parity table).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_weights

WINDOW = 5


def interleave(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a [H * hd, in] query/key projection from rotate-half to interleaved order per head."""
    hd = w.shape[0] // n_head
    order = torch.stack([torch.arange(hd // 2), torch.arange(hd // 2) + hd // 2], dim=1).reshape(-1)
    return w.view(n_head, hd, -1)[:, order].reshape(w.shape)


def published_weights(ours: dict, cfg) -> dict:
    """The published layout of our weights: wq / wk / wv / wo, w1 / w2 / w3, norms, tied embedding."""
    D, H = cfg.d_model, cfg.n_head
    out = {"tok_embeddings.weight": ours["tok_emb.weight"], "norm.weight": ours["final_norm.weight"]}
    for i in range(cfg.n_layer):
        o, p = f"layers.{i}.", f"layers.{i}."
        q, k, v = ours[o + "attn.qkv.weight"].split(D)
        out |= {p + "attention.wq.weight": interleave(q, H), p + "attention.wk.weight": interleave(k, H),
                p + "attention.wv.weight": v, p + "attention.wo.weight": ours[o + "attn.o.weight"],
                p + "attention_norm.weight": ours[o + "attn_norm.weight"]}
        ck, cv = ours[o + "cross.kv.weight"].split(D)
        out |= {p + "cross_attention.wq.weight": interleave(ours[o + "cross.q.weight"], H),
                p + "cross_attention.wk.weight": interleave(ck, H), p + "cross_attention.wv.weight": cv,
                p + "cross_attention.wo.weight": ours[o + "cross.o.weight"],
                p + "cross_attention_norm.weight": ours[o + "cross_norm.weight"]}
        out |= {p + "feed_forward.w1.weight": ours[o + "mlp.gate.weight"], p + "feed_forward.w3.weight": ours[o + "mlp.up.weight"],
                p + "feed_forward.w2.weight": ours[o + "mlp.down.weight"], p + "ffn_norm.weight": ours[o + "mlp_norm.weight"]}
    return out


def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_pairs(x, positions, base=10000.0):
    """x [B, L, H, hd]: pair (2i, 2i + 1) rotated by positions * base^(-2i / hd)."""
    hd = x.shape[-1]
    angles = positions.float()[:, None] * (1.0 / base ** (torch.arange(0, hd, 2).float() / hd))[None]
    cos, sin = angles.cos()[None, :, None], angles.sin()[None, :, None]
    re, im = x[..., 0::2], x[..., 1::2]
    return torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(-2)


def attend(q, k, v, mask=None):
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def published_log_probs(w: dict, cfg, tokens, z) -> torch.Tensor:
    """log p(token t+1 | tokens <= t, z) [B, L] of the published decoder function."""
    B, L = tokens.shape
    H, D, n = cfg.n_head, cfg.d_model, cfg.n_layer
    m = cfg.n_z // n
    interval = cfg.block_size // cfg.n_z  # max_seq_len // max_z_len, max_z_len = every layer's vectors
    z_pos = torch.arange(0, cfg.block_size, interval)[:m]
    pos = torch.arange(L)
    i, j = pos[:, None], pos[None, :]
    mask = (j <= i) & (j > i - WINDOW)
    heads = lambda x: x.view(B, -1, H, D // H)  # noqa: E731
    h = w["tok_embeddings.weight"][tokens[:, :-1]]
    zs = z.view(B, n, m, D)
    for layer in range(n):
        p = lambda name: w[f"layers.{layer}.{name}.weight"]  # noqa: E731
        x = rms(h, p("attention_norm"))
        q, k, v = heads(x @ p("attention.wq").T), heads(x @ p("attention.wk").T), heads(x @ p("attention.wv").T)
        y = attend(rotate_pairs(q, pos[:-1]), rotate_pairs(k, pos[:-1]), v, mask[:-1, :-1])
        h = h + y.reshape(B, -1, D) @ p("attention.wo").T
        x = rms(h, p("cross_attention_norm"))
        zl = zs[:, layer]
        q = rotate_pairs(heads(x @ p("cross_attention.wq").T), pos[:-1])
        k = rotate_pairs(heads(zl @ p("cross_attention.wk").T), z_pos)
        y = attend(q, k, heads(zl @ p("cross_attention.wv").T))
        h = h + y.reshape(B, -1, D) @ p("cross_attention.wo").T
        x = rms(h, p("ffn_norm"))
        h = h + (F.silu(x @ p("feed_forward.w1").T) * (x @ p("feed_forward.w3").T)) @ p("feed_forward.w2").T
    logits = rms(h, w["norm.weight"]) @ w["tok_embeddings.weight"].T
    return torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[..., 0]


def gap(rule: str, scale: float, seed: int = 41) -> float:
    """max |log p difference| per token between ours and the published function, same weights and z."""
    from ltm_ppl.config import ModelConfig
    from ltm_ppl.models.jax import decoder as jax_decoder
    from ltm_ppl.models.torch.likelihood import TokenSequence
    from ltm_ppl.models.torch.decoder import Decoder

    cfg = ModelConfig(vocab_size=64, d_model=64, n_layer=2, n_head=4, n_z=4, block_size=64, attention_window=WINDOW,
                      cross_out_zero=False, latent_rope=rule)
    rng = np.random.default_rng(seed)
    weights = {k: torch.from_numpy(v) for k, v in random_weights(jax_decoder.param_shapes(cfg), seed=seed).items()}
    weights = {k: (v if v.dim() == 1 else v * (scale / 0.3)) for k, v in weights.items()}  # matrices N(0, scale^2)
    decoder = Decoder(cfg)
    decoder.load_state_dict(weights)
    tokens = torch.from_numpy(rng.integers(0, 64, (2, cfg.block_size + 1)))
    z = torch.from_numpy(rng.standard_normal((2, cfg.n_z, cfg.d_model)).astype(np.float32))
    with torch.no_grad():
        ours = TokenSequence(decoder(tokens[:, :-1], z)).token_log_probs(tokens[:, 1:])
        theirs = published_log_probs(published_weights(weights, cfg), cfg, tokens, z)
    assert ours.std() > (0.5 if scale > 0.1 else 0.0)  # wide weights: far from uniform, the comparison has teeth
    return float((ours - theirs).abs().max())


@pytest.mark.parametrize("scale", [0.02, 0.3])
def test_our_decoder_is_the_published_function(scale, torch_one_thread):
    assert gap("published", scale) < 1e-4


def test_the_old_latent_positions_are_another_function(torch_one_thread):
    assert gap("per_layer", 0.3) > 0.05
