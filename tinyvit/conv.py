"""A convolutional network's layers, each one op with a hand-written backward.

The paper's hybrid (Section 3.1, "Hybrid Architecture") forms the input
sequence from the feature map of a CNN instead of from raw image patches:
a few convolutions turn the image into a ``(B, C, h, w)`` map, and each of
its ``h * w`` positions becomes one token. This file is the CNN's half of
that model, written like ``functional.py``: whole-array maths in the order
of the derivation, the derivation in the docstring, the argument checks
shared with any kernel (``op_checks.py``), each op ``@replaceable``
(``dispatch.py``). Named like ``torch.nn.functional``:

* ``conv2d``: the convolution (strictly, the cross-correlation every deep
  learning library calls convolution), as im2col and one matrix product;
  its input gradient is itself a convolution: of the gradient with the
  flipped kernel;
* ``relu``: ``max(x, 0)``;
* ``max_pool2d``: the largest value of each window, with PyTorch's
  semantics (padding by ``-inf``, the output size rounded down);
* ``group_norm``: the normalization of the paper's ResNets (Section 4.1:
  Group Normalization instead of Batch Normalization, with standardized
  convolutions, as in Kolesnikov et al.'s BiT), LayerNorm over groups of
  channels; it has no running statistics, so a model behaves the same in
  training and in evaluation.

Images are ``(B, C, H, W)``, weights ``(out_channels, in_channels, kh,
kw)``, as in PyTorch; a ``stride``, ``padding`` or ``kernel_size`` is an int
or a pair ``(along H, along W)``.
"""

from __future__ import annotations

from .backend import xp_of
from .dispatch import replaceable
from .op_checks import check_conv2d, check_group_norm, check_max_pool2d, pair_of
from .tensor import Tensor, as_tensor

# ---------------------------------------------------------------------------
# windows: im2col
# ---------------------------------------------------------------------------


