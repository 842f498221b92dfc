"""The autograd engine: every primitive op's forward against NumPy, its backward
against central differences, and the engine's bookkeeping (accumulation,
topological order, freeing, errors)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinyvit import Tensor, concatenate, gradcheck, no_grad, stack
from tinyvit.backend import to_numpy
from tinyvit.tensor import tensor

# (name, tinyvit op, NumPy reference, input shapes, positive inputs?)
BINARY = [
    ("add", lambda a, b: a + b, lambda a, b: a + b),
    ("sub", lambda a, b: a - b, lambda a, b: a - b),
    ("mul", lambda a, b: a * b, lambda a, b: a * b),
    ("div", lambda a, b: a / b, lambda a, b: a / b),
    ("pow", lambda a, b: a**b, lambda a, b: a**b),
]
BROADCASTS = [
    ((3, 4), (3, 4)),
    ((2, 3, 4), (4,)),
    ((3, 1), (1, 4)),
    ((4,), (2, 3, 4)),
    ((), (2, 3)),
]


@pytest.mark.parametrize("name,op,ref", BINARY, ids=[b[0] for b in BINARY])
@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
def test_binary_ops_forward_and_gradient(name, op, ref, shapes, make):
    positive = name in ("div", "pow")
    a, b = make(*shapes[0], positive=positive), make(*shapes[1], positive=positive)
    np.testing.assert_allclose(to_numpy(op(a, b).data), ref(to_numpy(a.data), to_numpy(b.data)))
    gradcheck(op, (a, b))


UNARY = [
    ("neg", lambda x: -x, lambda x: -x, False),
    ("exp", lambda x: x.exp(), np.exp, False),
    ("log", lambda x: x.log(), np.log, True),
    ("tanh", lambda x: x.tanh(), np.tanh, False),
    ("sqrt", lambda x: x.sqrt(), np.sqrt, True),
    ("erf", lambda x: x.erf(), np.vectorize(math.erf), False),
    ("square", lambda x: x**2, np.square, False),
    ("pow -1.5", lambda x: x**-1.5, lambda x: x**-1.5, True),
    ("scalar - x", lambda x: 2.0 - x, lambda x: 2.0 - x, False),
    ("scalar / x", lambda x: 3.0 / x, lambda x: 3.0 / x, True),
    ("scalar ** x", lambda x: 2.0**x, lambda x: 2.0**x, False),
    ("x * scalar + scalar", lambda x: x * 3.0 + 1.0, lambda x: x * 3.0 + 1.0, False),
]


@pytest.mark.parametrize("name,op,ref,positive", UNARY, ids=[u[0] for u in UNARY])
def test_unary_ops_forward_and_gradient(name, op, ref, positive, make):
    x = make(3, 5, positive=positive)
    np.testing.assert_allclose(to_numpy(op(x).data), ref(to_numpy(x.data)), rtol=1e-9, atol=1e-9)
    gradcheck(op, (x,))


REDUCTIONS = [
    ("sum", lambda x, **kw: x.sum(**kw), np.sum),
    ("mean", lambda x, **kw: x.mean(**kw), np.mean),
    ("max", lambda x, **kw: x.max(**kw), np.max),
]
AXES = [None, 0, 1, -1, (0, 2)]


@pytest.mark.parametrize("name,op,ref", REDUCTIONS, ids=[r[0] for r in REDUCTIONS])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(name, op, ref, axis, keepdims, make):
    x = make(2, 3, 4)
    y = op(x, axis=axis, keepdims=keepdims)
    expected = ref(to_numpy(x.data), axis=axis, keepdims=keepdims)
    assert y.shape == np.shape(expected)
    np.testing.assert_allclose(to_numpy(y.data), expected)
    gradcheck(lambda t: op(t, axis=axis, keepdims=keepdims), (x,))


def test_max_shares_the_gradient_between_ties(xp):
    x = Tensor(xp.asarray([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(to_numpy(x.grad), [[0, 0.5, 0.5], [1, 0, 0]])


SHAPE_OPS = [
    ("reshape", lambda x: x.reshape(6, 4), lambda x: x.reshape(6, 4)),
    ("reshape tuple", lambda x: x.reshape((4, -1)), lambda x: x.reshape((4, -1))),
    ("transpose", lambda x: x.transpose(), lambda x: x.transpose()),
    ("transpose axes", lambda x: x.transpose(1, 2, 0), lambda x: x.transpose(1, 2, 0)),
    (".T", lambda x: x.T, lambda x: x.T),
    ("swapaxes", lambda x: x.swapaxes(0, 2), lambda x: x.swapaxes(0, 2)),
    (
        "broadcast_to",
        lambda x: x[:1].broadcast_to((3, 2, 3, 4)),
        lambda x: np.broadcast_to(x[:1], (3, 2, 3, 4)),
    ),
    ("slice", lambda x: x[:, 1:3], lambda x: x[:, 1:3]),
    ("int and step", lambda x: x[1, ::2], lambda x: x[1, ::2]),
    ("ellipsis/None", lambda x: x[..., None, 0], lambda x: x[..., None, 0]),
    ("negative int", lambda x: x[-1], lambda x: x[-1]),
    ("fancy repeats", lambda x: x[[0, 1, 1, 0]], lambda x: x[[0, 1, 1, 0]]),
    ("fancy 2-d", lambda x: x[[0, 1, 1], [2, 0, 2]], lambda x: x[[0, 1, 1], [2, 0, 2]]),
]


@pytest.mark.parametrize("name,op,ref", SHAPE_OPS, ids=[s[0] for s in SHAPE_OPS])
def test_shape_ops(name, op, ref, make):
    x = make(2, 3, 4)
    np.testing.assert_array_equal(to_numpy(op(x).data), ref(to_numpy(x.data)))
    gradcheck(op, (x,))


def test_fancy_index_with_repeats_adds_every_use(xp):
    x = Tensor(xp.asarray([1.0, 2.0, 3.0]), requires_grad=True)
    x[xp.asarray([0, 0, 2, 0])].sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [3.0, 0.0, 1.0])


def test_boolean_mask_index(make, xp):
    x = make(4, 3)
    mask = xp.asarray([True, False, True, True])
    np.testing.assert_array_equal(to_numpy(x[mask].data), to_numpy(x.data)[to_numpy(mask)])
    gradcheck(lambda t: t[mask], (x,))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate_and_stack(axis, make):
    a, b, c = make(2, 3), make(2, 3), make(2, 3)
    cat = concatenate([a, b, c], axis=axis)
    np.testing.assert_array_equal(
        to_numpy(cat.data), np.concatenate([to_numpy(t.data) for t in (a, b, c)], axis=axis)
    )
    gradcheck(lambda *ts: concatenate(ts, axis=axis), (a, b, c))
    st = stack([a, b, c], axis=axis)
    np.testing.assert_array_equal(
        to_numpy(st.data), np.stack([to_numpy(t.data) for t in (a, b, c)], axis=axis)
    )
    gradcheck(lambda *ts: stack(ts, axis=axis), (a, b, c))


def test_concatenate_unequal_parts(make):
    a, b = make(1, 4), make(3, 4)  # the class token joined to three patch rows
    gradcheck(lambda x, y: concatenate([x, y], axis=0), (a, b))


MATMULS = [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (2, 4, 5)),
    ((2, 3, 3, 4), (2, 3, 4, 2)),  # (B, heads, N, d) @ (B, heads, d, N)
    ((2, 3, 4), (4, 5)),  # a batch of rows times one matrix
    ((4, 5), (2, 5, 3)),
    ((2, 1, 3, 4), (1, 3, 4, 2)),  # broadcast batch axes
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((2, 3, 4), (4,)),
]


@pytest.mark.parametrize("shapes", MATMULS, ids=str)
def test_matmul(shapes, make):
    a, b = make(*shapes[0]), make(*shapes[1])
    np.testing.assert_allclose(to_numpy((a @ b).data), to_numpy(a.data) @ to_numpy(b.data))
    gradcheck(lambda x, y: x @ y, (a, b))


def test_matmul_with_a_plain_array(make, xp):
    a = make(3, 4)
    w = xp.asarray(np.arange(8.0).reshape(4, 2))
    np.testing.assert_allclose(to_numpy((a @ w).data), to_numpy(a.data) @ to_numpy(w))
    gradcheck(lambda x: x @ w, (a,))


@pytest.mark.parametrize(
    "shapes,words",
    [
        (((2, 3), (4, 5)), ["(2, 3)", "(4, 5)", "(3)", "(4)"]),
        (((2, 3, 4), (5, 4, 2)), ["(2, 3, 4)", "(5, 4, 2)", "batch"]),
    ],
)
def test_matmul_shape_error_names_both_shapes(shapes, words, make):
    a, b = make(*shapes[0]), make(*shapes[1])
    with pytest.raises(ValueError) as info:
        a @ b
    for word in words:
        assert word in str(info.value)


def test_diamond_graph_adds_both_paths(make):
    # x feeds y through two paths; topological order must wait for both
    x = make(3)
    gradcheck(lambda t: (t * 2.0).exp() * t.tanh() + t, (x,))
    x2 = Tensor(np.array([0.5, -1.0]), requires_grad=True)
    y = x2 * x2 + x2  # dy/dx = 2x + 1
    y.sum().backward()
    np.testing.assert_allclose(x2.grad, 2 * x2.data + 1)


def test_same_tensor_twice_in_one_op(xp):
    x = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    (x + x).sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [2.0, 2.0])
    x.grad = None
    (x * x).sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [2.0, 4.0])


def test_leaf_gradients_never_share_memory(xp):
    """`a + b` hands the same gradient to both; each leaf must own its .grad."""
    a = Tensor(xp.ones(3), requires_grad=True)
    b = Tensor(xp.ones(3), requires_grad=True)
    (a + b).backward(xp.ones(3))
    assert a.grad is not b.grad
    a.grad *= 10  # an optimizer may scale gradients in place
    np.testing.assert_array_equal(to_numpy(b.grad), [1.0, 1.0, 1.0])


def test_a_leaf_gradient_that_exists_is_added_into_in_place(xp):
    """A ``.grad`` that is a view of a larger array (an optimizer's gradient buffer) is
    added into where it is: the array sees the gradient, and stays the leaf's."""
    buffer = xp.zeros(5)
    a = Tensor(xp.ones(3), requires_grad=True)
    b = Tensor(xp.ones(2), requires_grad=True)
    a.grad, b.grad = buffer[:3], buffer[3:]
    view = a.grad
    (a * xp.asarray([1.0, 2.0, 3.0])).sum().backward()
    assert a.grad is view
    np.testing.assert_array_equal(to_numpy(buffer), [1.0, 2.0, 3.0, 0.0, 0.0])
    (a.sum() + (b * 4.0).sum()).backward()
    np.testing.assert_array_equal(to_numpy(buffer), [2.0, 3.0, 4.0, 4.0, 4.0])


def test_upstream_gradient_is_not_modified(xp):
    x = Tensor(xp.ones(3), requires_grad=True)
    y = x * 1.0
    upstream = xp.asarray([1.0, 2.0, 3.0])
    z = y + y.reshape(3)  # the engine accumulates two paths into y's gradient
    z.backward(upstream)
    np.testing.assert_array_equal(to_numpy(upstream), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(to_numpy(x.grad), [2.0, 4.0, 6.0])


def test_gradients_accumulate_across_backward_calls(xp):
    x = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    (x * 3.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [6.0, 6.0])
    x.zero_grad()
    assert x.grad is None


def test_graph_is_freed_unless_retained(xp):
    x = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [4.0, 8.0])
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_no_grad_and_detach(xp):
    x = Tensor(xp.ones(2), requires_grad=True)
    with no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.is_leaf
    z = (x * 2.0).detach()
    assert not z.requires_grad
    w = x * 2.0
    assert w.requires_grad and not w.is_leaf


def test_backward_on_a_non_scalar_says_what_to_pass(make):
    y = make(2, 3) * 2.0
    with pytest.raises(RuntimeError) as info:
        y.backward()
    message = str(info.value)
    assert "(2, 3)" in message and "y.backward(grad)" in message and "sum()" in message


def test_backward_with_a_wrong_gradient_shape(make, xp):
    y = make(2, 3) * 2.0
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        y.backward(xp.ones((3, 2)))


def test_backward_without_grad_required(xp):
    with pytest.raises(RuntimeError, match="requires_grad"):
        (Tensor(xp.ones(2)) * 2.0).sum().backward()


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="int64"):
        Tensor(np.arange(3), requires_grad=True)


