"""The layers of a Vision Transformer, each one op with a hand-written backward.

This file is the reference: every op is whole-array maths, written in the
order and with the names of its derivation, forward and backward. Named like
``torch.nn.functional``, with NumPy's ``axis``. Each function computes its
forward on the raw arrays, keeps what its backward needs, and hands
``Tensor.from_op`` a closure that turns the gradient of the result into the
gradients of the inputs.

Where each piece sits in the paper (Dosovitskiy et al., ICLR 2021):

* ``linear``: the patch projection E of Eq. 1, U_qkv and U_msa of Eq. 5 and 8,
  the two layers of the MLP in Eq. 3 and the classification head;
* ``layer_norm``: the LN of Eq. 2, 3 and 4;
* ``gelu``: the MLP's non-linearity (Eq. 3);
* ``softmax``, ``scaled_dot_product_attention`` and ``self_attention``:
  Eq. 5-7 of Appendix A, ``A = softmax(q k^T / sqrt(D_h))`` and ``SA(z) = A v``
  for every head;
* ``cross_entropy`` (with ``log_softmax``): the training loss on the logits;
* ``dropout``: the regularizer of the paper's training setup (Appendix B.1);
  ``patch_dropout`` drops whole patch tokens instead (not in the paper: it
  makes a training step cheaper).

Faster versions of some of these ops (cache-sized blocks on every core,
in-place arithmetic, a float32 GELU polynomial) live in ``tinyvit/kernels/``.
Each op below is marked ``@replaceable`` (``dispatch.py``): called, it runs
the kernel registered for its input's device if there is one, else the code
below, which stays reachable as ``op.reference``;
``TINYVIT_KERNELS=reference`` makes every op run the code below. The
argument checks are shared with the kernels (``op_checks.py``). The tests
check the two equal, values and gradients, and check every backward here
against central differences in float64 and, where it is installed, against
PyTorch. ``composed.py`` builds softmax, LayerNorm and GELU once more from
primitive tensor ops.
"""

from __future__ import annotations

import math

from . import backend, checks
from .backend import xp_of
from .dispatch import replaceable
from .op_checks import (
    check_attention,
    check_cross_entropy,
    check_layer_norm,
    check_linear,
    check_self_attention,
)
from .special import SQRT_2_OVER_PI, TANH_CUBIC, normal_cdf
from .tensor import Tensor, as_tensor

# ---------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------


@replaceable
def linear(x, weight, bias=None) -> Tensor:
    """``y = x W^T + b``, with ``weight`` shaped ``(out, in)`` as in PyTorch.

    ``x`` is ``(..., in)``; the leading axes are folded into one, so that the
    whole batch is one matrix product, forward and backward. With ``g`` the
    gradient of ``y``: ``dL/dx = g W``, ``dL/dW = g^T x``, ``dL/db = sum of g
    over the rows``.
    """
    x, weight, bias = check_linear(x, weight, bias)
    x2 = x.data.reshape(-1, x.shape[-1])  # (M, in), M = all leading axes
    y = x2 @ weight.data.T  # (M, out)
    if bias is not None:
        y += bias.data  # in place: y is the product's own fresh array

    def backward(g):
        g2 = g.reshape(-1, weight.shape[0])  # (M, out)
        gx = (g2 @ weight.data).reshape(x.shape) if x.requires_grad else None
        gw = g2.T @ x2 if weight.requires_grad else None  # (out, in)
        gb = g2.sum(axis=0) if bias is not None and bias.requires_grad else None
        return gx, gw, gb

    return Tensor.from_op(
        y.reshape(*x.shape[:-1], weight.shape[0]), (x, weight, bias), backward, "linear"
    )


# ---------------------------------------------------------------------------
# softmax and its logarithm
# ---------------------------------------------------------------------------


def softmax_array(x, axis=-1):
    """``exp(x - max) / sum(exp(x - max))`` of an array: the shift keeps exp from overflowing."""
    e = xp_of(x).exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@replaceable
def softmax(x, axis=-1) -> Tensor:
    """``y = exp(x) / sum(exp(x))`` along ``axis``.

    Backward: ``dL/dx_i = sum_j g_j dy_j/dx_i = y_i (g_i - sum_j g_j y_j)``.
    """
    x = as_tensor(x)
    y = softmax_array(x.data, axis)

    def backward(g):
        return (y * (g - (g * y).sum(axis=axis, keepdims=True)),)

    return Tensor.from_op(y, (x,), backward, "softmax")


