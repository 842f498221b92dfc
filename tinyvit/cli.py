"""What tinyvit's command lines share: flags checked as they are parsed, one-line errors.

A learner who mistypes a flag should read one line that names the flag, what
it must be and what was given, not a traceback, and should read it before a
data set is loaded or a minute is spent. So every command line here (the
trainer, the lessons) parses with ``ArgumentParser``, whose errors are a
single ``error: ...`` line on stderr and exit status 2, and gives each
number a ``flag_type`` built from the same ``checks.Range`` that the
function it feeds checks with.
"""

from __future__ import annotations

import argparse
import sys

from .checks import Range


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one ``error: ...`` line, exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def fail(message: str, status: int = 2):
    """Print ``error: message`` on stderr and exit with ``status`` (no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def flag_type(kind: Range, name: str | None = None):
    """An argparse ``type=`` that parses a number and checks it against ``kind``.

    The error reads ``argument --lr: must be a number > 0, got '-1'``.
    """

    def parse(text):
        try:
            value = int(text) if kind.kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind.describe()}, got {text!r}") from None
        try:
            return kind.check("value", value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {kind.describe()}, got {text!r}") from None

    parse.__name__ = name or ("integer" if kind.kind is int else "number")
    return parse


def duration_type(text):
    """An argparse ``type=`` for a length of time: ``30m``, ``1800``, ``1800s``, ``0.5h`` ->
    seconds (a positive number)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and seconds < float("inf")):
        raise argparse.ArgumentTypeError(
            f"must be a length of time such as 30m, 1800s or 0.5h, got {text!r}"
        )
    return seconds


duration_type.__name__ = "duration"


def choice_type(choices, what: str):
    """An argparse ``type=`` for one of ``choices`` that lists them when the value is not one.

    (argparse's own ``choices=`` does the same, but prints every choice in the
    usage line too; use this one where the list is long.)
    """

    def parse(text):
        if text not in choices:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {text!r}; known: {', '.join(choices)}"
            )
        return text

    parse.__name__ = what
    return parse


__all__ = ["ArgumentParser", "choice_type", "duration_type", "fail", "flag_type"]
