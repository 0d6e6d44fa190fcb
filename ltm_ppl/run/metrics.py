"""metrics.jsonl: one JSON record per logged iteration, evaluation or event, appended line by line."""
from __future__ import annotations

import json
from pathlib import Path

from .. import durable
from ..errors import LtmError
from .layout import METRICS


def append_metrics(run: Path, record: dict) -> None:
    with durable.naming(run / METRICS), open(run / METRICS, "a") as fh:
        fh.write(json.dumps(record) + "\n")  # a torn line (disk full, kill) is dropped on resume


def read_metrics(run: Path) -> list[dict]:
    """Every record of metrics.jsonl in order (training, validation and event records), for readers
    such as `ltm plot`. A torn last line (a run killed or still writing) is left out."""
    path = run / METRICS
    if not path.exists():
        raise LtmError(f"{run} has no metrics.jsonl: it has logged no iteration yet")
    records = []
    for number, _, record in _metric_lines(path):
        if not isinstance(record, dict) or not isinstance(record.get("iter"), int):
            raise LtmError(f"{path} is damaged (line {number} is not a record with an iteration)")
        records.append(record)
    return records


def _metric_lines(path: Path):
    """(line number, line, parsed record) of each non-blank line; a torn last line (a killed or
    still-writing run) is skipped, any other line that is not JSON is damage."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            yield number, line, json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return
            raise LtmError(f"{path} is damaged (line {number} is not JSON)") from None


def truncate_metrics(run: Path, iteration: int) -> None:
    """Drop records logged after the checkpoint a resumed run starts from. metrics.jsonl is appended
    line by line (not renamed into place), so a torn last line from a killed run is dropped too."""
    path = run / METRICS
    if not path.exists():
        return
    kept = [line for _, line, record in _metric_lines(path) if record.get("iter", 0) <= iteration]
    durable.atomic_replace(path, "".join(line + "\n" for line in kept).encode())