def log_softmax_array(x, axis=-1):
    """``x - log(sum(exp(x)))`` of an array, computed without overflow."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp_of(x).log(xp_of(x).exp(shifted).sum(axis=axis, keepdims=True))


@replaceable
def log_softmax(x, axis=-1) -> Tensor:
    """``y = x - log(sum(exp(x)))`` along ``axis``.

    Backward: ``dL/dx = g - softmax(x) sum(g)``, and ``softmax(x) = exp(y)``.
    """
    x = as_tensor(x)
    y = log_softmax_array(x.data, axis)

    def backward(g):
        return (g - xp_of(y).exp(y) * g.sum(axis=axis, keepdims=True),)

    return Tensor.from_op(y, (x,), backward, "log_softmax")


# ---------------------------------------------------------------------------
# cross-entropy
# ---------------------------------------------------------------------------


@replaceable
def cross_entropy(logits, target, label_smoothing=0.0, reduction="mean") -> Tensor:
    """Cross-entropy between ``softmax(logits)`` and the targets.

    ``logits`` is ``(B, C)``. ``target`` is either ``B`` integer classes or a
    ``(B, C)`` array of class probabilities (for mixup and cutmix). With label
    smoothing ``e`` the target becomes ``p = (1 - e) * target + e / C``.
    ``reduction``: ``"mean"`` over the batch (the default), ``"sum"`` or ``"none"``.

    The loss of example b is ``-sum_c p_bc log_softmax(logits_b)_c``; its
    gradient with respect to the logits is ``softmax(logits_b) sum_c p_bc - p_b``
    (``softmax - p`` when the targets sum to one).
    """
    logits, probs = check_cross_entropy(logits, target, label_smoothing, reduction)
    xp = xp_of(logits.data)
    batch, classes = logits.shape
    if label_smoothing:
        probs = probs * (1.0 - label_smoothing) + label_smoothing / classes
    logp = log_softmax_array(logits.data, axis=1)  # (B, C)
    per_example = -(probs * logp).sum(axis=1)  # (B,)
    if reduction == "mean":
        loss = xp.asarray(per_example.mean(), dtype=logits.dtype)
    elif reduction == "sum":
        loss = xp.asarray(per_example.sum(), dtype=logits.dtype)
    else:
        loss = per_example

    def backward(g):
        grad = xp.exp(logp) * probs.sum(axis=1, keepdims=True) - probs  # (B, C)
        if reduction == "none":
            return (grad * g[:, None],)
        return (grad * (g / batch if reduction == "mean" else g),)

    return Tensor.from_op(loss, (logits,), backward, "cross_entropy")


# ---------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------


@replaceable
def layer_norm(x, weight=None, bias=None, eps=1e-6) -> Tensor:
    """Normalize the last axis to zero mean and unit variance, then scale and shift.

    ``y = xhat * weight + bias`` with ``xhat = (x - mean) * r`` and
    ``r = 1 / sqrt(var + eps)``, the mean and the biased variance taken over
    the last axis. The ViT paper's LN (Eq. 2-4); eps 1e-6 as in the official
    code and timm.

    Backward. With ``g`` the gradient of ``y`` and ``h = g * weight`` the
    gradient reaching ``xhat``, and means over the last axis:

        dL/dx      = r * (h - mean(h) - xhat * mean(h * xhat))
        dL/dweight = sum of g * xhat over every row
        dL/dbias   = sum of g over every row

    In ``dL/dx``, ``h`` is the direct path through ``x``, ``mean(h)`` the path
    through the mean and ``xhat * mean(h * xhat)`` the path through the
    variance.
    """
    x, weight, bias = check_layer_norm(x, weight, bias)
    xp = xp_of(x.data)
    mean = x.data.mean(axis=-1, keepdims=True)  # (..., 1)
    centered = x.data - mean  # (..., D)
    var = (centered * centered).mean(axis=-1, keepdims=True)  # (..., 1), biased
    r = 1.0 / xp.sqrt(var + eps)  # (..., 1)
    xhat = centered * r  # (..., D)
    y = xhat
    if weight is not None:
        y = y * weight.data
    if bias is not None:
        y = y + bias.data

    def backward(g):
        rows = tuple(range(x.ndim - 1))  # every axis but the last
        h = g * weight.data if weight is not None else g
        mean_h = h.mean(axis=-1, keepdims=True)  # (..., 1)
        mean_hx = (h * xhat).mean(axis=-1, keepdims=True)  # (..., 1)
        gx = r * (h - mean_h - xhat * mean_hx)  # (..., D)
        gw = (g * xhat).sum(axis=rows) if weight is not None and weight.requires_grad else None
        gb = g.sum(axis=rows) if bias is not None and bias.requires_grad else None
        return gx, gw, gb

    return Tensor.from_op(y, (x, weight, bias), backward, "layer_norm")


# ---------------------------------------------------------------------------
# GELU
# ---------------------------------------------------------------------------

@replaceable
def gelu(x, approximate="none") -> Tensor:
    """Gaussian Error Linear Unit, ``y = x Phi(x)``, ``Phi`` the Gaussian CDF (Eq. 3's MLP).

    ``approximate="none"``: ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``, computed by
    ``special.normal_cdf`` from the package's one ``erf`` fit without the
    cancellation of ``1 + erf`` in the left tail (within 1e-9 in float64),
    in every dtype. The derivative is ``Phi(x) + x phi(x)``, with
    ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)`` the Gaussian density.

    ``approximate="tanh"``: ``Phi(x) ~ (1 + t) / 2`` with ``t = tanh(u)``,
    ``u = sqrt(2/pi) (x + 0.044715 x^3)``, the form of the original ViT code;
    the derivative is ``(1 + t) / 2 + x (1 - t^2) u' / 2``, with
    ``u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)``.
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', not {approximate!r}")
    x = as_tensor(x)
    xp, a = xp_of(x.data), x.data
    if approximate == "none":
        cdf = normal_cdf(a)  # Phi(x) = (1 + erf(x / sqrt 2)) / 2
        y = a * cdf
    else:
        t = xp.tanh(SQRT_2_OVER_PI * (a + TANH_CUBIC * a * a * a))
        y = 0.5 * a * (1.0 + t)

    def backward(g):
        if approximate == "none":
            pdf = xp.exp(-0.5 * a * a) * (1.0 / math.sqrt(2.0 * math.pi))  # phi(x)
            return (g * (cdf + a * pdf),)
        du = SQRT_2_OVER_PI * (1.0 + 3.0 * TANH_CUBIC * a * a)
        return (g * (0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * du),)

    return Tensor.from_op(y, (x,), backward, "gelu")


