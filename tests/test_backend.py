"""The backend: device names, moving arrays, and refusing to mix devices."""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest

import tinyvit.functional as F
from tinyvit import Tensor, backend


def test_the_suite_runs_on_cupy_when_a_gpu_is_present():
    if not backend.cuda_available():
        pytest.skip("no GPU here: the suite ran on NumPy only")
    cupy = backend.cupy

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


def _numpy_as_cupy(**broken):
    """A CuPy made of NumPy, for the GPU check: ``broken`` replaces some of its parts by
    functions that raise what CuPy raises when a CUDA library cannot be loaded."""
    cp = types.SimpleNamespace(
        __version__="14.2.0",
        ndarray=type("FakeDeviceArray", (), {}),
        arange=np.arange, ones=np.ones, eye=np.eye, linalg=np.linalg,
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)),
        random=types.SimpleNamespace(
            Generator=np.random.Generator, Philox4x3210=lambda seed: np.random.Philox(seed)
        ),
    )  # fmt: skip
    for path, error in broken.items():
        *parents, name = path.split("__")

        def fail(*args, error=error, **kwargs):
            raise error

        setattr(functools.reduce(getattr, parents, cp), name, fail)
    return cp


@pytest.fixture
def use_fake_cupy():
    """``use_fake_cupy(cp)``: the backend's "cuda" device on ``cp`` for one test."""
    previous = []

    def use(cp):
        previous.append(backend.use_cupy(cp, None))

    yield use
    if previous:
        backend.use_cupy(*previous[0])


def test_a_working_cuda_passes_the_check(use_fake_cupy):
    use_fake_cupy(_numpy_as_cupy())
    assert backend.cuda_problem() is None and backend.cuda_available()
    assert backend.check_device_name("cuda") == "cuda"


def test_cuda_without_a_gpu_says_why(use_fake_cupy):
    error = RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    use_fake_cupy(_numpy_as_cupy(cuda__runtime__getDeviceCount=error))
    assert not backend.cuda_available()
    with pytest.raises(backend.DeviceError) as info:
        backend.check_device_name("cuda")
    message = str(info.value)
    assert "CuPy finds no GPU (RuntimeError: cudaErrorInsufficientDriver" in message
    assert 'pip install "cupy-cuda12x[ctk]"' in message


@pytest.mark.parametrize(
    "broken, library, named",
    [
        ("arange", "NVRTC (libnvrtc)", "libnvrtc.so.12"),
        ("random__Generator", "cuRAND (libcurand)", "libcurand.so.10"),
        ("ones", "cuBLAS (libcublas)", "libcublas.so.12"),
        ("linalg", "cuSOLVER (libcusolver)", "libcusolver.so.11"),
    ],
)
def test_a_gpu_without_a_cuda_library_names_it(use_fake_cupy, broken, library, named):
    """Only the driver installed (or only CUDA 13): CuPy imports and counts the GPU, then
    fails at the first kernel, draw, product or solve; the error names the library and the
    command that installs it, instead of a traceback at the first step of a run."""
    error = RuntimeError(f"CuPy failed to load {named}: OSError: {named}: cannot open shared "
                         "object file: No such file or directory")  # fmt: skip
    if broken == "linalg":
        cp = _numpy_as_cupy()
        cp.linalg = types.SimpleNamespace(solve=_numpy_as_cupy(arange=error).arange)
    else:
        cp = _numpy_as_cupy(**{broken: error})
    use_fake_cupy(cp)
    with pytest.raises(backend.DeviceError) as info:
        backend.check_device_name("cuda")
    message = str(info.value)
    assert "found a GPU but could not" in message and library in message
    assert f"CuPy could not load {named}" in message
    assert message.endswith('pip install "cupy-cuda12x[ctk]"  (or, in a clone of tinyvit: '
                            'pip install -e ".[gpu]")')  # fmt: skip


def test_the_check_runs_once_per_process(use_fake_cupy):
    calls = []
    cp = _numpy_as_cupy()
    cp.cuda.runtime.getDeviceCount = lambda: calls.append(1) or 1
    use_fake_cupy(cp)
    assert backend.cuda_available() and backend.cuda_available()
    assert calls == [1]


def test_the_generator_offers_what_both_devices_have(device):
    rng = backend.new_generator(0, device)
    xp = backend.module_for(device)
    assert isinstance(rng.random(3, dtype=np.float32), xp.ndarray)
    order = backend.to_numpy(rng.permutation(10))
    assert sorted(order.tolist()) == list(range(10))
    for missing in ("choice", "shuffle", "normal"):
        with pytest.raises(AttributeError, match=f"no '{missing}'.*random, standard_normal"):
            getattr(rng, missing)


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
