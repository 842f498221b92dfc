"""Kernels equal their reference ops; the registry between them; the CPU's process settings.

Every CPU kernel (a loop compiled by numba) is compared with the reference op
it replaces, in values and in the gradient of every input, in float32 and
float64, on odd shapes: a single row, rows of odd length, inputs and
upstream gradients that are not contiguous. Each kernel also passes the
float64 gradient check on its own, gives the same bits on one thread as on
all of them, and AdamW's equals its reference to the bit. Without numba the
CPU tests that need it are skipped, and a subprocess checks that the
reference path runs and says so.
"""

from __future__ import annotations

import ast
import math
import os
import re
import subprocess
import sys
from decimal import Decimal, getcontext
from pathlib import Path

import numpy as np
import pytest

import tinyvit
import tinyvit.functional as F
from tinyvit import Tensor, conv, dispatch, gradcheck, kernels, optim
from tinyvit import tensor as tensor_module
from tinyvit.backend import to_numpy
from tinyvit.kernels import cpu, cpu_runtime

CPU_KERNELS = kernels.available("cpu")
needs_numba = pytest.mark.skipif(cpu is None, reason="numba is not installed: no CPU kernels")


def transposed(shape):
    """A random array of ``shape`` that is not contiguous: the transpose of its reverse."""
    return lambda rng, dtype: rng.standard_normal(shape[::-1]).astype(dtype).T


def labels(classes):
    return lambda logits_shape: np.arange(logits_shape[0]) % classes


# name -> (call with the op, input shapes or makers of non-contiguous inputs)
CASES = {
    "linear": (lambda op, x, w, b: op(x, w, b), [(3, 70, 4), (6, 4), (6,)]),
    "linear, no bias, one row": (lambda op, x, w: op(x, w), [(1, 5), (3, 5)]),
    "linear, 2-D, not contiguous": (
        lambda op, x, w, b: op(x, w, b),
        [transposed((9, 4)), (6, 4), (6,)],
    ),
    "linear, not contiguous": (
        lambda op, x, w, b: op(x, w, b),
        [transposed((4, 5, 3)), transposed((6, 3)), (6,)],
    ),
    "softmax": (lambda op, x: op(x, -1), [(7, 5, 7)]),
    "softmax, one row": (lambda op, x: op(x), [(1, 9)]),
    "softmax, not contiguous": (lambda op, x: op(x), [transposed((6, 5, 7))]),
    "softmax, axis 1": (lambda op, x: op(x, 1), [(3, 4, 5)]),
    "layer_norm": (lambda op, x, w, b: op(x, w, b), [(7, 5, 6), (6,), (6,)]),
    "layer_norm, no affine": (lambda op, x: op(x), [(7, 5, 6)]),
    "layer_norm, one row": (lambda op, x, w, b: op(x, w, b, eps=1e-3), [(1, 5), (5,), (5,)]),
    "layer_norm, not contiguous": (
        lambda op, x, w, b: op(x, w, b),
        [transposed((3, 130, 6)), (6,), transposed((6,))],
    ),
    "gelu": (lambda op, x: op(x * 3), [(6, 5, 7)]),
    "gelu, tanh": (lambda op, x: op(x, "tanh"), [(6, 5, 7)]),
    "gelu, one value": (lambda op, x: op(x), [(1,)]),
    "gelu, not contiguous": (lambda op, x: op(x), [transposed((4, 3, 5))]),
    "scaled_dot_product_attention": (
        lambda op, q, k, v: op(q, k, v),
        [(7, 2, 5, 4), (7, 2, 6, 4), (7, 2, 6, 3)],
    ),
    "scaled_dot_product_attention, scale": (
        lambda op, q, k, v: op(q, k, v, scale=0.3),
        [(5, 5, 4), (5, 6, 4), (5, 6, 3)],
    ),
    "scaled_dot_product_attention, one query, not contiguous": (
        lambda op, q, k, v: op(q, k, v),
        [transposed((2, 1, 3)), transposed((2, 7, 3)), (2, 7, 2)],
    ),
    "self_attention": (lambda op, qkv: op(qkv, 2), [(7, 6, 12)]),
    "self_attention, one token": (lambda op, qkv: op(qkv, 1), [(2, 1, 9)]),
    "self_attention, not contiguous": (lambda op, qkv: op(qkv, 3), [transposed((5, 3, 18))]),
    "cross_entropy": (lambda op, x: op(x, np.arange(7) % 5), [(7, 5)]),
    "cross_entropy, smoothing, sum": (
        lambda op, x: op(x * 4, np.arange(7) % 5, label_smoothing=0.1, reduction="sum"),
        [(7, 5)],
    ),
    "cross_entropy, probabilities, none": (
        lambda op, x: op(x, np.full((6, 4), 0.25, x.dtype), reduction="none"),
        [(6, 4)],
    ),
    "cross_entropy, one example": (lambda op, x: op(x, [2], label_smoothing=0.2), [(1, 3)]),
}


