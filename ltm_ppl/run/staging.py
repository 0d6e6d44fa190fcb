"""A new run (or another folder that must appear whole) is built under a hidden sibling name and
renamed into place with everything in it, so a kill before that leaves no run at all."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import durable
from ..errors import LtmError
from .layout import TOKENIZER


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_unborn_runs(parent: Path) -> None:
    """Delete the hidden .NAME.incomplete-PID-* folders that killed `fit`s left in `parent`
    (their process is gone; a live one is still building its run)."""
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        name = path.name
        if name.startswith(".") and ".incomplete-" in name and path.is_dir():
            pid = name.rsplit(".incomplete-", 1)[1].split("-")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def stage_run(path: Path, what: str = "the run directory") -> Path:
    """An empty hidden folder beside `path` in which a new run (or another folder that must
    appear whole, such as diagnose's) is built (see commit_run). Stages that killed processes
    left beside it are removed first."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_unborn_runs(path.parent)
        stage = durable.temporary_name(path, "incomplete")
        stage.mkdir()
    except OSError as exc:
        raise LtmError(f"cannot create {what} {path}: {exc.strerror}") from None
    return stage


def commit_run(stage: Path, path: Path, unsynced: tuple[str, ...] = (TOKENIZER,)) -> None:
    """Make a fully built run (config, tokenizer, iteration-0 checkpoint) appear at `path` at once.
    unsynced: the files in the stage not yet fsynced (written without durable.write_file)."""
    for name in unsynced:
        durable.fsync_file(stage / name)
    durable.fsync_dir(stage)
    durable.rename(stage, path)  # onto nothing, or onto an empty directory the user made
    durable.fsync_dir(path.parent)

