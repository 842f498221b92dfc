"""CPU kernels: reference ops of ``functional.py``, rewritten for the way a CPU runs them.

Each kernel computes what its reference computes, in the same order of
ideas, and returns the same values and gradients (to rounding; the float32
GELU to its stated error). Three changes make them faster
(``cpu_runtime.py`` explains each):

* **cache-sized blocks**: the rows are cut into blocks small enough for the
  core's cache, and every step of a layer runs on one block before the next
  block starts, so that each step after the first finds its data in cache
  instead of streaming the whole activation through memory again;
* **a thread per core**: the blocks are independent, and NumPy releases the
  GIL inside its loops, so the blocks run side by side;
* **in place**: results go into arrays made once (``out=``, ``+=``), so a
  step allocates nothing and touches no fresh memory.

And some arithmetic is cheaper: row sums of short rows as a matrix-vector
product with ones (BLAS runs it as one vectorized loop, where a NumPy
reduction along a short last axis pays its set-up cost row by row), the
float32 Gaussian CDF as a tanh polynomial with half the passes of the erf
(``fast_math.py``), GELU's derivative computed in the forward pass (where
every piece of it is at hand) and kept instead of ``x``.

``linear`` has no kernel: its work is matrix products (one forward, two
backward), which the reference already hands to BLAS whole.

``KERNELS`` maps each op's name in ``functional`` to its kernel;
``kernels/__init__.py`` registers them for the ``"cpu"`` device
(``dispatch.register``). A kernel imports nothing from ``functional``: the
argument checks come from ``op_checks``, a case it leaves to the reference
(softmax along another axis than the last) from ``dispatch.reference``.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np

from .. import dispatch
from ..backend import xp_of
from ..op_checks import check_attention, check_layer_norm, check_self_attention
from ..special import SQRT_2_OVER_PI, TANH_CUBIC, normal_cdf
from ..tensor import Tensor, as_tensor, is_grad_enabled
from .cpu_runtime import (
    BLAS_THREADED_PRODUCT,
    for_each_chunk,
    one_blas_thread,
    parallel,
    row_blocks,
)
from .fast_math import normal_cdf_tanh

# ---------------------------------------------------------------------------
# softmax along the last axis, by blocks of rows
# ---------------------------------------------------------------------------


def _rows(a):
    """``a`` as a 2-D ``(rows, last axis)`` array (a view when ``a`` is contiguous)."""
    return a.reshape(-1, a.shape[-1])


def _row_sums(a):
    """``a.sum(-1, keepdims=True)`` of a contiguous block, as a product with a vector of ones."""
    ones = xp_of(a).ones(a.shape[-1], dtype=a.dtype)
    return (_rows(a) @ ones).reshape(*a.shape[:-1], 1)


def _softmax_rows(x, out):
    """One block: ``out = softmax(x)`` along the last axis (``out`` may be ``x``)."""
    xp = xp_of(x)
    xp.subtract(x, x.max(axis=-1, keepdims=True), out=out)
    xp.exp(out, out=out)
    out /= _row_sums(out)


def _softmax_backward_rows(y, g, out):
    """One block: ``out = y * (g - sum(g * y))`` (``out`` may be ``g``)."""
    xp = xp_of(y)
    total = _row_sums(g * y)
    xp.subtract(g, total, out=out)
    out *= y


def softmax(x, axis=-1) -> Tensor:
    x = as_tensor(x)
    if axis not in (-1, x.ndim - 1):
        return dispatch.reference("softmax")(x, axis)  # not rows: the reference
    xp = xp_of(x.data)
    y = xp.empty(x.shape, dtype=x.dtype)
    for_each_chunk(_softmax_rows, _rows(x.data), _rows(y))

    def backward(g):
        gx = xp.empty(y.shape, dtype=y.dtype)
        for_each_chunk(_softmax_backward_rows, _rows(y), _rows(g), _rows(gx))
        return (gx,)

    return Tensor.from_op(y, (x,), backward, "softmax")


# ---------------------------------------------------------------------------
# LayerNorm, by blocks of rows
# ---------------------------------------------------------------------------


def _layer_norm_rows(x, y, xhat, r, weight, bias, eps):
    """One block of rows ``(R, D)``: the forward, keeping ``xhat`` and ``r`` for backward.

    Row means are matrix-vector products with ``1/D``.
    """
    xp = xp_of(x)
    average = xp.full(x.shape[-1], 1.0 / x.shape[-1], dtype=x.dtype)  # (D,)
    xp.subtract(x, (x @ average)[:, None], out=xhat)  # x - mean
    xp.multiply(xhat, xhat, out=y)  # y as scratch: squared deviations
    variance = y @ average  # (R,), biased
    variance += eps
    xp.sqrt(variance, out=variance)
    xp.divide(1.0, variance, out=r[:, 0])  # 1 / sqrt(var + eps)
    xhat *= r  # (R, D) normalized
    if weight is not None:
        xp.multiply(xhat, weight, out=y)
    else:
        y[...] = xhat
    if bias is not None:
        y += bias


def _layer_norm_backward_rows(g, g_xhat, xhat, r, weight, gx):
    """One block: ``gx = r * (h - mean(h) - xhat * mean(h * xhat))`` with ``h = g * weight``.

    With ``w = weight / D``, ``mean(h) = g @ w`` and ``mean(h * xhat) = (g * xhat) @ w``:
    two matrix-vector products. ``g_xhat = g * xhat`` comes in computed, as the
    weight's gradient needs it too.
    """
    xp = xp_of(g)
    scaled = (weight if weight is not None else xp.ones(g.shape[-1], dtype=g.dtype)) / g.shape[-1]
    mean_h = g @ scaled  # (R,)
    mean_hx = g_xhat @ scaled  # (R,)
    if weight is not None:
        xp.multiply(g, weight, out=gx)  # h
    else:
        gx[...] = g
    gx -= mean_h[:, None]
    gx -= xhat * mean_hx[:, None]
    gx *= r


def layer_norm(x, weight=None, bias=None, eps=1e-6) -> Tensor:
    x, weight, bias = check_layer_norm(x, weight, bias)
    xp = xp_of(x.data)
    dim = x.shape[-1]
    w = None if weight is None else weight.data
    b = None if bias is None else bias.data
    rows = _rows(x.data)  # (R, D)
    y = xp.empty(rows.shape, dtype=x.dtype)
    xhat = xp.empty(rows.shape, dtype=x.dtype)
    r = xp.empty((rows.shape[0], 1), dtype=x.dtype)
    blocks = row_blocks(rows)
    parallel(lambda s: _layer_norm_rows(rows[s], y[s], xhat[s], r[s], w, b, eps), blocks)

    def backward(g):
        g = _rows(g)  # (R, D)
        gx = xp.empty(rows.shape, dtype=x.dtype) if x.requires_grad else None
        # per-block sums for the weight and bias gradients, added up in a fixed order
        gw = xp.empty((len(blocks), dim), dtype=x.dtype)
        gb = xp.empty((len(blocks), dim), dtype=x.dtype)

        def block(i):
            s = blocks[i]
            g_xhat = g[s] * xhat[s]  # (rows, D): for dL/dx and for dL/dweight
            if gx is not None:
                _layer_norm_backward_rows(g[s], g_xhat, xhat[s], r[s], w, gx[s])
            ones = xp.ones(s.stop - s.start, dtype=x.dtype)  # sums over rows, by BLAS
            if weight is not None and weight.requires_grad:
                xp.matmul(ones, g_xhat, out=gw[i])
            if bias is not None and bias.requires_grad:
                xp.matmul(ones, g[s], out=gb[i])

        parallel(block, range(len(blocks)))
        return (
            None if gx is None else gx.reshape(x.shape),
            gw.sum(axis=0) if weight is not None and weight.requires_grad else None,
            gb.sum(axis=0) if bias is not None and bias.requires_grad else None,
        )

    return Tensor.from_op(y.reshape(x.shape), (x, weight, bias), backward, "layer_norm")


# ---------------------------------------------------------------------------
# GELU: the derivative made in the forward pass, by blocks
# ---------------------------------------------------------------------------


def _normal_cdf(x, with_pdf):
    """``Phi(x)`` (and ``phi(x)``): float32 by the tanh polynomial, float64 by the reference's
    ``special.normal_cdf``."""
    if x.dtype != np.float64:
        return normal_cdf_tanh(x, with_pdf)
    xp = xp_of(x)
    cdf = normal_cdf(x)
    if not with_pdf:
        return cdf
    return cdf, xp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))


def _gelu_exact(x, y, d=None):
    """One block: ``y = x Phi(x)`` and, if asked, the derivative ``d = Phi(x) + x phi(x)``."""
    xp = xp_of(x)
    if d is None:
        xp.multiply(x, _normal_cdf(x, with_pdf=False), out=y)
        return
    cdf, pdf = _normal_cdf(x, with_pdf=True)
    xp.multiply(x, cdf, out=y)
    pdf *= x
    xp.add(pdf, cdf, out=d)


def _gelu_tanh(x, y, d=None):
    """One block of the tanh form: ``y = x (1 + t) / 2``, ``t = tanh(sqrt(2/pi) (x + c x^3))``."""
    xp = xp_of(x)
    x2 = x * x
    t = x2 * TANH_CUBIC
    t += 1.0
    t *= x
    t *= SQRT_2_OVER_PI
    xp.tanh(t, out=t)
    if d is not None:
        # d = (1 + t) / 2 + x (1 - t^2) / 2 * sqrt(2/pi) (1 + 3 c x^2)
        x2 *= 3.0 * TANH_CUBIC * SQRT_2_OVER_PI
        x2 += SQRT_2_OVER_PI  # du/dx
        slope = t * t
        xp.subtract(1.0, slope, out=slope)  # 1 - t^2
        slope *= x2
        slope *= x
        slope += t
        slope += 1.0
        xp.multiply(slope, 0.5, out=d)
    t += 1.0
    t *= x
    xp.multiply(t, 0.5, out=y)


def gelu(x, approximate="none") -> Tensor:
    """GELU in blocks. When a gradient will be needed, the forward also computes the
    derivative (it holds every piece of it) and keeps that one array instead of
    ``x``: the backward is then a single multiplication."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', not {approximate!r}")
    x = as_tensor(x)
    xp = xp_of(x.data)
    kernel = _gelu_exact if approximate == "none" else _gelu_tanh
    flat = x.data.reshape(-1)  # elementwise: any blocks will do
    y = xp.empty(flat.shape, dtype=x.dtype)
    if not (x.requires_grad and is_grad_enabled()):
        for_each_chunk(kernel, flat, y)
        return Tensor(y.reshape(x.shape))
    d = xp.empty(flat.shape, dtype=x.dtype)
    for_each_chunk(kernel, flat, y, d)

    def backward(g):
        out = xp.empty(flat.shape, dtype=x.dtype)
        for_each_chunk(lambda g_, d_, o_: xp.multiply(g_, d_, out=o_), g.reshape(-1), d, out)
        return (out.reshape(x.shape),)

    return Tensor.from_op(y.reshape(x.shape), (x,), backward, "gelu")


