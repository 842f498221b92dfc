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
"""

from __future__ import annotations

import numpy as np

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