# ---------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------


def attention_arrays(q, k, v, scale):
    """Eq. 6-7 on arrays: ``A = softmax(q k^T * scale)``, ``out = A v``; returns ``(out, A)``.

    ``q`` is ``(..., N, d)``, ``k`` ``(..., M, d)``, ``v`` ``(..., M, dv)``.
    """
    scores = q @ k.swapaxes(-1, -2) * scale  # (..., N, M)
    A = softmax_array(scores, axis=-1)  # (..., N, M), each row sums to 1: Eq. 6
    return A @ v, A  # (..., N, dv): Eq. 7


def attention_backward_arrays(g, q, k, v, A, scale):
    """The gradients of ``q, k, v`` from the gradient ``g`` of ``A v``.

    ``dV = A^T g``; ``dA = g V^T``; through the softmax,
    ``dS = A * (dA - sum(dA * A))`` row by row; through the scaled product,
    ``dQ = scale dS K`` and ``dK = scale dS^T Q``.
    """
    dv = A.swapaxes(-1, -2) @ g  # (..., M, dv)
    dA = g @ v.swapaxes(-1, -2)  # (..., N, M)
    dS = A * (dA - (dA * A).sum(axis=-1, keepdims=True)) * scale  # (..., N, M)
    dq = dS @ k  # (..., N, d)
    dk = dS.swapaxes(-1, -2) @ q  # (..., M, d)
    return dq, dk, dv


