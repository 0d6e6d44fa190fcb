"""bench/fewshot_functions.py's two references (issue 24): the recency heuristic's accuracy and
each LTM's greedy accuracy minus the AR model's, paired over the same questions, on hand-made
few-shot records."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("fewshot_functions")


def write(path: Path, questions: list[tuple[str, str, bool]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"question": q, "gold": gold, "clean": {"greedy": {"correct": ok}}}) + "\n"
                            for q, gold, ok in questions))


def test_recency_answers_with_the_last_listed_output(bench, tmp_path):
    # right when the asked input was listed last (1st), or its output equals the last one (3rd)
    write(tmp_path / "r.jsonl", [("a>1 b>2 b", "2", True), ("a>1 b>2 a", "1", True), ("a>3 b>3 a", "3", True),
                                  ("c", "4", True), ("a>1 b>2 c>5 c", "5", True)])
    assert bench.recency(tmp_path / "r.jsonl") == pytest.approx(3 / 5)


def test_paired_difference_is_per_question(bench, tmp_path):
    ltm = [True, True, False, True, False]
    ar = [False, True, False, False, True]
    write(tmp_path / "fewshot" / "ltm-nz4-k2.jsonl", [("a>1 a", "1", ok) for ok in ltm])
    write(tmp_path / "fewshot" / "none-k2.jsonl", [("a>1 a", "1", ok) for ok in ar])
    (row,) = bench.paired_vs_none(tmp_path, ["none", "ltm-nz4"], [2, 4])  # K = 4 has no records: skipped
    d = np.array(ltm, float) - np.array(ar, float)
    assert row["model"] == "ltm-nz4" and row["pairs"] == 2 and row["questions"] == 5
    assert row["difference"] == pytest.approx(0.2)
    assert row["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(5))
    assert row["low"] < 0.2 < row["high"] and row["high"] - 0.2 == pytest.approx(2.776445 * row["se"], rel=1e-5)
