"""Training windows cut from a token stream, and the batch order.

A window holds block_size + 1 tokens: the first is conditioned on, the other block_size are
predicted. Windows overlap by one token, so every token of the stream after the first is predicted
exactly once. Batch order is a pure function of (seed, iteration): resuming needs no iterator state.
`tokens` is an array or a lazily read data/stream.TokenStream: only the windows asked for are read.
"""
from __future__ import annotations

import numpy as np

from ..errors import LtmError
from .order import window_order


def num_windows(n_tokens: int, block_size: int) -> int:
    return max(0, (n_tokens - 1) // block_size)


def require_windows(tokens, block_size: int, split: str, spec: str) -> None:
    if num_windows(len(tokens), block_size) < 1:
        raise LtmError(
            f"corpus {spec}: the {split} split has {len(tokens)} tokens, fewer than one window "
            f"({block_size + 1} tokens); use a longer corpus or a smaller model.block_size"
        )


def windows(tokens, indices, block_size: int) -> np.ndarray:
    out = np.stack([tokens[i * block_size : i * block_size + block_size + 1] for i in indices])
    return out.astype(np.int64)


def train_batch(tokens, block_size: int, batch_size: int, seed: int, iteration: int) -> np.ndarray:
    """Windows for one iteration: each epoch visits every window once in a seeded order
    (data/order.py), computed for this batch alone."""
    n = num_windows(len(tokens), block_size)
    positions = iteration * batch_size + np.arange(batch_size, dtype=np.int64)
    return windows(tokens, window_order(positions, n, seed), block_size)


def eval_batches(tokens, block_size: int, batch_size: int, max_windows: int | None = None):
    """The first `max_windows` windows in order (all when None), in batches."""
    n = num_windows(len(tokens), block_size)
    if max_windows is not None:
        n = min(n, max_windows)
    for start in range(0, n, batch_size):
        yield windows(tokens, range(start, min(n, start + batch_size)), block_size)