@replaceable
def scaled_dot_product_attention(q, k, v, scale=None, need_weights=False):
    """Softmax attention, Eq. 6-7 of Appendix A: ``softmax(q k^T / sqrt(D_h)) v``.

    ``q`` is ``(B, heads, N, head_dim)``, ``k`` ``(B, heads, M, head_dim)``
    and ``v`` ``(B, heads, M, head_dim_v)``; any number of leading axes works.
    ``scale`` defaults to ``1 / sqrt(head_dim)``. With ``need_weights=True``
    returns ``(out, attn)``, ``attn`` being the ``(B, heads, N, M)`` array of
    attention probabilities (a plain array, for looking at). The backward is
    ``attention_backward_arrays``.
    """
    q, k, v = check_attention(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out, A = attention_arrays(q.data, k.data, v.data, scale)

    def backward(g):
        return attention_backward_arrays(g, q.data, k.data, v.data, A, scale)

    result = Tensor.from_op(out, (q, k, v), backward, "attention")
    return (result, A) if need_weights else result


@replaceable
def self_attention(qkv, heads, need_weights=False):
    """Multi-head self-attention on the packed projections of Eq. 5, for every head at once.

    ``qkv`` is the ``(B, N, 3D)`` output of the ``qkv`` projection ``z U_qkv``
    (Eq. 5): queries, keys and values side by side, each cut into ``heads``
    heads of ``D_h = D / heads``. Each head attends with its own ``q, k, v``
    (Eq. 6-7); the heads' outputs come back side by side, ``(B, N, D)``, the
    ``[SA_1(z); ...; SA_k(z)]`` that Eq. 8 projects with ``U_msa``. With
    ``need_weights=True`` returns ``(out, attn)``, ``attn`` ``(B, heads, N, N)``.
    """
    qkv = check_self_attention(qkv, heads)
    xp = xp_of(qkv.data)
    B, N, three_d = qkv.shape
    head_dim = three_d // (3 * heads)
    scale = 1.0 / math.sqrt(head_dim)
    q, k, v = qkv.data.reshape(B, N, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
    # q, k, v: each (B, heads, N, D_h)
    out, A = attention_arrays(q, k, v, scale)  # (B, heads, N, D_h), (B, heads, N, N)
    joined = out.transpose(0, 2, 1, 3).reshape(B, N, heads * head_dim)  # (B, N, D)

    def backward(g):
        g = g.reshape(B, N, heads, head_dim).transpose(0, 2, 1, 3)  # (B, heads, N, D_h)
        dq, dk, dv = attention_backward_arrays(g, q, k, v, A, scale)
        dqkv = xp.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4)  # (B, N, 3, heads, D_h)
        return (dqkv.reshape(B, N, three_d),)

    result = Tensor.from_op(joined, (qkv,), backward, "self_attention")
    return (result, A) if need_weights else result


# ---------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------


@replaceable
def dropout(x, p=0.5, training=True, generator=None) -> Tensor:
    """Zero each entry with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    Only while ``training``; otherwise ``x`` passes through. ``generator`` is
    a random generator of ``x``'s device (``backend.new_generator(seed,
    device)``); by default the device's shared one, seeded by
    ``backend.manual_seed``. The same seed gives the same masks, each image
    its own however many processes share the batch (``backend.batch_shard``).
    Backward: the same mask times the gradient.
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
        keep = (rng.batch_random(x.shape, dtype=x.dtype) >= p).astype(x.dtype) * (1.0 / (1.0 - p))
    return Tensor.from_op(x.data * keep, (x,), lambda g: (g * keep,), "dropout")


@replaceable
def patch_dropout(x, p=0.5, training=True, generator=None, num_prefix_tokens=1) -> Tensor:
    """Keep a random ``1 - p`` of each sequence's patch tokens (PatchDropout, Liu et al. 2022).

    ``x`` is ``(B, T, D)``: ``num_prefix_tokens`` tokens (the class token)
    that are always kept, then ``N = T - num_prefix_tokens`` patch tokens, of
    which ``K = max(1, int(N (1 - p)))`` are kept, a different random set for
    each sequence, in their original order. Returns ``(B, num_prefix_tokens + K,
    D)``: the blocks after it do ``K / N`` of the work. Use it after the
    position embeddings are added, so each kept token still says where it
    was. Only while ``training``; ``generator`` as for ``dropout``.

    Backward: each kept token's gradient goes back to the position it was
    taken from; a dropped token gets zero.
    """
    checks.FRACTION.check("patch_dropout: p", p)
    x = as_tensor(x)
    if not training or p == 0.0:
        return x
    if x.ndim != 3 or not 0 <= num_prefix_tokens < x.shape[1]:
        raise ValueError(
            f"patch_dropout: x must be (B, T, D) with more than num_prefix_tokens "
            f"({num_prefix_tokens}) tokens, got shape {x.shape}"
        )
    xp = xp_of(x.data)
    B, T, _ = x.shape
    keep = max(1, int((T - num_prefix_tokens) * (1.0 - p)))
    rng = generator if generator is not None else backend.default_generator(x.device)
    chosen = xp.argsort(rng.batch_random((B, T - num_prefix_tokens)), axis=1)[:, :keep]  # (B, K)
    prefix = xp.broadcast_to(xp.arange(num_prefix_tokens), (B, num_prefix_tokens))
    index = xp.concatenate([prefix, xp.sort(chosen, axis=1) + num_prefix_tokens], axis=1)
    rows = xp.arange(B)[:, None]  # (B, 1): with index (B, prefix + K), picks tokens per row

    def backward(g):
        gx = xp.zeros(x.shape, dtype=g.dtype)
        gx[rows, index] = g  # every kept position appears once per row: no sums needed
        return (gx,)

    return Tensor.from_op(x.data[rows, index], (x,), backward, "patch_dropout")


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
    "patch_dropout",
]
