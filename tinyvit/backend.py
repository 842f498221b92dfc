"""The array backend: the one module in tinyvit that knows NumPy from CuPy.

tinyvit has no global "use the GPU" switch. Every array knows where it lives,
so the module that computes with it is read off the array itself:

    xp = xp_of(x)        # numpy for a NumPy array, cupy for a CuPy array
    y = xp.exp(x)        # the same line runs on the CPU and on the GPU

Devices have two names: ``"cpu"`` (NumPy arrays) and ``"cuda"`` (CuPy arrays).
``to_device`` moves an array between them; nothing moves silently, and an op
that is handed arrays from both raises a ``DeviceError`` saying which operand
is where. The default dtype is float32; float64 is for gradient checks.

Nothing else in the package imports cupy: the CPU path works whether or not
CuPy is installed, and whether or not it finds a GPU.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

# Before NumPy loads OpenBLAS. After each matrix product OpenBLAS's worker
# threads keep spinning, waiting for the next one, for about 2^28 cycles (a
# tenth of a second), and on a machine with few cores they take the cores
# that the chunked elementwise kernels below need: a GELU right after a
# matrix product ran 1.5x slower. Asked to wait 2^4 cycles, they go to sleep
# at once; the products themselves are no slower. OpenBLAS reads the setting
# once, when it is loaded, so it only works when tinyvit is imported before
# NumPy (``python -m tinyvit.train``, the training lessons, the benchmarks); a value
# already in the environment is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402  (after the line above)

try:  # CuPy is optional: without it (or without a GPU) everything runs on NumPy.
    import cupy
except Exception:  # ImportError, or a CuPy that cannot load its CUDA libraries
    cupy = None

DEFAULT_DTYPE = np.float32
DEVICES = ("cpu", "cuda")


class DeviceError(RuntimeError):
    """Arrays from different devices met in one op, or a device is unavailable."""


def cuda_available() -> bool:
    """True when CuPy is installed and sees at least one GPU."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device
        return False


def is_cuda_array(array) -> bool:
    return cupy is not None and isinstance(array, cupy.ndarray)


def device_of(array) -> str:
    """``"cuda"`` for a CuPy array, ``"cpu"`` for anything else."""
    return "cuda" if is_cuda_array(array) else "cpu"


def _describe(array) -> str:
    shape = tuple(getattr(array, "shape", ()))
    dtype = getattr(array, "dtype", type(array).__name__)
    return f"shape {shape}, {dtype}"


def xp_of(*arrays, names=None):
    """The array module (numpy or cupy) of ``arrays``, which must share one device.

    ``None`` entries are skipped, so optional operands (a missing bias) can be
    passed as they are. ``names`` labels the operands in the error message.
    """
    if cupy is None:  # the common CPU-only case: nothing can be on the GPU
        return np
    devices = [None if a is None else device_of(a) for a in arrays]
    present = [d for d in devices if d is not None]
    if not present or all(d == "cpu" for d in present):
        return np
    if all(d == "cuda" for d in present):
        return cupy
    labels = names or [f"operand {i}" for i in range(len(arrays))]
    where = ", ".join(
        f"{label} ({_describe(a)}) is on {d}"
        for label, a, d in zip(labels, arrays, devices)
        if d is not None
    )
    raise DeviceError(
        f"arrays on different devices met in one op: {where}. "
        "Move them to one device first, e.g. with .to('cuda') or .to('cpu')."
    )


