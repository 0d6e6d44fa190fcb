"""Durable file steps (write, fsync, rename) with a fault-injection hook between every two of them.

Each step first passes `fault_point(label)`. With LTM_FAULT_KILL_AT=n in the environment the n-th
step (counted from 1 over the whole process) kills the process with SIGKILL before it runs, which
is how tests/test_crash_safety.py proves a kill at any point leaves a usable run. With
LTM_FAULT_TRACE=FILE every step appends "n label" to FILE, so a test can count the steps.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
from pathlib import Path

_count = 0


def fault_point(label: str) -> None:
    global _count
    _count += 1
    trace = os.environ.get("LTM_FAULT_TRACE")
    if trace:
        with open(trace, "a") as fh:
            fh.write(f"{_count} {label}\n")
    if os.environ.get("LTM_FAULT_KILL_AT") == str(_count):
        os.kill(os.getpid(), signal.SIGKILL)


def write_file(path: Path, data: bytes) -> None:
    """Create `path` (which must not exist; mode 0666 minus the umask), write it and fsync it."""
    fault_point(f"write {path.name}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with naming(path), os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        fault_point(f"fsync {path.name}")
        os.fsync(fh.fileno())


@contextlib.contextmanager
def naming(path: Path):
    """A failed write (ENOSPC, EIO, ...) on an open file carries no file name: give it the path,
    so the one error line can say where."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def fsync_file(path: Path) -> None:
    fault_point(f"fsync {path.name}")
    fd = os.open(path, os.O_RDONLY)
    try:
        with naming(path):
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the names in a directory (renames, new files) durable."""
    fault_point(f"fsync dir {path.name or path}")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with naming(path):
            os.fsync(fd)
    finally:
        os.close(fd)


def rename(src: Path, dst: Path) -> None:
    fault_point(f"rename {src.name} -> {dst.name}")
    os.replace(src, dst)


def temporary_name(path: Path, tag: str) -> Path:
    """A sibling name for building `path` out of sight: .NAME.TAG-PID-RANDOM (hidden, never a run)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def atomic_replace(path: Path, data: bytes) -> None:
    """Replace `path` by one rename of a complete, synced temporary sibling; then sync the directory."""
    tmp = temporary_name(path, "tmp")
    try:
        write_file(tmp, data)
        rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# Quiet variants for files that belong to no run (token caches, indexes, tables of a study): no
# fault points, so the steps a crash test counts are those of a run's commit alone.
def _create_temporary(path: Path):
    """An open, new, hidden sibling of `path`, created mode 0666 minus the umask (mkstemp's 0600
    would make run and cache files unreadable to the group where the umask allows it)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")
        except FileExistsError:
            continue


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` as a whole or not at all: a synced temporary sibling renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fh = _create_temporary(path)
    try:
        with naming(path), fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
