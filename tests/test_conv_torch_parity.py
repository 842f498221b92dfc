"""The CNN's ops against PyTorch: outputs and the gradients of every input for a random
upstream gradient, in float64 and in float32, on the kernels and on the references, on
shapes whose strides and padding do not divide evenly. Skipped where torch is missing."""

from __future__ import annotations

import numpy as np
import pytest

from tinyvit import Tensor, conv
from tinyvit.backend import to_numpy

torch = pytest.importorskip("torch")
TF = torch.nn.functional
TOLERANCES = {
    np.float64: {"rtol": 1e-7, "atol": 1e-8},
    np.float32: {"rtol": 2e-4, "atol": 2e-5},  # sums of up to a few hundred float32 terms
}
pytestmark = pytest.mark.usefixtures("kernel_mode")  # on the kernels and on the references


def compare(ours, theirs, shapes, xp, dtype, seed=0):
    """Run ``ours`` on tinyvit tensors and ``theirs`` on torch tensors with the same inputs
    and the same random upstream gradient, in ``dtype``; compare outputs and gradients."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    mine = [Tensor(xp.asarray(a), requires_grad=True) for a in arrays]
    refs = [torch.tensor(a, requires_grad=True) for a in arrays]
    y = ours(*mine)
    upstream = rng.standard_normal(y.shape).astype(dtype)
    y.backward(xp.asarray(upstream))
    y_ref = theirs(*refs)
    y_ref.backward(torch.tensor(upstream))
    assert y.dtype == dtype
    tolerance = TOLERANCES[dtype]
    np.testing.assert_allclose(to_numpy(y.data), y_ref.detach().numpy(), **tolerance)
    for m, r in zip(mine, refs, strict=True):
        assert m.grad.dtype == dtype
        np.testing.assert_allclose(to_numpy(m.grad), r.grad.numpy(), **tolerance)


DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])

CONV_CASES = [
    # (B, C, H, W), (O, kh, kw), stride, padding
    ((2, 3, 7, 6), (4, 3, 3), (2, 2), (1, 1)),
    ((2, 4, 9, 8), (5, 3, 3), (1, 1), (1, 1)),  # the stem's: 3x3, stride 1, padding 1
    ((1, 3, 6, 7), (2, 3, 2), (2, 1), (1, 0)),
    ((2, 2, 5, 5), (3, 2, 2), (3, 3), (0, 0)),
    ((2, 2, 4, 4), (3, 1, 1), (1, 1), (1, 1)),
]


@DTYPES
@pytest.mark.parametrize("shape,kernel,stride,padding", CONV_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d(shape, kernel, stride, padding, with_bias, dtype, xp):
    O, kh, kw = kernel
    shapes = [shape, (O, shape[1], kh, kw)] + ([(O,)] if with_bias else [])
    compare(
        lambda *a: conv.conv2d(*a, stride=stride, padding=padding),
        lambda *a: TF.conv2d(*a, stride=stride, padding=padding),
        shapes, xp, dtype,
    )  # fmt: skip


@DTYPES
@pytest.mark.parametrize(
    "kernel,stride,padding",
    [((3, 3), (2, 2), (1, 1)), ((2, 2), None, (0, 0)), ((3, 2), (2, 1), (1, 0)),
     ((3, 3), (1, 1), (1, 1))],
)  # fmt: skip
def test_max_pool2d(kernel, stride, padding, dtype, xp):
    compare(
        lambda x: conv.max_pool2d(x, kernel, stride, padding),
        lambda x: TF.max_pool2d(x, kernel, stride, padding),
        [(2, 3, 7, 6)], xp, dtype,
    )  # fmt: skip


@DTYPES
def test_relu(dtype, xp):
    compare(conv.relu, TF.relu, [(2, 3, 5, 4)], xp, dtype)


@DTYPES
@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm(groups, dtype, xp):
    compare(
        lambda x, w, b: conv.group_norm(x, groups, w, b),
        lambda x, w, b: TF.group_norm(x, groups, w, b),
        [(2, 6, 5, 3), (6,), (6,)], xp, dtype,
    )  # fmt: skip


@DTYPES
def test_the_stem_end_to_end(dtype, xp):
    """Two stages of the hybrid's stem, conv, ReLU and 3/2 pooling each, as one graph."""

    def ours(x, w1, w2):
        for w in (w1, w2):
            x = conv.max_pool2d(conv.relu(conv.conv2d(x, w, padding=1)), 3, 2, 1)
        return x

    def theirs(x, w1, w2):
        for w in (w1, w2):
            x = TF.max_pool2d(TF.relu(TF.conv2d(x, w, padding=1)), 3, 2, 1)
        return x

    compare(ours, theirs, [(2, 3, 13, 12), (8, 3, 3, 3), (6, 8, 3, 3)], xp, dtype)
