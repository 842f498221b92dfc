"""The CuPy stand-in (tests/cupy_standin.py) keeps CuPy's rules: each test is one rule."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

pytest.importorskip("cupy")  # the stand-in is built from the real, installed CuPy

import cupy_standin  # noqa: E402  (tests/ is on sys.path: pytest puts it there)

from tinyvit import Tensor, backend  # noqa: E402


@pytest.fixture(scope="module")
def cp():
    return cupy_standin.build()


cupy = cupy_standin._real()  # the real one, even while the stand-in is installed


@pytest.fixture
def installed(cp):
    """tinyvit's "cuda" device on the stand-in, for one test."""
    cupy_standin.install()
    yield cp
    cupy_standin.uninstall()


@pytest.fixture
def a(cp):
    return cp.asarray(np.arange(12, dtype=np.float32).reshape(3, 4))


# -- names and signatures are the real CuPy's ---------------------------------


@pytest.mark.parametrize("name", ["permutation", "choice", "shuffle", "normal"])
def test_generator_has_only_the_real_generators_methods(cp, name):
    assert not hasattr(cupy.random.Generator, name)  # CuPy 14 has none of these
    with pytest.raises(AttributeError, match=name):
        getattr(cp.random.default_rng(0), name)


def test_generator_draws_are_device_arrays_from_another_stream(cp):
    draws = cp.random.default_rng(3).random((2, 5), dtype=np.float32)
    assert isinstance(draws, cp.ndarray) and draws.dtype == np.float32
    assert not np.allclose(draws.get(), np.random.default_rng(3).random((2, 5)))


def test_names_cupy_lacks_fail_as_on_a_gpu(cp):
    assert hasattr(cupy, "exp") and hasattr(cp, "exp")
    for name in ("insert", "vecdot", "spacing"):  # NumPy has them, CuPy 14 does not
        assert hasattr(np, name) and not hasattr(cupy, name)
        with pytest.raises(AttributeError, match=f"has no attribute '{name}'"):
            getattr(cp, name)
    with pytest.raises(AttributeError, match="has no attribute 'resize'"):
        cp.asarray(np.zeros(3)).resize  # noqa: B018  (numpy.ndarray has it, cupy.ndarray not)


def test_keywords_the_real_cupy_does_not_take_are_refused(cp, a):
    with pytest.raises(TypeError, match="initial"):
        a.max(initial=0.0)  # NumPy's ndarray.max takes it, CuPy's does not
    with pytest.raises(TypeError, match="Wrong arguments"):
        cp.exp(a, where=a > 0)  # CuPy's ufuncs take out, dtype and casting only
    with pytest.raises(TypeError, match="where"):
        cp.sum(a, where=a > 0)
    assert float(a.max(axis=None, keepdims=False)) == 11.0


def test_signatures_are_read_from_cython_docstrings():
    sig = cupy_standin.signature_of(cupy.ndarray.dot)  # "(self, _ndarray_base b, ...)"
    assert list(sig.parameters) == ["b", "out"]
    assert list(cupy_standin.signature_of(cupy.ndarray.sort).parameters) == ["axis", "kind"]


def test_the_array_defines_nothing_cupy_ndarray_lacks(cp):
    public = {n for n in vars(cp.ndarray) if not n.startswith("_") or n.startswith("__")}
    assert {"get", "item", "scatter_add", "sum"} <= public
    assert not public - set(dir(cupy.ndarray)) - {"__getattr__", "__weakref__", "__slots__"}
    cupy_standin._check_ndarray_against_real()  # and hand-written methods take the real parameters
    for name in ("take", "put", "astype", "get", "fill", "argmax"):
        mine = list(inspect.signature(getattr(cp.ndarray, name)).parameters)[1:]
        assert mine == list(cupy_standin.signature_of(getattr(cupy.ndarray, name)).parameters)


# -- no implicit conversion, no host operands -----------------------------------


def test_numpy_cannot_convert_a_device_array_implicitly(a):
    for convert in (np.asarray, np.array, lambda x: np.asarray(x.T, dtype=np.float64)):
        with pytest.raises(TypeError, match=r"Implicit conversion.*\.get\(\)"):
            convert(a)
    with pytest.raises(TypeError, match="Unsupported type"):  # cupy.concatenate refuses it
        np.concatenate([a, np.zeros((1, 4), dtype=np.float32)])
    np.testing.assert_array_equal(a.get(), np.arange(12).reshape(3, 4))


def test_numpy_operands_are_refused_in_device_ops(cp, a):
    host = np.ones(4, dtype=np.float32)
    for op in (
        lambda: a + host,
        lambda: host + a,
        lambda: cp.add(a, host),
        lambda: cp.exp(host),
        lambda: cp.exp([1.0, 2.0]),
        lambda: cp.add(a, np.array(1.0)),  # a 0-d NumPy array is an array, not a scalar
        lambda: cp.concatenate([a, host[None]]),
        lambda: a.dot(np.ones((4, 2), dtype=np.float32)),
    ):
        with pytest.raises(TypeError, match="Unsupported type|cannot"):
            op()


