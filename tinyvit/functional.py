"""The layers of a Vision Transformer, each one op with a hand-written backward.

Named like ``torch.nn.functional``, with NumPy's ``axis``. Each function
computes its forward on the raw arrays, keeps what its backward needs, and
hands ``Tensor.from_op`` a closure with the derivative worked out on paper
and fused into a few array expressions (the versions built from primitive
ops, for reading side by side, are in ``composed.py``).

Where each piece sits in the paper (Dosovitskiy et al., ICLR 2021):

* ``linear``: the patch projection E of Eq. 1, U_qkv and U_msa of Eq. 5 and 8,
  the two layers of the MLP in Eq. 3 and the classification head;
* ``layer_norm``: the LN of Eq. 2, 3 and 4;
* ``gelu``: the MLP's non-linearity (Eq. 3);
* ``softmax`` and ``scaled_dot_product_attention``: Eq. 6 and 7,
  ``A = softmax(q k^T / sqrt(D_h))`` and ``SA(z) = A v``;
* ``cross_entropy``: the training loss on the head's logits;
* ``dropout``: the regulariser of the paper's training setup (Appendix B.1).

Every backward here is checked against central differences in float64 and,
where it is installed, against PyTorch (see ``tests/``).
"""

from __future__ import annotations

import math

from . import backend
from .backend import for_each_chunk, xp_of
from .special import normal_cdf
from .tensor import Tensor, as_tensor, is_grad_enabled

# ---------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------


def linear(x, weight, bias=None) -> Tensor:
    """``y = x W^T + b``, with ``weight`` shaped ``(out, in)`` as in PyTorch.

    ``x`` is ``(..., in)``; the leading axes are folded into one so that the
    whole batch is one matrix product, forward and backward.
    """
    x, weight = as_tensor(x), as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    xp = xp_of(
        x.data, weight.data, None if bias is None else bias.data, names=("x", "weight", "bias")
    )
    out_features, in_features = weight.shape
    if x.shape[-1] != in_features:
        raise ValueError(
            f"linear: x has shape {x.shape}, whose last axis ({x.shape[-1]}) must equal "
            f"weight's in_features; weight has shape {weight.shape} (out, in)"
        )
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(f"linear: bias has shape {bias.shape}, expected ({out_features},)")
    x2 = x.data.reshape(-1, in_features)  # (M, in), M = all leading axes
    y = x2 @ weight.data.T  # (M, out)
    if bias is not None:
        y += bias.data

    def backward(g):
        g2 = g.reshape(-1, out_features)  # (M, out)
        gx = (g2 @ weight.data).reshape(x.shape) if x.requires_grad else None  # dL/dx = g W
        gw = g2.T @ x2 if weight.requires_grad else None  # dL/dW = g^T x
        gb = None
        if bias is not None and bias.requires_grad:  # column sums, by BLAS: ones @ g
            gb = xp.ones(g2.shape[0], dtype=g2.dtype) @ g2
        return gx, gw, gb

    return Tensor.from_op(
        y.reshape(*x.shape[:-1], out_features), (x, weight, bias), backward, "linear"
    )


# ---------------------------------------------------------------------------
# softmax and its logarithm
# ---------------------------------------------------------------------------


def _row_sums(a):
    """Sums along the last axis of a contiguous block, keeping it: ``a.sum(-1, keepdims=True)``.

    As a matrix-vector product with a vector of ones: BLAS sums short rows
    (an attention row has 65 entries) five times faster than NumPy's reduction.
    """
    xp = xp_of(a)
    rows = a.reshape(-1, a.shape[-1])  # (R, M), a view
    return (rows @ xp.ones(a.shape[-1], dtype=a.dtype)).reshape(*a.shape[:-1], 1)


def _softmax_rows(x, out):
    """One block of rows: ``out = softmax(x)`` along the last axis (``out`` may be ``x``)."""
    xp = xp_of(x)
    xp.subtract(x, x.max(axis=-1, keepdims=True), out=out)  # shifted: exp cannot overflow
    xp.exp(out, out=out)
    out /= _row_sums(out)


def _softmax_backward_rows(y, g, out):
    """One block: ``out = y * (g - sum(g * y))``, the softmax's Jacobian-vector product.

    ``out`` may be ``g`` itself.
    """
    xp = xp_of(y)
    total = _row_sums(g * y)  # (..., 1)
    xp.subtract(g, total, out=out)
    out *= y