def op_name(case):
    return case.split(",")[0]


def make_inputs(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [s(rng, dtype) if callable(s) else rng.standard_normal(s) for s in shapes]
    return [Tensor(a.astype(dtype, copy=False), requires_grad=True) for a in arrays]


def upstream_like(shape, dtype, seed=1):
    """A random upstream gradient of ``shape``, not contiguous when it has two axes or more."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape[::-1]).astype(dtype).T


def run(fn, inputs, upstream):
    """Values and the gradient of every input of ``fn(*inputs)`` for upstream gradient ``R``."""
    for t in inputs:
        t.grad = None
    y = fn(*inputs)
    y.backward(upstream)
    return [to_numpy(y.data)] + [to_numpy(t.grad) for t in inputs]


def reference_of(name):
    """The reference op a kernel replaces: ``functional``'s, ``conv``'s, ``optim.adamw_update``
    or ``tensor.add_arrays``."""
    for module in (F, conv, optim, tensor_module):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(name)


@needs_numba
def test_every_kernel_is_tested_and_replaces_a_reference_op():
    # conv2d and max_pool2d: against their references in tests/test_conv.py
    tested_elsewhere = {"adamw_update", "add_arrays", "conv2d", "max_pool2d"}
    assert {op_name(c) for c in CASES} | tested_elsewhere == set(CPU_KERNELS)
    for name in CPU_KERNELS:
        assert reference_of(name).reference is dispatch.reference(name), name


def test_the_cases_have_odd_shapes():
    """A single row, inputs that are not contiguous: the loops' layouts are exercised."""
    rng = np.random.default_rng(0)
    inputs = [s(rng, np.float32) for _, shapes in CASES.values() for s in shapes if callable(s)]
    assert inputs and not any(a.flags.c_contiguous for a in inputs if a.ndim > 1)
    assert any(shapes[0][0] == 1 for _, shapes in CASES.values() if not callable(shapes[0]))


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_equals_reference(case, dtype):
    call, shapes = CASES[case]
    name = op_name(case)
    kernel, reference = CPU_KERNELS[name], getattr(F, name).reference
    inputs = make_inputs(shapes, dtype)
    upstream = upstream_like(call(reference, *inputs).shape, dtype)
    want = run(lambda *t: call(reference, *t), inputs, upstream)
    got = run(lambda *t: call(kernel, *t), inputs, upstream)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(a, b, **tol)


@needs_numba
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_passes_the_gradient_check(case):
    call, shapes = CASES[case]
    kernel = CPU_KERNELS[op_name(case)]
    gradcheck(lambda *t: call(kernel, *t), make_inputs(shapes, np.float64, seed=2))


@pytest.fixture
def numba_threads():
    """``numba_threads(n)``: run the loops on ``n`` threads; the count is restored after."""
    numba = pytest.importorskip("numba")
    cpu_runtime.start_numba_threads()  # as the kernels start them
    before = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(before)


@needs_numba
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_thread_or_all_give_the_same_bits(case, numba_threads):
    """Rows never share a sum across threads; LayerNorm's sums over rows are made in
    parts of a fixed size, added in a fixed order: the thread count changes nothing."""
    call, shapes = CASES[case]
    kernel = CPU_KERNELS[op_name(case)]
    inputs = make_inputs(shapes, np.float64, seed=3)
    upstream = upstream_like(call(kernel, *inputs).shape, np.float64, seed=4)
    numba_threads(1)
    alone = run(lambda *t: call(kernel, *t), inputs, upstream)
    numba_threads(os.cpu_count() or 1)
    together = run(lambda *t: call(kernel, *t), inputs, upstream)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


@needs_numba
def test_layer_norm_sums_many_parts_of_rows():
    """Rows beyond one part (``ROWS_PER_PART``), the last part ragged: the weight's and
    bias's gradients still equal the reference's."""
    rows = 3 * cpu.ROWS_PER_PART + 5
    inputs = make_inputs([(rows, 8), (8,), (8,)], np.float64)
    upstream = upstream_like((rows, 8), np.float64)
    want = run(F.layer_norm.reference, inputs, upstream)
    got = run(CPU_KERNELS["layer_norm"], inputs, upstream)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_the_adamw_kernel_equals_its_reference_to_the_bit(dtype, weight_decay):
    """Same order of operations, no fastmath: every bit of the parameters and moments."""
    start = np.random.default_rng(0).standard_normal(1001).astype(dtype)
    grads = np.random.default_rng(1).standard_normal((4, 1001)).astype(dtype)
    states = []
    for update in (CPU_KERNELS["adamw_update"], optim.adamw_update.reference):
        param = start.copy()
        m, v = np.zeros_like(param), np.zeros_like(param)
        for step, grad in enumerate(grads, 1):
            update(param, grad, m, v, step, 1e-3, (0.9, 0.999), 1e-8, weight_decay)
        states.append((param, m, v))
    for a, b in zip(*states, strict=True):
        np.testing.assert_array_equal(a, b)


@needs_numba
def test_every_loop_is_compiled_once_per_machine():
    """``cache=True``: numba keeps each loop's machine code in ``__pycache__``."""
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    compiled = [f for f in vars(cpu).values() if isinstance(f, CPUDispatcher)]
    loops = [f for f in compiled if f.targetoptions.get("inline") != "always"]  # not helpers
    assert {f.__name__ for f in loops} >= {"gelu_loop", "softmax_loop", "adamw_loop"}
    for loop in loops:
        assert not isinstance(loop._cache, NullCache), loop.__name__


# ---------------------------------------------------------------- e^t and Phi


@needs_numba
def test_ln2_is_split_exactly():
    getcontext().prec = 40
    ln2 = Decimal(2).ln()
    assert abs(Decimal(cpu.LN2_HI) + Decimal(cpu.LN2_LO) - ln2) <= Decimal(math.ulp(cpu.LN2_LO)) / 2
    assert (cpu.LN2_HI * 512).is_integer() and cpu.LN2_HI * 512 < 2**9  # 9 significant bits


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_nonpositive_within_its_epsilon(dtype):
    """Relative error below the dtype's epsilon wherever ``e^t`` is a normal number, less
    than the smallest normal number below that and 0 far below, exactly 1 at 0, NaN for
    NaN; the loop compiles the dtype's own body."""
    from numba import njit

    @njit
    def exps(t, out):
        for i in range(t.size):
            out[i] = cpu.exp_nonpositive(t[i])

    finfo = np.finfo(dtype)
    lowest = math.log(finfo.tiny)
    t = np.concatenate([np.linspace(-750, 0, 300001), np.linspace(-1, 0, 100001), [lowest]])
    t = np.concatenate([t, [np.nextafter(lowest, 0), -np.inf, np.nan]]).astype(dtype)
    out = np.empty_like(t)
    exps(t, out)
    want = np.exp(t.astype(np.float64))
    normal = want >= finfo.tiny
    assert out.dtype == dtype
    assert (np.abs(out[normal] - want[normal]) / want[normal]).max() < finfo.eps
    assert (out[~normal & ~np.isnan(t)] < finfo.tiny).all() and np.isnan(out[-1])
    assert (out[t < lowest - 1] == 0).all()
    assert out[np.nonzero(t == 0)[0]].tolist() == [1.0] * int((t == 0).sum())


@needs_numba
def test_normal_cdf_within_its_stated_bound():
    """float32: within ``NORMAL_CDF_FLOAT32_ERROR`` of Phi, never decreasing, exactly 0 and 1
    far in the tails; float64: the reference's erf fit to rounding."""
    from numba import njit

    from tinyvit.special import normal_cdf

    @njit
    def cdfs(x, out):
        for i in range(x.size):
            out[i] = cpu.normal_cdf_and_gauss(x[i])[0]

    grid = np.concatenate([np.linspace(-9, 9, 200001), [60.0, -60.0, 1e4, -1e4]])
    for dtype in (np.float32, np.float64):
        x = grid.astype(dtype)
        out = np.empty_like(x)
        cdfs(x, out)
        truth = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2)) for v in x])
        if dtype == np.float32:
            assert np.abs(out - truth).max() < cpu.NORMAL_CDF_FLOAT32_ERROR
            assert (np.diff(out[:200001]) >= 0).all()
            assert out[-4:].tolist() == [1.0, 0.0, 1.0, 0.0]
        else:
            np.testing.assert_allclose(out, normal_cdf(x), rtol=0, atol=1e-15)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adding_arrays_on_every_core_equals_numpy_to_the_bit(dtype, monkeypatch):
    """Large arrays of one shape are added by the loop, to the bit (one rounding each, as
    NumPy's); broadcasting, a number, a small or a non-contiguous array go to NumPy."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((3, cpu.ADD_ON_CORES // 3 + 7)).astype(dtype) for _ in range(2))
    loop, calls = cpu.add_loop, []
    monkeypatch.setattr(cpu, "add_loop", lambda *arrays: calls.append(1) or loop(*arrays))
    kernel = CPU_KERNELS["add_arrays"]
    out = kernel(a, b)
    assert calls == [1] and out.dtype == dtype
    np.testing.assert_array_equal(out, a + b)
    strided = np.asfortranarray(b)  # not C order
    for x, y in [(a, b[:1]), (a, dtype(2.5)), (a[:, :5].copy(), b[:, :5].copy()), (a, strided)]:
        np.testing.assert_array_equal(kernel(x, y), x + y)
    assert calls == [1]


@needs_numba
def test_a_residual_and_its_gradients_are_added_by_the_kernel(monkeypatch):
    """``Tensor.__add__`` and the backward's sum of a tensor's gradients both go through
    ``add_arrays``: with the kernel, a residual block's values and gradients are those of
    the reference path."""
    calls = []
    kernel = CPU_KERNELS["add_arrays"]
    monkeypatch.setitem(CPU_KERNELS, "add_arrays", lambda a, b: calls.append(1) or kernel(a, b))
    rng = np.random.default_rng(0)
    x, weights = (rng.standard_normal((4, 65, 300)).astype(np.float32) for _ in range(2))
    x = Tensor(x, requires_grad=True)
    results = []
    for mode in ("auto", "reference"):
        with kernels.using(mode):
            x.grad = None
            y = x + F.gelu(x)  # x used twice: its two gradients are added up
            (y * weights).sum().backward()
            results.append((y.data, x.grad))
    assert len(calls) == 2  # the forward's sum and the backward's, with the kernels only
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)


@needs_numba
def test_the_float32_gauss_tail_fit_is_reproduced():
    """The float32 CDF's polynomial is what ``fit_gauss_tail_coefficients`` fits, with
    ``R(0) = 1/2`` exactly (so ``Phi(0) = 1/2``)."""
    assert cpu.GAUSS_TAIL_COEFFICIENTS[0] == 0.5
    np.testing.assert_allclose(
        cpu.fit_gauss_tail_coefficients(), cpu.GAUSS_TAIL_COEFFICIENTS[1:], rtol=1e-6, atol=1e-9
    )


# ---------------------------------------------------------------- the switch


@needs_numba
def test_ops_take_the_kernel_in_auto_mode_and_the_reference_otherwise(monkeypatch):
    calls = []
    kernel = CPU_KERNELS["gelu"]
    monkeypatch.setitem(CPU_KERNELS, "gelu", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    x = Tensor(np.linspace(-3, 3, 10, dtype=np.float32), requires_grad=True)
    with kernels.using("auto"):
        F.gelu(x)
        assert len(calls) == 1
        assert kernels.lookup("gelu") is CPU_KERNELS["gelu"]
        with kernels.using("reference"):
            F.gelu(x)
            assert kernels.lookup("gelu") is None
            assert "reference" in kernels.describe()
        F.gelu(x)
        assert "gelu" in kernels.describe() and "numba" in kernels.describe()
        assert "thread" in kernels.describe()
    assert len(calls) == 2  # not in reference mode


@needs_numba
def test_the_optimizer_runs_the_adamw_kernel_through_the_registry(monkeypatch):
    calls = []
    kernel = CPU_KERNELS["adamw_update"]
    monkeypatch.setitem(CPU_KERNELS, "adamw_update", lambda *a: calls.append(1) or kernel(*a))
    w = Tensor(np.ones((3, 2), np.float32), requires_grad=True)
    opt = optim.AdamW([w], lr=0.1)
    w.grad[...] = 1.0
    with kernels.using("auto"):
        opt.step()
    with kernels.using("reference"):
        opt.step()
    assert calls == [1]


def test_using_restores_the_mode_after_an_error():
    before = kernels.mode()
    with pytest.raises(RuntimeError), kernels.using("reference"):
        assert kernels.mode() == "reference"
        raise RuntimeError
    assert kernels.mode() == before
    with pytest.raises(ValueError, match="auto.*reference.*'fast'"):
        kernels.use("fast")


def package_imports(path):
    """The tinyvit modules ``path`` imports at any level (``from .. import x``, ``from ..x``)."""
    package = Path(tinyvit.__file__).parent
    depth = len(path.relative_to(package).parts)  # 1: tinyvit/x.py, 2: tinyvit/kernels/x.py

    def absolute(dotted):
        return [d.removeprefix("tinyvit.") for d in dotted if d and d.startswith("tinyvit.")]

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == depth:  # from the package's top
            names = [node.module] if node.module else [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:  # from tinyvit.x import ...
            names = absolute([node.module])
        elif isinstance(node, ast.Import):  # import tinyvit.x
            names = absolute(alias.name for alias in node.names)
        else:
            continue
        found.update(name.split(".")[0] for name in names)
    return found


def test_no_cycle_the_registry_knows_neither_side():
    """functional hands dispatch its references and kernels/ hands it kernels: dispatch
    imports neither, and no kernel imports functional (its checks come from op_checks, a
    case left to the reference from dispatch.reference)."""
    package = Path(tinyvit.__file__).parent
    assert not package_imports(package / "dispatch.py") & {"functional", "kernels"}
    assert not package_imports(package / "op_checks.py") & {"functional", "kernels"}
    for path in sorted((package / "kernels").glob("*.py")):
        assert "functional" not in package_imports(path), path.name
    assert "kernels" not in package_imports(package / "functional.py")


def test_a_reference_unknown_to_the_registry_is_named():
    with pytest.raises(KeyError, match="no reference op named 'conv7d'.*'gelu'"):
        dispatch.reference("conv7d")


def test_cuda_has_one_kernel_the_exact_gelu():
    assert sorted(kernels.available("cuda")) == ["gelu"]
    assert "kernels: cuda (gelu)" in kernels.describe("cuda") or kernels.mode() == "reference"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_the_cuda_gelu_equals_its_reference(device, dtype, approximate):
    """CUDA's Gaussian CDF (one launch) against the reference's erf fit (about thirty):
    values and gradients, in both dtypes, across the tails; gradchecked in float64."""
    if device != "cuda":
        pytest.skip("a kernel of the cuda device")
    xp = tinyvit.backend.module_for(device)
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-9, 9, 1801), rng.standard_normal(200) * 3])
    r = rng.standard_normal(x.shape)
    kernel = kernels.available("cuda")["gelu"]
    results = []
    for op in (kernel, F.gelu.reference):
        t = Tensor(xp.asarray(x, dtype=dtype), requires_grad=True)
        y = op(t, approximate)
        (y * Tensor(xp.asarray(r, dtype=dtype))).sum().backward()
        assert y.dtype == t.grad.dtype == dtype
        results.append((to_numpy(y.data), to_numpy(t.grad)))
    (y, g), (y_ref, g_ref) = results
    # The reference's erf fit is within 1e-9 (float64); CUDA's normcdf is exact to rounding.
    tol = dict(rtol=1e-6, atol=3e-7) if dtype == np.float32 else dict(rtol=0, atol=1e-8)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(g, g_ref, **tol)
    t = Tensor(xp.asarray(rng.standard_normal((3, 5)) * 2), requires_grad=True)
    gradcheck(lambda a: kernel(a, approximate), (t,))




def python(code, **env):
    environ = {k: v for k, v in os.environ.items() if k not in env and v is not None}
    environ.update({k: v for k, v in env.items() if v is not None})
    result = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120
    )
    return result


def test_the_environment_chooses_the_mode():
    code = "import tinyvit; print(tinyvit.kernels.mode()); print(tinyvit.kernels.describe())"
    out = python(code, TINYVIT_KERNELS="reference")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "reference"
    out = python(code, TINYVIT_KERNELS="auto")
    assert out.stdout.splitlines()[0] == "auto"
    assert ("layer_norm" if kernels.cpu is not None else "numba is not importable") in out.stdout
    bad = python(code, TINYVIT_KERNELS="turbo")
    assert bad.returncode != 0 and "TINYVIT_KERNELS='turbo'" in bad.stderr


@pytest.mark.parametrize("mode", ["auto", "reference"])
def test_a_vit_trains_the_same_on_either_path(mode):
    """Three AdamW steps of a small ViT: reference and kernels agree in float64."""
    from tinyvit.optim import AdamW

    def train():
        tinyvit.manual_seed(0)
        model = tinyvit.ViT(16, 4, 5, dim=12, depth=2, heads=3, mlp_dim=24).to(np.float64)
        optimizer = AdamW(model, lr=1e-2)
        rng = np.random.default_rng(0)
        losses = []
        for _ in range(3):
            x = rng.standard_normal((6, 3, 16, 16))
            loss = F.cross_entropy(model(x), rng.integers(0, 5, 6), label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses, model.state_dict()

    with kernels.using(mode):
        losses, state = train()
    with kernels.using("reference" if mode == "auto" else "auto"):
        other_losses, other_state = train()
    np.testing.assert_allclose(losses, other_losses, rtol=1e-10)
    for key in state:
        np.testing.assert_allclose(state[key], other_state[key], rtol=1e-8, atol=1e-10)


def test_without_numba_the_reference_runs_and_says_so():
    """numba hidden from the import system: tinyvit imports, the CPU has no kernels, the
    ops run their references, and the line the trainer prints says why."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np, tinyvit, tinyvit.functional as F\n"
        "from tinyvit.optim import AdamW\n"
        "print(tinyvit.kernels.describe())\n"
        "print(sorted(tinyvit.kernels.available('cpu')))\n"
        "x = tinyvit.Tensor(np.ones((2, 3), np.float32), requires_grad=True)\n"
        "F.gelu(F.layer_norm(x)).sum().backward()\n"
        "opt = AdamW([x], lr=0.1); opt.step()\n"
        "print(tinyvit.kernels.configure_process()['openblas_threads_sleep'] in (True, False))\n"
    )
    out = python(code, TINYVIT_KERNELS="auto")
    assert out.returncode == 0, out.stderr
    line, available, configured = out.stdout.splitlines()
    assert line.startswith("kernels: reference (numba is not importable")
    assert "pip install numba" in line
    assert available == "[]" and configured == "True"


