"""The ops' arguments checked: tensors in, or an error that names what was expected.

The reference ops of ``functional.py`` and their kernels in ``kernels/``
take the same arguments and must refuse the same mistakes with the same
message, so both call these. Each ``check_<op>`` turns its operands into
tensors, checks that they share one device and one floating-point dtype
(tinyvit never promotes silently), checks their shapes against each other,
and returns the tensors.
"""

from __future__ import annotations

import numbers

from . import backend
from .backend import xp_of
from .tensor import Tensor, as_tensor


def check_dtypes(op, named):
    """Every given tensor floating-point and of one dtype: tinyvit never promotes silently."""
    given = {name: t.dtype for name, t in named.items() if t is not None}
    first = next(iter(given.values()))
    if any(d != first for d in given.values()) or first.kind != "f":
        listed = ", ".join(f"{name} {d}" for name, d in given.items())
        raise TypeError(
            f"{op}: expected floating-point operands of one dtype, got {listed}; convert "
            "with .astype() (a silent upcast to float64 would double the cost)"
        )


def as_tensors(op, names, values):
    """The given values as tensors (None stays None), on one device and of one dtype."""
    tensors = [None if v is None else as_tensor(v) for v in values]
    xp_of(*(None if t is None else t.data for t in tensors), names=names)  # one device
    check_dtypes(op, dict(zip(names, tensors)))
    return tensors


def check_linear(x, weight, bias):
    """``x (..., in)``, ``weight (out, in)``, ``bias (out,)`` or None, as tensors."""
    x, weight, bias = as_tensors("linear", ("x", "weight", "bias"), (x, weight, bias))
    out_features, in_features = weight.shape
    if x.shape[-1] != in_features:
        raise ValueError(
            f"linear: x has shape {x.shape}, whose last axis ({x.shape[-1]}) must equal "
            f"weight's in_features; weight has shape {weight.shape} (out, in)"
        )
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(f"linear: bias has shape {bias.shape}, expected ({out_features},)")
    return x, weight, bias


def check_layer_norm(x, weight, bias):
    """``x (..., D)`` with ``weight`` and ``bias`` each ``(D,)`` or None, as tensors."""
    x, weight, bias = as_tensors("layer_norm", ("x", "weight", "bias"), (x, weight, bias))
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (x.shape[-1],):
            raise ValueError(
                f"layer_norm: {name} has shape {p.shape}, expected ({x.shape[-1]},) "
                f"for x of shape {x.shape}"
            )
    return x, weight, bias


def check_attention(q, k, v):
    """``q (..., N, d)``, ``k (..., M, d)``, ``v (..., M, dv)`` with the same leading axes."""
    q, k, v = as_tensors("scaled_dot_product_attention", ("q", "k", "v"), (q, k, v))
    if (
        min(q.ndim, k.ndim, v.ndim) < 2
        or q.shape[-1] != k.shape[-1]
        or k.shape[:-1] != v.shape[:-1]
        or q.shape[:-2] != k.shape[:-2]
    ):
        raise ValueError(
            "scaled_dot_product_attention: expected q (..., N, d), k (..., M, d), v (..., M, dv) "
            f"with the same leading axes; got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    return q, k, v


def check_self_attention(qkv, heads):
    """``qkv (B, N, 3 heads head_dim)`` as a tensor, for a positive integer ``heads``."""
    (qkv,) = as_tensors("self_attention", ("qkv",), (qkv,))
    if not isinstance(heads, int) or heads < 1:
        raise ValueError(f"self_attention: heads must be a positive integer, got {heads!r}")
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * heads):
        raise ValueError(
            f"self_attention: qkv must be (B, N, 3 * heads * head_dim) for {heads} heads, "
            f"got shape {qkv.shape}"
        )
    return qkv


