"""The order in which training visits windows: a pure function of (seed, global position).

Position p = iteration * batch_size + row lies in epoch p // n (n windows) and each epoch visits
every window once in its own seeded order. Up to IN_MEMORY_MAX windows that order is today's
`default_rng([seed, epoch]).permutation(n)`, computed once per epoch and kept (so existing runs
keep their data order). Above it, a keyed Feistel bijection over the window indices (with cycle
walking to stay below n) gives the same kind of order in O(batch) time and memory per iteration,
whatever the corpus size. No worker count enters: every worker computes the same global batch.
"""
from __future__ import annotations

import functools

import numpy as np

IN_MEMORY_MAX = 1 << 22  # windows; a permutation of this many int64 is 32 MB
ROUNDS = 6
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@functools.lru_cache(maxsize=2)  # a batch spans at most two epochs
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.setflags(write=False)
    return order


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def feistel(x: np.ndarray, half_bits: int, keys: np.ndarray) -> np.ndarray:
    """A bijection of [0, 4**half_bits): a balanced Feistel network with a keyed round function."""
    shift, mask = np.uint64(half_bits), np.uint64((1 << half_bits) - 1)
    left, right = x >> shift, x & mask
    for key in keys:
        left, right = right, left ^ (_mix(right ^ key) & mask)
    return (left << shift) | right


def keyed_permutation(offsets: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """Element `offsets` of a seeded permutation of range(n), without building it."""
    keys = np.random.default_rng([seed, epoch, 0xFE157E1]).integers(0, 2**63, size=ROUNDS, dtype=np.uint64)
    half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
    y = feistel(np.asarray(offsets, dtype=np.uint64), half_bits, keys)
    outside = y >= np.uint64(n)
    while outside.any():  # cycle walking: at most a few rounds, since 4**half_bits < 4n
        y[outside] = feistel(y[outside], half_bits, keys)
        outside = y >= np.uint64(n)
    return y.astype(np.int64)


def window_order(positions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The window index at each global position of the seeded visiting order."""
    positions = np.asarray(positions, dtype=np.int64)
    epochs, offsets = np.divmod(positions, n)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
        rows = epochs == epoch
        if n <= IN_MEMORY_MAX:
            out[rows] = _permutation(seed, int(epoch), n)[offsets[rows]]
        else:
            out[rows] = keyed_permutation(offsets[rows], n, seed, int(epoch))
    return out