def _last_axis_rows(a):
    """``a`` as a 2-D ``(rows, last axis)`` array (a view when ``a`` is contiguous)."""
    return a.reshape(-1, a.shape[-1])


def _softmax(x, axis):
    """Softmax of an array along ``axis``; along the last one, in parallel row blocks."""
    xp = xp_of(x)
    if axis not in (-1, x.ndim - 1):
        e = xp.exp(x - x.max(axis=axis, keepdims=True))
        e /= e.sum(axis=axis, keepdims=True)
        return e
    out = xp.empty(x.shape, dtype=x.dtype)
    for_each_chunk(_softmax_rows, _last_axis_rows(x), _last_axis_rows(out))
    return out


def _softmax_backward(y, g, axis):
    """dL/dx for ``y = softmax(x)``: ``y * (g - sum(g * y))``."""
    xp = xp_of(y)
    if axis not in (-1, y.ndim - 1):
        gy = g * y
        gy -= y * gy.sum(axis=axis, keepdims=True)
        return gy
    out = xp.empty(y.shape, dtype=y.dtype)
    for_each_chunk(
        _softmax_backward_rows, _last_axis_rows(y), _last_axis_rows(g), _last_axis_rows(out)
    )
    return out


def softmax(x, axis=-1) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``axis``."""
    x = as_tensor(x)
    y = _softmax(x.data, axis)
    return Tensor.from_op(y, (x,), lambda g: (_softmax_backward(y, g, axis),), "softmax")


def _log_softmax(x, axis):
    xp = xp_of(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    shifted -= xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    return shifted


def log_softmax(x, axis=-1) -> Tensor:
    """``x - log(sum(exp(x)))`` along ``axis``, computed without overflow."""
    x = as_tensor(x)
    xp = xp_of(x.data)
    y = _log_softmax(x.data, axis)

    def backward(g):  # dL/dx = g - softmax(x) * sum(g)
        return (g - xp.exp(y) * g.sum(axis=axis, keepdims=True),)

    return Tensor.from_op(y, (x,), backward, "log_softmax")


# ---------------------------------------------------------------------------
# cross-entropy
# ---------------------------------------------------------------------------


def cross_entropy(logits, target, label_smoothing=0.0, reduction="mean") -> Tensor:
    """Cross-entropy between ``softmax(logits)`` and the targets.

    ``logits`` is ``(B, C)``. ``target`` is either ``B`` integer classes or a
    ``(B, C)`` array of class probabilities (for mixup and cutmix). With label
    smoothing ``e`` the target becomes ``(1 - e) * target + e / C``.
    ``reduction``: ``"mean"`` over the batch (the default), ``"sum"`` or ``"none"``.

    Backward, fused: the gradient of the per-example loss with respect to the
    logits is ``softmax(logits) - target``, so no log-softmax graph is kept.
    """
    logits = as_tensor(logits)
    target = target.data if isinstance(target, Tensor) else target
    xp = xp_of(logits.data, target, names=("logits", "target"))
    target = xp.asarray(target)
    if logits.ndim != 2:
        raise ValueError(
            f"cross_entropy: logits must be (batch, classes), got shape {logits.shape}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(
            f"cross_entropy: reduction must be 'mean', 'sum' or 'none', not {reduction!r}"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    batch, classes = logits.shape
    dtype = logits.dtype
    if target.dtype.kind in "iu":
        if target.shape != (batch,):
            raise ValueError(
                f"cross_entropy: integer targets must have shape ({batch},) for logits of "
                f"shape {logits.shape}, got {target.shape}"
            )
        if batch and (int(target.min()) < 0 or int(target.max()) >= classes):
            raise ValueError(
                f"cross_entropy: class targets must lie in [0, {classes}), "
                f"got values from {int(target.min())} to {int(target.max())}"
            )
        probs = xp.zeros((batch, classes), dtype=dtype)
        probs[xp.arange(batch), target] = 1.0
    else:
        if target.shape != logits.shape:
            raise ValueError(
                f"cross_entropy: probability targets must have the logits' shape "
                f"{logits.shape}, got {target.shape}"
            )
        probs = target.astype(dtype)
    if label_smoothing:
        probs = probs * (1.0 - label_smoothing) + label_smoothing / classes

    logp = _log_softmax(logits.data, axis=1)  # (B, C)
    per_example = -(probs * logp).sum(axis=1)  # (B,)
    if reduction == "mean":
        loss = xp.asarray(per_example.mean(), dtype=dtype)
    elif reduction == "sum":
        loss = xp.asarray(per_example.sum(), dtype=dtype)
    else:
        loss = per_example

    def backward(g):
        # d loss_b / d logits_b = softmax(logits_b) * sum(target_b) - target_b
        grad = xp.exp(logp)
        grad *= probs.sum(axis=1, keepdims=True)
        grad -= probs
        if reduction == "none":
            grad *= g[:, None]
        else:
            grad *= g / batch if reduction == "mean" else g
        return (grad,)

    return Tensor.from_op(loss, (logits,), backward, "cross_entropy")


# ---------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------


def _layer_norm_rows(x, y, xhat, rstd, weight, bias, eps):
    """One block of rows ``(R, D)``: the forward, keeping ``xhat`` and ``rstd`` for backward.

    Row means are matrix-vector products with ``1/D``: BLAS sums a short row
    several times faster than ``mean(axis=-1)`` does.
    """
    xp = xp_of(x)
    average = xp.full(x.shape[-1], 1.0 / x.shape[-1], dtype=x.dtype)  # (D,)
    xp.subtract(x, (x @ average)[:, None], out=xhat)  # x - mean
    xp.multiply(xhat, xhat, out=y)  # y as scratch: squared deviations
    variance = y @ average  # (R,), biased
    variance += eps
    xp.sqrt(variance, out=variance)
    xp.divide(1.0, variance, out=rstd[:, 0])  # 1 / sqrt(var + eps)
    xhat *= rstd  # (R, D) normalised
    if weight is not None:
        xp.multiply(xhat, weight, out=y)
    else:
        y[...] = xhat
    if bias is not None:
        y += bias


def _layer_norm_backward_rows(g, g_xhat, xhat, rstd, weight, gx):
    """One block: ``gx = rstd * (h - mean(h) - xhat * mean(h * xhat))`` with ``h = g * weight``.

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
    gx *= rstd


