"""The CNN's ops (tinyvit/conv.py): forward against the definition written as loops,
backward against central differences in float64 on odd shapes (strides and padding that
do not divide the input evenly), the input gradient as a convolution with the flipped
kernel, clear errors, float32 kept, and the modules' names and initialization. Every test
runs on the kernels and on the references."""

from __future__ import annotations

import numpy as np
import pytest

from tinyvit import Tensor, backend, conv, gradcheck, manual_seed, nn

pytestmark = pytest.mark.usefixtures("kernel_mode")


def to_numpy(a):
    """A tensor's or an array's values, on the host."""
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)

# ---------------------------------------------------------------- the definitions, as loops


def loop_conv2d(x, w, b, stride, padding):
    """``y[b, o, i, j] = bias[o] + sum W[o, c, u, v] xpad[b, c, s i + u, s j + v]``, one
    output at a time."""
    (sh, sw), (ph, pw) = stride, padding
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    B, _, Hp, Wp = xpad.shape
    O, _, kh, kw = w.shape
    Ho, Wo = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    y = np.zeros((B, O, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            window = xpad[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]  # (B, C, kh, kw)
            y[:, :, i, j] = np.einsum("bcuv,ocuv->bo", window, w)
    return y + (0 if b is None else b[None, :, None, None])


def loop_max_pool2d(x, kernel, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    Ho, Wo = (xpad.shape[2] - kh) // sh + 1, (xpad.shape[3] - kw) // sw + 1
    y = np.empty(x.shape[:2] + (Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            y[:, :, i, j] = xpad[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw].max(axis=(2, 3))
    return y


# Odd shapes: strides that leave rows over, padding wider than a side's remainder, a 1x1
# kernel with padding (the backward then cuts instead of pads), rectangular kernels.
CONV_CASES = [
    # (B, C, H, W), (O, kh, kw), stride, padding
    ((2, 3, 7, 6), (4, 3, 3), (2, 2), (1, 1)),
    ((2, 2, 5, 5), (3, 2, 2), (3, 3), (0, 0)),
    ((1, 3, 6, 7), (2, 3, 2), (2, 1), (1, 0)),
    ((2, 2, 4, 4), (3, 1, 1), (1, 1), (1, 1)),
    ((1, 2, 5, 4), (2, 3, 3), (1, 2), (2, 1)),
]


@pytest.mark.parametrize("shape,kernel,stride,padding", CONV_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_is_its_definition_and_its_gradients_are_exact(
    shape, kernel, stride, padding, with_bias, make
):
    O, kh, kw = kernel
    x, w = make(*shape), make(O, shape[1], kh, kw)
    b = make(O) if with_bias else None
    y = conv.conv2d(x, w, b, stride, padding)
    want = loop_conv2d(to_numpy(x), to_numpy(w), None if b is None else to_numpy(b), stride,
                       padding)  # fmt: skip
    np.testing.assert_allclose(to_numpy(y), want, rtol=1e-12, atol=1e-12)
    gradcheck(lambda x, w, b: conv.conv2d(x, w, b, stride, padding), (x, w, b))


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_the_input_gradient_is_a_convolution_of_the_gradient_with_the_flipped_kernel(
    padding, make, xp
):
    """With stride 1: ``dL/dx = conv2d(g, W flipped, in and out channels swapped,
    padding k - 1 - p)``, the statement of conv2d's docstring."""
    x, w = make(2, 3, 6, 5), make(4, 3, 3, 3)
    y = conv.conv2d(x, w, padding=padding)
    g = make(*y.shape, requires_grad=False)
    y.backward(g.data)
    flipped = Tensor(xp.ascontiguousarray(w.data[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)))
    again = conv.conv2d(g, flipped, padding=2 - padding)  # k - 1 - p
    np.testing.assert_allclose(to_numpy(x.grad), to_numpy(again), rtol=1e-12, atol=1e-12)


def test_conv2d_as_a_patch_projection(make, xp):
    """A convolution with kernel and stride P is the ViT's patch projection E (Eq. 1)."""
    from tinyvit.vit import patchify

    images, w, b = make(2, 3, 8, 8), make(5, 3, 4, 4), make(5)
    y = conv.conv2d(images, w, b, stride=4)  # (B, D, 2, 2)
    tokens = patchify(images, 4).data @ w.data.reshape(5, -1).T + b.data  # (B, 4, D)
    np.testing.assert_allclose(
        to_numpy(y).reshape(2, 5, 4).transpose(0, 2, 1), to_numpy(tokens), rtol=1e-12
    )


POOL_CASES = [
    # kernel, stride, padding: 3/2 with padding 1 as the hybrid's stem, non-dividing ones
    ((3, 3), (2, 2), (1, 1)),
    ((2, 2), (2, 2), (0, 0)),
    ((3, 3), (1, 1), (1, 1)),
    ((3, 2), (2, 1), (1, 0)),
    ((3, 3), (3, 3), (1, 0)),
]


@pytest.mark.parametrize("kernel,stride,padding", POOL_CASES)
def test_max_pool2d_is_its_definition_and_its_gradient_is_exact(kernel, stride, padding, make):
    x = make(2, 3, 7, 6)
    y = conv.max_pool2d(x, kernel, stride, padding)
    np.testing.assert_array_equal(to_numpy(y), loop_max_pool2d(to_numpy(x), kernel, stride,
                                                               padding))  # fmt: skip
    gradcheck(lambda x: conv.max_pool2d(x, kernel, stride, padding), (x,))


def test_max_pool2d_halves_with_3_2_pooling_and_strides_like_torch(make):
    assert conv.max_pool2d(make(1, 1, 32, 32), 3, 2, 1).shape == (1, 1, 16, 16)
    assert conv.max_pool2d(make(1, 1, 7, 7), 3, 2, 1).shape == (1, 1, 4, 4)
    assert conv.max_pool2d(make(1, 1, 7, 7), 2).shape == (1, 1, 3, 3)  # stride: the kernel's


def test_max_pool2d_gives_a_tie_to_the_first_winner_as_torch(xp):
    """A constant image: every window's first entry (row by row) takes its gradient; the
    windows overlap, so a shared first entry adds up theirs."""
    x = Tensor(xp.ones((1, 1, 4, 4)), requires_grad=True)
    conv.max_pool2d(x, 2, 1).backward(xp.ones((1, 1, 3, 3)))
    want = np.zeros((4, 4))
    want[:3, :3] = 1.0
    np.testing.assert_array_equal(to_numpy(x.grad)[0, 0], want)


def test_relu(make, xp):
    x = make(3, 5)
    x.data[0, 0] = 0.0  # at 0 the gradient is 0, as in PyTorch
    y = conv.relu(x)
    np.testing.assert_array_equal(to_numpy(y), np.maximum(to_numpy(x), 0))
    y.backward(xp.ones_like(y.data))
    np.testing.assert_array_equal(to_numpy(x.grad), (to_numpy(x) > 0).astype(float))
    away = make(3, 5)
    away.data[abs(away.data) < 0.1] = 0.5  # central differences need a step away from 0
    gradcheck(conv.relu, (away,))


@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm(groups, affine, make):
    x = make(2, 6, 3, 5, scale=2.0)
    w, b = (make(6), make(6)) if affine else (None, None)
    y = to_numpy(conv.group_norm(x, groups, w, b))
    a = to_numpy(x).reshape(2, groups, -1)
    want = ((a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5))
    want = want.reshape(2, 6, 3, 5)
    if affine:
        want = want * to_numpy(w)[None, :, None, None] + to_numpy(b)[None, :, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-10)
    gradcheck(lambda x, w, b: conv.group_norm(x, groups, w, b), (x, w, b))


def test_a_broken_backward_is_caught(make, monkeypatch):
    """The checks above can fail: a convolution whose input gradient forgets to flip the
    kernel is caught."""
    x, w = make(1, 2, 5, 5), make(3, 2, 3, 3)
    broken = conv.correlate

    def unflipped(x, weight, stride):
        if weight.shape[0] == 2:  # the backward's call: (C, O, kh, kw)
            weight = weight[:, :, ::-1, ::-1]  # flipped once more: not flipped at all
        return broken(x, weight, stride)

    monkeypatch.setattr(conv, "correlate", unflipped)
    with conv_reference():
        report = gradcheck(lambda x: conv.conv2d(x, w, padding=1), (x,), raise_on_failure=False)
    assert not report.ok


def conv_reference():
    from tinyvit import kernels

    return kernels.using("reference")


FLOAT32_CASES = [
    lambda m: conv.conv2d(m(2, 3, 7, 6), m(4, 3, 3, 3), m(4), 2, 1),
    lambda m: conv.max_pool2d(m(2, 3, 7, 6), 3, 2, 1),
    lambda m: conv.relu(m(3, 4)),
    lambda m: conv.group_norm(m(2, 4, 3, 3), 2, m(4), m(4)),
]


@pytest.mark.parametrize("case", FLOAT32_CASES, ids=["conv2d", "max_pool2d", "relu", "gn"])
def test_ops_keep_float32(case, make, xp):
    made = []

    def m(*shape):
        made.append(make(*shape, dtype=np.float32))
        return made[-1]

    out = case(m)
    assert out.dtype == np.float32
    out.backward(xp.ones_like(out.data))
    assert all(t.grad.dtype == np.float32 for t in made)


ERRORS = [
    (lambda m: conv.conv2d(m(2, 3, 8, 8), m(4, 2, 3, 3)),
     r"x has 3 channels \(shape \(2, 3, 8, 8\)\) but weight expects 2 \(shape \(4, 2, 3, 3\)"),
    (lambda m: conv.conv2d(m(1, 3, 4, 4), m(2, 3, 7, 7), padding=1),
     r"kernel \(7 x 7\) is larger than the padded input \(6 x 6: x has shape \(1, 3, 4, 4\), "
     r"padding \(1, 1\)\)"),
    (lambda m: conv.conv2d(m(3, 8, 8), m(4, 3, 3, 3)), r"\(B, C, H, W\), got shape \(3, 8, 8\)"),
    (lambda m: conv.conv2d(m(1, 3, 8, 8), m(4, 3, 3)), r"weight must be .* got shape \(4, 3, 3\)"),
    (lambda m: conv.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), m(3)), r"bias has shape \(3,\), expected"),
    (lambda m: conv.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), stride=0), r"stride must be an integer"),
    (lambda m: conv.conv2d(m(1, 3, 8, 8), m(4, 3, 3, 3), padding=-1), r"padding must be"),
    (lambda m: conv.max_pool2d(m(1, 1, 2, 2), 3), r"window \(3 x 3\) is larger than the padded"),
    (lambda m: conv.max_pool2d(m(1, 1, 8, 8), 3, 2, 2), r"padding \(2, 2\) must be at most half"),
    (lambda m: conv.group_norm(m(2, 6, 3), 4), r"num_groups must divide the 6 channels"),
    (lambda m: conv.group_norm(m(2, 6, 3), 2, m(5)), r"weight has shape \(5,\), expected \(6,\)"),
]


@pytest.mark.parametrize("call,message", ERRORS, ids=range(len(ERRORS)))
def test_errors_name_the_shapes(call, message, make):
    with pytest.raises(ValueError, match=message):
        call(make)


def test_operands_of_two_dtypes_are_refused(make):
    with pytest.raises(TypeError, match="x float32, weight float64"):
        conv.conv2d(make(1, 3, 5, 5, dtype=np.float32), make(2, 3, 3, 3))


# ---------------------------------------------------------------- the modules


def test_conv2d_module_has_torch_names_shapes_and_initialization(make, device):
    manual_seed(0)
    layer = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert layer.weight.shape == (8, 3, 3, 3) and layer.bias.shape == (8,)
    bound = 1 / np.sqrt(3 * 3 * 3)  # PyTorch's: kaiming_uniform_(a=sqrt(5)), fan_in 27
    for p in (layer.weight, layer.bias):
        assert np.abs(p.data).max() <= bound
    assert np.abs(layer.weight.data).max() > 0.95 * bound  # uniform: 216 draws reach the edge
    assert np.abs(layer.weight.data.mean()) < 0.1 * bound
    x = make(2, 3, 9, 9, dtype=np.float32)
    out = layer.to(device)(x)
    assert out.shape == (2, 8, 5, 5)
    np.testing.assert_allclose(
        to_numpy(out), to_numpy(conv.conv2d(x, layer.weight, layer.bias, 2, 1)), rtol=1e-6
    )
    assert nn.Conv2d(3, 8, (3, 1), bias=False).bias is None
    assert "kernel_size=(3, 1)" in repr(nn.Conv2d(3, 8, (3, 1)))


def test_pooling_relu_and_group_norm_modules(make, device):
    x = make(2, 4, 7, 7, dtype=np.float32)
    assert nn.MaxPool2d(2).stride == (2, 2) and nn.MaxPool2d(3, 2, 1)(x).shape == (2, 4, 4, 4)
    np.testing.assert_array_equal(to_numpy(nn.ReLU()(x)), np.maximum(to_numpy(x), 0))
    norm = nn.GroupNorm(2, 4)
    assert [n for n, _ in norm.named_parameters()] == ["weight", "bias"]
    np.testing.assert_array_equal(norm.weight.data, np.ones(4, np.float32))
    norm.to(device)
    assert norm(x).shape == x.shape
    with pytest.raises(ValueError, match=r"num_groups \(3\) must divide num_channels \(4\)"):
        nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match="Conv2d: in_channels must be an integer >= 1"):
        nn.Conv2d(0, 4, 3)


# ---------------------------------------------------------------- the CPU kernels


def cpu_kernels():
    try:
        from tinyvit.kernels import conv_cpu
    except ImportError as error:  # numba missing: the references run on the CPU
        pytest.skip(f"no CPU kernels: {error}")
    return conv_cpu


def run_both(kernel, reference, arrays, channels_first=False):
    """Outputs and gradients of a CPU kernel and of its reference on the same inputs (the
    first one laid out channels outermost, as a convolution leaves its output, if asked)."""
    rng = np.random.default_rng(7)
    results = []
    for fn in (kernel, reference):
        tensors = []
        for i, a in enumerate(arrays):
            if i == 0 and channels_first:
                a = np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
            tensors.append(Tensor(a.copy() if not channels_first else a, requires_grad=True))
        y = fn(*tensors)
        y.backward(rng.standard_normal(y.shape).astype(y.dtype))
        results.append([y.data] + [t.grad for t in tensors])
        rng = np.random.default_rng(7)
    return results


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("channels_first", [False, True], ids=["contiguous", "channels-first"])
@pytest.mark.parametrize("shape,kernel,stride,padding", CONV_CASES)
def test_the_cpu_convolution_equals_its_reference(
    shape, kernel, stride, padding, channels_first, dtype
):
    conv_cpu = cpu_kernels()
    O, kh, kw = kernel
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(s).astype(dtype) for s in (shape, (O, shape[1], kh, kw), (O,))]
    got, want = run_both(
        lambda *t: conv_cpu.conv2d(*t, stride=stride, padding=padding),
        lambda *t: conv.conv2d.reference(*t, stride=stride, padding=padding),
        arrays, channels_first,
    )  # fmt: skip
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("channels_first", [False, True], ids=["contiguous", "channels-first"])
@pytest.mark.parametrize("kernel,stride,padding", POOL_CASES)
def test_the_cpu_max_pooling_equals_its_reference(kernel, stride, padding, channels_first, dtype):
    conv_cpu = cpu_kernels()
    x = np.random.default_rng(4).standard_normal((2, 3, 7, 6)).astype(dtype)
    x[0, 0, :3, :3] = 1.0  # ties: the first winner takes the gradient
    x[1, 2, 2, 2] = np.nan  # a NaN wins its windows, as in PyTorch
    got, want = run_both(
        lambda t: conv_cpu.max_pool2d(t, kernel, stride, padding),
        lambda t: conv.max_pool2d.reference(t, kernel, stride, padding),
        [x], channels_first,
    )  # fmt: skip
    np.testing.assert_array_equal(got[0], want[0])  # the same winners
    # overlapping windows add their gradients in another order: equal to rounding
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6 if dtype == np.float32 else 1e-14)
