"""Tokenising a corpus in jobs, in parallel processes, each job streaming its documents into its own
token shards (one raw file per split), so memory is bounded by one batch of documents per worker.

A job is a run of consecutive documents (pieces of shards, or assigned in-memory documents). Job k
writes `<split>-<k>.bin` for each split it has documents of: for every document, its ids then the
end-of-text token, as raw little-endian integers of the cache's dtype. The stream of a split is a
head file holding one end-of-text token followed by the jobs' files in job order, so it is the
same whatever the number of workers. Workers are started with `spawn` (the parent may hold torch
or JAX threads, which fork would copy in an unusable state).
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HF
from tqdm import tqdm

from ..durable import naming
from ..errors import LtmError
from .jobs import Job, job_parts
from .splits import SPLITS
from .tokenizer import Tokenizer

BATCH_CHARS = 1 << 20  # documents are encoded in batches of about this many characters
POOL_MIN_BYTES = 8 << 20  # smaller corpora are tokenised in this process (no pool start-up)


class ShardWriter:
    """One token shard, written as it comes, hashed and counted; fsynced on close."""

    def __init__(self, path: Path):
        self.path, self.tokens, self.has_text = path, 0, False
        self.digest = hashlib.sha256()
        self.fh = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")

    def write(self, array: np.ndarray) -> None:
        data = array.tobytes()
        with naming(self.path):  # a full disk names the shard, not "the output"
            self.fh.write(data)
        self.digest.update(data)
        self.tokens += len(array)

    def close(self) -> dict:
        with naming(self.path):
            self.fh.flush()
            os.fsync(self.fh.fileno())
        self.fh.close()
        return {"file": self.path.name, "tokens": self.tokens, "sha256": self.digest.hexdigest(), "has_text": self.has_text}


def encode(tokenizer, texts: list[str], source: str) -> list[list[int]]:
    """ids of each text; the Rust tokenizer's panics (not Exceptions) become one LtmError."""
    try:
        return tokenizer.encode_batch(texts)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise LtmError(f"corpus file {source}: the tokenizer failed on it ({first})") from None


def run_job(job: Job, tokenizer, out_dir: Path, dtype) -> dict:
    """Tokenise one job into out_dir; returns {split: shard record} and the bytes it covered."""
    writers: dict[str, ShardWriter] = {}
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    pending: list[tuple[str, str]] = []
    pending_chars, source = 0, ""

    def flush():
        nonlocal pending_chars
        for split in SPLITS:
            texts = [t for s, t in pending if s == split]
            if not texts:
                continue
            writer = writers.get(split)
            if writer is None:
                writer = writers[split] = ShardWriter(out_dir / f"{split}-{job.index:06d}.bin")
            writer.has_text = writer.has_text or any(t.strip() for t in texts)
            arrays = []
            for ids in encode(tokenizer, texts, source):
                arrays += [np.asarray(ids, dtype=dtype), eot]
            writer.write(np.concatenate(arrays))
        pending.clear()
        pending_chars = 0

    try:
        for split, text, src in job_parts(job):
            if src != source and pending:
                flush()  # a batch holds one source file, so a tokenizer failure names it
            source = src
            pending.append((split, text))
            pending_chars += len(text)
            if pending_chars >= BATCH_CHARS:
                flush()
        flush()
        return {"index": job.index, "bytes": job.num_bytes, "splits": {s: w.close() for s, w in writers.items()}}
    except BaseException:
        for w in writers.values():
            w.fh.close()
        raise


_worker: dict = {}


def _init_worker(tokenizer_json: str, name: str, out_dir: str, dtype: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _worker.update(tokenizer=Tokenizer(HF.from_str(tokenizer_json), name), out_dir=Path(out_dir), dtype=np.dtype(dtype))


def _run_in_worker(job: Job) -> dict:
    return run_job(job, _worker["tokenizer"], _worker["out_dir"], _worker["dtype"])


def default_workers() -> int:
    env = os.environ.get("LTM_TOKENIZE_WORKERS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise LtmError(f"LTM_TOKENIZE_WORKERS must be a positive integer, got {env!r}")
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_jobs(jobs: list[Job], tokenizer, out_dir: Path, dtype, workers: int | None = None, progress: bool | None = None) -> list[dict]:
    """Every job's result, in job order. workers=None: $LTM_TOKENIZE_WORKERS processes if set,
    else a process per core for corpora of POOL_MIN_BYTES or more and this process below; 1: this process."""
    total = sum(j.num_bytes for j in jobs)
    if workers is None:
        chosen = "LTM_TOKENIZE_WORKERS" in os.environ
        workers = default_workers() if chosen or total >= POOL_MIN_BYTES else 1
    workers = max(1, min(workers, len(jobs)))
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenise", disable=None if progress is None else not progress,
               dynamic_ncols=True)
    results = []
    try:
        if workers == 1:
            for job in jobs:
                results.append(run_job(job, tokenizer, out_dir, dtype))
                bar.update(job.num_bytes)
        else:
            # An executor, not multiprocessing.Pool: a worker that dies (killed, out of memory, or
            # unable to start) ends the build with an error instead of a silent respawn loop.
            args = (tokenizer.hf.to_str(), tokenizer.name, str(out_dir), np.dtype(dtype).str)
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=args)
            try:
                for result in pool.map(_run_in_worker, jobs):
                    results.append(result)
                    bar.update(result["bytes"])
            except BrokenProcessPool:
                raise LtmError("a tokenising worker process died (out of memory, killed, or it could not start); "
                               "LTM_TOKENIZE_WORKERS=1 tokenises in this process") from None
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return results
