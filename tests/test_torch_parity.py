"""Against PyTorch: each function's output and input gradients, for a random
upstream gradient, agree with torch in float64, on the kernels and on the
reference path. Skipped where torch is missing."""

from __future__ import annotations

import numpy as np
import pytest

import tinyvit.functional as F
from tinyvit import Tensor, concatenate, stack
from tinyvit.backend import to_numpy

torch = pytest.importorskip("torch")
TF = torch.nn.functional
TOL = {"rtol": 1e-7, "atol": 1e-8}  # well inside the 1e-6 the brief asks for
pytestmark = pytest.mark.usefixtures("kernel_mode")  # on the kernels and on the references


def compare(ours, theirs, shapes, xp, seed=0, int_args=()):
    """Run ``ours`` on tinyvit tensors and ``theirs`` on torch tensors with the same
    float64 inputs and the same random upstream gradient; compare outputs and grads."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in shapes]
    mine = [Tensor(xp.asarray(a), requires_grad=True) for a in arrays]
    refs = [torch.tensor(a, requires_grad=True) for a in arrays]
    y = ours(*mine, *int_args)
    upstream = rng.standard_normal(y.shape)
    y.backward(xp.asarray(upstream))
    y_ref = theirs(*refs, *[torch.as_tensor(np.asarray(to_numpy(i))) for i in int_args])
    y_ref.backward(torch.tensor(upstream))
    np.testing.assert_allclose(to_numpy(y.data), y_ref.detach().numpy(), **TOL)
    for m, r in zip(mine, refs, strict=True):
        np.testing.assert_allclose(to_numpy(m.grad), r.grad.numpy(), **TOL)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear(with_bias, xp):
    shapes = [(2, 5, 3), (4, 3)] + ([(4,)] if with_bias else [])
    compare(F.linear, TF.linear, shapes, xp)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_and_log_softmax(axis, xp):
    compare(lambda x: F.softmax(x, axis), lambda x: TF.softmax(x, dim=axis), [(2, 4, 5)], xp)
    compare(
        lambda x: F.log_softmax(x, axis), lambda x: TF.log_softmax(x, dim=axis), [(2, 4, 5)], xp
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(smoothing, reduction, xp):
    target = xp.asarray([3, 0, 2, 2, 1, 4])
    compare(
        lambda z, t: F.cross_entropy(z, t, label_smoothing=smoothing, reduction=reduction),
        lambda z, t: TF.cross_entropy(z, t, label_smoothing=smoothing, reduction=reduction),
        [(6, 5)],
        xp,
        int_args=(target,),
    )


def test_cross_entropy_with_probabilities(xp):
    probs = np.random.default_rng(1).dirichlet(np.ones(5), size=6)
    compare(
        lambda z: F.cross_entropy(z, xp.asarray(probs), label_smoothing=0.1),
        lambda z: TF.cross_entropy(z, torch.tensor(probs), label_smoothing=0.1),
        [(6, 5)],
        xp,
    )


def test_layer_norm(xp):
    compare(
        lambda x, w, b: F.layer_norm(x, w, b, eps=1e-6),
        lambda x, w, b: TF.layer_norm(x, (7,), w, b, eps=1e-6),
        [(2, 3, 7), (7,), (7,)],
        xp,
    )


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate, xp):
    compare(
        lambda x: F.gelu(x, approximate),
        lambda x: TF.gelu(x, approximate=approximate),
        [(3, 4, 6)],
        xp,
    )


def test_scaled_dot_product_attention(xp):
    compare(
        F.scaled_dot_product_attention,
        TF.scaled_dot_product_attention,
        [(2, 3, 5, 4), (2, 3, 6, 4), (2, 3, 6, 8)],
        xp,
    )


def test_attention_weights_match_torch(xp):
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((2, 2, 4, 8)), rng.standard_normal((2, 2, 4, 8))
    v = rng.standard_normal((2, 2, 4, 8))
    _, attn = F.scaled_dot_product_attention(
        *(Tensor(xp.asarray(a)) for a in (q, k, v)), need_weights=True
    )
    ref = torch.softmax(torch.tensor(q) @ torch.tensor(k).transpose(-1, -2) / 8**0.5, dim=-1)
    np.testing.assert_allclose(to_numpy(attn), ref.numpy(), **TOL)


def test_a_graph_of_primitives(xp):
    """Elementwise ops, broadcasting, reductions, shapes and matmul, chained."""

    def ours(a, b, c):
        h = (a @ b).tanh() * c.exp() - (a.sum(axis=-1, keepdims=True) ** 2) / 3.0
        h = concatenate([h, h.max(axis=1, keepdims=True)], axis=1)
        h = stack([h, h * 2.0], axis=0).swapaxes(0, 1)
        return (h[:, :, 1:, :].reshape(2, -1) + 1.0).log().mean(axis=0)

    def theirs(a, b, c):
        h = (a @ b).tanh() * c.exp() - (a.sum(dim=-1, keepdim=True) ** 2) / 3.0
        h = torch.cat([h, h.amax(dim=1, keepdim=True)], dim=1)
        h = torch.stack([h, h * 2.0], dim=0).swapaxes(0, 1)
        return (h[:, :, 1:, :].reshape(2, -1) + 1.0).log().mean(dim=0)

    rng = np.random.default_rng(3)
    a = rng.uniform(0.1, 0.3, (2, 3, 4))
    b = rng.uniform(0.1, 0.3, (4, 5))
    c = rng.uniform(-1, 0, (5,))
    mine = [Tensor(xp.asarray(x), requires_grad=True) for x in (a, b, c)]
    refs = [torch.tensor(x, requires_grad=True) for x in (a, b, c)]
    y, y_ref = ours(*mine), theirs(*refs)
    upstream = rng.standard_normal(y.shape)
    y.backward(xp.asarray(upstream))
    y_ref.backward(torch.tensor(upstream))
    np.testing.assert_allclose(to_numpy(y.data), y_ref.detach().numpy(), **TOL)
    for m, r in zip(mine, refs, strict=True):
        np.testing.assert_allclose(to_numpy(m.grad), r.grad.numpy(), **TOL)
