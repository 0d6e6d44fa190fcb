"""Tokenising jobs: a corpus cut into pieces a worker process reads on its own, and the documents
(with their splits) each piece yields."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import shards as S
from .splits import assign_parts


@dataclass(frozen=True)
class Job:
    index: int
    num_bytes: int
    # (path, kind, start, stop, first document, first line, bytes) per piece of a shard
    pieces: tuple = ()
    num_documents: int = 0  # documents in the whole corpus (the split rule needs it)
    assigned: tuple = field(default=(), repr=False)  # ((split, text), ...) of an in-memory corpus


def piece_documents(path: Path, kind: str, piece) -> Iterator[str]:
    start, stop, _, first_line = piece[:4]
    if kind == "txt":
        yield S.read_txt(path)
    elif kind == "parquet":
        yield from S.parquet_documents(path, start, stop)
    else:
        yield from S.jsonl_documents(path, kind, start, stop, first_line)


def job_parts(job: Job) -> Iterator[tuple[str, str, str]]:
    """(split, text, source file) of every document part of the job, in corpus order."""
    for split, text in job.assigned:
        yield split, text, "(built-in corpus)"
    for path, kind, *piece in job.pieces:
        for i, text in enumerate(piece_documents(Path(path), kind, piece)):
            for split, part in assign_parts(piece[2] + i, text, job.num_documents):
                yield split, part, path
