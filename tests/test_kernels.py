"""Kernels equal their reference ops; the registry between them; the CPU runtime under them.

Every kernel is compared with the reference op of ``functional.py`` it
replaces, in values and in the gradient of every input, in float32 and
float64, with the rows cut into many blocks (the last one ragged) and run on
three threads; each kernel also passes the float64 gradient check on its own.
"""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyvit
import tinyvit.functional as F
from tinyvit import Tensor, dispatch, gradcheck, kernels
from tinyvit.backend import to_numpy
from tinyvit.kernels import cpu, cpu_runtime
from tinyvit.kernels.fast_math import (
    TANH_CDF_CLAMP,
    TANH_CDF_COEFFICIENTS,
    TANH_CDF_ERROR_BOUND,
    fit_tanh_cdf_coefficients,
    normal_cdf_tanh,
)

CPU_KERNELS = kernels.available("cpu")

# name -> (call with the op, input shapes, chunk elements, shape of the array cut into
# blocks): chunk sizes chosen so that the blocks number several, the last one shorter.
CASES = {
    "softmax": (lambda op, x: op(x, -1), [(7, 5, 7)], 21, (35, 7)),
    "softmax, axis 1": (lambda op, x: op(x, 1), [(3, 4, 5)], 21, None),
    "layer_norm": (lambda op, x, w, b: op(x, w, b), [(7, 5, 6), (6,), (6,)], 24, (35, 6)),
    "layer_norm, no affine": (lambda op, x: op(x), [(7, 5, 6)], 24, (35, 6)),
    "gelu": (lambda op, x: op(x), [(6, 5, 7)], 24, (210,)),
    "gelu, tanh": (lambda op, x: op(x, "tanh"), [(6, 5, 7)], 24, (210,)),
    "scaled_dot_product_attention": (
        lambda op, q, k, v: op(q, k, v),
        [(7, 2, 5, 4), (7, 2, 6, 4), (7, 2, 6, 3)],
        90,
        (14, 5, 6),
    ),
    "scaled_dot_product_attention, scale": (
        lambda op, q, k, v: op(q, k, v, scale=0.3),
        [(5, 5, 4), (5, 6, 4), (5, 6, 3)],
        60,
        (5, 5, 6),
    ),
    "self_attention": (lambda op, qkv: op(qkv, 2), [(7, 6, 12)], 150, (7, 2, 6, 6)),
}


def op_name(case):
    return case.split(",")[0]


@pytest.fixture
def small_blocks(monkeypatch):
    """``small_blocks(elements)``: cut rows into blocks of ``elements`` entries, on 3 threads."""

    def set_blocks(elements):
        monkeypatch.setattr(cpu_runtime, "CHUNK_ELEMENTS", elements)
        monkeypatch.setenv("TINYVIT_THREADS", "3")
        monkeypatch.setattr(cpu_runtime, "_pool", None)

    yield set_blocks
    cpu_runtime._pool = None


def run(fn, inputs, upstream):
    """Values and the gradient of every input of ``fn(*inputs)`` for upstream gradient ``R``."""
    for t in inputs:
        t.grad = None
    y = fn(*inputs)
    y.backward(upstream)
    return [to_numpy(y.data)] + [to_numpy(t.grad) for t in inputs]


def make_inputs(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in shapes]


def test_every_kernel_is_tested_and_replaces_a_reference_op():
    assert {op_name(c) for c in CASES} == set(CPU_KERNELS)
    for name in CPU_KERNELS:
        assert getattr(F, name).reference is dispatch.reference(name), name


def test_linear_has_no_kernel_its_products_are_blas_already():
    assert "linear" not in CPU_KERNELS and kernels.lookup("linear") is None
    x, w, b = make_inputs([(3, 5, 4), (6, 4), (6,)], np.float64)
    with kernels.using("auto"):
        got = run(F.linear, [x, w, b], np.ones((3, 5, 6)))
    want = run(F.linear.reference, [x, w, b], np.ones((3, 5, 6)))
    for a, b_ in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b_)


