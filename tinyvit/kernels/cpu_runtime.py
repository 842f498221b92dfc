"""Running fast on a CPU: cache-sized blocks, a thread per core, quiet BLAS threads, kept memory.

Nothing here changes a result; it changes how long the CPU kernels
(``kernels/cpu.py``) take to get it. Five facts about a CPU drive it.

**Passes over memory.** NumPy runs an expression one operation at a time, and
each operation streams its whole input and output through memory: a GELU of
twenty-four operations on an activation larger than the caches reads and
writes it about twenty-four times over. Cut the rows into blocks of the
order of a core's cache (``CHUNK_ELEMENTS``: 512 KB per array), run all the
operations on one block before the next, and each operation after the first
finds its data in cache (``row_blocks``).

**Cores.** NumPy's loops run on one core, but they release the GIL, so blocks
handed to a pool of one thread per core run side by side (``parallel``,
``for_each_chunk``; ``$TINYVIT_THREADS`` sets the count).

**Products inside blocks.** The attention runs its matrix products block by
block on the pool. OpenBLAS threads a product above a size (``m n k`` over
2^18 by default: the attention of 145 tokens of 32 channels is above it, of
65 tokens is not), and pool threads that each ask OpenBLAS for more threads
ask for more threads than there are cores: they take turns, and wait for
each other. For products that large the attention asks OpenBLAS for one
thread while the pool works (``one_blas_thread``), and gives the count back
after; smaller ones skip the switch, which costs more than they take.

**OpenBLAS's idle threads.** After each matrix product, OpenBLAS's worker
threads keep spinning for about 2^28 cycles, waiting for the next product,
and on a machine with few cores they can hold the cores our blocks need.
Told to wait 2^4 cycles (``OPENBLAS_THREAD_TIMEOUT=4``), they sleep at once,
and the products are no slower (``quiet_blas_threads``).

**The allocator.** glibc hands every freed block above 128 KB straight back to
the operating system, and the next activation of the same size is paid for
again in page faults, one per 4 KB page. Training allocates and frees the same
few sizes every step, so ``keep_freed_memory`` asks glibc to keep them, and
never to trim the heap: a step frees most of its activations at once, and a
trimmed heap would be faulted back in by the next forward pass.

The last two are settings of the whole process, not of one kernel: importing
tinyvit changes neither. A program that trains calls
``tinyvit.kernels.configure_process()`` once, at its start; tinyvit's own
entry points do (the trainer, ``python -m tinyvit``, the lessons, the
benchmarks). ``benchmarks/README.md`` records what each of these measured on
this project's machines.

On the GPU none of this applies: an array is one block and CuPy is parallel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from .. import backend

CHUNK_ELEMENTS = 1 << 17  # per array per block: 512 KB of float32
BLAS_THREADED_PRODUCT = 1 << 18  # m n k above which OpenBLAS threads a product (its default)
BLAS_THREAD_TIMEOUT = "4"  # OpenBLAS's minimum: 2^4 cycles of spinning, then sleep

_pool = None


# ---------------------------------------------------------------------------
# blocks and threads
# ---------------------------------------------------------------------------


def num_threads() -> int:
    """Threads for chunked work: ``$TINYVIT_THREADS``, else one per core."""
    return max(1, int(os.environ.get("TINYVIT_THREADS") or os.cpu_count() or 1))


def row_blocks(array, elements=None) -> list[slice]:
    """Slices of whole rows (first axis) of ``array``, about ``elements`` entries each
    (default ``CHUNK_ELEMENTS``). A single slice on the GPU, or when the array is small.
    """
    elements = elements or CHUNK_ELEMENTS
    rows = array.shape[0]
    per_row = max(1, array.size // max(rows, 1))
    block = max(1, elements // per_row)
    if backend.is_cuda_array(array) or rows <= block:
        return [slice(0, rows)]
    return [slice(i, min(i + block, rows)) for i in range(0, rows, block)]


def parallel(fn, items) -> None:
    """Call ``fn(item)`` for every item, on a pool of ``num_threads()`` threads.

    The calls must not depend on each other (they write disjoint outputs).
    """
    items = list(items)
    threads = min(num_threads(), len(items))
    if threads <= 1:
        for item in items:
            fn(item)
        return
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(num_threads(), thread_name_prefix="tinyvit")

    def run_share(k):  # thread k takes items k, k + threads, k + 2 threads, ...
        for item in items[k::threads]:
            fn(item)

    # One task per thread, not per item: a task costs a lock and a future.
    for _ in _pool.map(run_share, range(threads)):  # re-raises the first exception
        pass


def for_each_chunk(kernel, *arrays) -> None:
    """Call ``kernel(*blocks)`` on matching row blocks of ``arrays``, in parallel.

    Every array has the same number of rows (first axis); a block keeps whole
    rows, so a kernel may reduce along the other axes (LayerNorm, softmax).
    Kernels write into blocks of output arrays passed among ``arrays``.
    """
    parallel(lambda rows: kernel(*(a[rows] for a in arrays)), row_blocks(arrays[0]))


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


# The entry points that set and read OpenBLAS's thread count, by build: plain, and
# the 64-bit-integer builds NumPy's wheels carry (scipy-openblas, symbols renamed).
_SET_THREADS = ("openblas_set_num_threads", "scipy_goto_set_num_threads64_",
                "goto_set_num_threads64_", "goto_set_num_threads")  # fmt: skip
_GET_THREADS = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
                "openblas_get_num_threads64_")  # fmt: skip


@functools.cache  # looked up once: finding the library reads /proc/self/maps
def _blas_thread_functions():
    """OpenBLAS's (set, get) thread-count functions, or None."""
    library = _loaded_openblas()
    if library is None:
        return None
    set_ = next((getattr(library, n) for n in _SET_THREADS if hasattr(library, n)), None)
    get = next((getattr(library, n) for n in _GET_THREADS if hasattr(library, n)), None)
    return None if set_ is None or get is None else (set_, get)


@contextmanager
def one_blas_thread():
    """Matrix products inside run on one OpenBLAS thread; the count is restored after
    (see the module's text). Does nothing where OpenBLAS is not loaded."""
    functions = _blas_thread_functions()
    if functions is None:
        yield
        return
    set_threads, get_threads = functions
    before = int(get_threads())
    if before == 1:
        yield
        return
    set_threads(1)
    try:
        yield
    finally:
        set_threads(before)


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
