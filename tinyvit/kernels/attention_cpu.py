"""The attention of Eq. 5-7 on the CPU: NumPy's products, the loops' softmax, a few
images at a time on each core.

Attention multiplies one small matrix pair per image and head (65 x 64 by 64
x 65 for the D 192 CIFAR model), far too small for OpenBLAS to share among
the cores. So the stack of images is cut into blocks of about half a
megabyte of attention matrix (``cpu_runtime.in_blocks``), each core takes a
part of the blocks, and for each block it runs the whole op: the products of
its images (``np.matmul``, which lets go of the interpreter's lock) and the
softmax or its backward (``cpu.softmax_rows``, compiled with ``nogil``). A
block's matrices are still in the core's cache when the next product reads
them. The softmax reads the scores from a scratch array and writes the
attention matrix: in place, its loop would find the two overlapping and run
unvectorized (``cpu.py``'s fourth rule).
"""

from __future__ import annotations

import math

import numpy as np

from .. import dispatch
from ..op_checks import check_attention, check_self_attention
from ..tensor import Tensor
from .cpu import LOOP_DTYPES, softmax_backward_rows, softmax_rows
from .cpu_runtime import in_blocks, start_numba_threads


def _attention(q, k, v, out, scale):
    """``attn = softmax(scale q k^T)`` (returned, ``(S, ..., N, M)``) and ``out = attn v``,
    block by block of the first axis: a block's ``attn`` is still in the core's cache
    when the second product reads it."""
    attn = np.empty((*q.shape[:-1], k.shape[-2]), dtype=q.dtype)  # (S, ..., N, M), C order

    def block(s):
        a = attn[s]
        scores = np.matmul(q[s], np.swapaxes(k[s], -1, -2), out=np.empty_like(a))
        softmax_rows(scores.reshape(-1, a.shape[-1]), a.reshape(-1, a.shape[-1]), scale)  # Eq. 6
        np.matmul(a, v[s], out=out[s])  # Eq. 7: (b, ..., N, dv)

    in_blocks(block, attn)
    return attn


def _attention_backward(g, q, k, v, attn, scale, gq, gk, gv):
    """``dV = A^T g``; ``dS = scale A (g V^T - rowsum)``; ``dQ = dS K``, ``dK = dS^T Q``,
    block by block as the forward."""

    def block(s):
        a = attn[s]
        np.matmul(np.swapaxes(a, -1, -2), g[s], out=gv[s])
        da = np.matmul(g[s], np.swapaxes(v[s], -1, -2), out=np.empty_like(a))  # dA
        ds = np.empty_like(a)
        rows = (-1, a.shape[-1])
        softmax_backward_rows(a.reshape(rows), da.reshape(rows), ds.reshape(rows), scale)
        np.matmul(ds, k[s], out=gq[s])
        np.matmul(np.swapaxes(ds, -1, -2), q[s], out=gk[s])

    in_blocks(block, attn)


def scaled_dot_product_attention(q, k, v, scale=None, need_weights=False):
    q, k, v = check_attention(q, k, v)
    if q.dtype not in LOOP_DTYPES:
        return dispatch.reference("scaled_dot_product_attention")(q, k, v, scale, need_weights)
    start_numba_threads()
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    lead = q.shape[:-2]
    q3, k3, v3 = (t.data.reshape(-1, *t.shape[-2:]) for t in (q, k, v))  # (S, ., .)
    out = np.empty((*q3.shape[:-1], v.shape[-1]), dtype=q.dtype)  # (S, N, dv)
    attn = _attention(q3, k3, v3, out, scale)  # (S, N, M)

    def backward(g):
        grads = [np.empty(t.shape, dtype=t.dtype) for t in (q3, k3, v3)]
        g3 = g.reshape(out.shape)
        _attention_backward(g3, q3, k3, v3, attn, scale, *grads)
        return tuple(
            a.reshape(t.shape) if t.requires_grad else None for a, t in zip(grads, (q, k, v))
        )

    result = Tensor.from_op(out.reshape(*lead, *out.shape[1:]), (q, k, v), backward, "attention")
    return (result, attn.reshape(*lead, *attn.shape[1:])) if need_weights else result


def self_attention(qkv, heads, need_weights=False):
    """The packed form without copies: ``q, k, v`` are strided views of ``qkv``, the
    heads' outputs are written straight into ``(B, N, heads, D_h)`` order, and the
    backward writes the three gradients straight into one ``(B, N, 3D)`` array."""
    qkv = check_self_attention(qkv, heads)
    if qkv.dtype not in LOOP_DTYPES:
        return dispatch.reference("self_attention")(qkv, heads, need_weights)
    start_numba_threads()
    B, N, three_d = qkv.shape
    head_dim = three_d // (3 * heads)
    scale = qkv.dtype.type(1.0 / math.sqrt(head_dim))
    split = qkv.data.reshape(B, N, 3, heads, head_dim)  # a view when qkv is contiguous

    def heads_first(a, i):  # (B, N, ., heads, D_h) -> (B, heads, N, D_h), a view
        return a[:, :, i].transpose(0, 2, 1, 3)

    q, k, v = (heads_first(split, i) for i in range(3))
    out = np.empty((B, N, heads, head_dim), dtype=qkv.dtype)  # heads side by side
    attn = _attention(q, k, v, out.transpose(0, 2, 1, 3), scale)  # (B, heads, N, N)

    def backward(g):
        grad = np.empty((B, N, 3, heads, head_dim), dtype=qkv.dtype)
        g4 = g.reshape(B, N, heads, head_dim).transpose(0, 2, 1, 3)  # (B, heads, N, D_h)
        _attention_backward(g4, q, k, v, attn, scale, *(heads_first(grad, i) for i in range(3)))
        return (grad.reshape(B, N, three_d),)

    result = Tensor.from_op(out.reshape(B, N, three_d // 3), (qkv,), backward, "self_attention")
    return (result, attn) if need_weights else result


KERNELS = {
    "scaled_dot_product_attention": scaled_dot_product_attention,
    "self_attention": self_attention,
}