def check_device_name(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {DEVICES}")
    if device == "cuda" and not cuda_available():
        why = "CuPy is not installed" if cupy is None else "CuPy finds no GPU"
        raise DeviceError(
            f"device 'cuda' was requested but {why}; "
            "install the extra with `pip install tinyvit[gpu]` on a machine with an NVIDIA GPU"
        )
    return device


def to_device(array, device: str):
    """Return ``array`` on ``device`` ("cpu" or "cuda"); the same object if already there."""
    check_device_name(device)
    if device_of(array) == device:
        return array
    if device == "cuda":
        return cupy.asarray(array)
    return cupy.asnumpy(array)


def to_numpy(array) -> np.ndarray:
    """A NumPy copy (or the array itself) for printing, plotting and saving."""
    if is_cuda_array(array):
        return cupy.asnumpy(array)
    return np.asarray(array)


def module_for(device: str):
    """The array module for a device name."""
    return cupy if check_device_name(device) == "cuda" else np


def scatter_add(target, index, values) -> None:
    """``target[index] += values`` where repeated indices add up (unbuffered)."""
    if is_cuda_array(target):
        import cupyx  # part of CuPy; only reached when CuPy is present

        cupyx.scatter_add(target, index, values)
    else:
        np.add.at(target, index, values)


# ---------------------------------------------------------------------------
# Work in chunks, on every core. NumPy runs each elementwise operation on one
# core and streams whole arrays through memory once per operation: a GELU of
# twenty-four operations on a 25 MB activation reads and writes 1.2 GB. Cut
# the rows into blocks of about 512 KB that stay in the core's cache while all
# the operations run on them, and hand the blocks to a thread per core
# (NumPy releases the GIL inside its loops), and the same code runs several
# times faster. On the GPU the whole array is one block: CuPy is parallel.
# ---------------------------------------------------------------------------

CHUNK_ELEMENTS = 1 << 17  # per array per block: 512 KB of float32 (a whole step:
# 4% faster than 256 KB or 1 MB on a 2 MB L2 cache)
_pool = None


def num_threads() -> int:
    """Threads for chunked work: ``$TINYVIT_THREADS``, else one per core."""
    return max(1, int(os.environ.get("TINYVIT_THREADS") or os.cpu_count() or 1))


def keep_freed_memory() -> bool:
    """Ask the C allocator (glibc) to keep freed blocks of up to 32 MB for reuse.

    By default glibc hands every block above 128 KB straight back to the
    operating system when NumPy frees it, and the next activation of the
    same size costs thousands of page faults to get it back. Training
    allocates and frees the same few sizes every step, so keeping them is a
    free 10-25% on elementwise work. The price is that the process holds on
    to its peak memory. Called by the trainer and the benchmarks; a no-op
    (returning False) where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = mallopt(M_MMAP_THRESHOLD, 32 << 20)  # blocks up to 32 MB come from the heap...
    ok &= mallopt(M_TRIM_THRESHOLD, 1 << 30)  # ...and stay there when freed
    return bool(ok)


def row_blocks(array, elements=None) -> list[slice]:
    """Slices of whole rows (first axis) of ``array``, about ``elements`` entries each
    (default ``CHUNK_ELEMENTS``). A single slice on the GPU, or when the array is small.
    """
    elements = elements or CHUNK_ELEMENTS
    rows = array.shape[0]
    per_row = max(1, array.size // max(rows, 1))
    block = max(1, elements // per_row)
    if is_cuda_array(array) or rows <= block:
        return [slice(0, rows)]
    return [slice(i, min(i + block, rows)) for i in range(0, rows, block)]


def parallel(fn, items) -> None:
    """Call ``fn(item)`` for every item, on a pool of ``num_threads()`` threads.

    The calls must not depend on each other (they write disjoint outputs).
    """
    items = list(items)
    threads = min(num_threads(), len(items))
    if threads == 1:
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
# Random numbers. One seeded generator per device, so that dropout masks and
# initialisations are reproducible on either device.
# ---------------------------------------------------------------------------

_generators: dict[str, object] = {}
_seed = 0


def new_generator(seed: int, device: str = "cpu"):
    """A fresh random generator for ``device`` (``numpy.random.Generator`` on the CPU)."""
    xp = module_for(device)
    return xp.random.default_rng(seed)


def manual_seed(seed: int) -> None:
    """Seed the default generator of every device."""
    global _seed
    _seed = int(seed)
    _generators.clear()


def default_generator(device: str = "cpu"):
    """The shared generator of ``device``, created from the last ``manual_seed``."""
    if device not in _generators:
        _generators[device] = new_generator(_seed, device)
    return _generators[device]