def test_the_cases_cut_into_several_blocks_with_a_ragged_last_one(small_blocks):
    for case, (_, _, elements, shape) in CASES.items():
        if shape is None:  # on the reference path (softmax, axis 1)
            continue
        small_blocks(elements)
        blocks = cpu_runtime.row_blocks(np.empty(shape))
        assert len(blocks) > 2, case
        assert blocks[-1].stop - blocks[-1].start < blocks[0].stop, case


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_equals_reference(case, dtype, small_blocks):
    call, shapes, elements, _ = CASES[case]
    small_blocks(elements)
    name = op_name(case)
    kernel, reference = CPU_KERNELS[name], getattr(F, name).reference
    inputs = make_inputs(shapes, dtype)
    y = call(reference, *inputs)
    upstream = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    want = run(lambda *t: call(reference, *t), inputs, upstream)
    got = run(lambda *t: call(kernel, *t), inputs, upstream)
    if dtype == np.float64:
        tol = dict(rtol=1e-10, atol=1e-12)
    elif case == "gelu":  # the float32 polynomial: within 1.5e-7 of Phi
        tol = dict(rtol=1e-5, atol=2e-6)
    else:
        tol = dict(rtol=2e-5, atol=2e-6)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_passes_the_gradient_check(case, small_blocks):
    call, shapes, elements, _ = CASES[case]
    small_blocks(elements)
    kernel = CPU_KERNELS[op_name(case)]
    gradcheck(lambda *t: call(kernel, *t), make_inputs(shapes, np.float64, seed=2))


@pytest.mark.parametrize("case", sorted(CASES))
def test_blocks_and_threads_change_nothing(case, small_blocks):
    """The same kernel in one block and in many on three threads: equal to the last bits."""
    call, shapes, elements, _ = CASES[case]
    kernel = CPU_KERNELS[op_name(case)]
    inputs = make_inputs(shapes, np.float64, seed=3)
    upstream = np.random.default_rng(4).standard_normal(call(kernel, *inputs).shape)
    small_blocks(10**9)
    whole = run(lambda *t: call(kernel, *t), inputs, upstream)
    small_blocks(elements)
    blocked = run(lambda *t: call(kernel, *t), inputs, upstream)
    for a, b in zip(whole, blocked, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- the switch


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
        assert "gelu" in kernels.describe() and "threads" in kernels.describe()
    assert len(calls) == 2  # not in reference mode


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
    with pytest.raises(KeyError, match="no reference op named 'conv2d'.*'gelu'"):
        dispatch.reference("conv2d")


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
    assert out.stdout.splitlines()[0] == "auto" and "layer_norm" in out.stdout
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


# ---------------------------------------------------------------- the float32 CDF


def test_tanh_cdf_coefficients_are_the_documented_fit():
    refit = fit_tanh_cdf_coefficients(TANH_CDF_CLAMP)
    np.testing.assert_allclose(refit, TANH_CDF_COEFFICIENTS, rtol=1e-6, atol=1e-12)
    assert abs(TANH_CDF_COEFFICIENTS[0] - math.sqrt(2 / math.pi)) < 1e-6  # the tanh GELU's slope


def test_tanh_cdf_within_its_stated_bound(xp, ulps):
    """Within 1.5e-7 of Phi (plus 2 ulp of tanh, halved, where tanh and exp may be 2 ulp
    off, as on a GPU: ``ulps``), its density to float32 rounding of x^2 / 2, calm at inputs
    far past the clamp (no overflow, no NaN, exactly 0 and 1 in the tails), never
    decreasing."""
    x = np.concatenate([np.linspace(-9, 9, 200001), [0.0, 5.5, -5.5, 60.0, -60.0, 1e4, -1e4]])
    x = x.astype(np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        cdf, pdf = (to_numpy(a) for a in normal_cdf_tanh(xp.asarray(x), with_pdf=True))
    wide = x.astype(np.float64)
    want = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in wide])
    assert cdf.dtype == pdf.dtype == np.float32
    tanh = np.abs(2 * want - 1).astype(np.float32)  # Phi = (1 + tanh) / 2
    margin = 2 * 0.5 * np.spacing(tanh).astype(np.float64)  # 2 ulp of tanh
    assert (np.abs(cdf - want) - margin).max() < TANH_CDF_ERROR_BOUND
    if xp is np:
        assert np.abs(cdf - want).max() < TANH_CDF_ERROR_BOUND
    np.testing.assert_allclose(
        pdf, np.exp(-wide * wide / 2) / math.sqrt(2 * math.pi), rtol=1e-5, atol=1e-37
    )
    assert (cdf[x >= 6] == 1).all() and (cdf[x <= -60] == 0).all()
    if ulps == 0:  # monotone with monotone (correctly rounded) tanh and exp
        assert (np.diff(cdf[:200001]) >= 0).all()


