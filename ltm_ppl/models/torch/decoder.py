"""The LTM decoder in PyTorch: a pre-norm Transformer whose every layer reads its share of the
latent thought vectors z through cross-attention.

Layer: x += SelfAttn(RMSNorm(x)) (causal, rotary); x += CrossAttn(RMSNorm(x), z_layer) (rotary on
queries at token positions and on keys at latent positions, latent_positions()); x +=
SwiGLU(RMSNorm(x)). Tied input/output embedding, no biases, d_z = d_model, z goes straight into the
key/value projection. With `latent=False` the cross-attention is absent: the autoregressive baseline.

The state_dict names here are the canonical parameter names of the project (the JAX decoder and
the safetensors files use them too).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import ModelConfig


def rope_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [len(positions), head_dim // 2] in float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def is_residual_projection(name: str) -> bool:
    """The matrices the published init scales (its wo and w3): every attention output projection,
    self and cross, and the MLP's up projection (w3 in the authors' SwiGLU w2(silu(w1 x) * w3 x))."""
    return name.endswith(("attn.o.weight", "cross.o.weight", "mlp.up.weight"))


def residual_std(cfg: ModelConfig) -> float:
    """Initial std of a residual projection: 0.02, or 0.02 / sqrt(2 n_layer) with residual_init "scaled"."""
    return 0.02 / math.sqrt(2 * cfg.n_layer) if cfg.residual_init == "scaled" else 0.02


def latent_positions(cfg: ModelConfig, device=None) -> torch.Tensor:
    """Rotary positions [m] of a layer's m latent keys (the same for every layer), by
    cfg.latent_rope: "published" j * (block_size // n_z), n_z counting every layer's vectors (the
    authors' model.py: interval = max_seq_len // max_z_len, then freqs_cos_z[:m]); "per_layer"
    j * block_size / m (ltm-ppl before the setting; old runs keep it)."""
    m = cfg.z_per_layer
    j = torch.arange(m, device=device, dtype=torch.float32)
    if cfg.latent_rope == "published":
        return j * float(cfg.block_size // cfg.n_z)
    return j * (cfg.block_size / m)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding; x is [B, heads, L, head_dim], cos/sin [L, head_dim/2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return rotated.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def attention_mask(q_start: int, q_len: int, k_len: int, window: int, device) -> torch.Tensor:
    """Boolean [q_len, k_len], True where query q_start + i may see key j: causal (j <= query
    position) and, with a window W > 0, the W keys ending at the query itself (j > position - W).
    Offset-aware, so it holds for a chunk appended to a non-empty cache."""
    q = torch.arange(q_start, q_start + q_len, device=device)[:, None]
    k = torch.arange(k_len, device=device)[None, :]
    allowed = k <= q
    if window:
        allowed &= k > q - window
    return allowed


@functools.lru_cache(maxsize=8)
def _window_block_mask(length: int, window: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def sliding(b, h, q, k):
        return (k <= q) & (k > q - window)

    return create_block_mask(sliding, None, None, length, length, device=device)


def flex_window_attention(q, k, v, window: int):
    """Sliding-window causal attention of equal-length q, k, v [B, heads, L, head_dim] through
    FlexAttention: a fused kernel that skips the blocks outside the window, under torch.compile.
    (Eager, it runs a reference implementation: only the numbers are tested on the CPU.)"""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, block_mask=_window_block_mask(q.shape[2], window, str(q.device)))


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool = True):
        super().__init__()
        self.causal = causal
        # The sliding window applies to the causal decoder only; the encoder sees the whole window.
        self.window = cfg.attention_window if causal else 0
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, cache=None):
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)
        if not self.causal:
            y = F.scaled_dot_product_attention(q, k, v)
        elif cache is None and not self.window:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # the fused causal kernel
        elif cache is None and x.is_cuda and torch.compiler.is_compiling():
            y = flex_window_attention(q, k, v, self.window)  # GPU under --compile (untested here: no GPU)
        else:
            # An explicit mask: SDPA's is_causal aligns top-left when query and key lengths differ
            # (a chunk appended to a cache), and the window needs one anyway. SDPA takes the mask
            # on every device (on CUDA its memory-efficient kernel runs it).
            mask = attention_mask(k.shape[2] - L, L, k.shape[2], self.window, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(B, L, D))


class CrossAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def latent_kv(self, z, cos_z, sin_z):
        """Keys and values of this layer's latent vectors z [B, m, d]; computed once per sequence."""
        B, M, D = z.shape
        k, v = self.kv(z).view(B, M, 2, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)
        return apply_rope(k, cos_z, sin_z), v

    def forward(self, x, cos, sin, kv):
        B, L, D = x.shape
        q = apply_rope(self.q(x).view(B, L, self.n_head, D // self.n_head).transpose(1, 2), cos, sin)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.o(y.transpose(1, 2).reshape(B, L, D))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.down = nn.Linear(cfg.hidden, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        if cfg.latent:
            self.cross_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.cross = CrossAttention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, latent_kv=None, cache=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        if latent_kv is not None:
            x = x + self.cross(self.cross_norm(x), cos, sin, latent_kv)
        return x + self.mlp(self.mlp_norm(x))


class KVCache:
    """Self-attention keys/values of one layer, grown one step at a time."""

    def __init__(self):
        self.k = self.v = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layer))
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.apply(self._init)
        if cfg.residual_init == "scaled":  # GPT-2's scaled init of the residual projections (the authors' model.py)
            for name, p in self.named_parameters():
                if is_residual_projection(name):
                    nn.init.normal_(p, std=residual_std(cfg))
        if cfg.latent and cfg.cross_out_zero:  # z's contribution starts at exactly 0 (an init, not a change of the model)
            for layer in self.layers:
                nn.init.zeros_(layer.cross.o.weight)
        self._rope = None  # (cos, sin) of positions 0.. on one device, built once and sliced
        self._latent_rope = None

    def rope(self, start: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of positions start..start+length, cut from a cached table (grown on demand,
        rebuilt on another device): the tables are constants, not rebuilt every forward."""
        end = start + length
        if self._rope is None or self._rope[0].shape[0] < end or self._rope[0].device != torch.device(device):
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable under autograd later
                size = max(end, self.cfg.block_size)
                self._rope = rope_tables(torch.arange(size, device=device), self.head_dim, self.cfg.rope_base)
        cos, sin = self._rope
        return cos[start:end], sin[start:end]

    def latent_rope(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._latent_rope is None or self._latent_rope[0].device != torch.device(device):
            with torch.inference_mode(False), torch.no_grad():
                self._latent_rope = rope_tables(self.latent_positions(device), self.head_dim, self.cfg.rope_base)
        return self._latent_rope

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def head_dim(self) -> int:
        return self.cfg.d_model // self.cfg.n_head

    def latent_positions(self, device) -> torch.Tensor:
        return latent_positions(self.cfg, device)

    def latent_kv(self, z: torch.Tensor) -> list:
        """Per-layer cross-attention keys/values of z [B, n_z, d_model] (None without latents)."""
        if not self.cfg.latent:
            return [None] * self.cfg.n_layer
        cos_z, sin_z = self.latent_rope(z.device)
        chunks = z.split(self.cfg.z_per_layer, dim=1)
        return [layer.cross.latent_kv(chunk, cos_z, sin_z) for layer, chunk in zip(self.layers, chunks)]

    def forward(self, idx: torch.Tensor, z: torch.Tensor | None = None, start: int = 0, caches=None, latent_kv=None,
                hidden_only: bool = False):
        """Logits [B, L, vocab] for tokens idx [B, L] at positions start.. given latents z; with
        hidden_only, the final normed hidden states [B, L, d_model] instead (the output layer is
        tok_emb.weight, tied: the likelihood applies it chunked, likelihood.py)."""
        if latent_kv is None:
            latent_kv = self.latent_kv(z) if self.cfg.latent else [None] * self.cfg.n_layer
        cos, sin = self.rope(start, idx.shape[1], idx.device)
        x = self.tok_emb(idx)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, latent_kv[i], None if caches is None else caches[i])
        hidden = self.final_norm(x)
        return hidden if hidden_only else F.linear(hidden, self.tok_emb.weight)

