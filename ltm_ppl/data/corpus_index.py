"""One streaming pass over a user corpus: check every document, count them, hash the bytes, and
note where workers can start reading (pieces of about PIECE_BYTES).

The pass reads every byte, so its result (the index) is kept in the cache keyed by cheap
metadata: each shard's path, size and modification time (nanoseconds). A corpus whose files keep
all three is not read again; changing any of them (or adding / removing a shard) makes a new key
and a new pass. The content hash in the index keys the token cache.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..durable import atomic_write_text
from ..errors import LtmError
from . import shards as S
from .location import cache_dir

INDEX_FORMAT = 1
PIECE_BYTES = 4 << 20  # where a worker may start reading: jsonl line starts / Parquet row groups
PERSIST_MIN_BYTES = 1 << 20  # smaller corpora are re-read on every load (milliseconds), not cached


def corpus_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    files = S.list_shards(path)
    if not files:
        raise LtmError(f"corpus directory {path} holds no .txt, .jsonl, .jsonl.gz or .parquet files")
    return files


def shard_name(root: Path, file: Path) -> str:
    return str(file.relative_to(root)) if root.is_dir() else file.name


def cheap_key(root: Path, files: list[Path]) -> tuple[str, int]:
    """(key from path, size and mtime of every shard, total bytes): no file is read."""
    entries, total = [], 0
    for file in files:
        st = file.stat()
        entries.append([shard_name(root, file), st.st_size, st.st_mtime_ns])
        total += st.st_size
    blob = json.dumps([INDEX_FORMAT, str(root.resolve()), root.is_dir(), entries])
    return hashlib.sha256(blob.encode()).hexdigest()[:32], total


def _hash_file(path: Path, digest) -> None:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)


def _scan_jsonl(file: Path, kind: str, first_doc: int, digest) -> tuple[int, list]:
    pieces, docs = [], 0
    start = first_line = piece_docs = 0
    end = 0
    for number, offset, line in S.jsonl_lines(file, kind):
        if kind == "jsonl":
            digest.update(line)
        if offset - start >= PIECE_BYTES and piece_docs:
            pieces.append([start, offset, first_doc + docs - piece_docs, first_line + 1, offset - start])
            start, first_line, piece_docs = offset, number - 1, 0
        if line.strip():
            S.jsonl_text(file, number, line)
            docs += 1
            piece_docs += 1
        end = offset + len(line)
    if not docs:
        raise LtmError(f"corpus file {file} is empty")
    if piece_docs:
        pieces.append([start, None if kind == "jsonl.gz" else end, first_doc + docs - piece_docs, first_line + 1, end - start])
    if kind == "jsonl.gz":
        _hash_file(file, digest)
    return docs, pieces


def _scan_parquet(file: Path, first_doc: int, digest) -> tuple[int, list]:
    meta = S.parquet_file(file).metadata
    pieces, docs = [], 0
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        if rows:
            pieces.append([group, group + 1, first_doc + docs, 0, meta.row_group(group).total_byte_size])
        docs += rows
    for _ in S.parquet_documents(file):  # every row is read once here, so a null fails now
        pass
    if not docs:
        raise LtmError(f"corpus file {file} is empty (no rows)")
    _hash_file(file, digest)
    return docs, pieces


def scan(root: Path, files: list[Path]) -> dict:
    """The index of a corpus: content hash (the same bytes hash as before sharding: the file's bytes
    for one file, relative path + NUL + bytes of each file for a directory), shards, pieces."""
    digest = hashlib.sha256()
    shards, total = [], 0
    for file in files:
        kind = S.file_kind(file) if not root.is_dir() else S.shard_kind(file)
        name = shard_name(root, file)
        if root.is_dir():
            digest.update(name.encode() + b"\0")
        size = file.stat().st_size
        if kind == "txt":
            raw = file.read_bytes()
            S.read_txt(file, raw)
            digest.update(raw)
            docs, pieces = 1, [[0, size, total, 1, size]]
        elif kind == "parquet":
            docs, pieces = _scan_parquet(file, total, digest)
        else:
            docs, pieces = _scan_jsonl(file, kind, total, digest)
        shards.append({"name": name, "kind": kind, "size": size, "documents": docs, "pieces": pieces})
        total += docs
    return {"format": INDEX_FORMAT, "sha256": digest.hexdigest(), "documents": total, "shards": shards}


def load_index(root: Path) -> dict:
    """The corpus index, from the cache when the shards' metadata are unchanged."""
    files = corpus_files(root)
    key, total = cheap_key(root, files)
    cached = cache_dir() / f"corpus-{key}.json"
    if total >= PERSIST_MIN_BYTES and cached.exists():
        try:
            index = json.loads(cached.read_text())
            if index.get("format") == INDEX_FORMAT:
                return index
        except (OSError, ValueError):
            pass  # unreadable: scan again and replace it
    index = scan(root, files)
    if total >= PERSIST_MIN_BYTES:
        atomic_write_text(cached, json.dumps(index))
    return index
