"""Kernels: the ops of ``functional.py`` made fast for a device, and the switch between them.

``tinyvit/functional.py`` is the reference: every op written as whole-array
maths, in the order its derivation reads. A kernel is a second
implementation of one of those ops, with the same arguments and the same
results (values and gradients; ``tests/test_kernels.py`` compares them in
float32 and float64, on shapes cut into many blocks with a ragged last one),
written for speed on one device:

    kernels/cpu.py          LayerNorm, softmax, GELU and attention on cache-sized
                            blocks of rows, a thread per core, in place
    kernels/fast_math.py    the float32 Gaussian CDF as a tanh polynomial (GELU)
    kernels/cpu_runtime.py  the blocks and threads, OpenBLAS's idle threads, the allocator
    kernels/cuda.py         the exact GELU with CUDA's Gaussian CDF: 2 launches, not 38

When an op of ``functional`` is called, it runs the kernel registered for
the device of its first input if there is one, else its reference body. To
run everything on the reference path (to read along in a debugger, to
compare, to rule a kernel out):

    TINYVIT_KERNELS=reference python -m tinyvit.train      # from the environment
    tinyvit.kernels.use("reference")                       # from Python; use("auto") undoes it
    with tinyvit.kernels.using("reference"): ...           # for a block of code

Each op also keeps its reference body as ``op.reference``
(``functional.gelu.reference(x)``). On the GPU the other reference ops run
as they are, whole-array CuPy calls.
"""

from __future__ import annotations

import contextlib
import functools
import os

from .. import backend
from . import cpu_runtime

MODES = ("auto", "reference")
ENVIRONMENT = "TINYVIT_KERNELS"


def _mode_from_environment() -> str:
    value = os.environ.get(ENVIRONMENT, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENVIRONMENT}={value!r}: expected one of {MODES}")
    return value


_mode = _mode_from_environment()
_tables: dict[str, dict] = {}

cpu_runtime.quiet_blas_threads()  # once, when tinyvit is imported


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


def available(device: str = "cpu") -> dict:
    """``{op name: kernel}`` registered for ``device``, whatever the mode."""
    if device not in _tables:
        if device == "cpu":
            from .cpu import KERNELS
        else:
            from .cuda import KERNELS
        _tables[device] = KERNELS
    return _tables[device]


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
    if not names:
        return f"kernels: reference (no kernels for {device} yet)"
    threads = cpu_runtime.num_threads()
    how = f", {threads} thread{'s' if threads > 1 else ''}" if device == "cpu" else ""
    return f"kernels: {device} ({', '.join(names)}{how})"


def replaceable(reference):
    """Make a reference op of ``functional`` run the kernel of its input's device, if any.

    The decorated function is the reference body; it stays reachable as
    ``op.reference``. A kernel is called with exactly the op's arguments.
    """
    name = reference.__name__

    @functools.wraps(reference)
    def op(first, *args, **kwargs):
        if _mode != "reference":
            array = getattr(first, "data", first)
            kernel = available(backend.device_of(array)).get(name)
            if kernel is not None:
                return kernel(first, *args, **kwargs)
        return reference(first, *args, **kwargs)

    op.reference = reference
    return op


__all__ = ["MODES", "available", "describe", "lookup", "mode", "replaceable", "use", "using"]
