"""The ViT's layers: forward against plain NumPy formulas, backward against
central differences in float64, stability at extreme inputs, clear errors,
and agreement with the versions composed from primitives."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tinyvit.functional as F
from tinyvit import Tensor, backend, composed, gradcheck
from tinyvit.backend import to_numpy

# ---------------------------------------------------------------- reference formulas


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_attention(q, k, v):
    """One (batch, head) at a time, exactly as Eq. 5-7 read."""
    out = np.empty(q.shape[:-1] + (v.shape[-1],))
    for index in np.ndindex(q.shape[:-2]):
        scores = q[index] @ k[index].T / math.sqrt(q.shape[-1])
        out[index] = np_softmax(scores) @ v[index]
    return out


# ---------------------------------------------------------------- linear


@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear(shape, with_bias, make):
    x, w = make(*shape), make(6, 3)
    b = make(6) if with_bias else None
    want = to_numpy(x.data) @ to_numpy(w.data).T + (to_numpy(b.data) if with_bias else 0)
    np.testing.assert_allclose(to_numpy(F.linear(x, w, b).data), want)
    gradcheck(F.linear, (x, w, b))


def test_linear_shape_errors(make):
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(6, 3\)"):
        F.linear(make(2, 4), make(6, 3))
    with pytest.raises(ValueError, match=r"bias has shape \(5,\), expected \(6,\)"):
        F.linear(make(2, 3), make(6, 3), make(5))


# ---------------------------------------------------------------- softmax


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax(axis, make):
    x = make(3, 4, 5)
    p = np_softmax(to_numpy(x.data), axis)
    np.testing.assert_allclose(to_numpy(F.softmax(x, axis).data), p)
    np.testing.assert_allclose(to_numpy(F.log_softmax(x, axis).data), np.log(p))
    gradcheck(lambda t: F.softmax(t, axis), (x,))
    gradcheck(lambda t: F.log_softmax(t, axis), (x,))


@pytest.mark.parametrize("fn", [F.softmax, F.log_softmax])
def test_softmax_is_stable_at_1e4(fn, xp):
    x = Tensor(xp.asarray([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]]), requires_grad=True)
    y = fn(x)
    y.backward(xp.ones_like(y.data))
    assert np.all(np.isfinite(to_numpy(y.data))) and np.all(np.isfinite(to_numpy(x.grad)))
    if fn is F.softmax:
        np.testing.assert_allclose(to_numpy(y.data), [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]])


# ---------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_class_targets(smoothing, reduction, make, xp):
    z = make(5, 4)
    t = np.array([0, 3, 1, 1, 2])
    logp = np.log(np_softmax(to_numpy(z.data)))
    q = np.eye(4)[t] * (1 - smoothing) + smoothing / 4
    per = -(q * logp).sum(1)
    want = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    loss = F.cross_entropy(z, xp.asarray(t), label_smoothing=smoothing, reduction=reduction)
    np.testing.assert_allclose(to_numpy(loss.data), want)
    gradcheck(
        lambda a: F.cross_entropy(a, xp.asarray(t), label_smoothing=smoothing, reduction=reduction),
        (z,),
    )


def test_cross_entropy_probability_targets_match_class_targets(make, xp):
    z = make(3, 4)
    t = np.array([2, 0, 3])
    hard = F.cross_entropy(z, xp.asarray(t), label_smoothing=0.2)
    soft = F.cross_entropy(z, xp.asarray(np.eye(4)[t]), label_smoothing=0.2)
    np.testing.assert_allclose(to_numpy(hard.data), to_numpy(soft.data))
    mix = xp.asarray(0.7 * np.eye(4)[t] + 0.3 * np.eye(4)[[1, 1, 0]])  # a mixup target
    gradcheck(lambda a: F.cross_entropy(a, mix), (z,))


def test_cross_entropy_is_stable_at_1e4(xp):
    z = Tensor(xp.asarray([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4]]), requires_grad=True)
    loss = F.cross_entropy(z, xp.asarray([1, 1]), label_smoothing=0.1)
    loss.backward()
    assert np.isfinite(loss.item()) and np.all(np.isfinite(to_numpy(z.grad)))
    assert loss.item() > 1e3  # the first example is confidently wrong


def test_cross_entropy_errors(make, xp):
    z = make(3, 4)
    with pytest.raises(ValueError, match=r"shape \(3,\).*got \(2,\)"):
        F.cross_entropy(z, xp.asarray([0, 1]))
    if xp is np:  # on the GPU the labels' range is not read back (every step would wait)
        with pytest.raises(ValueError, match=r"\[0, 4\).*to 4"):
            F.cross_entropy(z, xp.asarray([0, 1, 4]))
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        F.cross_entropy(make(2, 3, 4), xp.asarray([0, 1]))


# ---------------------------------------------------------------- LayerNorm


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(affine, make):
    x = make(2, 3, 8, scale=3.0)
    w, b = (make(8), make(8)) if affine else (None, None)
    want = np_layer_norm(
        to_numpy(x.data), to_numpy(w.data) if affine else 1.0, to_numpy(b.data) if affine else 0.0
    )
    np.testing.assert_allclose(to_numpy(F.layer_norm(x, w, b).data), want)
    gradcheck(F.layer_norm, (x, w, b))


def test_layer_norm_on_a_constant_row(xp):
    x = Tensor(xp.full((2, 6), 3.0), requires_grad=True)
    w = Tensor(xp.ones(6), requires_grad=True)
    b = Tensor(xp.zeros(6), requires_grad=True)
    y = F.layer_norm(x, w, b)
    y.backward(xp.asarray(np.random.default_rng(0).standard_normal((2, 6))))
    for a in (y.data, x.grad, w.grad, b.grad):
        assert np.all(np.isfinite(to_numpy(a)))
    np.testing.assert_array_equal(to_numpy(y.data), 0.0)


def test_layer_norm_shape_error(make):
    with pytest.raises(ValueError, match=r"weight has shape \(5,\), expected \(8,\)"):
        F.layer_norm(make(2, 8), make(5), make(8))


# ---------------------------------------------------------------- GELU


def test_gelu_exact_and_tanh(make):
    x = make(4, 7, scale=2.0)
    a = to_numpy(x.data)
    exact = a * 0.5 * (1 + np.vectorize(math.erf)(a / math.sqrt(2)))
    tanh = 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))
    np.testing.assert_allclose(to_numpy(F.gelu(x).data), exact, atol=1e-9)
    np.testing.assert_allclose(to_numpy(F.gelu(x, approximate="tanh").data), tanh)
    assert np.abs(exact - tanh).max() > 1e-5  # two different functions
    gradcheck(F.gelu, (x,))
    gradcheck(lambda t: F.gelu(t, approximate="tanh"), (x,))


def test_gelu_float32_form_matches_float64_values_and_gradients(xp, ulps):
    """float32's GELU (the reference's CDF, the CPU kernel's tanh polynomial or CUDA's
    normcdf) and its gradient agree with the float64 path (gradchecked, torch-checked) to
    float32 accuracy, across the whole range and past the kernel's clamp; also with every
    float32 transcendental function 1 or 2 ulp off (``ulps``), as CUDA's may be."""
    x64 = np.concatenate([np.linspace(-12, 12, 4801), [-1e4, -60.0, 60.0, 1e4]])
    r64 = np.random.default_rng(0).standard_normal(x64.shape)
    x64, r64 = (a.astype(np.float32).astype(np.float64) for a in (x64, r64))  # same inputs
    results = {}
    for dtype in (np.float32, np.float64):
        x = Tensor(xp.asarray(x64.astype(dtype)), requires_grad=True)
        y = F.gelu(x)
        (y * Tensor(xp.asarray(r64.astype(dtype)))).sum().backward()
        assert y.dtype == x.grad.dtype == dtype
        results[dtype] = (to_numpy(y.data).astype(np.float64), to_numpy(x.grad).astype(np.float64))
    (y32, g32), (y64, g64) = results[np.float32], results[np.float64]
    np.testing.assert_allclose(y32, y64, rtol=2e-6, atol=2e-7)
    np.testing.assert_allclose(g32, g64, rtol=2e-6, atol=5e-7 * np.abs(r64).max())


