"""The amortized encoder q_phi(z | x) in PyTorch: a small bidirectional Transformer over the
window's tokens, then n_z learned queries cross-attend to it and a linear head emits
(mu, log sigma) of every latent vector.

The head starts at zero, so a fresh encoder proposes the prior N(0, I). Latent query j gets the
rotary position the decoder gives latent vector j of its layer (decoder.latent_positions,
by model.latent_rope); token i gets position i. Saved under the prefix `encoder.` beside the decoder.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...config import ModelConfig
from .decoder import CrossAttention, RMSNorm, SelfAttention, SwiGLU, latent_positions, rope_tables


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = SelfAttention(cfg, causal=False)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.queries = nn.Parameter(torch.empty(cfg.n_z, d))
        self.pool_norm = RMSNorm(d, cfg.norm_eps)
        self.pool = CrossAttention(cfg)
        self.out_norm = RMSNorm(d, cfg.norm_eps)
        self.head = nn.Linear(d, 2 * d, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.normal_(self.queries, std=0.02)
        nn.init.zeros_(self.head.weight)

    def query_positions(self, device) -> torch.Tensor:
        return latent_positions(self.cfg, device).repeat(self.cfg.n_layer)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, log_scale), each [B, n_z, d_model], from token windows [B, L]."""
        head_dim = self.cfg.d_model // self.cfg.n_head
        cos, sin = rope_tables(torch.arange(tokens.shape[1], device=tokens.device), head_dim, self.cfg.rope_base)
        x = self.tok_emb(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        kv = self.pool.latent_kv(self.pool_norm(x), cos, sin)
        cos_q, sin_q = rope_tables(self.query_positions(tokens.device), head_dim, self.cfg.rope_base)
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        h = queries + self.pool(queries, cos_q, sin_q, kv)
        loc, log_scale = self.head(self.out_norm(h)).float().chunk(2, dim=-1)
        return loc, log_scale
