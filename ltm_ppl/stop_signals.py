"""SIGINT / SIGTERM during training: the first one asks the loop to stop after the current
iteration (it then commits a checkpoint and says how to resume); a second one ends the process at
once, which is safe too because the last committed checkpoint is never touched by a kill."""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: while inside, `signum` is the first stop signal received (else None)."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            return
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name