def test_python_and_numpy_scalars_are_allowed(a):
    assert (a * 2.0 + np.float32(1)).get()[1, 1] == 11.0
    assert (a < np.array(5.0)).get().sum() == 5  # comparisons unwrap 0-d arrays (core.pyx)


def test_numpy_functions_dispatch_to_the_stand_in(cp, a):
    assert isinstance(np.exp(a), cp.ndarray)
    assert isinstance(np.concatenate([a, a]), cp.ndarray)
    with pytest.raises(TypeError):
        np.add.at(a, [0], 1.0)  # only __call__ is dispatched, as in CuPy


def test_an_operand_that_opts_out_of_ufuncs_gets_the_reflected_operator(installed, a):
    total = a + Tensor(installed.ones(4, dtype=np.float32))  # Tensor: __array_ufunc__ = None
    assert isinstance(total, Tensor) and total.data.get()[0, 0] == 1.0


# -- results, views, setting items ------------------------------------------------


def test_reductions_and_elements_are_0d_device_arrays(cp, a):
    for value in (a.sum(), a.max(), a.mean(), cp.sum(a), a.argmax(), a[1, 2]):
        assert isinstance(value, cp.ndarray) and value.shape == ()
    assert a.sum().item() == 66.0


def test_views_write_through_and_know_their_base(a):
    row, flat = a[1], a.reshape(-1)
    row[...] = -1.0
    flat[0] = 100.0
    a.T[3, 2] = 7.0
    np.testing.assert_array_equal(a.get(), [[100, 1, 2, 3], [-1, -1, -1, -1], [8, 9, 10, 7]])
    assert row.base is a and flat.base is a and row[1:].base is a and a.base is None
    assert a.copy().base is None and not row.flags.owndata


def test_setting_items_follows_cupys_fill_and_scatter(cp, a):
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a[0] = np.zeros(4, dtype=np.float32)
    a[0] = np.array(5.0)  # a 0-d host array is a scalar to fill with
    a[[1, 2], 0] = np.array([7.0, 8.0])  # an integer-array index copies the values over
    assert a.get()[:, 0].tolist() == [5.0, 7.0, 8.0]
    target = cp.zeros(3, dtype=np.float32)
    cupy_standin._module().__getattr__("ndarray")  # the module is built
    cupy_standin._MODULES["cupyx"].scatter_add(target, cp.asarray([0, 0, 2]), 1.0)
    assert target.get().tolist() == [2.0, 0.0, 1.0]
    with pytest.raises(TypeError, match="scatter_add only supports"):
        cp.zeros(3, dtype=np.int64).scatter_add(cp.asarray([0]), 1)


def test_out_of_bounds_index_arrays_wrap_around_as_on_a_gpu(cp, a):
    assert a[cp.asarray([3, -4]), 0].get().tolist() == [0.0, 8.0]  # rows 3 % 3, -4 % 3
    assert a.take(cp.asarray([13]), axis=None).get().tolist() == [1.0]
    a[..., [4]] = -1.0  # column 4 % 4
    assert a.get()[:, 0].tolist() == [-1.0, -1.0, -1.0]
    with pytest.raises(IndexError):
        a[3]  # a scalar index is checked


# -- counters -----------------------------------------------------------------------


def test_an_item_is_one_sync_and_one_copy_back(a):
    with cupy_standin.counting() as c:
        a[0, 0].item()
    assert (c.syncs, c.device_to_host, c.host_to_device, c.launches) == (1, 1, 0, 0)


def test_asarray_of_host_data_is_one_copy_over(cp):
    with cupy_standin.counting() as c:
        x = cp.asarray(np.ones(5))
        same = cp.asarray(x)  # already on the device: nothing moves
    assert same is x
    assert (c.host_to_device, c.device_to_host, c.syncs, c.launches) == (1, 0, 0, 0)


def test_launches_are_counted_one_per_kernel(cp, a):
    with cupy_standin.counting() as c:
        a + a
    assert c.launches == 1
    with cupy_standin.counting() as c:
        a[1:].T.swapaxes(0, 1)[:, None].reshape(2, 4)  # views only
        cp.empty(10)
    assert c.launches == 0
    with cupy_standin.counting() as c:
        a.T.reshape(-1)  # not contiguous: a copy
        a.sum(axis=0)
        cp.zeros(3)
        a[cp.asarray([0, 2])]  # a gather
        a.astype(np.float64)
    assert c.launches == 5 and c.syncs == 0


def test_syncs_come_from_every_way_back_to_the_host(cp, a):
    with cupy_standin.counting() as c:
        float(a[0, 1])
        bool(a[0, 1] > 0)
        repr(a)
        np.array2string(a)  # cupy.array2string prints a host copy
        cp.asnumpy(a)
        a[a > 5]  # a boolean mask: its count comes back first
        cp.cuda.Device().synchronize()
    assert c.syncs == 7 and c.device_to_host == 6
    with pytest.raises(cupy_standin._MODULES["cupyx"].DeviceSynchronized):
        with cupy_standin._MODULES["cupyx"].allow_synchronize(False):
            a.sum().item()