def layer_norm(x, weight=None, bias=None, eps=1e-6) -> Tensor:
    """Normalise the last axis to zero mean and unit variance, then scale and shift.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, with the biased
    variance, over the last axis. The ViT paper's LN (Eq. 2-4); eps 1e-6 as in
    the official code and timm.

    Backward in closed form. With ``xhat`` the normalised input, ``r =
    1/sqrt(var + eps)`` and ``h = g * weight`` (the gradient reaching xhat):

        dL/dx = r * (h - mean(h) - xhat * mean(h * xhat))

    the two means being the gradient's paths through the mean and the
    variance. Forward and backward run on blocks of rows in parallel.
    """
    x = as_tensor(x)
    weight = None if weight is None else as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    xp = xp_of(
        x.data,
        None if weight is None else weight.data,
        None if bias is None else bias.data,
        names=("x", "weight", "bias"),
    )
    dim = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (dim,):
            raise ValueError(
                f"layer_norm: {name} has shape {p.shape}, expected ({dim},) "
                f"for x of shape {x.shape}"
            )
    w = None if weight is None else weight.data
    b = None if bias is None else bias.data
    rows = _last_axis_rows(x.data)  # (R, D)
    y = xp.empty(rows.shape, dtype=x.dtype)
    xhat = xp.empty(rows.shape, dtype=x.dtype)
    rstd = xp.empty((rows.shape[0], 1), dtype=x.dtype)
    blocks = backend.row_blocks(rows)
    backend.parallel(lambda r: _layer_norm_rows(rows[r], y[r], xhat[r], rstd[r], w, b, eps), blocks)

    def backward(g):
        g = _last_axis_rows(g)  # (R, D)
        gx = xp.empty(rows.shape, dtype=x.dtype) if x.requires_grad else None
        # per-block sums for the weight and bias gradients, added up in a fixed order
        gw = xp.empty((len(blocks), dim), dtype=x.dtype)
        gb = xp.empty((len(blocks), dim), dtype=x.dtype)

        def block(i):
            r = blocks[i]
            g_xhat = g[r] * xhat[r]  # (rows, D): for dL/dx and for dL/dweight
            if gx is not None:
                _layer_norm_backward_rows(g[r], g_xhat, xhat[r], rstd[r], w, gx[r])
            ones = xp.ones(r.stop - r.start, dtype=x.dtype)  # sums over rows, by BLAS
            if weight is not None and weight.requires_grad:
                xp.matmul(ones, g_xhat, out=gw[i])
            if bias is not None and bias.requires_grad:
                xp.matmul(ones, g[r], out=gb[i])

        backend.parallel(block, range(len(blocks)))
        return (
            None if gx is None else gx.reshape(x.shape),
            gw.sum(axis=0) if weight is not None and weight.requires_grad else None,
            gb.sum(axis=0) if bias is not None and bias.requires_grad else None,
        )

    return Tensor.from_op(y.reshape(x.shape), (x, weight, bias), backward, "layer_norm")