# ---------------------------------------------------------------- the CPU's process settings


needs_openblas = pytest.mark.skipif(
    cpu_runtime.blas_thread_timeout() is None, reason="NumPy here does not use OpenBLAS"
)


@needs_openblas
@pytest.mark.parametrize("numpy_first", [True, False], ids=["numpy first", "tinyvit first"])
def test_configure_process_quiets_openblas_whatever_the_import_order(numpy_first):
    """NumPy imported first has already loaded OpenBLAS with its 2^28-cycle spin;
    configure_process makes it read the setting again, so a script's import order does
    not matter."""
    first = "import numpy; " if numpy_first else ""
    code = first + (
        "import tinyvit; from tinyvit.kernels import cpu_runtime; "
        "print(tinyvit.kernels.configure_process()['openblas_threads_sleep']); "
        "print(cpu_runtime.blas_thread_timeout())"
    )
    out = python(code, OPENBLAS_THREAD_TIMEOUT=None)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "4"]


@needs_openblas
@pytest.mark.parametrize("numpy_first", [True, False], ids=["numpy first", "tinyvit first"])
def test_importing_tinyvit_leaves_openblas_as_it_was(numpy_first):
    """Importing a library changes no setting of the process that imports it: OpenBLAS
    keeps its default timeout (0, read as 2^28 cycles) and the environment no variable."""
    first = "import numpy; " if numpy_first else ""
    code = first + (
        "import os, tinyvit; "
        "from tinyvit.kernels import cpu_runtime; "
        "print(cpu_runtime.blas_thread_timeout(), os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    )
    out = python(code, OPENBLAS_THREAD_TIMEOUT=None)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "None"]