def test_counters_nest(a):
    with cupy_standin.counting() as outer:
        a * 2
        with cupy_standin.counting() as inner:
            a * 3
    assert (outer.launches, inner.launches) == (2, 1)


# -- ULP nudging ----------------------------------------------------------------------


def _ulp_distance(x, y):
    """How many float32 values lie between x and y (same sign assumed)."""
    return np.abs(x.view(np.int32).astype(np.int64) - y.view(np.int32).astype(np.int64))


@pytest.mark.parametrize("k", [1, 2])
def test_nudging_moves_float32_exp_by_k_ulp(cp, k):
    x = np.linspace(-5, 5, 1001, dtype=np.float32)
    exact = np.exp(x)
    with cupy_standin.nudge_ulps(k, seed=1):
        nudged = cp.exp(cp.asarray(x)).get()
        squares = (cp.asarray(x) ** 2).get()  # integer exponent: exact on a GPU too
        doubles = cp.exp(cp.asarray(x, dtype=np.float64)).get()
        again = cp.exp(cp.asarray(x[::-1].copy())).get()[::-1]
    moved = _ulp_distance(nudged, exact)
    assert moved.max() <= k and (moved == k).mean() > 0.99
    assert 0.4 < (nudged > exact).mean() < 0.6  # up or down, about half each
    np.testing.assert_array_equal(again, nudged)  # the same input gives the same bits
    np.testing.assert_array_equal(squares, x**2)
    np.testing.assert_array_equal(doubles, np.exp(x.astype(np.float64)))
    with cupy_standin.nudge_ulps(0):
        np.testing.assert_array_equal(cp.exp(cp.asarray(x)).get(), exact)


# -- installing into tinyvit ----------------------------------------------------------


def test_install_makes_tinyvit_see_a_gpu_and_uninstall_undoes_it(cp):
    import sys

    import tinyvit.functional as F

    before = (backend.cupy, backend.cuda_available(), sys.modules.get("cupy"))
    cupy_standin.install()
    try:
        assert backend.cuda_available() and backend.cupy is cp
        assert sys.modules["cupy"] is cupy  # the real one: the stand-in goes through use_cupy
        x = Tensor(np.random.default_rng(0).standard_normal((2, 5)), requires_grad=True)
        y = x.to("cuda")
        assert y.device == "cuda" and isinstance(y.data, cp.ndarray)
        with cupy_standin.counting() as c:
            loss = (F.softmax(y) * Tensor(cp.arange(5.0))).sum()
            loss.backward()
        assert x.grad is not None and isinstance(x.grad, np.ndarray)
        assert c.launches > 5 and c.device_to_host == 1  # the gradient comes back once
        with pytest.raises(backend.DeviceError):
            backend.xp_of(np.zeros(2), y.data)
    finally:
        cupy_standin.uninstall()
    assert (backend.cupy, backend.cuda_available(), sys.modules.get("cupy")) == before


# -- bit generators and cupyx.scipy.special ------------------------------------------


def test_bit_generators_are_the_real_ones_and_cost_a_launch(cp):
    assert hasattr(cupy.random, "Philox4x3210") and hasattr(cp.random, "Philox4x3210")
    with cupy_standin.counting() as c:
        a = cp.random.Generator(cp.random.Philox4x3210(3)).random(4, dtype=np.float32)
        b = cp.random.Generator(cp.random.Philox4x3210(3)).random(4, dtype=np.float32)
    assert c.launches == 4  # two set-ups, two draws
    np.testing.assert_array_equal(a.get(), b.get())
    other = cp.random.Generator(cp.random.XORWOW(3)).random(4, dtype=np.float32)
    assert not np.array_equal(other.get(), a.get())  # another kind, another stream
    with pytest.raises(TypeError, match="BitGenerator"):
        cp.random.Generator(3)


def test_special_functions_are_ufuncs_of_the_input_float_type(cp):
    import math

    special = cupy_standin._MODULES["cupyx"].scipy.special
    x = np.linspace(-6, 6, 13)
    for dtype in (np.float32, np.float64):
        got = special.ndtr(cp.asarray(x.astype(dtype)))
        assert isinstance(got, cp.ndarray) and got.dtype == dtype
        want = [0.5 * math.erfc(-v / math.sqrt(2)) for v in x.astype(dtype).astype(float)]
        np.testing.assert_allclose(got.get(), want, rtol=1e-6 if dtype == np.float32 else 1e-15)
    assert special.erf(cp.asarray([0.5])).get()[0] == pytest.approx(math.erf(0.5), rel=1e-15)
    with pytest.raises(TypeError, match="Unsupported type"):
        special.ndtr(np.zeros(3))
    with pytest.raises(AttributeError, match="does not mirror"):
        special.gammaln  # noqa: B018  (CuPy has it; the stand-in offers only what tinyvit uses)
    with cupy_standin.nudge_ulps(1, seed=2):
        nudged = special.ndtr(cp.asarray(x.astype(np.float32))).get()
    assert (nudged != special.ndtr(cp.asarray(x.astype(np.float32))).get()).sum() > 6