# ---------------------------------------------------------------------------
# GELU
# ---------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715


def _gelu_exact(x, y, d=None):
    """One block: ``y = x Phi(x)`` and, if asked, the derivative ``d = Phi(x) + x phi(x)``."""
    xp = xp_of(x)
    if d is None:
        xp.multiply(x, normal_cdf(x), out=y)
        return
    cdf, pdf = normal_cdf(x, with_pdf=True)  # the Gaussian CDF and density
    xp.multiply(x, cdf, out=y)
    pdf *= x
    xp.add(pdf, cdf, out=d)


def _gelu_tanh(x, y, d=None):
    """One block of the tanh form: ``y = x (1 + t) / 2``, ``t = tanh(sqrt(2/pi) (x + c x^3))``."""
    xp = xp_of(x)
    x2 = x * x
    t = x2 * _TANH_CUBIC
    t += 1.0
    t *= x
    t *= _SQRT_2_OVER_PI
    xp.tanh(t, out=t)
    if d is not None:
        # d = (1 + t) / 2 + x (1 - t^2) / 2 * sqrt(2/pi) (1 + 3 c x^2)
        x2 *= 3.0 * _TANH_CUBIC * _SQRT_2_OVER_PI
        x2 += _SQRT_2_OVER_PI  # du/dx
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
    """Gaussian Error Linear Unit, ``x * Phi(x)`` with ``Phi`` the Gaussian CDF.

    ``approximate="none"``: the exact form, ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``,
    computed by ``special.normal_cdf`` (within 2e-10 in float64, 1e-7 in float32); its derivative
    is ``Phi(x) + x * phi(x)``, with ``phi`` the Gaussian density.
    ``approximate="tanh"``: ``Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2``,
    the form of the original ViT code.

    The forward already holds every piece of the derivative, so when a
    gradient will be needed it computes the derivative there, in the same
    pass over the data, and keeps that one array instead of ``x``: the
    backward is then a single multiplication.
    """
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
# attention
# ---------------------------------------------------------------------------


def _attention_blocks(q, k, v, out, attn, scale):
    """The forward in blocks of the batch axis: scores, softmax, weighted values.

    Each block's ``(b, heads, N, M)`` attention matrix stays in cache from
    its scores to its use, and the blocks run on all cores.
    """
    xp = xp_of(q)

    def block(r):
        scores = attn[r]
        xp.matmul(q[r], xp.swapaxes(k[r], -1, -2), out=scores)  # (b, heads, N, M)
        scores *= scale
        _softmax_rows(scores, scores)  # A = softmax(q k^T / sqrt(D_h)), Eq. 6
        xp.matmul(scores, v[r], out=out[r])  # SA = A v, Eq. 7: (b, heads, N, dv)

    backend.parallel(block, backend.row_blocks(attn))


def _attention_backward_blocks(g, q, k, v, attn, scale, gq, gk, gv):
    """The fused backward in the same blocks; any of ``gq, gk, gv`` may be None."""
    xp = xp_of(g)

    def block(r):
        if gv is not None:
            xp.matmul(xp.swapaxes(attn[r], -1, -2), g[r], out=gv[r])  # dV = A^T g
        if gq is None and gk is None:
            return
        gs = g[r] @ xp.swapaxes(v[r], -1, -2)  # dA = g V^T: (b, heads, N, M)
        _softmax_backward_rows(attn[r], gs, gs)  # dS = A * (dA - sum(dA * A))
        gs *= scale
        if gq is not None:
            xp.matmul(gs, k[r], out=gq[r])  # dQ = scale dS K
        if gk is not None:
            xp.matmul(xp.swapaxes(gs, -1, -2), q[r], out=gk[r])  # dK = scale dS^T Q

    backend.parallel(block, backend.row_blocks(attn))


