"""`ltm fit --tensorboard DIR`: the scalars of metrics.jsonl, also as TensorBoard event files, for
watching a run live (`tensorboard --logdir DIR`). metrics.jsonl stays the record; this is a view.

The `tensorboard` package is an optional extra (`pip install 'ltm-ppl[tensorboard]'`), imported
only here and only when asked; its own event writer is used (not torch's SummaryWriter), so the
NumPyro path imports no torch, and TensorFlow is never needed.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from .destination import check_creatable
from .errors import LtmError


def check(logdir: str | Path | None) -> Path | None:
    """Before any work: the extra is installed and a folder can be made at `logdir`."""
    if logdir is None:
        return None
    logdir = Path(logdir)
    check_creatable(logdir, "the TensorBoard folder")
    if importlib.util.find_spec("tensorboard") is None:
        raise LtmError("--tensorboard needs the tensorboard package: pip install 'ltm-ppl[tensorboard]'")
    return logdir


def tags(record: dict) -> dict[str, float]:
    """A metrics.jsonl record's scalars as TensorBoard tags: train/<name>, or val/<name> for an
    evaluation record; an event record (a resume's notice) has none."""
    if "event" in record:
        return {}
    prefix = "val" if record.get("split") == "val" else "train"
    return {f"{prefix}/{k}": float(v) for k, v in record.items()
            if k not in ("iter", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class EventWriter:
    """Appends each metrics record to an event file in `logdir`, flushed at once (records come
    at log points only). `start`: the iteration training starts from; a resumed run first marks
    it, so TensorBoard drops the points a killed run logged after its last checkpoint (as
    metrics.jsonl does)."""

    def __init__(self, logdir: Path, start: int = 0):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = Event, Summary
        self._writer = EventFileWriter(str(logdir))
        if start > 0:  # TensorBoard purges the points at and after this step from older files
            self._writer.add_event(Event(wall_time=time.time(), step=start + 1,
                                         session_log=SessionLog(status=SessionLog.START)))

    def add(self, record: dict) -> None:
        values = tags(record)
        if not values:
            return
        summary = self._summary(value=[self._summary.Value(tag=t, simple_value=v) for t, v in values.items()])
        self._writer.add_event(self._event(wall_time=time.time(), step=record["iter"], summary=summary))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
