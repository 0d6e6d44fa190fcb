"""One writer per run: `fit` holds an exclusive OS lock on the run directory for its whole life.

flock(2) locks belong to the open file, so the kernel drops them when the process dies however it
dies (kill -9 included): no stale lock to clean up. The lock is taken on the directory itself, so
nothing is written to take it (a refused resume leaves the run byte for byte as it was), and a lock
taken on the hidden folder a new run is built in stays held once that folder is renamed into place
(same inode). A refused writer names the holder from /proc/locks (Linux; elsewhere "another process").
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from ..errors import LtmError

_held: dict[str, int] = {}  # run directory -> open descriptor, locked until closed or the process exits


def _holder(fd: int) -> str:
    """Who holds an flock on the file open as `fd`: 'pid N on host H', from /proc/locks."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()  # 1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF
                if "FLOCK" in fields and inode in fields and "->" not in fields:
                    pid = fields[fields.index(inode) - 1]
                    return f"pid {pid} on host {socket.gethostname()}"
    except OSError:
        pass
    return "another process"


def hold(run: Path) -> None:
    """Take the run's writer lock until release() or the end of this process, or refuse at once
    with one line naming the holder."""
    key = str(Path(run).resolve())
    if key in _held:
        return
    try:
        fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise LtmError(f"cannot open the run directory {run}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise LtmError(f"{run} is being trained by another `ltm fit` ({holder}); one writer at a time: "
                       "wait for it to finish or stop it") from None
    _held[key] = fd


def moved(old_run: Path, new_run: Path) -> None:
    """A locked folder was renamed (a new run committed into place): the same lock, a new name."""
    fd = _held.pop(str(Path(old_run).resolve()), None)
    if fd is not None:
        _held[str(Path(new_run).resolve())] = fd


def release(run: Path) -> None:
    """Drop the lock (fit returning; tests that train twice in one process)."""
    fd = _held.pop(str(Path(run).resolve()), None)
    if fd is not None:
        os.close(fd)
