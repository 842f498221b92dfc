"""Stopping a run cleanly when asked: Ctrl-C or SIGTERM finishes the step, saves, and stops.

A signal can arrive at any instruction. Acting on it there (Python's
default: ``KeyboardInterrupt`` wherever the program happens to be) could
leave an optimizer step half applied or a checkpoint half written. So while
a run trains, Ctrl-C only *asks* for a stop: the loop looks at the request
between steps, saves a checkpoint, and returns. A second Ctrl-C stops at
once, without saving, unless files are being written: then the write
finishes first, because a killed write is the one thing that could cost the
learner the last checkpoint.

SIGTERM is what ``timeout``, Slurm, ``docker stop`` and the other schedulers
send before they kill a process; it is handled as Ctrl-C is, so a run that
reaches its allotted time leaves a checkpoint to resume from.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class StopRequest:
    """Whether a stop was asked for; ``with StopRequest(log):`` listens for it.

    Inside the block, SIGINT (Ctrl-C) and SIGTERM set ``requested`` (and
    ``signal``, the one received) instead of ending the process; ``with
    stop.writing():`` marks files being written. Signals reach only the main
    thread, so elsewhere the block listens for nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self, log=print):
        self.log = log
        self.requested = False
        self.signal = None  # the signal that asked for the stop
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

    @property
    def exit_status(self) -> int:
        """The status a command line ends with after this stop: 128 + the signal's number
        (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process it stopped."""
        return 128 + int(self.signal or signal.SIGINT)

    def _on_signal(self, signum, frame):
        name = self.NAMES.get(signum, f"signal {signum}")
        if self.saving:  # never break a write: let it finish, then stop
            self.requested, self.signal = True, self.signal or signum
            self.log(f"\n{name}: files are being written; stopping as soon as they are safe")
            return
        if self.requested:  # a second one: stop now, without saving
            raise KeyboardInterrupt
        self.requested, self.signal = True, signum
        self.log(
            f"\n{name}: finishing what is under way (this step, or the epoch's test), saving a "
            "checkpoint, then stopping (a second one stops at once, without saving)"
        )


__all__ = ["StopRequest"]
