"""Shared fixtures: the ``xp`` fixture runs a test on NumPy, and on CuPy when a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest

from tinyvit import backend, kernels
from tinyvit.tensor import Tensor

# The suite runs once per device present: on NumPy always, on CuPy when a GPU is
# there. (tests/test_backend.py has the one test that reports a missing GPU.)
DEVICES = ["cpu", "cuda"] if backend.cuda_available() else ["cpu"]


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
