"""A split's token stream over its shard files, read lazily through memory maps.

Behaves as a read-only 1-D array for what the windows and the evaluators need: len, an integer
index, a contiguous slice (possibly across shards), `dtype`, and np.asarray (which reads the whole
split: small splits and tests only; `chunks` reads it piece by piece). At most OPEN_MAPS shards
are mapped at a time, so a corpus of many shards never runs out of file descriptors.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

OPEN_MAPS = 64


class TokenStream:
    def __init__(self, files: list[tuple[Path, int]], dtype):
        self.files = [(Path(p), n) for p, n in files if n > 0]  # an empty file cannot be mapped
        self.dtype = np.dtype(dtype)
        self.starts = np.cumsum([0] + [n for _, n in self.files])
        self._maps: OrderedDict[int, np.memmap] = OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def _map(self, i: int) -> np.memmap:
        if i in self._maps:
            self._maps.move_to_end(i)
            return self._maps[i]
        path, n = self.files[i]
        self._maps[i] = np.memmap(path, dtype=self.dtype, mode="r", shape=(n,))
        if len(self._maps) > OPEN_MAPS:
            self._maps.popitem(last=False)
        return self._maps[i]

    def _range(self, start: int, stop: int) -> np.ndarray:
        out = []
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            first = int(self.starts[i])
            take = min(stop, int(self.starts[i + 1])) - start
            out.append(self._map(i)[start - first : start - first + take])
            start += take
            i += 1
        if not out:
            return np.empty(0, dtype=self.dtype)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise IndexError("a token stream takes contiguous slices only")
            return self._range(start, max(start, stop))
        index = int(key)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"token {key} of a stream of {n}")
        return self._range(index, index + 1)[0]

    def chunks(self, size: int = 1 << 22):
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def __array__(self, dtype=None, copy=None):
        whole = self._range(0, len(self))
        return whole.astype(dtype) if dtype is not None else np.array(whole)
