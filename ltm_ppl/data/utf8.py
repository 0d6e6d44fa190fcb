"""Valid UTF-8 out of a byte-level vocabulary: what sampling may emit next, and decoding.

Sampling masks every token whose bytes cannot continue valid UTF-8 from where the text stands
(a strict RFC 3629 automaton: no overlong forms, no surrogates, nothing above U+10FFFF), so a
sampled text never holds a U+FFFD that the model did not spell out. Numpy only: both backends
take the tables as arrays.
"""
from __future__ import annotations

import numpy as np

# States of the automaton: 0 at a character boundary; 1-3 continuation bytes (80-BF) still due;
# 4-7 the second byte of E0 / ED / F0 / F4, whose ranges are narrower. REJECT absorbs errors.
NUM_STATES = 8
REJECT = NUM_STATES


def _byte_transitions() -> np.ndarray:
    """[NUM_STATES + 1, 256] next state per (state, byte)."""
    t = np.full((NUM_STATES + 1, 256), REJECT, dtype=np.int32)
    t[0, 0x00:0x80] = 0
    t[0, 0xC2:0xE0] = 1
    t[0, 0xE0] = 4
    t[0, 0xE1:0xED] = 2
    t[0, 0xED] = 5
    t[0, 0xEE:0xF0] = 2
    t[0, 0xF0] = 6
    t[0, 0xF1:0xF4] = 3
    t[0, 0xF4] = 7
    t[1, 0x80:0xC0] = 0
    t[2, 0x80:0xC0] = 1
    t[3, 0x80:0xC0] = 2
    t[4, 0xA0:0xC0] = 1
    t[5, 0x80:0xA0] = 1
    t[6, 0x90:0xC0] = 2
    t[7, 0x80:0x90] = 2
    return t


def utf8_tables(token_bytes: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """(allowed [S, V] bool, next_state [S, V] int32) for tokens given by their bytes; None marks
    a special token (end-of-text), allowed only at a character boundary and leaving it there. A
    state in which no token is allowed (a vocabulary without the needed bytes) allows all."""
    transitions = _byte_transitions()
    V = len(token_bytes)
    longest = max((len(b) for b in token_bytes if b), default=0)
    padded = np.full((V, longest), -1, dtype=np.int32)  # -1: past the token's end
    for i, b in enumerate(token_bytes):
        if b:
            padded[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    state = np.repeat(np.arange(NUM_STATES, dtype=np.int32)[:, None], V, axis=1)
    for pos in range(longest):
        byte = padded[:, pos]
        moved = transitions[state, np.maximum(byte, 0)[None, :]]
        state = np.where(byte[None, :] >= 0, moved, state)
    special = np.array([b is None for b in token_bytes])
    empty = np.array([b == b"" for b in token_bytes])
    boundary = np.arange(NUM_STATES)[:, None] == 0
    state = np.where(special[None, :] | empty[None, :], np.where(boundary, 0, REJECT), state)
    allowed = state != REJECT
    allowed[~allowed.any(1)] = True
    next_state = np.where(allowed, state, 0).astype(np.int32)
    return allowed, next_state


def widen(tables: tuple[np.ndarray, np.ndarray], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The tables over a model's vocab_size logits: ids past the tokenizer's (a padded embedding,
    e.g. an imported model's) are never allowed, so they are never sampled."""
    allowed, next_state = tables
    extra = vocab_size - allowed.shape[1]
    if extra <= 0:
        return tables
    return (np.pad(allowed, ((0, 0), (0, extra)), constant_values=False),
            np.pad(next_state, ((0, 0), (0, extra)), constant_values=0))


def complete_prefix(data: bytes) -> str:
    """The text of `data` without a trailing incomplete character (at most 3 bytes: generation
    stopped by --max-tokens mid-character); anything else invalid shows as U+FFFD."""
    for cut in range(min(3, len(data)) + 1):
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")