# ---------------------------------------------------------------------------
# attention, by blocks of the batch: each block's attention matrix stays in cache
# ---------------------------------------------------------------------------


def _blas_inside(q, k):
    """One OpenBLAS thread while the pool runs products large enough for OpenBLAS to
    thread them itself (``cpu_runtime``'s text); nothing to switch for smaller ones."""
    n, m, d = q.shape[-2], k.shape[-2], q.shape[-1]
    return one_blas_thread() if n * m * d > BLAS_THREADED_PRODUCT else nullcontext()


def _attention_blocks(q, k, v, out, attn, scale):
    """The forward in blocks of the first axis: scores, softmax, weighted values."""
    xp = xp_of(q)

    def block(s):
        scores = attn[s]
        xp.matmul(q[s], xp.swapaxes(k[s], -1, -2), out=scores)  # (b, heads, N, M)
        scores *= scale
        _softmax_rows(scores, scores)  # A = softmax(q k^T / sqrt(D_h)), Eq. 6
        xp.matmul(scores, v[s], out=out[s])  # SA = A v, Eq. 7: (b, heads, N, dv)

    with _blas_inside(q, k):
        parallel(block, row_blocks(attn))


def _attention_backward_blocks(g, q, k, v, attn, scale, gq, gk, gv):
    """The backward in the same blocks; any of ``gq, gk, gv`` may be None."""
    xp = xp_of(g)

    def block(s):
        if gv is not None:
            xp.matmul(xp.swapaxes(attn[s], -1, -2), g[s], out=gv[s])  # dV = A^T g
        if gq is None and gk is None:
            return
        gs = g[s] @ xp.swapaxes(v[s], -1, -2)  # dA = g V^T: (b, heads, N, M)
        _softmax_backward_rows(attn[s], gs, gs)  # dS = A * (dA - sum(dA * A))
        gs *= scale
        if gq is not None:
            xp.matmul(gs, k[s], out=gq[s])  # dQ = scale dS K
        if gk is not None:
            xp.matmul(xp.swapaxes(gs, -1, -2), q[s], out=gk[s])  # dK = scale dS^T Q

    with _blas_inside(q, k):
        parallel(block, row_blocks(attn))


