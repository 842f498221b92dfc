"""Kernels: the ops of ``functional.py`` made fast for a device, registered for it.

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
    kernels/cuda.py         the exact GELU with CUDA's Gaussian CDF, in one launch for Phi

Importing this package registers each device's kernels in ``dispatch.py``,
the registry that ``functional``'s ops consult when they are called: an op
runs the kernel registered for the device of its first input if there is
one, else its reference body. The switch is the registry's, and is here too:

    TINYVIT_KERNELS=reference python -m tinyvit.train      # from the environment
    tinyvit.kernels.use("reference")                       # from Python; use("auto") undoes it
    with tinyvit.kernels.using("reference"): ...           # for a block of code

Each op also keeps its reference body as ``op.reference``
(``functional.gelu.reference(x)``). On the GPU the other reference ops run
as they are, whole-array CuPy calls.

Two settings belong to the whole process rather than to a kernel: OpenBLAS's
idle threads told to sleep at once, and glibc told to keep freed memory
(``cpu_runtime.py`` says why). Importing tinyvit changes neither;
``configure_process()`` applies both, once, at the start of a program that
trains or measures.
"""

from __future__ import annotations

from .. import dispatch
from ..dispatch import (
    ENVIRONMENT,
    MODES,
    available,
    describe,
    lookup,
    mode,
    replaceable,
    use,
    using,
)
from . import cpu, cpu_runtime, cuda


def _cpu_threads() -> str:
    threads = cpu_runtime.num_threads()
    return f"{threads} thread{'s' if threads > 1 else ''}"


dispatch.register("cpu", cpu.KERNELS, note=_cpu_threads)
dispatch.register("cuda", cuda.KERNELS)


def configure_process() -> dict:
    """Apply tinyvit's process-wide CPU settings; call once, at a program's start.

    * OpenBLAS's idle threads sleep at once instead of spinning for about
      2^28 cycles, so that they leave the cores to the kernels' blocks
      (``cpu_runtime.quiet_blas_threads``; a timeout already set in
      ``$OPENBLAS_THREAD_TIMEOUT`` is kept). Effective whether NumPy was
      imported before tinyvit or not.
    * glibc keeps freed blocks of up to 32 MB and never trims its heap, so
      that each training step reuses the memory of the last without page
      faults (``cpu_runtime.keep_freed_memory``), at the price of the process
      keeping its peak memory.

    Importing tinyvit does neither: a library that changes its host
    process's threads and allocator on import would surprise the program
    that imported it. Calling it again does nothing new. Returns
    ``{setting: applied}``, False where the process has no OpenBLAS or no
    glibc.
    """
    return {
        "openblas_threads_sleep": cpu_runtime.quiet_blas_threads(),
        "malloc_keeps_freed_memory": cpu_runtime.keep_freed_memory(),
    }


__all__ = [
    "ENVIRONMENT",
    "MODES",
    "available",
    "configure_process",
    "describe",
    "lookup",
    "mode",
    "replaceable",
    "use",
    "using",
]
