"""CPU kernels for the CNN's ops (``conv.py``): the copies around the convolution's matrix
products, and max pooling, as loops that numba compiles.

``conv2d`` keeps its reference's maths: the windows laid out as the columns
of one matrix (im2col), one matrix product with the weight (OpenBLAS), the
weight's gradient as another. What changes is the memory traffic around
them. The columns are written by one loop straight from the unpadded input
(no padded copy, no six-axis transposing copy), and the input's gradient
is gathered back by the loop that undoes it (col2im): the gradient of the
columns, ``W_2^T G``, is added into each input position its window came
from. That is the same sum as the reference's convolution of the dilated,
padded gradient with the flipped kernel, term for term, arranged so that
no dilated gradient and no second set of columns is made. Outputs and
gradients keep the layout the matrix products give, channels outermost
(``(O, B, H, W)`` in memory, seen as ``(B, O, H, W)``), so that the next
product needs no copy to turn them back.

``max_pool2d`` finds each window's largest value and where it is in one
pass (the reference copies every window out first), and its backward adds
each gradient at its winner's place. Ties and NaNs as PyTorch: the first
largest value of a window, row by row, wins, and a NaN wins over any number.

One iteration of each ``prange`` loop writes only its own rows (an input
channel, or an image's channel), so the threads never write to the same
place and the results do not depend on their number.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import dispatch
from ..op_checks import check_conv2d, check_max_pool2d
from ..tensor import Tensor

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------------
# the convolution: im2col and col2im
# ---------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def im2col_loop(x, kh, kw, sh, sw, ph, pw, cols):
    """``cols[(c, u, v), (b, i, j)] = x[b, c, s_h i + u - p_h, s_w j + v - p_w]``, 0 where
    that falls in the padding. ``x (B, C, H, W)`` in any layout; ``cols (C kh kw, B Ho Wo)``."""
    B, C, H, W = x.shape
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    zero = cols.dtype.type(0)
    for r in prange(C * kh * kw):  # one row of cols: one (channel, kernel row, kernel column)
        c, u, v = r // (kh * kw), (r // kw) % kh, r % kw
        for b in range(B):
            for i in range(Ho):
                h = i * sh + u - ph
                start = (b * Ho + i) * Wo
                for j in range(Wo):
                    w = j * sw + v - pw
                    inside = 0 <= h < H and 0 <= w < W
                    cols[r, start + j] = x[b, c, h, w] if inside else zero


@njit(parallel=True, cache=True)
def col2im_loop(cols, kh, kw, sh, sw, ph, pw, gx):
    """The adjoint of ``im2col_loop``: ``gx[b, c, h, w] += cols[(c, u, v), (b, i, j)]`` for
    every window position ``(i, j)`` and kernel offset ``(u, v)`` that reads ``(h, w)``.
    ``gx (B, C, H, W)`` starts at zero; each iteration adds into one channel only."""
    B, C, H, W = gx.shape
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    for c in prange(C):
        for u in range(kh):
            for v in range(kw):
                r = (c * kh + u) * kw + v
                for b in range(B):
                    for i in range(Ho):
                        h = i * sh + u - ph
                        if h < 0 or h >= H:
                            continue
                        start = (b * Ho + i) * Wo
                        for j in range(Wo):
                            w = j * sw + v - pw
                            if 0 <= w < W:
                                gx[b, c, h, w] += cols[r, start + j]


def channels_first(shape, dtype, zero=False):
    """A new ``(B, C, H, W)`` array laid out as ``(C, B, H, W)``: the layout of a matrix
    product's ``(C, B H W)`` result, seen as images."""
    B, C, H, W = shape
    make = np.zeros if zero else np.empty
    return make((C, B, H, W), dtype=dtype).transpose(1, 0, 2, 3)


