"""A new directory's destination checked before any work, so `--out /proc/x` fails at once."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import LtmError


def check_creatable(path: Path, what: str = "the run directory") -> None:
    """Refuse `path` unless a directory can be created there: its nearest existing ancestor is a
    directory in which a probe directory can be made (and is removed again at once)."""
    path = Path(path)
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LtmError(f"cannot create {what} {path}: {ancestor} is not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".ltm-probe-", dir=ancestor)
    except OSError as exc:
        raise LtmError(f"cannot create {what} {path}: {exc.strerror or exc} (in {ancestor})") from None
    os.rmdir(probe)
