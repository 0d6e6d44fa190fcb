"""Token ids of a corpus split, cached on disk as .npy and read back memory-mapped.

The cache key is the corpus content hash, the split and the tokenizer's own hash, so a changed
corpus or tokenizer never reads stale ids. LTM_CACHE_DIR moves the cache (tests use a temp dir).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    root = Path(os.environ.get("LTM_CACHE_DIR") or Path.home() / ".cache" / "ltm-ppl")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def mode_like_open(fd: int) -> None:
    """mkstemp makes files 0600; give them what open() would (0666 less the umask), so every file
    of a run gets the same permissions as metrics.jsonl."""
    os.fchmod(fd, 0o666 & ~_umask())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        mode_like_open(fd)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def split_tokens(corpus, split: str, tokenizer) -> np.ndarray:
    """The split as one stream: EOT doc EOT doc ... EOT (each document is BOS + text + EOS)."""
    key = hashlib.sha256(f"{corpus.fingerprint}|{split}|{tokenizer.fingerprint}".encode()).hexdigest()[:32]
    path = cache_dir() / f"tokens-{key}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    stream = [np.array([tokenizer.eot_id], dtype=dtype)]
    for ids in tokenizer.encode_batch(corpus.documents(split)):
        stream.append(np.asarray(ids, dtype=dtype))
        stream.append(np.array([tokenizer.eot_id], dtype=dtype))
    tokens = np.concatenate(stream)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npy")
    mode_like_open(fd)
    os.close(fd)
    np.save(tmp, tokens)
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")
