"""SIGINT / SIGTERM during training: the first one asks the loop to stop after the current
iteration (it then commits a checkpoint and says how to resume); a second one ends the process at
once, which is safe too because the last committed checkpoint is never touched by a kill."""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopNow(Exception):
    """A stop signal arrived inside an iteration that may be abandoned: raised by `check()`."""


_active = None  # the StopRequest that inner loops look at (one at a time: fit's)


def check() -> None:
    """Inner loops (fast steps, leapfrog steps) call this once per step: with one worker a stop
    signal abandons the iteration at once (its slow step has not run, so the weights are those
    of the last finished iteration). Several workers must agree before stopping, at log points."""
    if _active is not None and _active.signum is not None and _active.abandon:
        raise StopNow(_active.signum)


class StopRequest:
    """Context manager: while inside, `signum` is the first stop signal received (else None).
    abandon: whether check() may end an iteration half-way (one worker only)."""

    def __init__(self, abandon: bool = False):
        self.signum = None
        self.abandon = abandon
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            return
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    def __enter__(self):
        global _active
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        _active = self
        return self

    def __exit__(self, *exc):
        global _active
        _active = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name