@needs_openblas
def test_a_timeout_the_user_chose_is_kept():
    code = (
        "import numpy; import tinyvit.kernels as k; k.configure_process(); "
        "print(k.cpu_runtime.blas_thread_timeout())"
    )
    out = python(code, OPENBLAS_THREAD_TIMEOUT="12")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["12"]


# Whether glibc serves a 24 MB request from mmap (its default: blocks over 128 KB, a
# threshold that can only rise up to 32 MB as mmapped blocks are freed) or from the heap
# (keep_freed_memory: blocks up to 32 MB), read from mallinfo2's bytes in mmapped blocks.
MALLOC_PROBE = """
import ctypes, ctypes.util
FIELDS = ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost")
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def mmapped(size=24 << 20):
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    grew = libc.mallinfo2().hblkhd - before
    libc.free(block)
    return grew >= size
"""


def has_mallinfo2():
    try:
        import ctypes
        import ctypes.util

        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not has_mallinfo2(), reason="the C library is not glibc 2.33 or later")
def test_importing_tinyvit_leaves_malloc_as_it_was_and_configure_process_keeps_memory():
    code = MALLOC_PROBE + (
        "import numpy, tinyvit\n"
        "print(mmapped())\n"
        "print(tinyvit.kernels.configure_process()['malloc_keeps_freed_memory'])\n"
        "print(mmapped())\n"
    )
    out = python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "False"]


