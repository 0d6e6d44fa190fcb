"""The one exception type for a user's mistake: the CLI prints it as `error: ...` and exits 2."""


class LtmError(Exception):
    """Bad input or a refused request, explained in one line."""


class Interrupted(Exception):
    """Training stopped by SIGINT or SIGTERM after committing a checkpoint; the message says how to
    resume. The CLI prints it as is and exits 128 + the signal number (130, 143)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


_SPACE = {28, 122}  # ENOSPC, EDQUOT


def os_failure(exc: OSError) -> str:
    """An OS error as one line: where, why, and what still holds (the commit protocol keeps the
    last committed checkpoint whole)."""
    where = exc.filename if exc.filename is not None else "the output (stdout or a pipe)"
    line = " ".join(f"{where}: {exc.strerror or exc}".split())  # HDF5's messages span lines: one line
    if len(line) > 400:
        line = line[:400] + " ..."
    if exc.errno in _SPACE:
        line += "; free space and run it again (a run's last committed checkpoint is whole: `ltm fit --resume RUN` goes on from it)"
    return line
