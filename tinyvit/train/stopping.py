"""Stopping a run cleanly when the user asks: Ctrl-C finishes the step, saves, and stops.

A signal can arrive at any instruction. Acting on it there (Python's
default: ``KeyboardInterrupt`` wherever the program happens to be) could
leave an optimizer step half applied or a checkpoint half written. So while
a run trains, Ctrl-C only *asks* for a stop: the loop looks at the request
between steps, saves a checkpoint, and returns. A second Ctrl-C stops at
once, without saving, unless files are being written: then the write
finishes first, because a killed write is the one thing that could cost the
learner the last checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class StopRequest:
    """Whether the user asked the run to stop; ``with StopRequest(log):`` listens for it.

    Inside the block, SIGINT (Ctrl-C) sets ``requested`` instead of raising;
    ``with stop.writing():`` marks files being written. Signals reach only
    the main thread, so elsewhere the block listens for nothing.
    """

    SIGNALS = (signal.SIGINT,)

    def __init__(self, log=print):
        self.log = log
        self.requested = False
        self.saving = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def writing(self):
        """While files are written, a second Ctrl-C lets the write finish."""
        self.saving = True
        try:
            yield
        finally:
            self.saving = False

    def _on_signal(self, signum, frame):
        if self.saving:  # never break a write: let it finish, then stop
            self.requested = True
            self.log("\nCtrl-C: files are being written; stopping as soon as they are safe")
            return
        if self.requested:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self.requested = True
        self.log(
            "\nCtrl-C: finishing what is under way (this step, or the epoch's test), saving a "
            "checkpoint, then stopping (press again to stop at once, without saving)"
        )


__all__ = ["StopRequest"]