def test_gelu_rejects_unknown_forms(make):
    with pytest.raises(ValueError, match="'sigmoid'"):
        F.gelu(make(2), approximate="sigmoid")


# ---------------------------------------------------------------- attention


def test_attention_matches_eq_5_to_7(make):
    q, k, v = make(2, 3, 5, 4), make(2, 3, 6, 4), make(2, 3, 6, 2)  # N=5 queries, M=6 keys
    out, attn = F.scaled_dot_product_attention(q, k, v, need_weights=True)
    np.testing.assert_allclose(
        to_numpy(out.data), np_attention(*(to_numpy(t.data) for t in (q, k, v)))
    )
    assert attn.shape == (2, 3, 5, 6)
    np.testing.assert_allclose(to_numpy(attn).sum(-1), 1.0)
    gradcheck(F.scaled_dot_product_attention, (q, k, v))


def test_attention_with_a_custom_scale(make):
    q, k, v = make(1, 2, 3, 4), make(1, 2, 3, 4), make(1, 2, 3, 4)
    gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, scale=0.1), (q, k, v))
    half = F.scaled_dot_product_attention(q * 0.5, k, v, scale=1.0)
    full = F.scaled_dot_product_attention(q, k, v, scale=0.5)
    np.testing.assert_allclose(to_numpy(half.data), to_numpy(full.data))


