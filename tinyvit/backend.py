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
CuPy is installed, and whether or not it finds a GPU. (How the CPU is made to
run fast, threads and cache blocks, is not about devices: ``kernels/``.)

Whether ``"cuda"`` is usable is checked by doing what a run does first
(``cuda_problem``: a kernel, a random draw, a matrix product, a solve), once
per process; a missing CUDA library is a ``DeviceError`` that names it and
the command that installs it. ``use_cupy`` hands the device another module
that behaves as CuPy (the test suite's stand-in, when there is no GPU).
Random generators (``Generator``) offer what NumPy's and CuPy's share, and
``to_device_together`` and ``scalars`` move many small arrays, or read many
numbers back, in one copy. For data parallelism (``tinyvit.distributed``),
``batch_shard`` keeps a batch's random masks the same however many processes
share the batch, and ``use_gpu`` and ``nccl_process_group`` give each process
a GPU of its own and NCCL between them.
"""

from __future__ import annotations

import contextlib

import numpy as np

try:  # CuPy is optional: without it (or without a GPU) everything runs on NumPy.
    import cupy
    import cupyx
    import cupyx.scipy.special  # noqa: F401  (CUDA's normal CDF as a ufunc: kernels/cuda.py)
except Exception:  # ImportError, or a CuPy that cannot load its CUDA libraries
    cupy = cupyx = None

DEFAULT_DTYPE = np.float32
DEVICES = ("cpu", "cuda")
GPU_INSTALL = (
    'pip install "cupy-cuda12x[ctk]"  (or, in a clone of tinyvit: pip install -e ".[gpu]")'
)


class DeviceError(RuntimeError):
    """Arrays from different devices met in one op, or a device is unavailable."""


# ---------------------------------------------------------------------------
# Is the GPU usable? Counting devices is not enough: CuPy imports, and even
# finds a GPU, with only the NVIDIA driver installed, and fails later at the
# first kernel it compiles (NVRTC), the first random draw (cuRAND), the first
# matrix product (cuBLAS) or solve (cuSOLVER). So the check runs one of each,
# once per process, and says which library is missing.
# ---------------------------------------------------------------------------


def _count_gpus(cp):
    if cp.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("no CUDA device")


def _run_a_kernel(cp):
    if (cp.arange(4, dtype=np.float32) * 2).sum().item() != 12:
        raise RuntimeError("a kernel computed a wrong sum")


def _draw_random_numbers(cp):
    cp.random.Generator(cp.random.Philox4x3210(0)).random(4, dtype=np.float32).sum().item()


def _multiply_matrices(cp):
    a = cp.ones((4, 4), dtype=np.float32)
    if (a @ a).sum().item() != 64:
        raise RuntimeError("a matrix product came out wrong")


def _solve_a_system(cp):
    a = cp.eye(3, dtype=np.float64) * 2
    cp.linalg.solve(a, cp.ones(3, dtype=np.float64)).sum().item()


# (what is tried, what it needs, how to try it); the first one is whether there is a GPU.
CUDA_CHECKS = (
    ("find a GPU", "an NVIDIA GPU and its driver (libcuda)", _count_gpus),
    ("compile and run a kernel", "NVRTC (libnvrtc), CUDA's run-time compiler", _run_a_kernel),
    ("draw random numbers", "cuRAND (libcurand)", _draw_random_numbers),
    ("multiply two matrices", "cuBLAS (libcublas)", _multiply_matrices),
    ("solve a linear system", "cuSOLVER (libcusolver)", _solve_a_system),
)
_LIBRARIES = ("nvrtc", "curand", "cublas", "cusolver", "cusparse", "cufft", "cudart", "libcuda")
_cuda_problem: list = []  # [the reason the GPU is unusable, or None], once checked


def _name_the_library(error, needed):
    """The CUDA library an error message names (``libnvrtc.so.12``), else what the step needs."""
    text = str(error)
    for word in text.replace("'", " ").replace(":", " ").split():
        if word.startswith("lib") and any(name in word.lower() for name in _LIBRARIES):
            return f"{needed}; CuPy could not load {word}"
    return needed


def cuda_problem() -> str | None:
    """Why device ``"cuda"`` cannot be used, or None when it can.

    The first call runs ``CUDA_CHECKS`` (a tiny kernel, a random draw, a
    matrix product and a solve); the answer is kept for the process.
    """
    if cupy is None:
        return "CuPy is not installed"
    if not _cuda_problem:
        problem = None
        for what, needed, check in CUDA_CHECKS:
            try:
                check(cupy)
            except Exception as error:  # CUDA errors, missing libraries (OSError, RuntimeError)
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
                if check is _count_gpus:
                    problem = f"CuPy finds no GPU ({detail})"
                else:
                    problem = (
                        f"CuPy {cupy.__version__} found a GPU but could not {what}, which "
                        f"needs {_name_the_library(error, needed)} ({detail})"
                    )
                break
        _cuda_problem.append(problem)
    return _cuda_problem[0]


def cuda_available() -> bool:
    """True when CuPy is installed, sees a GPU, and can compile, draw, multiply and solve."""
    return cuda_problem() is None


def use_cupy(module, extras=None):
    """Make device ``"cuda"`` use ``module`` as CuPy (and ``extras`` as cupyx); returns the
    pair in use before, to put back.

    For the test suite, which runs its ``"cuda"`` tests on a stand-in when there is no GPU
    (``tests/cupy_standin.py``). Forgets the cached GPU check and ``"cuda"`` generator.
    """
    global cupy, cupyx
    previous = (cupy, cupyx)
    cupy, cupyx = module, extras
    _cuda_problem.clear()
    _generators.pop("cuda", None)
    return previous


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
    """``device`` itself if it is known and usable; else ValueError or ``DeviceError``."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {DEVICES}")
    if device == "cuda":
        problem = cuda_problem()
        if problem is not None:
            raise DeviceError(
                f"device 'cuda' was requested but {problem}. On a machine with an NVIDIA GPU, "
                f"install CuPy with the CUDA libraries it needs: {GPU_INSTALL}"
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


def to_device_together(arrays, device: str) -> list:
    """Host arrays on ``device``, moved in one copy instead of one per array.

    A copy from the host is a round of bookkeeping for the driver whatever
    its size, so a batch's small arrays (labels, augmentation parameters)
    travel as one: their bytes are packed into one buffer (each array at an
    offset that is a multiple of 8 bytes), the buffer is copied over, and
    each array comes back as a view of it (same dtype, same shape). On the
    CPU the arrays are returned as they are.
    """
    arrays = [np.asarray(a) for a in arrays]
    if check_device_name(device) == "cpu":
        return arrays
    offsets, total = [], 0
    for a in arrays:
        offsets.append(total)
        total += -(-a.nbytes // 8) * 8  # rounded up to whole 8-byte words
    packed = np.zeros(max(total, 8), dtype=np.uint8)
    for a, start in zip(arrays, offsets):
        packed[start : start + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    on_device = cupy.asarray(packed)  # the one copy
    return [
        on_device[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
        for a, start in zip(arrays, offsets)
    ]


def _arrays_in(data, found):
    """Every array inside nested lists and tuples ``data``, into ``found``."""
    if isinstance(data, (list, tuple)):
        for item in data:
            _arrays_in(item, found)
    elif isinstance(data, np.ndarray) or is_cuda_array(data):
        found.append(data)
    return found


def as_array(data):
    """Numbers and (nested) lists of them as a NumPy array; a list that holds device arrays
    (the 0-d results of reductions on the GPU, say) as one device array, joined there.

    ``numpy.asarray`` cannot take device arrays (CuPy forbids the silent copy to the
    host), and a list that mixes the two devices is a ``DeviceError``.
    """
    found = _arrays_in(data, [])
    if not any(is_cuda_array(a) for a in found):
        return np.asarray(data)
    xp_of(*found, names=[f"item {i} of the list" for i in range(len(found))])
    return cupy.array(data)


def scalars(*arrays) -> tuple:
    """One-number arrays (or numbers, or None) as Python floats, read in one copy.

    Reading a value from the GPU makes the host wait for the device (a
    synchronization); reading several costs one wait when they travel
    together, stacked into one small array. ``None`` stays ``None``.
    """
    on_device = [a for a in arrays if is_cuda_array(a)]
    if on_device:
        stacked = cupy.stack([a.reshape(()).astype(np.float64) for a in on_device])
        values = iter(cupy.asnumpy(stacked).tolist())  # the one synchronization
    return tuple(
        None if a is None else next(values) if is_cuda_array(a) else float(a) for a in arrays
    )


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
        cupyx.scatter_add(target, index, values)
    else:
        np.add.at(target, index, values)


# ---------------------------------------------------------------------------
# Random numbers. One seeded generator per device, so that dropout masks and
# initializations are reproducible on either device.
# ---------------------------------------------------------------------------


class Generator:
    """A seeded random generator with the methods both devices have.

    ``cupy.random.Generator`` has ``random``, ``standard_normal`` and
    ``integers`` but no ``permutation``, ``choice``, ``shuffle`` or
    ``normal``; NumPy's has them all. tinyvit's generator offers the shared
    three on both devices (plus ``permutation``, built from ``random``), so
    code that draws with it on the CPU runs unchanged on the GPU, and a
    method the GPU lacks fails on the CPU too. On the CPU it draws NumPy's
    stream (``numpy.random.default_rng(seed)``); on the GPU CuPy's Philox
    stream (counter-based: seeding it afresh, as each training step does
    for its dropout masks, is one small kernel).
    """

    __slots__ = ("device", "_rng")

    def __init__(self, seed: int, device: str = "cpu"):
        self.device = check_device_name(device)
        if device == "cuda":
            self._rng = cupy.random.Generator(cupy.random.Philox4x3210(seed))
        else:
            self._rng = np.random.default_rng(seed)

    def random(self, size=None, dtype=np.float64):
        """Uniform numbers in ``[0, 1)``."""
        return self._rng.random(size, dtype=dtype)

    def standard_normal(self, size=None, dtype=np.float64):
        """Normal numbers, mean 0 and standard deviation 1."""
        return self._rng.standard_normal(size, dtype=dtype)

    def integers(self, low, high=None, size=None, dtype=np.int64):
        """Integers in ``[low, high)`` (``[0, low)`` without ``high``)."""
        return self._rng.integers(low, high, size, dtype=dtype)

    def permutation(self, n: int):
        """A random order of ``0 .. n-1``: the ranks of ``n`` uniform draws."""
        return module_for(self.device).argsort(self.random(n))

    def batch_random(self, shape, dtype=np.float64):
        """Uniform numbers for a batch whose rows are the first axis of ``shape``.

        Alone, ``random(shape)``. In a process that holds part ``i`` of ``n``
        equal parts of every batch (``batch_shard``), the numbers of the whole
        batch are drawn and part ``i`` of them kept: each image gets the
        numbers it gets when one process trains on the whole batch.
        """
        index, parts = _shard
        if parts == 1:
            return self.random(shape, dtype=dtype)
        rows = shape[0]
        whole = self.random((rows * parts, *shape[1:]), dtype=dtype)
        return whole[index * rows : (index + 1) * rows]

    def __getattr__(self, name):
        raise AttributeError(
            f"tinyvit's generator has no {name!r}: it offers what NumPy's and CuPy's "
            "generators share (random, standard_normal, integers) and permutation, so "
            "that a draw that works on the CPU works on the GPU"
        )


_generators: dict[str, Generator] = {}
_seed = 0
_shard = (0, 1)  # (this process's part, parts) of every batch: see batch_shard


def new_generator(seed: int, device: str = "cpu") -> Generator:
    """A fresh random generator for ``device`` (see ``Generator``)."""
    return Generator(seed, device)


def manual_seed(seed: int) -> None:
    """Seed the default generator of every device (each is made afresh when next used)."""
    global _seed
    _seed = int(seed)
    _generators.clear()


def default_generator(device: str = "cpu") -> Generator:
    """The shared generator of ``device``, created from the last ``manual_seed``."""
    if device not in _generators:
        _generators[device] = new_generator(_seed, device)
    return _generators[device]


@contextlib.contextmanager
def batch_shard(index: int, parts: int):
    """Inside the block this process holds part ``index`` of ``parts`` equal parts of each
    batch (data parallelism: ``tinyvit.distributed``); ``Generator.batch_random`` then
    draws for the whole batch and keeps the part, so that a random mask (dropout,
    PatchDropout) does not depend on how many processes share the batch."""
    global _shard
    if not 0 <= index < parts:
        raise ValueError(f"batch_shard: part {index} of {parts} does not exist")
    previous, _shard = _shard, (int(index), int(parts))
    try:
        yield
    finally:
        _shard = previous


# ---------------------------------------------------------------------------
# Several GPUs: one process per GPU (tinyvit.distributed), each on its own.
# ---------------------------------------------------------------------------


def use_gpu(local_rank: int) -> int:
    """Make GPU ``local_rank`` (modulo the GPUs this process sees) the current device of
    this process, before anything is put on a GPU; returns its number. A launcher that
    gives each process one GPU of its own (``CUDA_VISIBLE_DEVICES``) leaves one to see.

    The device is chosen before ``cuda_problem``'s checks run on it: run on the
    default device, they would give every process a context on GPU 0.
    """
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, no GPU: the check says which
        count = 0
    if count < 1:
        check_device_name("cuda")  # the DeviceError that says why
    number = int(local_rank) % count
    cupy.cuda.Device(number).use()
    check_device_name("cuda")
    return number


def nccl_process_group(size: int, rank: int):
    """CuPy's NCCL communicator of ``size`` processes, one GPU each
    (``cupyx.distributed.init_process_group``, its rendezvous through MPI): its
    ``all_reduce`` and ``broadcast`` take device arrays."""
    import cupyx.distributed  # noqa: PLC0415  (NCCL: only for runs on several GPUs)

    return cupyx.distributed.init_process_group(size, rank, backend="nccl", use_mpi=True)