def check_cross_entropy(logits, target, label_smoothing, reduction):
    """The logits as a tensor and the targets as ``(B, C)`` probabilities in their dtype."""
    logits = as_tensor(logits)
    target = target.data if isinstance(target, Tensor) else target
    xp = xp_of(logits.data, target, names=("logits", "target"))
    target = xp.asarray(target)
    if logits.ndim != 2:
        raise ValueError(
            f"cross_entropy: logits must be (batch, classes), got shape {logits.shape}"
        )
    check_dtypes("cross_entropy", {"logits": logits})
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(
            f"cross_entropy: reduction must be 'mean', 'sum' or 'none', not {reduction!r}"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    batch, classes = logits.shape
    if target.dtype.kind in "iu":
        if target.shape != (batch,):
            raise ValueError(
                f"cross_entropy: integer class targets must have shape ({batch},) for logits "
                f"of shape {logits.shape}, got {target.shape}"
            )
        # Checked where it is free, on the host. On the GPU reading the labels' range
        # back would make every step wait; the loops check their labels on the host
        # before they go to the device (data.load_cifar10, loop.evaluate, finetune).
        if batch and xp is not backend.cupy and (target.min() < 0 or target.max() >= classes):
            raise ValueError(
                f"cross_entropy: class targets must lie in [0, {classes}), "
                f"got values from {int(target.min())} to {int(target.max())}"
            )
        probs = xp.zeros((batch, classes), dtype=logits.dtype)
        probs[xp.arange(batch), target] = 1.0
        return logits, probs
    if target.shape != logits.shape:
        raise ValueError(
            f"cross_entropy: targets must be integer class labels of shape ({batch},) or "
            f"class probabilities of the logits' shape {logits.shape}; got {target.dtype} "
            f"of shape {target.shape}"
        )
    return logits, target.astype(logits.dtype)


# ---------------------------------------------------------------------------
# the convolutional stem's ops (tinyvit/conv.py)
# ---------------------------------------------------------------------------


def pair_of(op, name, value, low) -> tuple[int, int]:
    """An int or a pair of ints, each ``>= low``, as ``(along H, along W)``."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low for v in values
    ):
        raise ValueError(
            f"{op}: {name} must be an integer >= {low} or a pair of them, got {value!r}"
        )
    return int(values[0]), int(values[1])


def _check_images(op, x):
    if x.ndim != 4:
        raise ValueError(
            f"{op}: x must be a batch of images (B, C, H, W), got shape {x.shape}"
        )


def check_window(op, x_shape, kernel, stride, padding, what="kernel"):
    """The output's ``(H_out, W_out)`` for a window sliding over ``x_shape`` (B, C, H, W)
    after ``padding``; a ValueError naming the shapes when the window does not fit."""
    H, W = x_shape[2:]
    padded = (H + 2 * padding[0], W + 2 * padding[1])
    if padded[0] < kernel[0] or padded[1] < kernel[1]:
        raise ValueError(
            f"{op}: the {what} ({kernel[0]} x {kernel[1]}) is larger than the padded input "
            f"({padded[0]} x {padded[1]}: x has shape {tuple(x_shape)}, padding {padding})"
        )
    return ((padded[0] - kernel[0]) // stride[0] + 1, (padded[1] - kernel[1]) // stride[1] + 1)


def check_conv2d(x, weight, bias, stride, padding):
    """``x (B, C, H, W)``, ``weight (O, C, kh, kw)``, ``bias (O,)`` or None as tensors, with
    ``stride`` and ``padding`` as pairs and the output's ``(H_out, W_out)``."""
    x, weight, bias = as_tensors("conv2d", ("x", "weight", "bias"), (x, weight, bias))
    _check_images("conv2d", x)
    if weight.ndim != 4:
        raise ValueError(
            f"conv2d: weight must be (out_channels, in_channels, kh, kw), got shape "
            f"{weight.shape}"
        )
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"conv2d: x has {x.shape[1]} channels (shape {x.shape}) but weight expects "
            f"{weight.shape[1]} (shape {weight.shape}, (out, in, kh, kw))"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"conv2d: bias has shape {bias.shape}, expected ({weight.shape[0]},)")
    stride = pair_of("conv2d", "stride", stride, 1)
    padding = pair_of("conv2d", "padding", padding, 0)
    out = check_window("conv2d", x.shape, weight.shape[2:], stride, padding)
    return x, weight, bias, stride, padding, out


def check_max_pool2d(x, kernel_size, stride, padding):
    """``x (B, C, H, W)`` as a tensor, and the pooling's kernel, stride (the kernel's when
    None, as in PyTorch), padding (at most half the kernel) and output size."""
    (x,) = as_tensors("max_pool2d", ("x",), (x,))
    _check_images("max_pool2d", x)
    kernel = pair_of("max_pool2d", "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else pair_of("max_pool2d", "stride", stride, 1)
    padding = pair_of("max_pool2d", "padding", padding, 0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(
            f"max_pool2d: padding {padding} must be at most half the kernel {kernel}: a "
            "window would hold nothing but padding"
        )
    out = check_window("max_pool2d", x.shape, kernel, stride, padding, what="window")
    return x, kernel, stride, padding, out


def check_group_norm(x, num_groups, weight, bias):
    """``x (B, C, ...)`` with ``weight`` and ``bias`` each ``(C,)`` or None, as tensors, for
    a ``num_groups`` that divides ``C``."""
    x, weight, bias = as_tensors("group_norm", ("x", "weight", "bias"), (x, weight, bias))
    if x.ndim < 2:
        raise ValueError(f"group_norm: x must be (B, C, ...), got shape {x.shape}")
    C = x.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral) or (
        num_groups < 1 or C % num_groups
    ):
        raise ValueError(
            f"group_norm: num_groups must divide the {C} channels of x (shape {x.shape}), "
            f"got {num_groups!r}"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (C,):
            raise ValueError(
                f"group_norm: {name} has shape {p.shape}, expected ({C},) for x of shape "
                f"{x.shape}"
            )
    return x, weight, bias


__all__ = [
    "as_tensors",
    "check_attention",
    "check_conv2d",
    "check_cross_entropy",
    "check_dtypes",
    "check_group_norm",
    "check_layer_norm",
    "check_linear",
    "check_max_pool2d",
    "check_self_attention",
    "check_window",
    "pair_of",
]