def test_configure_process_gives_a_process_its_share_of_the_threads():
    """``configure_process(threads=1)`` (one of two processes on two cores): OpenBLAS,
    numba and the stacks of products run on one thread, in a process of its own."""
    code = (
        "import numpy, tinyvit.kernels as k\n"
        "from tinyvit.kernels import cpu_runtime\n"
        "from threadpoolctl import threadpool_info\n"
        "print(k.configure_process(threads=1)['threads'], cpu_runtime.product_threads(),\n"
        "      [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'])\n"
        "try:\n"
        "    import numba\n"
        "    print(numba.get_num_threads())\n"
        "except ImportError:\n"
        "    print(1)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "NUMBA_NUM_THREADS": "2"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["1 1 [1]", "1"]


def test_the_entry_points_configure_the_process(monkeypatch, tmp_path):
    """``python -m tinyvit`` and every lesson (through ``lesson_arguments``) apply the
    process settings once, after their flags are read."""
    import tinyvit.__main__ as entry
    from tinyvit.lesson import lesson_arguments

    calls = []
    monkeypatch.setattr(kernels, "configure_process", lambda threads=None: calls.append(1) or {})
    monkeypatch.setattr(entry, "check_every_layer", lambda **_: [])
    assert entry.main([]) == 0
    assert calls == [1]
    lesson_arguments("00_test", "a test", argv=["--out", str(tmp_path / "out")])
    assert calls == [1, 1]
    lessons = sorted((Path(tinyvit.__file__).parents[1] / "lessons").glob("[0-9][0-9]_*.py"))
    assert lessons and all("lesson_arguments(" in p.read_text() for p in lessons)


@needs_numba
@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_numbas_threads_start_asleep_when_idle_and_the_environment_stays(preset):
    """Importing tinyvit starts no thread; the first kernel starts numba's with
    OMP_WAIT_POLICY=passive (OpenMP shows what it read with OMP_DISPLAY_ENV), unless the
    user chose a policy, and leaves the environment as it was. ``describe()`` names the
    threading layer once the threads run."""
    code = (
        "import os, numpy as np, tinyvit, tinyvit.functional as F\n"
        "from tinyvit.kernels import cpu_runtime\n"
        "print(cpu_runtime.numba_threads_started())\n"
        "F.gelu(tinyvit.Tensor(np.ones(3, np.float32)))\n"
        "print(cpu_runtime.numba_threads_started(), os.environ.get('OMP_WAIT_POLICY'))\n"
        "print(tinyvit.kernels.describe())\n"
    )
    out = python(code, OMP_WAIT_POLICY=preset, OMP_DISPLAY_ENV="TRUE", TINYVIT_KERNELS="auto")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith(("True", "False", "k"))]
    assert lines[:2] == ["False", f"True {preset}"]
    assert lines[2].endswith(")") and "thread" in lines[2].split("numba, ")[1]
    if lines[2].endswith("(omp)"):  # GNU OpenMP printed the policy it read
        policy = re.search(r"OMP_WAIT_POLICY = '(\w+)'", out.stdout + out.stderr)
        assert policy and policy.group(1) == (preset or "PASSIVE")