def test_attention_shape_error(make):
    with pytest.raises(ValueError, match=r"q \(2, 3, 5, 4\), k \(2, 3, 5, 3\)"):
        F.scaled_dot_product_attention(make(2, 3, 5, 4), make(2, 3, 5, 3), make(2, 3, 5, 3))


# ---------------------------------------------------------------- dropout


def test_dropout_is_seeded_and_scaled(xp, device):
    x = Tensor(xp.ones((200, 100)), requires_grad=True)
    a = F.dropout(x, 0.25, generator=backend.new_generator(3, device))
    b = F.dropout(x, 0.25, generator=backend.new_generator(3, device))
    c = F.dropout(x, 0.25, generator=backend.new_generator(4, device))
    np.testing.assert_array_equal(to_numpy(a.data), to_numpy(b.data))
    assert not np.array_equal(to_numpy(a.data), to_numpy(c.data))
    values = set(np.unique(to_numpy(a.data)).tolist())
    assert values == {0.0, 1 / 0.75}
    assert abs((to_numpy(a.data) == 0).mean() - 0.25) < 0.02
    a.backward(xp.ones_like(a.data))
    np.testing.assert_array_equal(to_numpy(x.grad), to_numpy(a.data))  # same mask, same scale


def test_dropout_passes_through_when_not_training(make):
    x = make(3, 4)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    np.testing.assert_array_equal(to_numpy(F.dropout(x, 1.0).data), 0.0)
    with pytest.raises(ValueError, match="1.5"):
        F.dropout(x, 1.5)


def test_dropout_gradient(make, device):
    x = make(4, 5)
    gradcheck(lambda t: F.dropout(t, 0.3, generator=backend.new_generator(0, device)), (x,))


# ---------------------------------------------------------------- float32 stays float32

FLOAT32_CASES = [
    lambda m, xp: F.linear(m(2, 3, 4), m(5, 4), m(5)),
    lambda m, xp: F.softmax(m(3, 4)),
    lambda m, xp: F.log_softmax(m(3, 4)),
    lambda m, xp: F.cross_entropy(m(3, 4), xp.asarray([0, 1, 2]), label_smoothing=0.1),
    lambda m, xp: F.cross_entropy(m(3, 4), xp.asarray(np.full((3, 4), 0.25))),
    lambda m, xp: F.layer_norm(m(2, 3, 4), m(4), m(4)),
    lambda m, xp: F.gelu(m(3, 4)),
    lambda m, xp: F.gelu(m(3, 4), approximate="tanh"),
    lambda m, xp: F.scaled_dot_product_attention(m(1, 2, 3, 4), m(1, 2, 3, 4), m(1, 2, 3, 4)),
    lambda m, xp: F.dropout(m(3, 4), 0.5),
]


@pytest.mark.parametrize("case", FLOAT32_CASES, ids=range(len(FLOAT32_CASES)))
def test_functions_keep_float32(case, make, xp):
    made = []

    def m(*shape):
        made.append(make(*shape, dtype=np.float32))
        return made[-1]

    out = case(m, xp)
    assert out.dtype == np.float32
    out.backward(xp.ones_like(out.data))
    for t in made:
        assert t.grad.dtype == np.float32


# ---------------------------------------------------------------- one op versus composed


def composed_attention(q, k, v):
    """Eq. 6-7 from primitive tensor ops: autograd derives the backward."""
    scores = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    return composed.softmax(scores, axis=-1) @ v


