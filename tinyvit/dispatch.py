"""Which code runs an op: its reference body, or a kernel that a device registered for it.

Every op of ``functional.py`` is written once as whole-array maths, its
reference, and marked ``@replaceable``. A kernel is a second implementation
of one op for one device, with the same arguments and the same results,
written for speed there; ``tinyvit/kernels/`` registers the CPU's and the
GPU's with ``register`` when tinyvit is imported. When an op is called, it
runs the kernel registered for the device of its first input if there is
one, else its reference body. This module knows neither side: ``functional``
hands it references, ``kernels`` hands it kernels, and neither imports the
other.

To run everything on the reference path (to read along in a debugger, to
compare, to rule a kernel out):

    TINYVIT_KERNELS=reference python -m tinyvit.train      # from the environment
    tinyvit.kernels.use("reference")                       # from Python; use("auto") undoes it
    with tinyvit.kernels.using("reference"): ...           # for a block of code

Each op keeps its reference body as ``op.reference``
(``functional.gelu.reference(x)``); a kernel that hands a case back to the
reference (softmax along another axis than the last) takes it from
``reference(name)``.
"""

from __future__ import annotations

import contextlib
import functools
import os

from . import backend

MODES = ("auto", "reference")
ENVIRONMENT = "TINYVIT_KERNELS"


def _mode_from_environment() -> str:
    value = os.environ.get(ENVIRONMENT, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENVIRONMENT}={value!r}: expected one of {MODES}")
    return value


_mode = _mode_from_environment()
_references: dict[str, object] = {}  # op name -> its reference body
_kernels: dict[str, dict[str, object]] = {}  # device -> {op name: kernel}
_notes: dict[str, object] = {}  # device -> a function giving a few words for describe()


# ---------------------------------------------------------------------------
# the mode: kernels where they exist, or every op on its reference
# ---------------------------------------------------------------------------


def mode() -> str:
    """``"auto"`` (kernels where they exist) or ``"reference"`` (every op on its reference)."""
    return _mode


def use(new_mode: str) -> str:
    """Switch every op to ``"reference"`` or back to ``"auto"``; returns the previous mode."""
    global _mode
    if new_mode not in MODES:
        raise ValueError(f"kernels.use: expected one of {MODES}, got {new_mode!r}")
    previous, _mode = _mode, new_mode
    return previous


@contextlib.contextmanager
def using(new_mode: str):
    """``with using("reference"):`` runs the block in that mode, then restores the previous one."""
    previous = use(new_mode)
    try:
        yield
    finally:
        use(previous)


# ---------------------------------------------------------------------------
# the two tables: references (from functional) and kernels (from kernels/)
# ---------------------------------------------------------------------------


def replaceable(reference_body):
    """Make a reference op run the kernel registered for its input's device, if any.

    The decorated function is the reference body; it stays reachable as
    ``op.reference`` and as ``reference(name)``. A kernel is called with
    exactly the op's arguments.
    """
    name = reference_body.__name__
    _references[name] = reference_body

    @functools.wraps(reference_body)
    def op(first, *args, **kwargs):
        if _mode != "reference":
            array = getattr(first, "data", first)
            kernels = _kernels.get(backend.device_of(array))
            kernel = kernels.get(name) if kernels else None
            if kernel is not None:
                return kernel(first, *args, **kwargs)
        return reference_body(first, *args, **kwargs)

    op.reference = reference_body
    return op


def reference(name: str):
    """The reference body of op ``name`` (what ``functional.<name>.reference`` is)."""
    if name not in _references:
        raise KeyError(f"no reference op named {name!r}; ops: {sorted(_references)}")
    return _references[name]


def register(device: str, kernels: dict, note=None) -> None:
    """Run ``kernels`` (``{op name: kernel}``) for inputs on ``device``.

    ``note()``, if given, returns a few words that ``describe`` adds for that
    device (the CPU's threads; or, with no kernels, why there are none).
    """
    available(device).update(kernels)
    if note is not None:
        _notes[device] = note


def available(device: str = "cpu") -> dict:
    """``{op name: kernel}`` registered for ``device``, whatever the mode.

    The table itself, not a copy: a test may put a kernel in it for a while.
    """
    if device not in _kernels:
        _kernels[device] = {}
    return _kernels[device]


def lookup(name: str, device: str = "cpu"):
    """The kernel that runs op ``name`` on ``device`` now, or None (the reference runs)."""
    if _mode == "reference":
        return None
    return available(device).get(name)


def describe(device: str = "cpu") -> str:
    """One line for logs: which ops run on kernels on ``device``, and how."""
    names = sorted(available(device))
    if _mode == "reference":
        return f"kernels: reference ({ENVIRONMENT}=reference: every op on functional.py's code)"
    note = _notes.get(device)
    if not names:
        return f"kernels: reference ({note() if note else f'no kernels for {device} yet'})"
    how = f", {note()}" if note is not None else ""
    return f"kernels: {device} ({', '.join(names)}{how})"


__all__ = [
    "ENVIRONMENT",
    "MODES",
    "available",
    "describe",
    "lookup",
    "mode",
    "reference",
    "register",
    "replaceable",
    "use",
    "using",
]