def scaled_dot_product_attention(q, k, v, scale=None, need_weights=False):
    q, k, v = check_attention(q, k, v)
    xp = xp_of(q.data)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    lead, n, m = q.shape[:-2], q.shape[-2], k.shape[-2]
    # Blocks run over one leading axis: fold all leading axes into it (views when contiguous).
    q3, k3, v3 = (t.data.reshape(-1, *t.shape[-2:]) for t in (q, k, v))
    attn = xp.empty((q3.shape[0], n, m), dtype=q.dtype)  # (B*heads, N, M)
    out = xp.empty((q3.shape[0], n, v.shape[-1]), dtype=q.dtype)  # (B*heads, N, dv)
    _attention_blocks(q3, k3, v3, out, attn, scale)

    def backward(g):
        grads = [
            xp.empty(a.shape, dtype=a.dtype) if t.requires_grad else None
            for a, t in zip((q3, k3, v3), (q, k, v))
        ]
        _attention_backward_blocks(g.reshape(out.shape), q3, k3, v3, attn, scale, *grads)
        return tuple(None if a is None else a.reshape(t.shape) for a, t in zip(grads, (q, k, v)))

    result = Tensor.from_op(out.reshape(*lead, n, -1), (q, k, v), backward, "attention")
    return (result, attn.reshape(*lead, n, m)) if need_weights else result


