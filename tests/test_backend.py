"""The backend: device names, moving arrays, and refusing to mix devices."""

from __future__ import annotations

import numpy as np
import pytest

import tinyvit.functional as F
from tinyvit import Tensor, backend


def test_the_suite_runs_on_cupy_when_a_gpu_is_present():
    if not backend.cuda_available():
        pytest.skip("no GPU here: the suite ran on NumPy only")
    import cupy

    assert backend.xp_of(cupy.zeros(2)) is cupy


def test_cpu_arrays_use_numpy():
    a = np.zeros(3, dtype=np.float32)
    assert backend.xp_of(a) is np
    assert backend.device_of(a) == "cpu"
    assert backend.to_device(a, "cpu") is a
    assert backend.to_numpy(a) is a
    assert backend.DEFAULT_DTYPE == np.float32


def test_unknown_device_names_are_refused():
    with pytest.raises(ValueError, match=r"'tpu'.*\('cpu', 'cuda'\)"):
        backend.to_device(np.zeros(1), "tpu")


def test_cuda_without_a_gpu_says_why(monkeypatch):
    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    with pytest.raises(backend.DeviceError, match="cuda"):
        backend.check_device_name("cuda")


class _FakeGpuArray(np.ndarray):
    """Stands in for a CuPy array on a machine without one."""


class _FakeCupy:
    ndarray = _FakeGpuArray


@pytest.fixture
def fake_cuda(monkeypatch):
    """Make the backend believe that `_FakeGpuArray`s live on a GPU."""
    monkeypatch.setattr(backend, "cupy", _FakeCupy)
    return lambda a: np.asarray(a, dtype=np.float32).view(_FakeGpuArray)


def test_mixed_devices_name_each_operand(fake_cuda):
    cpu, gpu = np.ones((2, 3), dtype=np.float32), fake_cuda(np.ones(3))
    assert backend.device_of(gpu) == "cuda"
    with pytest.raises(backend.DeviceError) as info:
        backend.xp_of(cpu, gpu)
    message = str(info.value)
    assert "operand 0 (shape (2, 3), float32) is on cpu" in message
    assert "operand 1 (shape (3,), float32) is on cuda" in message


def test_tensor_ops_refuse_mixed_devices(fake_cuda):
    cpu = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    gpu = Tensor(fake_cuda(np.ones((3, 4))), requires_grad=True)
    with pytest.raises(backend.DeviceError, match="on cpu.*on cuda"):
        cpu @ gpu
    with pytest.raises(backend.DeviceError, match="on cpu.*on cuda"):
        cpu + Tensor(fake_cuda(np.ones(3)))
    with pytest.raises(backend.DeviceError, match=r"x \(shape \(2, 3\).*weight"):
        F.linear(cpu, Tensor(fake_cuda(np.ones((4, 3)))))


def test_seeded_generators_repeat():
    backend.manual_seed(7)
    a = backend.default_generator("cpu").random(4)
    backend.manual_seed(7)
    b = backend.default_generator("cpu").random(4)
    np.testing.assert_array_equal(a, b)
    c = backend.new_generator(7).random(4)
    np.testing.assert_array_equal(a, c)


def test_scatter_add_adds_repeats():
    target = np.zeros(3)
    backend.scatter_add(target, np.array([0, 0, 2]), np.array([1.0, 2.0, 5.0]))
    np.testing.assert_array_equal(target, [3.0, 0.0, 5.0])