def scaled_dot_product_attention(q, k, v, scale=None, need_weights=False):
    """Softmax attention, Eq. 6-7 of Appendix A: ``softmax(q k^T / sqrt(D_h)) v``.

    ``q`` is ``(B, heads, N, head_dim)``, ``k`` ``(B, heads, M, head_dim)``
    and ``v`` ``(B, heads, M, head_dim_v)``; any number of leading axes works.
    ``scale`` defaults to ``1 / sqrt(head_dim)``. With ``need_weights=True``
    returns ``(out, attn)``, ``attn`` being the ``(B, heads, N, M)`` array of
    attention probabilities (a plain array, for looking at).

    Backward, fused: with ``A`` the saved probabilities and ``g`` the gradient
    of the output, ``dV = A^T g``, ``dA = g V^T``, ``dS = A * (dA - sum(dA * A))``
    (the softmax backward) and ``dQ = scale dS K``, ``dK = scale dS^T Q``.
    """
    q, k, v = as_tensor(q), as_tensor(k), as_tensor(v)
    xp = xp_of(q.data, k.data, v.data, names=("q", "k", "v"))
    if (
        q.ndim < 2
        or q.shape[-1] != k.shape[-1]
        or k.shape[:-1] != v.shape[:-1]
        or (q.shape[:-2] != k.shape[:-2])
    ):
        raise ValueError(
            "scaled_dot_product_attention: expected q (..., N, d), k (..., M, d), v (..., M, dv) "
            f"with the same leading axes; got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
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
        g3 = g.reshape(out.shape)
        _attention_backward_blocks(g3, q3, k3, v3, attn, scale, *grads)
        return tuple(None if a is None else a.reshape(t.shape) for a, t in zip(grads, (q, k, v)))

    result = Tensor.from_op(out.reshape(*lead, n, -1), (q, k, v), backward, "attention")
    return (result, attn.reshape(*lead, n, m)) if need_weights else result


def self_attention(qkv, heads, need_weights=False):
    """Multi-head self-attention on packed projections (Eq. 5-7 for every head at once).

    ``qkv`` is the ``(B, N, 3D)`` output of the fused ``qkv`` projection,
    queries, keys and values side by side, each split into ``heads`` heads of
    ``D_h = D / heads``. Returns the heads' outputs concatenated, ``(B, N, D)``,
    ready for the output projection (Eq. 8).

    The same computation as ``scaled_dot_product_attention`` on ``q, k, v``
    cut out of ``qkv``, but the cutting is done with strided views rather
    than copies, the output is written directly in ``(B, N, heads, D_h)``
    order, and the backward writes the three gradients straight into one
    ``(B, N, 3D)`` array.
    """
    qkv = as_tensor(qkv)
    xp = xp_of(qkv.data)
    B, N, three_d = qkv.shape
    if three_d % (3 * heads):
        raise ValueError(
            f"self_attention: the last axis ({three_d}) must be 3 * heads * head_dim "
            f"for {heads} heads"
        )
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


# ---------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------


def dropout(x, p=0.5, training=True, generator=None) -> Tensor:
    """Zero each entry with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    Only while ``training``; otherwise ``x`` passes through. ``generator`` is
    a random generator of ``x``'s device (``backend.new_generator(seed,
    device)``); by default the device's shared one, seeded by
    ``backend.manual_seed``. The same seed gives the same masks.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    x = as_tensor(x)
    if not training or p == 0.0:
        return x
    xp = xp_of(x.data)
    if p == 1.0:
        keep = xp.zeros_like(x.data)
    else:
        rng = generator if generator is not None else backend.default_generator(x.device)
        keep = rng.random(x.shape, dtype=x.dtype) >= p
        keep = keep.astype(x.dtype)
        keep *= 1.0 / (1.0 - p)
    return Tensor.from_op(x.data * keep, (x,), lambda g: (g * keep,), "dropout")


__all__ = [
    "linear",
    "softmax",
    "log_softmax",
    "cross_entropy",
    "layer_norm",
    "gelu",
    "scaled_dot_product_attention",
    "self_attention",
    "dropout",
]
