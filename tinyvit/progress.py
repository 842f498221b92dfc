"""Progress bars where someone watches them: on a terminal, and nowhere else.

A progress bar redraws itself in place with carriage returns. On a terminal
that is one line that moves; in a log file (a run started with ``nohup`` or
by a scheduler, its output piped to ``tee``) it is every frame of the bar
one after another, megabytes of them. So a bar is drawn only when the
stream it writes to is a terminal, unless the caller says otherwise; the
runs print one plain line per epoch either way.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def on_terminal(stream=None) -> bool:
    """Whether ``stream`` (standard error, where bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def wanted(progress=None) -> bool:
    """``progress`` if it says (True or False); with ``None``, whether a terminal shows it."""
    return on_terminal() if progress is None else bool(progress)


def bar(iterable=None, *, progress=None, **options) -> tqdm:
    """A ``tqdm`` bar, drawn only when ``wanted(progress)``; ``options`` are tqdm's."""
    return tqdm(iterable, disable=not wanted(progress), **options)


__all__ = ["bar", "on_terminal", "wanted"]
