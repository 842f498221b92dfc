"""What tinyvit's command lines share: flags checked as they are parsed, one-line errors.

A learner who mistypes a flag should read one line that names the flag, what
it must be and what was given, not a traceback, and should read it before a
data set is loaded or a minute is spent. So every command line here (the
trainer, the lessons) parses with ``ArgumentParser``, whose errors are a
single ``error: ...`` line on stderr and exit status 2, and gives each
number a ``flag_type`` built from the same ``checks.Range`` that the
function it feeds checks with. Settings declared with ``settings.setting``
become flags through ``add_setting_flag``, with nothing written twice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def folder_type(text):
    """An argparse ``type=`` for a folder to write into (``--out``): any path but an empty
    one, which would write into the current folder without a word."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"must name a folder, got {text!r} (for the current folder, pass .)"
        )
    return Path(text)


folder_type.__name__ = "folder"


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


def add_setting_flag(parser, field, help_text: str) -> None:
    """Add the flag of a ``settings.setting`` field: ``--batch-size`` for ``batch_size``,
    parsed and checked by the field's kind; its default is None (not given).

    The field's command-line hints: ``metavar``, ``aliases`` (more flag names),
    ``parse`` (an argparse ``type=`` of its own), ``long_choices`` (choices
    listed only when a value is not one of them).
    """
    kind, hints = field.metadata["kind"], field.metadata["cli"]
    names = [f"--{field.name.replace('_', '-')}", *hints.get("aliases", ())]
    options = dict(dest=field.name, default=None, help=help_text)
    if "metavar" in hints:
        options["metavar"] = hints["metavar"]
    if "parse" in hints:
        options["type"] = hints["parse"]
    elif isinstance(kind, Range):
        options["type"] = flag_type(kind)
        options.setdefault("metavar", "N" if kind.kind is int else "X")
    elif isinstance(kind, tuple) and hints.get("long_choices"):
        options["type"] = choice_type(kind, field.name)
    elif isinstance(kind, tuple):
        options["choices"] = kind
    parser.add_argument(*names, **options)


__all__ = [
    "ArgumentParser",
    "add_setting_flag",
    "choice_type",
    "duration_type",
    "fail",
    "flag_type",
    "folder_type",
]
