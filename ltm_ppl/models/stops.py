"""When a generating row has stopped: one rule for both backends' `generate` (numpy only).

A row stops once its new tokens end with one of the stop token sequences (end-of-text is the
one-token sequence (stop_id,)); the batch ends when every row has stopped. Rows go on being
sampled after they stop, exactly as before, so every row's tokens up to its stop are those of a
generation without the rule: callers cut each row at its stop, as they always did.
"""
from __future__ import annotations

import numpy as np


class StopRows:
    """Which rows of a batch have produced a stop sequence, fed one new token per row at a time."""

    def __init__(self, rows: int, stop_id: int | None = None, sequences=None):
        seqs = ([(int(stop_id),)] if stop_id is not None else []) + [tuple(int(t) for t in s) for s in sequences or ()]
        self.sequences = [s for s in dict.fromkeys(seqs) if s]
        self.longest = max((len(s) for s in self.sequences), default=0)
        self.tails: list[list[int]] = [[] for _ in range(rows)]
        self.done = np.zeros(rows, dtype=bool)

    @property
    def active(self) -> bool:
        return bool(self.sequences)

    def update(self, tokens) -> bool:
        """Feed each row's new token [B]; True once every row has stopped."""
        for row, token in enumerate(np.asarray(tokens).reshape(-1)):
            if self.done[row]:
                continue
            tail = self.tails[row]
            tail.append(int(token))
            del tail[:-self.longest]
            self.done[row] = any(tuple(tail[-len(s):]) == s for s in self.sequences)
        return bool(self.done.all())
