"""The CPU's process settings: idle threads that sleep, and memory kept for the next step.

Nothing here changes a result; it changes how long a training step takes.

**Idle threads.** Two kinds of thread take turns on the cores all through a
step: OpenBLAS's run the matrix products, numba's the kernels' loops
(``kernels/cpu.py``). After its work each kind spins for a while, waiting
for more, and on a machine with few cores a spinning thread holds the core
the other kind needs next. OpenBLAS's spin for about 2^28 cycles; told to
wait 2^4 (``OPENBLAS_THREAD_TIMEOUT=4``) they sleep at once, and the
products are no slower (``quiet_blas_threads``). numba's, when its
threading layer is OpenMP, sleep at once with ``OMP_WAIT_POLICY=passive``,
which OpenMP reads when numba starts them: the kernels start them so,
before their first loop (``start_numba_threads``), in every program.

**Stacks of small products.** Attention multiplies one small matrix pair per
image and head. ``np.matmul`` runs such a stack one product after another on
one core, and OpenBLAS does not thread products this small; ``in_blocks``
gives each core a part of the stack, on threads of its own (NumPy lets go of
the interpreter's lock inside a product, and so do the loops compiled with
``nogil``, so they run at once), a block of a few images at a time
(``attention_cpu.py``).

**Several processes on one machine.** OpenBLAS and numba each start a
thread per core. Two processes of one run (``mpiexec -n 2`` on two cores)
would start four of each and take turns on the cores; each should run on
its share of them, and keep it busy through the Python and NumPy work
between the products that a second thread of one process waits out
(``limit_threads``; the trainer does it when a launcher started it).

**The allocator.** glibc hands every freed block above 128 KB straight back to
the operating system, and the next activation of the same size is paid for
again in page faults, one per 4 KB page. Training allocates and frees the same
few sizes every step, so ``keep_freed_memory`` asks glibc to keep them, and
never to trim the heap: a step frees most of its activations at once, and a
trimmed heap would be faulted back in by the next forward pass.

OpenBLAS's timeout and the allocator are settings of the whole process,
not of one kernel: importing tinyvit changes neither. A program that
trains calls ``tinyvit.kernels.configure_process()`` once, at its start; tinyvit's own
entry points do (the trainer, ``python -m tinyvit``, the lessons, the
benchmarks). ``benchmarks/README.md`` records what each of these measured on
this project's machines.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLAS_THREAD_TIMEOUT = "4"  # OpenBLAS's minimum: 2^4 cycles of spinning, then sleep


# ---------------------------------------------------------------------------
# OpenBLAS's threads
# ---------------------------------------------------------------------------


def _loaded_openblas():
    """The OpenBLAS library this process has loaded (NumPy's), or None.

    Found by name among the process's mapped files (Linux); elsewhere, or with
    another BLAS (Apple's Accelerate, MKL), there is nothing to do.
    """
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path)
            library.openblas_thread_timeout  # noqa: B018 (the three entry points we need)
            library.openblas_read_env  # noqa: B018
            library.blas_thread_shutdown_  # noqa: B018
        except (OSError, AttributeError):
            continue
        return library
    return None


def blas_thread_timeout():
    """OpenBLAS's thread timeout as it reads it (0: its default, 2^28 cycles), or None."""
    library = _loaded_openblas()
    return None if library is None else int(library.openblas_thread_timeout())


def set_blas_thread_timeout(exponent) -> bool:
    """Tell the loaded OpenBLAS to let its idle threads spin for ``2**exponent`` cycles.

    OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` (4 to 30) when it starts its
    threads; this sets it, has the library read its settings again and stops
    its threads, which start afresh, with the new timeout, at the next
    product. Returns True when OpenBLAS now runs with it.
    """
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(int(exponent))
    library = _loaded_openblas()
    if library is None:
        return False
    if library.openblas_thread_timeout() != int(exponent):
        library.openblas_read_env()
        library.blas_thread_shutdown_()
    return library.openblas_thread_timeout() == int(exponent)


def quiet_blas_threads() -> bool:
    """Make OpenBLAS's idle threads sleep at once instead of spinning (see the module's text).

    OpenBLAS reads its timeout when it is loaded, which is usually before this
    runs (``import numpy`` comes first in most scripts), so this sets it, asks
    the loaded library to read its settings again and restarts its threads
    with it: it works whether NumPy was imported first or not. A timeout the
    user set in the environment is kept. Part of ``configure_process``.
    """
    return set_blas_thread_timeout(os.environ.get("OPENBLAS_THREAD_TIMEOUT") or BLAS_THREAD_TIMEOUT)


# ---------------------------------------------------------------------------
# numba's threads
# ---------------------------------------------------------------------------


def numba_threads_started() -> bool:
    """Whether numba has started its threads (at the first parallel loop) in this process."""
    try:
        from numba.np.ufunc import parallel
    except ImportError:
        return False
    return bool(getattr(parallel, "_is_initialized", False))


def start_numba_threads() -> None:
    """Start numba's threads, once, with OpenMP's told to sleep as soon as a loop ends.

    OpenMP reads ``OMP_WAIT_POLICY`` when numba first starts its threads; the
    kernels call this before their first loop, which sets it to ``passive``
    for that moment (a policy set in the environment is kept) and leaves the
    environment as it was, so that a library loaded later (PyTorch's own
    OpenMP) reads what it would have read.
    """
    if numba_threads_started():
        return
    import numba

    preset = os.environ.get("OMP_WAIT_POLICY")
    os.environ["OMP_WAIT_POLICY"] = preset or "passive"
    try:
        numba.get_num_threads()  # starts the threads; OpenMP reads the environment now
    finally:
        if preset is None:
            del os.environ["OMP_WAIT_POLICY"]


def limit_threads(threads: int) -> None:
    """Run OpenBLAS's products, numba's loops and the stacks of products on ``threads``
    threads each: fewer than the cores, for one of several processes on one machine.

    OpenBLAS reads its thread count when it is loaded, before any code of ours
    runs; ``threadpoolctl`` sets it in the loaded library, whatever its build
    calls the function. numba's count is set for the calling thread, the one
    that trains.
    """
    global _threads
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
    _threads = threads
    try:
        import numba
    except ImportError:
        return
    start_numba_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def thread_note() -> str:
    """``kernels.describe()``'s words for numba's threads, and its threading layer once
    they run (asking numba for its thread count before would start them)."""
    import numba

    started = numba_threads_started()
    threads = numba.get_num_threads() if started else numba.config.NUMBA_NUM_THREADS
    layer = f" ({numba.threading_layer()})" if started else ""
    return f"numba, {threads} thread{'s' if threads > 1 else ''}{layer}"


# ---------------------------------------------------------------------------
# stacks of small products
# ---------------------------------------------------------------------------

_pools, _threads = {}, None  # helper threads by their number; limit_threads's count
BLOCK_BYTES = 1 << 19  # a block of a stack: about this many bytes of it, well inside a core's L2
STACK_PER_THREAD = 8  # fewer items a thread than this: one thread does them all


def product_threads() -> int:
    """Threads for stacks of products: ``limit_threads``'s count, else numba's
    (``NUMBA_NUM_THREADS``), else the cores."""
    if _threads is not None:
        return _threads
    try:
        import numba

        return max(1, numba.config.NUMBA_NUM_THREADS)
    except ImportError:
        return max(1, os.cpu_count() or 1)


def in_blocks(work, array, block_bytes=BLOCK_BYTES):
    """Call ``work(s)`` for slices ``s`` of ``array``'s first axis that together cover it,
    each of about ``block_bytes`` of ``array`` (at least one item), every thread taking
    the blocks of one contiguous part of the axis, the calling thread the first part.

    ``work`` must let go of the interpreter's lock for its time to run on all the
    cores at once (NumPy's products do, and the loops compiled with ``nogil``), and
    must write only into its own slice of the outputs. A stack shorter than
    ``STACK_PER_THREAD`` items a thread runs on the calling thread alone.
    """
    stack = array.shape[0]
    per_block = max(1, block_bytes // max(1, array[:1].nbytes))
    threads = min(product_threads(), stack // STACK_PER_THREAD)

    def run_part(lo, hi):
        for start in range(lo, hi, per_block):
            work(slice(start, min(hi, start + per_block)))

    if threads < 2:
        return run_part(0, stack)
    pool = _pools.get(threads - 1)
    if pool is None:
        pool = _pools[threads - 1] = ThreadPoolExecutor(threads - 1, "tinyvit-blocks")
    bounds = np.linspace(0, stack, threads + 1).astype(int)
    others = [pool.submit(run_part, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    try:
        run_part(0, bounds[1])  # the calling thread takes the first part itself
    finally:
        errors = [part.exception() for part in others]  # every part ends before we return
    for error in errors:
        if error is not None:
            raise error  # what a block raised


# ---------------------------------------------------------------------------
# the C allocator
# ---------------------------------------------------------------------------


def keep_freed_memory() -> bool:
    """Ask the C allocator (glibc) to keep freed blocks of up to 32 MB for reuse.

    Memory freed by one step is there for the next without page faults, at
    the price of the process holding on to its peak memory. Part of
    ``configure_process``; a no-op (returning False) where the C library is
    not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = mallopt(M_MMAP_THRESHOLD, 32 << 20)  # blocks up to 32 MB come from the heap...
    ok &= mallopt(M_TRIM_THRESHOLD, -1)  # ...and stay there when freed (-1: never trim)
    return bool(ok)