def self_attention(qkv, heads, need_weights=False):
    """The packed form without copies: ``q, k, v`` are strided views of ``qkv``, the
    heads' outputs are written straight into ``(B, N, heads, D_h)`` order, and the
    backward writes the three gradients straight into one ``(B, N, 3D)`` array."""
    qkv = check_self_attention(qkv, heads)
    xp = xp_of(qkv.data)
    B, N, three_d = qkv.shape
    head_dim = three_d // (3 * heads)
    scale = 1.0 / math.sqrt(head_dim)
    split = qkv.data.reshape(B, N, 3, heads, head_dim)  # (B, N, 3, heads, D_h), a view

    def heads_first(a, i):  # (B, N, ., heads, D_h) -> (B, heads, N, D_h), a view
        return a[:, :, i].transpose(0, 2, 1, 3)

    q, k, v = (heads_first(split, i) for i in range(3))
    out = xp.empty((B, N, heads, head_dim), dtype=qkv.dtype)  # heads side by side
    attn = xp.empty((B, heads, N, N), dtype=qkv.dtype)
    _attention_blocks(q, k, v, out.transpose(0, 2, 1, 3), attn, scale)

    def backward(g):
        grad = xp.empty((B, N, 3, heads, head_dim), dtype=qkv.dtype)
        g4 = g.reshape(B, N, heads, head_dim).transpose(0, 2, 1, 3)  # (B, heads, N, D_h)
        gq, gk, gv = (heads_first(grad, i) for i in range(3))
        _attention_backward_blocks(g4, q, k, v, attn, scale, gq, gk, gv)
        return (grad.reshape(B, N, three_d),)

    result = Tensor.from_op(out.reshape(B, N, heads * head_dim), (qkv,), backward, "self_attention")
    return (result, attn) if need_weights else result


KERNELS = {
    "softmax": softmax,
    "layer_norm": layer_norm,
    "gelu": gelu,
    "scaled_dot_product_attention": scaled_dot_product_attention,
    "self_attention": self_attention,
}
