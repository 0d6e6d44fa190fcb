"""The split rule: which split each document (or part of one) belongs to.

A corpus of 20 documents or more sends document i to val when i % 20 == 18, to test when
i % 20 == 19, else to train; a smaller one cuts every document into line-aligned parts of 90%, 5%
and 5% of its characters. The rule reads nothing but the index and the text, so a worker
tokenising one piece of a corpus assigns its documents without seeing the others.
"""
from __future__ import annotations

from ..errors import LtmError

SPLITS = ("train", "val", "test")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise LtmError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")


def _cut_by_lines(text: str) -> tuple[str, str, str]:
    """First 90% / next 5% / last 5% of the characters, moved to the nearest line break."""
    def boundary(fraction: float) -> int:
        at = int(len(text) * fraction)
        newline = text.find("\n", at)
        return newline + 1 if newline != -1 else at
    a, b = boundary(0.90), boundary(0.95)
    b = max(a, b)
    return text[:a], text[a:b], text[b:]


def assign_parts(index: int, text: str, num_documents: int) -> list[tuple[str, str]]:
    """(split, text) of document `index` of `num_documents`: the whole document in one split, or,
    in a corpus of fewer than 20 documents, its three line-aligned parts."""
    if num_documents >= 20:
        return [(SPLITS[1] if index % 20 == 18 else SPLITS[2] if index % 20 == 19 else SPLITS[0], text)]
    return list(zip(SPLITS, _cut_by_lines(text)))


def split_documents(docs: list[str]) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i, doc in enumerate(docs):
        for split, part in assign_parts(i, doc, len(docs)):
            splits[split].append(part)
    return splits