PAIRS = [
    ("softmax", lambda x: F.softmax(x, 1), lambda x: composed.softmax(x, 1), ()),
    ("layer_norm", F.layer_norm, composed.layer_norm, ((6,), (6,))),
    ("gelu", F.gelu, composed.gelu, ()),
    ("gelu tanh", lambda x: F.gelu(x, "tanh"), lambda x: composed.gelu(x, "tanh"), ()),
    ("attention", F.scaled_dot_product_attention, composed_attention, ((3, 5, 6), (3, 5, 6))),
]


@pytest.mark.parametrize("name,fused,plain,extra", PAIRS, ids=[p[0] for p in PAIRS])
def test_one_op_and_its_composition_agree(name, fused, plain, extra, make, xp):
    """The hand-written backward (kernel or reference, whichever is active) against the
    derivative autograd builds from the primitives' own backwards."""
    x = make(3, 4, 6, scale=2.0)
    params = [make(*shape) for shape in extra]
    upstream = xp.asarray(np.random.default_rng(5).standard_normal((3, 4, 6)))
    results = []
    for fn in (fused, plain):
        for t in (x, *params):
            t.grad = None
        y = fn(x, *params)
        y.backward(upstream)
        results.append([to_numpy(y.data)] + [to_numpy(t.grad) for t in (x, *params)])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
    gradcheck(plain, (x, *params))


# ---------------------------------------------------------------- self_attention on packed qkv


def test_self_attention_equals_attention_on_cut_projections(make):
    B, N, heads, d = 2, 5, 3, 4
    qkv = make(B, N, 3 * heads * d)
    out, attn = F.self_attention(qkv, heads, need_weights=True)
    a = to_numpy(qkv.data).reshape(B, N, 3, heads, d)
    q, k, v = (Tensor(np.ascontiguousarray(a[:, :, i].transpose(0, 2, 1, 3))) for i in range(3))
    want, want_attn = F.scaled_dot_product_attention(q, k, v, need_weights=True)
    np.testing.assert_allclose(
        to_numpy(out.data), to_numpy(want.data).transpose(0, 2, 1, 3).reshape(B, N, heads * d)
    )
    np.testing.assert_allclose(to_numpy(attn), to_numpy(want_attn))
    gradcheck(lambda t: F.self_attention(t, heads), (qkv,))


def test_self_attention_shape_error(make):
    with pytest.raises(ValueError, match=r"3 \* heads \* head_dim"):
        F.self_attention(make(2, 5, 10), 3)


# ---------------------------------------------------------------- patch dropout


def test_patch_dropout_keeps_the_class_token_and_a_random_share_of_patches(xp, device):
    x = Tensor(xp.asarray(np.arange(2 * 9 * 3, dtype=np.float64).reshape(2, 9, 3)))
    y = F.patch_dropout(x, 0.5, generator=backend.new_generator(0, device))
    assert y.shape == (2, 1 + 4, 3)  # int(8 * 0.5) of the 8 patches, and the class token
    data, source = to_numpy(y.data), to_numpy(x.data)
    for b in range(2):
        np.testing.assert_array_equal(data[b, 0], source[b, 0])  # the class token, first
        rows = [int(r[0]) // 3 - 9 * b for r in data[b, 1:]]
        assert rows == sorted(rows) and len(set(rows)) == 4 and min(rows) >= 1
    again = F.patch_dropout(x, 0.5, generator=backend.new_generator(0, device))
    np.testing.assert_array_equal(to_numpy(again.data), data)
    assert F.patch_dropout(x, 0.5, training=False) is x and F.patch_dropout(x, 0.0) is x


def test_patch_dropout_gradient(make, device):
    x = make(3, 7, 4)
    gradcheck(lambda t: F.patch_dropout(t, 0.4, generator=backend.new_generator(1, device)), (x,))
    y = F.patch_dropout(x, 0.4, generator=backend.new_generator(1, device))
    y.backward(y.data * 0 + 1)
    dropped = (to_numpy(x.grad) == 0).all(axis=-1)  # rows no kept token came from
    assert dropped.sum() == 3 * (6 - int(6 * 0.6))


def test_patch_dropout_errors(make):
    with pytest.raises(ValueError, match="patch_dropout: p"):
        F.patch_dropout(make(2, 5, 3), 1.0)
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        F.patch_dropout(make(5, 3), 0.5)