# ---------------------------------------------------------------- the CPU runtime


def test_row_blocks_cover_the_rows_once():
    a = np.zeros((10, 7))
    blocks = cpu_runtime.row_blocks(a, elements=21)
    assert [(s.start, s.stop) for s in blocks] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert cpu_runtime.row_blocks(a, elements=1000) == [slice(0, 10)]


def test_parallel_runs_every_item_and_reraises(monkeypatch):
    monkeypatch.setenv("TINYVIT_THREADS", "3")
    monkeypatch.setattr(cpu_runtime, "_pool", None)
    seen = []
    cpu_runtime.parallel(seen.append, range(10))
    assert sorted(seen) == list(range(10))

    def fail(i):
        if i == 7:
            raise ValueError("item 7")

    with pytest.raises(ValueError, match="item 7"):
        cpu_runtime.parallel(fail, range(10))
    cpu_runtime._pool = None


needs_openblas = pytest.mark.skipif(
    cpu_runtime.blas_thread_timeout() is None, reason="NumPy here does not use OpenBLAS"
)


@pytest.mark.skipif(
    cpu_runtime._blas_thread_functions() is None, reason="no OpenBLAS thread count to set"
)
def test_openblas_has_one_thread_inside_and_its_count_back_after(monkeypatch):
    """Pool threads each running a threaded product ask for more threads than there are
    cores (benchmarks/README.md: how much slower): the attention's large products run
    with one OpenBLAS thread, and the count comes back after, also after an error."""
    set_threads, get_threads = cpu_runtime._blas_thread_functions()
    before = int(get_threads())
    try:
        set_threads(2)
        with cpu_runtime.one_blas_thread():
            assert int(get_threads()) == 1
        assert int(get_threads()) == 2
        with pytest.raises(ValueError, match="inside"):
            with cpu_runtime.one_blas_thread():
                raise ValueError("inside")
        assert int(get_threads()) == 2

        seen = []  # the attention switches for products above OpenBLAS's threshold only
        real = cpu_runtime.one_blas_thread

        def spy():
            seen.append(True)
            return real()

        monkeypatch.setattr(cpu, "one_blas_thread", spy)
        for tokens, switched in ((65, False), (145, True)):
            seen.clear()
            qkv = Tensor(np.ones((2, tokens, 3 * 96), np.float32), requires_grad=True)
            cpu.self_attention(qkv, 3).sum().backward()
            assert seen == [True, True] if switched else seen == [], tokens
    finally:
        set_threads(before)


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


def test_the_entry_points_configure_the_process(monkeypatch, tmp_path):
    """``python -m tinyvit`` and every lesson (through ``lesson_arguments``) apply the
    process settings once, after their flags are read."""
    import tinyvit.__main__ as entry
    from tinyvit.lesson import lesson_arguments

    calls = []
    monkeypatch.setattr(kernels, "configure_process", lambda: calls.append(1) or {})
    monkeypatch.setattr(entry, "check_every_layer", lambda **_: [])
    assert entry.main([]) == 0
    assert calls == [1]
    lesson_arguments("00_test", "a test", argv=["--out", str(tmp_path / "out")])
    assert calls == [1, 1]
    lessons = sorted((Path(tinyvit.__file__).parents[1] / "lessons").glob("[0-9][0-9]_*.py"))
    assert lessons and all("lesson_arguments(" in p.read_text() for p in lessons)
