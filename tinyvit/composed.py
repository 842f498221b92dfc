"""Softmax, LayerNorm and GELU once more, built from primitive tensor ops.

The teaching versions. ``functional.py`` writes each of these as one op with
a backward derived on paper; here each is a few lines of ``Tensor``
arithmetic, and the autograd engine derives the backward by chaining the
primitives' own. Same values, same gradients (the tests check both), but
more nodes in the graph, more temporaries kept for backward, and slower:
compare them to see what "fusing a backward" buys.
"""

from __future__ import annotations

import math

from .tensor import Tensor, as_tensor


def softmax(x, axis=-1) -> Tensor:
    """``exp(x - max) / sum(exp(x - max))``.

    The shift by the maximum changes nothing mathematically (softmax ignores
    a constant added along ``axis``), so it is detached: no gradient needs to
    flow through it, and none would (its contributions cancel exactly).
    """
    x = as_tensor(x)
    e = (x - x.max(axis=axis, keepdims=True).detach()).exp()
    return e / e.sum(axis=axis, keepdims=True)


def layer_norm(x, weight=None, bias=None, eps=1e-6) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis."""
    x = as_tensor(x)
    centered = x - x.mean(axis=-1, keepdims=True)
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    y = centered / (variance + eps).sqrt()
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def gelu(x, approximate="none") -> Tensor:
    """``x * Phi(x)``: exact with erf, or with the tanh approximation."""
    x = as_tensor(x)
    if approximate == "none":
        return 0.5 * x * (1.0 + (x * (1.0 / math.sqrt(2.0))).erf())
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
        return 0.5 * x * (1.0 + inner.tanh())
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', not {approximate!r}")
