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
from .backend import xp_of
from .special import erf
from .tensor import Tensor, as_tensor

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
    xp_of(x.data, weight.data, None if bias is None else bias.data, names=("x", "weight", "bias"))
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
        gb = g2.sum(axis=0) if bias is not None and bias.requires_grad else None
        return gx, gw, gb

    return Tensor.from_op(
        y.reshape(*x.shape[:-1], out_features), (x, weight, bias), backward, "linear"
    )


# ---------------------------------------------------------------------------
# softmax and its logarithm
# ---------------------------------------------------------------------------


def _softmax(x, axis):
    """Softmax of an array; subtracting the maximum first keeps exp from overflowing."""
    xp = xp_of(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def _softmax_backward(y, g, axis):
    """dL/dx for y = softmax(x): ``y * (g - sum(g * y))``, the Jacobian-vector product."""
    gy = g * y
    gy -= y * gy.sum(axis=axis, keepdims=True)
    return gy


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


def layer_norm(x, weight=None, bias=None, eps=1e-6) -> Tensor:
    """Normalise the last axis to zero mean and unit variance, then scale and shift.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, with the biased
    variance, over the last axis. The ViT paper's LN (Eq. 2-4); eps 1e-6 as in
    the official code and timm.

    Backward in closed form. With ``xhat`` the normalised input, ``r =
    1/sqrt(var + eps)`` and ``h = g * weight`` (the gradient reaching xhat):

        dL/dx = r * (h - mean(h) - xhat * mean(h * xhat))

    the two means being the gradient's paths through the mean and the
    variance.
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
    xc = x.data - x.data.mean(axis=-1, keepdims=True)  # (..., D)
    rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = xc * rstd  # (..., D); xc is not needed again
    y = xhat * weight.data if weight is not None else xhat.copy()
    if bias is not None:
        y += bias.data

    def backward(g):
        gx = gw = gb = None
        if x.requires_grad:
            h = g * weight.data if weight is not None else g.copy()
            h -= h.mean(axis=-1, keepdims=True) + xhat * (h * xhat).mean(axis=-1, keepdims=True)
            h *= rstd
            gx = h
        if weight is not None and weight.requires_grad:
            gw = (g * xhat).reshape(-1, dim).sum(axis=0)
        if bias is not None and bias.requires_grad:
            gb = g.reshape(-1, dim).sum(axis=0)
        return gx, gw, gb

    return Tensor.from_op(y, (x, weight, bias), backward, "layer_norm")


# ---------------------------------------------------------------------------
# GELU
# ---------------------------------------------------------------------------

_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715


def gelu(x, approximate="none") -> Tensor:
    """Gaussian Error Linear Unit, ``x * Phi(x)`` with ``Phi`` the Gaussian CDF.

    ``approximate="none"``: the exact form, ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``
    (erf from ``special.py``); its derivative is ``Phi(x) + x * phi(x)``, with
    ``phi`` the Gaussian density.
    ``approximate="tanh"``: ``Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2``,
    the form of the original ViT code.
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', not {approximate!r}")
    x = as_tensor(x)
    xp = xp_of(x.data)
    a = x.data
    if approximate == "none":
        cdf = erf(a * (1.0 / _SQRT_2))
        cdf += 1.0
        cdf *= 0.5  # Phi(x)
        y = a * cdf

        def backward(g):  # g * (Phi(x) + x * phi(x))
            d = xp.exp(a * a * -0.5)
            d *= _INV_SQRT_2PI
            d *= a
            d += cdf
            d *= g
            return (d,)

    else:
        t = xp.tanh(_SQRT_2_OVER_PI * (a + _TANH_CUBIC * a * a * a))
        y = 0.5 * a * (1.0 + t)

        def backward(g):
            # d/dx [x (1 + t) / 2] = (1 + t) / 2 + x (1 - t^2) / 2 * sqrt(2/pi) (1 + 3c x^2)
            du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_CUBIC * a * a)
            d = 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * du
            d *= g
            return (d,)

    return Tensor.from_op(y, (x,), backward, "gelu")


# ---------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------


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
    scores = q.data @ xp.swapaxes(k.data, -1, -2)  # (B, heads, N, M)
    scores *= scale
    attn = _softmax(scores, axis=-1)  # (B, heads, N, M)
    out = attn @ v.data  # (B, heads, N, dv)

    def backward(g):
        gq = gk = gv = None
        if v.requires_grad:
            gv = xp.swapaxes(attn, -1, -2) @ g  # (B, heads, M, dv)
        if q.requires_grad or k.requires_grad:
            gs = _softmax_backward(
                attn, g @ xp.swapaxes(v.data, -1, -2), axis=-1
            )  # (B, heads, N, M)
            gs *= scale
            if q.requires_grad:
                gq = gs @ k.data  # (B, heads, N, d)
            if k.requires_grad:
                gk = xp.swapaxes(gs, -1, -2) @ q.data  # (B, heads, M, d)
        return gq, gk, gv

    result = Tensor.from_op(out, (q, k, v), backward, "scaled_dot_product_attention")
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
    "dropout",
]