def pad_array(x, padding, value=0.0):
    """``(B, C, H, W)`` framed by ``padding = (ph, pw)`` rows and columns of ``value``."""
    ph, pw = padding
    if not (ph or pw):
        return x
    B, C, H, W = x.shape
    out = xp_of(x).full((B, C, H + 2 * ph, W + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph : ph + H, pw : pw + W] = x
    return out


def windows(x, kernel, stride):
    """Every ``kh x kw`` window of ``x (B, C, H, W)`` that a stride of ``(sh, sw)`` visits,
    as a view ``(B, C, H_out, W_out, kh, kw)`` of ``x``'s memory: nothing is copied."""
    view = xp_of(x).lib.stride_tricks.sliding_window_view(x, kernel, axis=(2, 3))
    return view[:, :, :: stride[0], :: stride[1]]  # (B, C, H_out, W_out, kh, kw)


def im2col(x, kernel, stride):
    """The windows of ``x`` as the columns of one matrix, ``(C kh kw, B H_out W_out)``.

    Column ``(b, i, j)`` holds the window whose corner is at ``(s_h i, s_w j)``,
    flattened channel first, then row, then column: the order in which a
    weight ``(O, C, kh, kw)`` flattens. Rows come channel by channel and
    batch-major columns, so the product ``W @ cols`` is already ``(O, B,
    H_out, W_out)``: the output channels outermost.
    """
    win = windows(x, kernel, stride)  # (B, C, Ho, Wo, kh, kw)
    B, C, Ho, Wo, kh, kw = win.shape
    return win.transpose(1, 4, 5, 0, 2, 3).reshape(C * kh * kw, B * Ho * Wo)  # one copy


def correlate(x, weight, stride):
    """``y[b, o, i, j] = sum_{c, u, v} W[o, c, u, v] x[b, c, s_h i + u, s_w j + v]`` on
    arrays, with ``x`` already padded: im2col and one matrix product. Returns ``(y,
    cols)``, ``y`` ``(B, O, H_out, W_out)`` and ``cols`` ``(C kh kw, B H_out W_out)``."""
    O, _, kh, kw = weight.shape
    B = x.shape[0]
    cols = im2col(x, (kh, kw), stride)  # (K, M): K = C kh kw, M = B Ho Wo
    y = weight.reshape(O, -1) @ cols  # (O, M): every output of every image at once
    Ho = (x.shape[2] - kh) // stride[0] + 1
    Wo = (x.shape[3] - kw) // stride[1] + 1
    return y.reshape(O, B, Ho, Wo).transpose(1, 0, 2, 3), cols  # (B, O, Ho, Wo): a view


def dilate_and_pad(g, stride, before, after):
    """``g (B, O, h, w)`` with ``s - 1`` zeros put between neighbors, then ``before`` and
    ``after`` zeros (a pair each: rows, columns) added around; a negative amount cuts
    that many away instead."""
    xp = xp_of(g)
    B, O, h, w = g.shape
    dilated = ((h - 1) * stride[0] + 1, (w - 1) * stride[1] + 1)
    size = [n + max(lo, 0) + max(hi, 0) for n, lo, hi in zip(dilated, before, after)]
    out = xp.zeros((B, O, *size), dtype=g.dtype)
    top, left = max(before[0], 0), max(before[1], 0)
    out[:, :, top : top + dilated[0] : stride[0], left : left + dilated[1] : stride[1]] = g
    cut = [slice(max(-lo, 0), n - max(-hi, 0)) for n, lo, hi in zip(size, before, after)]
    return out[:, :, cut[0], cut[1]]


# ---------------------------------------------------------------------------
# the convolution
# ---------------------------------------------------------------------------


@replaceable
def conv2d(x, weight, bias=None, stride=1, padding=0) -> Tensor:
    """A 2-D convolution: ``x (B, C, H, W)``, ``weight (O, C, kh, kw)``, ``bias (O,)``.

    With ``x`` framed by ``padding`` zeros (``xpad``) and ``s`` the stride:

        y[b, o, i, j] = bias[o] + sum_{c, u, v} W[o, c, u, v] xpad[b, c, s i + u, s j + v]

    of size ``H_out = floor((H + 2 p - kh) / s) + 1`` (and the same along W).
    Every window of ``xpad`` laid out as one column (``im2col``) makes this
    one matrix product, ``Y = W_2 X_cols``, with ``W_2`` the weight flattened
    to ``(O, C kh kw)``.

    Backward, with ``g`` the gradient of ``y``, flattened like ``Y`` to
    ``G (O, B H_out W_out)``:

        dL/dbias = sum of g over every axis but o
        dL/dW    = G X_cols^T, reshaped to (O, C, kh, kw)

    the derivatives of a matrix product, as in ``linear``. For the input,
    each ``xpad[b, c, p, q]`` is used by every output whose window covers it,
    ``p = s i + u``, so

        dL/dxpad[b, c, p, q] = sum_{o, u, v} W[o, c, u, v] g[b, o, (p - u)/s, (q - v)/s]

    over the ``u, v`` for which ``(p - u)/s`` is a whole output row. Let
    ``gd`` be ``g`` with ``s - 1`` zeros put between neighbors (dilated), so
    that ``gd[s i] = g[i]`` and the missing terms are zeros; then the sum is
    over all ``u``: ``sum W[o, c, u, v] gd[b, o, p - u, q - v]``. Substitute
    ``u' = kh - 1 - u`` and let ``Wf[c, o, u', v'] = W[o, c, kh-1-u', kw-1-v']``
    be the kernel flipped in both directions with its two channel axes
    swapped; with ``gd`` padded by ``kh - 1`` zeros (``gdp[n] = gd[n - kh + 1]``):

        dL/dxpad[b, c, p, q] = sum_{o, u', v'} Wf[c, o, u', v'] gdp[b, o, p + u', q + v']

    which is this very op: **the input's gradient is the convolution, with
    stride 1, of the dilated and padded gradient with the flipped kernel**.
    ``dL/dx`` is the middle of ``dL/dxpad`` (the padding cut off), so the
    gradient is padded by ``kh - 1 - p`` zeros instead of ``kh - 1`` on the
    top, and by ``kh - 1 - p + r`` at the bottom, ``r = (H + 2p - kh) mod s``
    being the rows at the bottom that no window reached (their gradient is 0).
    """
    x, weight, bias, stride, padding, _ = check_conv2d(x, weight, bias, stride, padding)
    kh, kw = weight.shape[2:]
    H, W = x.shape[2:]
    xpad = pad_array(x.data, padding)  # (B, C, H + 2 ph, W + 2 pw)
    y, cols = correlate(xpad, weight.data, stride)  # (B, O, Ho, Wo), (C kh kw, B Ho Wo)
    if bias is not None:
        y = y + bias.data[:, None, None]

    def backward(g):
        O = g.shape[1]
        G = g.transpose(1, 0, 2, 3).reshape(O, -1)  # (O, B Ho Wo), laid out like cols' columns
        gb = G.sum(axis=1) if bias is not None and bias.requires_grad else None
        gw = (G @ cols.T).reshape(weight.shape) if weight.requires_grad else None  # (O, C, kh, kw)
        gx = None
        if x.requires_grad:
            rest = ((H + 2 * padding[0] - kh) % stride[0], (W + 2 * padding[1] - kw) % stride[1])
            before = (kh - 1 - padding[0], kw - 1 - padding[1])
            after = (before[0] + rest[0], before[1] + rest[1])
            gdp = dilate_and_pad(g, stride, before, after)  # (B, O, H + kh - 1, W + kw - 1)
            flipped = weight.data[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # Wf: (C, O, kh, kw)
            gx = correlate(gdp, flipped, (1, 1))[0]  # (B, C, H, W): a convolution again
        return gx, gw, gb

    return Tensor.from_op(y, (x, weight, bias), backward, "conv2d")


# ---------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------


@replaceable
def relu(x) -> Tensor:
    """``y = max(x, 0)``. Backward: ``dL/dx = g`` where ``x > 0``, else 0 (at 0 itself, 0,
    as PyTorch has it)."""
    x = as_tensor(x)
    xp = xp_of(x.data)
    positive = x.data > 0
    return Tensor.from_op(xp.maximum(x.data, 0), (x,), lambda g: (g * positive,), "relu")


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------


@replaceable
def max_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    """The largest value in each ``kernel_size`` window of ``x (B, C, H, W)``.

    As ``torch.nn.functional.max_pool2d``: ``stride`` defaults to the kernel,
    ``padding`` (at most half the kernel) frames ``x`` with ``-inf``, which
    never wins, and ``H_out = floor((H + 2p - k) / s) + 1`` (3/2 pooling with
    padding 1 halves an even side). The windows are views of the padded
    input (``windows``); the winner's place in its window is kept.

    Backward: ``y[b, c, i, j] = xpad[b, c, s i + u*, s j + v*]`` for the
    winner ``(u*, v*)``, so the gradient of ``y`` goes to that one input and
    no other; an input that wins several overlapping windows adds up their
    gradients. On a tie the first winner in the window, row by row, takes it
    all, as in PyTorch.
    """
    x, kernel, stride, padding, (Ho, Wo) = check_max_pool2d(x, kernel_size, stride, padding)
    xp = xp_of(x.data)
    kh, kw = kernel
    B, C, H, W = x.shape
    xpad = pad_array(x.data, padding, value=-xp.inf)  # (B, C, Hp, Wp)
    win = windows(xpad, kernel, stride).reshape(B, C, Ho, Wo, kh * kw)  # one copy
    winner = win.argmax(axis=-1)  # (B, C, Ho, Wo): u* kw + v*, the first largest
    y = xp.take_along_axis(win, winner[..., None], axis=-1)[..., 0]  # (B, C, Ho, Wo)

    def backward(g):
        gpad = xp.zeros(xpad.shape, dtype=g.dtype)  # (B, C, Hp, Wp)
        for u in range(kh):
            for v in range(kw):  # every window sends g to its winner at (u, v)
                rows = slice(u, u + stride[0] * (Ho - 1) + 1, stride[0])
                cols = slice(v, v + stride[1] * (Wo - 1) + 1, stride[1])
                gpad[:, :, rows, cols] += g * (winner == u * kw + v)
        return (gpad[:, :, padding[0] : padding[0] + H, padding[1] : padding[1] + W],)

    return Tensor.from_op(y, (x,), backward, "max_pool2d")


# ---------------------------------------------------------------------------
# GroupNorm
# ---------------------------------------------------------------------------


@replaceable
def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5) -> Tensor:
    """Normalize each image's groups of channels, then scale and shift each channel.

    ``x (B, C, ...)`` is cut into ``num_groups`` groups of ``C / num_groups``
    channels; each group of each image (its channels and all its positions)
    is normalized to zero mean and unit variance, ``xhat = (x - mean) r``
    with ``r = 1 / sqrt(var + eps)``, then ``y = xhat weight[c] + bias[c]``.
    ``num_groups=1`` normalizes each image as a whole, ``num_groups=C``
    each channel apart (InstanceNorm). eps 1e-5, as in PyTorch.

    Backward: LayerNorm's (``functional.layer_norm``), with a group's values
    in place of a row's. With ``h = g * weight`` the gradient that reaches
    ``xhat`` and means over each group:

        dL/dx      = r * (h - mean(h) - xhat * mean(h * xhat))
        dL/dweight = sum of g * xhat over every axis but the channels
        dL/dbias   = sum of g over every axis but the channels
    """
    x, weight, bias = check_group_norm(x, num_groups, weight, bias)
    xp = xp_of(x.data)
    B, C = x.shape[:2]
    per_channel = (1, C) + (1,) * (x.ndim - 2)  # weight and bias broadcast over positions
    groups = x.data.reshape(B, num_groups, -1)  # (B, G, C/G * positions)
    mean = groups.mean(axis=-1, keepdims=True)  # (B, G, 1)
    centered = groups - mean
    var = (centered * centered).mean(axis=-1, keepdims=True)  # (B, G, 1), biased
    r = 1.0 / xp.sqrt(var + eps)
    xhat = (centered * r).reshape(x.shape)  # (B, C, ...)
    y = xhat
    if weight is not None:
        y = y * weight.data.reshape(per_channel)
    if bias is not None:
        y = y + bias.data.reshape(per_channel)

    def backward(g):
        others = (0,) + tuple(range(2, x.ndim))  # every axis but the channels
        h = g * weight.data.reshape(per_channel) if weight is not None else g
        h_g, xhat_g = h.reshape(B, num_groups, -1), xhat.reshape(B, num_groups, -1)
        mean_h = h_g.mean(axis=-1, keepdims=True)  # (B, G, 1)
        mean_hx = (h_g * xhat_g).mean(axis=-1, keepdims=True)  # (B, G, 1)
        gx = (r * (h_g - mean_h - xhat_g * mean_hx)).reshape(x.shape)
        gw = (g * xhat).sum(axis=others) if weight is not None and weight.requires_grad else None
        gb = g.sum(axis=others) if bias is not None and bias.requires_grad else None
        return gx, gw, gb

    return Tensor.from_op(y, (x, weight, bias), backward, "group_norm")


__all__ = [
    "conv2d",
    "correlate",
    "dilate_and_pad",
    "group_norm",
    "im2col",
    "max_pool2d",
    "pad_array",
    "pair_of",
    "relu",
    "windows",
]
