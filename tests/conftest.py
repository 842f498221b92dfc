"""Shared fixtures: the ``xp`` fixture runs a test on NumPy and on the ``"cuda"`` device.

The ``"cuda"`` device is the real GPU when CuPy finds one. When CuPy is
installed but finds no GPU (CI, a laptop), it is the CuPy stand-in
(``tests/cupy_standin.py``): CuPy's names, signatures and rules (no implicit
conversion to NumPy, no NumPy operands in device ops, 0-d reductions, only
the real ``cupy.random.Generator``'s methods), NumPy's arithmetic. So every
test that takes ``device`` or ``xp`` also checks that the code obeys CuPy's
rules. ``TINYVIT_STANDIN=0`` turns the stand-in off (the suite then runs on
NumPy only). Without CuPy, the ``"cuda"`` tests are not collected.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

from tinyvit import backend, kernels
from tinyvit.tensor import Tensor

STANDIN = False  # whether "cuda" is the stand-in in this run
if (
    backend.cupy is not None
    and not backend.cuda_available()
    and backend.cuda_problem().startswith("CuPy finds no GPU")  # not a GPU missing a library
    and os.environ.get("TINYVIT_STANDIN", "1") != "0"
):
    import cupy_standin  # tests/ is on sys.path (pytest's rootdir-relative import)

    cupy_standin.install()
    STANDIN = True

# The suite runs once per device: on NumPy always, and on "cuda" when it is usable
# (a GPU, or the stand-in).
DEVICES = ["cpu", "cuda"] if backend.cuda_available() else ["cpu"]


def pytest_report_header(config):
    if STANDIN:
        return "device cuda: the CuPy stand-in (CuPy's rules, NumPy's arithmetic; no GPU here)"
    return f"device cuda: {'a GPU' if 'cuda' in DEVICES else 'not tested'}"


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def xp(device):
    """The array module under test: numpy, or cupy on a machine with a GPU."""
    return backend.module_for(device)


@pytest.fixture(params=["auto", "reference"])
def kernel_mode(request):
    """The test runs twice: with the kernels, and with every op on its reference code."""
    with kernels.using(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def make(xp, rng):
    """``make(*shape, dtype=float64, requires_grad=True, positive=False)``: a random tensor."""

    def _make(*shape, dtype=np.float64, requires_grad=True, positive=False, scale=1.0):
        a = rng.standard_normal(shape) * scale
        if positive:
            a = np.abs(a) + 0.5
        return Tensor(xp.asarray(a, dtype=dtype), requires_grad=requires_grad)

    return _make


def to_numpy(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


@pytest.fixture(params=[0, 1, 2], ids=lambda k: f"{k}ulp")
def ulps(request, device):
    """The test runs with float32 transcendental functions exact (0) and moved by 1 and
    2 ulp (on the stand-in's "cuda" device, ``cupy_standin.nudge_ulps``): CUDA documents
    1-2 ulp for expf, logf, expm1f, log1pf, tanhf, erff. Elsewhere only 0 runs."""
    k = request.param
    if k and not (device == "cuda" and STANDIN):
        pytest.skip("ulp nudging needs the stand-in's cuda device")
    with cupy_standin.nudge_ulps(k) if k else contextlib.nullcontext():
        yield k
