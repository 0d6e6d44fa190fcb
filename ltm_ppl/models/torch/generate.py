"""Sampling from the torch decoder with a KV cache; z's cross-attention keys/values computed once."""
from __future__ import annotations

import torch

from ..stops import StopRows
from .decoder import KVCache


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(decoder, context: torch.Tensor, z, max_new: int, temperature: float = 1.0, top_k: int = 0, generator=None,
             stop_id: int | None = None, utf8=None, progress=None, stop_sequences=None):
    """New tokens [B, <= max_new] after context [B, P]. When the window fills, the last half of it
    is encoded afresh (positions restart at 0) and generation goes on.

    stop_id: stop once every row has sampled it (rows keep their tokens after it; callers cut).
    stop_sequences: token sequences (lists of ids); a row has stopped once its new tokens end with
    one of them (or with stop_id), and generation ends when every row has (models/stops.py).
    utf8: (allowed [S, V], next_state [S, V]) of data.utf8; tokens that cannot continue valid
    UTF-8 are masked before sampling. progress: called with 1 per new token."""
    block = decoder.cfg.block_size
    latent_kv = decoder.latent_kv(z) if decoder.cfg.latent else [None] * decoder.cfg.n_layer

    def prefill(tokens):
        caches = [KVCache() for _ in range(decoder.cfg.n_layer)]
        logits = decoder(tokens, start=0, caches=caches, latent_kv=latent_kv)[:, -1]
        return caches, logits, tokens.shape[1]

    if utf8 is not None:
        allowed, next_state = (torch.as_tensor(t, device=context.device) for t in utf8)
        state = torch.zeros(context.shape[0], dtype=torch.long, device=context.device)
    stops = StopRows(context.shape[0], stop_id, stop_sequences)
    history = context[:, -block:]
    caches, logits, position = prefill(history)
    out = []
    for _ in range(max_new):
        if utf8 is not None:
            logits = logits.float().masked_fill(~allowed[state], float("-inf"))
        token = sample_next(logits, temperature, top_k, generator)
        out.append(token)
        if progress is not None:
            progress(1)
        if utf8 is not None:
            state = next_state[state, token].long()
        if stops.active and stops.update(token.cpu().numpy()):
            break
        history = torch.cat([history, token[:, None]], dim=1)
        if position >= block:
            caches, logits, position = prefill(history[:, -(block // 2):])
        else:
            logits = decoder(token[:, None], start=position, caches=caches, latent_kv=latent_kv)[:, -1]
            position += 1
    return torch.stack(out, dim=1) if out else context.new_zeros((context.shape[0], 0))
