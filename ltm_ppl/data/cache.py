"""Token ids of a corpus, cached on disk as sharded raw files with a manifest, read back lazily.

One folder per (corpus content hash, tokenizer hash), `tokens-<key>/`, holds every split:

    manifest.json            format, corpus spec and sha256, tokenizer name and sha256, dtype, and per
                             split: tokens, has_text, shards [{file, tokens, sha256}] in stream order
    <split>-head.bin         the leading end-of-text token
    <split>-<job>.bin        the ids of the job's documents, each followed by end-of-text

It is built once, out of sight in `.tokens-<key>.build-PID-XXXX/` (every file fsynced), and
appears by one rename, so a reader sees a complete cache or none. A reader checks the manifest and
each shard's size (cheap); `verify_token_cache` re-hashes the shards against the manifest. A cache
that fails the cheap check is rebuilt. LTM_CACHE_DIR moves the cache (tests use a temp dir).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from ..durable import atomic_write_text
from ..errors import LtmError
from .location import cache_dir
from .splits import SPLITS, check_split
from .stream import TokenStream
from .tokenise import ShardWriter, run_jobs


CACHE_FORMAT = 2  # format 1: one tokens-<key>.npy per split (no longer read; safe to delete)
JOB_BYTES = 16 << 20  # documents per tokenising job, in bytes of text


def _fsync_dir(path: Path) -> None:
    # Not durable.fsync_dir: its fault points count the steps of a run's commit, and the cache
    # is no part of a run (a kill leaves at most a hidden build folder, removed by the next build).
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cache_key(corpus, tokenizer) -> str:
    return hashlib.sha256(f"{corpus.fingerprint}|{tokenizer.fingerprint}|tokens-{CACHE_FORMAT}".encode()).hexdigest()[:32]


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a complete cache whose shard files have their recorded sizes, else None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("format") != CACHE_FORMAT:
            return None
        itemsize = np.dtype(manifest["dtype"]).itemsize
        for entry in manifest["splits"].values():
            for shard in entry["shards"]:
                if (folder / shard["file"]).stat().st_size != shard["tokens"] * itemsize:
                    return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_token_cache(folder: Path) -> None:
    """Re-hash every shard against the manifest (reads the whole cache)."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            digest = hashlib.sha256()
            with open(Path(folder) / shard["file"], "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() != shard["sha256"]:
                raise LtmError(f"token cache file {Path(folder) / shard['file']} is damaged (checksum mismatch); delete {folder}")


def _remove_dead_builds(root: Path) -> None:
    """Build folders of processes that no longer run (killed mid-build)."""
    for stale in root.glob(".tokens-*.build-*"):
        try:
            pid = int(stale.name.rsplit(".build-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _build(corpus, tokenizer, folder: Path, workers, progress) -> None:
    _remove_dead_builds(folder.parent)
    tmp = folder.parent / f".{folder.name}.build-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32)
        splits = {}
        for split in SPLITS:
            head = ShardWriter(tmp / f"{split}-head.bin")
            head.write(np.array([tokenizer.eot_id], dtype=dtype))
            splits[split] = {"tokens": 0, "has_text": False, "shards": [head.close()]}
        for result in run_jobs(corpus.tokenise_jobs(JOB_BYTES), tokenizer, tmp, dtype, workers, progress):
            for split, shard in result["splits"].items():
                splits[split]["shards"].append(shard)
        for entry in splits.values():
            entry["tokens"] = sum(s["tokens"] for s in entry["shards"])
            entry["has_text"] = any(s.pop("has_text") for s in entry["shards"])
        manifest = {
            "format": CACHE_FORMAT, "corpus": corpus.spec, "corpus_sha256": corpus.fingerprint,
            "tokenizer": tokenizer.name, "tokenizer_sha256": tokenizer.fingerprint, "dtype": dtype.str,
            "splits": splits,
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
        _fsync_dir(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:  # built meanwhile by another process: keep theirs
            if read_manifest(folder) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def token_cache(corpus, tokenizer, workers: int | None = None, progress: bool | None = None) -> tuple[Path, dict]:
    """(folder, manifest) of the corpus' token cache, built on first use."""
    folder = cache_dir() / f"tokens-{cache_key(corpus, tokenizer)}"
    manifest = read_manifest(folder)
    if manifest is None:
        if folder.exists():  # incomplete or damaged: replaced as a whole
            shutil.rmtree(folder, ignore_errors=True)
        _build(corpus, tokenizer, folder, workers, progress)
        manifest = read_manifest(folder)
        if manifest is None:
            raise LtmError(f"the token cache {folder} could not be read back after building it")
    return folder, manifest


def split_tokens(corpus, split: str, tokenizer, workers: int | None = None, progress: bool | None = None):
    """The split as one lazily read stream: EOT doc EOT doc ... EOT (each document is BOS + text + EOS)."""
    check_split(split)
    folder, manifest = token_cache(corpus, tokenizer, workers, progress)
    entry = manifest["splits"][split]
    if not entry["has_text"]:
        raise LtmError(f"corpus {corpus.spec} has no text in its {split} split")
    return TokenStream([(folder / s["file"], s["tokens"]) for s in entry["shards"]], manifest["dtype"])