def test_blocks_of_a_stack_cover_it_once_among_threads(monkeypatch):
    """``in_blocks``: every item of the first axis in exactly one block of about
    ``block_bytes``, none crossing the parts of the three threads, the calling thread
    taking the first part (a long stack) or all of it (a short one); an exception raised
    in a block reaches the caller."""
    import threading

    monkeypatch.setattr(cpu_runtime, "product_threads", lambda: 3)
    array = np.zeros((100, 4, 8), dtype=np.float32)  # 128 bytes an item
    seen, caller = [], threading.get_ident()

    def work(s):
        seen.append((s.start, s.stop, threading.get_ident() == caller))
        array[s] += 1  # each block writes only its own slice

    cpu_runtime.in_blocks(work, array, block_bytes=5 * 128)
    assert (array == 1).all() and max(stop - start for start, stop, _ in seen) == 5
    parts = np.linspace(0, 100, 4).astype(int)  # [0, 33, 66, 100]
    for start, stop, on_caller in seen:
        assert np.searchsorted(parts, start, "right") == np.searchsorted(parts, stop - 1, "right")
        assert on_caller == (start < parts[1])
    seen.clear()
    short = 2 * cpu_runtime.STACK_PER_THREAD - 1  # too few items for two threads
    cpu_runtime.in_blocks(work, array[:short], block_bytes=1)
    assert seen == [(i, i + 1, True) for i in range(short)]

    def fails(s):
        raise ValueError(f"block {s.start}")

    with pytest.raises(ValueError, match="block"):
        cpu_runtime.in_blocks(fails, array)
