"""The one exception type for a user's mistake: the CLI prints it as `error: ...` and exits 2."""


class LtmError(Exception):
    """Bad input or a refused request, explained in one line."""