def test_deep_graph_does_not_recurse(xp):
    x = Tensor(xp.asarray([1.0]), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [1.0])


def test_defaults_and_conversions(xp, device):
    t = tensor([1.0, 2.0], device=device)
    assert t.dtype == np.float32 and t.device == device
    assert Tensor(np.zeros(2)).dtype == np.float64  # an existing array keeps its dtype
    assert Tensor([1, 2]).dtype.kind == "i"
    assert "requires_grad=True" in repr(tensor([1.0], requires_grad=True))
    x = tensor([1.0, 2.0], requires_grad=True, device=device)
    y = x.astype(np.float64)
    assert y.dtype == np.float64
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(to_numpy(x.grad), [2.0, 4.0])
    assert x.numpy().dtype == np.float32 and isinstance(x.numpy(), np.ndarray)


def test_mixed_dtypes_are_refused(xp):
    a = Tensor(xp.ones(2, dtype=np.float32))
    b = Tensor(xp.ones(2, dtype=np.float64))
    with pytest.raises(TypeError, match="float32 and float64"):
        a + b


ALL_OPS_FLOAT32 = [
    lambda a, b: a + b,
    lambda a, b: a - b,
    lambda a, b: a * b,
    lambda a, b: a / (b * b + 1.0),
    lambda a, b: (a * a + 1.0) ** b,
    lambda a, b: -a + b.exp() + (b * b + 1.0).log() + a.tanh() + (b * b + 1.0).sqrt() + a.erf(),
    lambda a, b: a**2 + 2.0 / (b * b + 1.0) - 1.0 + 2.0**a,
    lambda a, b: (a.sum(axis=0) + b.mean(axis=0)) * a.max(axis=0),
    lambda a, b: a.reshape(4, 3).T.swapaxes(0, 1).transpose() + b[:, 1:2].sum(),
    lambda a, b: concatenate([a, b], axis=0) * stack([a, b], axis=0).sum(axis=0)[0],
    lambda a, b: a @ b.T,
    lambda a, b: a[[0, 0, 2]] * b[1],
]


@pytest.mark.parametrize("op", ALL_OPS_FLOAT32, ids=range(len(ALL_OPS_FLOAT32)))
def test_ops_keep_float32(op, make):
    a, b = make(3, 4, dtype=np.float32), make(3, 4, dtype=np.float32)
    out = op(a, b)
    assert out.dtype == np.float32
    out.backward(out.data * 0 + 1)
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float32
