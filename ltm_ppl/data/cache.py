"""Token ids of a corpus split, cached on disk as .npy and read back memory-mapped.

The cache key is the corpus content hash, the split and the tokenizer's own hash, so a changed
corpus or tokenizer never reads stale ids. LTM_CACHE_DIR moves the cache (tests use a temp dir).
"""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    root = Path(os.environ.get("LTM_CACHE_DIR") or Path.home() / ".cache" / "ltm-ppl")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _create_temporary(path: Path):
    """An open, new, hidden sibling of `path`, created mode 0666 minus the umask (mkstemp's 0600
    would make run and cache files unreadable to the group where the umask allows it)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")
        except FileExistsError:
            continue


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` as a whole or not at all: a synced temporary sibling renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fh = _create_temporary(path)
    try:
        with fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    tmp, fh = _create_temporary(path)
    try:
        with fh:
            np.save(fh, tokens)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return np.load(path, mmap_mode="r")