def conv2d(x, weight, bias=None, stride=1, padding=0) -> Tensor:
    """``conv.conv2d``: im2col by a loop, the matrix products by OpenBLAS, col2im by a loop."""
    x, weight, bias, stride, padding, (Ho, Wo) = check_conv2d(x, weight, bias, stride, padding)
    if x.dtype not in FLOATS:
        return dispatch.reference("conv2d")(x, weight, bias, stride, padding)
    O, C, kh, kw = weight.shape
    B, _, H, W = x.shape
    (sh, sw), (ph, pw) = stride, padding
    cols = np.empty((C * kh * kw, B * Ho * Wo), dtype=x.dtype)
    im2col_loop(x.data, kh, kw, sh, sw, ph, pw, cols)
    w2 = weight.data.reshape(O, -1)  # (O, C kh kw)
    y = w2 @ cols  # (O, B Ho Wo)
    if bias is not None:
        y += bias.data[:, None]

    def backward(g):
        G = g.transpose(1, 0, 2, 3).reshape(O, -1)  # (O, B Ho Wo): a view in this layout
        gb = G.sum(axis=1) if bias is not None and bias.requires_grad else None
        gw = (G @ cols.T).reshape(weight.shape) if weight.requires_grad else None
        gx = None
        if x.requires_grad:
            gx = channels_first(x.shape, g.dtype, zero=True)
            col2im_loop(w2.T @ G, kh, kw, sh, sw, ph, pw, gx)  # (C kh kw, B Ho Wo) back
        return gx, gw, gb

    out = y.reshape(O, B, Ho, Wo).transpose(1, 0, 2, 3)  # (B, O, Ho, Wo), channels outermost
    return Tensor.from_op(out, (x, weight, bias), backward, "conv2d")


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def max_pool_loop(x, kh, kw, sh, sw, ph, pw, y, winner):
    """``y[b, c, i, j]``: the largest ``x`` in the window at ``(s_h i - p_h, s_w j - p_w)``;
    ``winner``: where it is, ``h W + w``. The first largest wins; a NaN wins."""
    B, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for n in prange(B * C):
        c, b = n // B, n % B
        for i in range(Ho):
            for j in range(Wo):
                best = x[b, c, 0, 0]
                where = -1
                for u in range(kh):
                    h = i * sh + u - ph
                    if h < 0 or h >= H:
                        continue
                    for v in range(kw):
                        w = j * sw + v - pw
                        if 0 <= w < W:
                            value = x[b, c, h, w]
                            if where < 0 or value > best or np.isnan(value):
                                best, where = value, h * W + w
                y[b, c, i, j] = best
                winner[b, c, i, j] = where


@njit(parallel=True, cache=True)
def max_pool_backward_loop(g, winner, gx):
    """``gx[b, c, winner] += g[b, c, i, j]`` for every window; ``gx`` starts at zero."""
    B, C, H, W = gx.shape
    Ho, Wo = g.shape[2], g.shape[3]
    for n in prange(B * C):
        c, b = n // B, n % B
        for i in range(Ho):
            for j in range(Wo):
                where = winner[b, c, i, j]
                gx[b, c, where // W, where % W] += g[b, c, i, j]


def max_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    """``conv.max_pool2d``: each window's largest value and its place in one pass."""
    x, kernel, stride, padding, (Ho, Wo) = check_max_pool2d(x, kernel_size, stride, padding)
    if x.dtype not in FLOATS:
        return dispatch.reference("max_pool2d")(x, kernel_size, stride, padding)
    B, C = x.shape[:2]
    y = channels_first((B, C, Ho, Wo), x.dtype)
    winner = np.empty((B, C, Ho, Wo), dtype=np.int32)
    max_pool_loop(x.data, *kernel, *stride, *padding, y, winner)

    def backward(g):
        gx = np.zeros_like(x.data)  # in x's layout: a convolution's output, channels outermost
        max_pool_backward_loop(g, winner, gx)
        return (gx,)

    return Tensor.from_op(y, (x,), backward, "max_pool2d")


KERNELS = {"conv2d": conv2d, "max_pool2d": max_pool2d}

__all__ = ["KERNELS", "col2im_loop", "conv2d", "im2col_loop", "max_pool2d"]
