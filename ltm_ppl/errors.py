"""The one exception type for a user's mistake: the CLI prints it as `error: ...` and exits 2."""


class LtmError(Exception):
    """Bad input or a refused request, explained in one line."""


class Interrupted(Exception):
    """Training stopped by SIGINT or SIGTERM after committing a checkpoint; the message says how to
    resume. The CLI prints it as is and exits 128 + the signal number (130, 143)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
