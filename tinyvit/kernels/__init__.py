"""Kernels: the ops of ``functional.py`` made fast for a device, registered for it.

``tinyvit/functional.py`` is the reference: every op written as whole-array
maths, in the order its derivation reads. A kernel is a second
implementation of one of those ops, with the same arguments and the same
results (values and gradients; ``tests/test_kernels.py`` compares them in
float32 and float64, on one row, ragged and non-contiguous inputs),
written for speed on one device:

    kernels/cpu.py          softmax (attention's too), LayerNorm, GELU, cross-entropy,
                            AdamW, the linear layer's bias and the sum of two large
                            arrays as loops numba compiles: one pass over memory
    kernels/attention_cpu.py  attention: NumPy's products and cpu.py's softmax, a few
                            images at a time on each core
    kernels/conv_cpu.py     the convolution's im2col and col2im, and max pooling, as
                            loops numba compiles (the products stay with OpenBLAS)
    kernels/cpu_runtime.py  OpenBLAS's and numba's idle threads, the allocator
    kernels/cuda.py         the exact GELU with CUDA's Gaussian CDF, in one launch for Phi

Importing this package registers each device's kernels in ``dispatch.py``,
the registry that ``functional``'s ops consult when they are called: an op
runs the kernel registered for the device of its first input if there is
one, else its reference body. The switch is the registry's, and is here too:

    TINYVIT_KERNELS=reference python -m tinyvit.train      # from the environment
    tinyvit.kernels.use("reference")                       # from Python; use("auto") undoes it
    with tinyvit.kernels.using("reference"): ...           # for a block of code

Each op also keeps its reference body as ``op.reference``
(``functional.gelu.reference(x)``). The CPU kernels need numba
(``pip install numba``); without it every op runs its reference on the
CPU, and ``describe()`` says so. On the GPU the other reference ops run as
they are, whole-array CuPy calls.

Some settings belong to the whole process rather than to a kernel:
OpenBLAS's idle threads told to sleep at once, glibc told to keep freed
memory, and, for one of several processes on a machine, its share of the
cores (``cpu_runtime.py`` says why). Importing tinyvit changes none of
them; ``configure_process()`` applies them, once, at the start of a
program that trains or measures. (numba's threads, which only the kernels
use, the kernels start themselves, told to sleep when idle.)
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
from . import cpu_runtime, cuda

try:
    from . import attention_cpu, conv_cpu, cpu  # need numba
except ImportError as error:  # numba missing, or unable to load: the reference runs
    if error.name not in ("numba", "llvmlite") and "numba" not in str(error).lower():
        raise
    attention_cpu = conv_cpu = cpu = None
    NUMBA_PROBLEM = f"numba is not importable ({error}): pip install numba"
    dispatch.register("cpu", {}, note=lambda: NUMBA_PROBLEM)
else:
    NUMBA_PROBLEM = None
    kernels = {**cpu.KERNELS, **attention_cpu.KERNELS, **conv_cpu.KERNELS}
    dispatch.register("cpu", kernels, note=cpu_runtime.thread_note)
dispatch.register("cuda", cuda.KERNELS)


def configure_process(threads: int | None = None) -> dict:
    """Apply tinyvit's process-wide CPU settings; call once, at a program's start.

    * OpenBLAS's idle threads sleep at once instead of spinning for about
      2^28 cycles (``cpu_runtime.quiet_blas_threads``; a timeout already set
      in ``$OPENBLAS_THREAD_TIMEOUT`` is kept), whether NumPy was imported
      before tinyvit or not (numba's sleep at once already: ``cpu_runtime``);
    * glibc keeps freed blocks of up to 32 MB and never trims its heap, so
      that each training step reuses the memory of the last without page
      faults (``cpu_runtime.keep_freed_memory``), at the price of the process
      keeping its peak memory.

    * with ``threads``, OpenBLAS, numba and the stacks of products run on
      that many threads (``cpu_runtime.limit_threads``): one of several
      processes on a machine takes its share of the cores
      (``distributed.threads_each``).

    Importing tinyvit does none of this: a library that changes its host
    process's threads and allocator on import would surprise the program
    that imported it. Calling it again does nothing new. Returns
    ``{setting: applied}``, False where the process has no OpenBLAS or the C
    library is not glibc.
    """
    applied = {
        "openblas_threads_sleep": cpu_runtime.quiet_blas_threads(),
        "malloc_keeps_freed_memory": cpu_runtime.keep_freed_memory(),
    }
    if threads is not None:
        cpu_runtime.limit_threads(threads)
        applied["threads"] = threads
    return applied


__all__ = [
    "ENVIRONMENT",
    "MODES",
    "NUMBA_PROBLEM",
    "available",
    "configure_process",
    "describe",
    "lookup",
    "mode",
    "replaceable",
    "use",
    "using",
]
