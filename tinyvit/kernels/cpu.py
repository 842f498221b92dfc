"""CPU kernels: ops of ``functional.py`` as loops that numba compiles, one pass over memory.

NumPy runs an expression one operation at a time, and each operation is a
pass over its whole array: the exact GELU with its derivative reads and
writes the MLP's activation about twenty times, LayerNorm about ten. A
kernel here is the same maths as its reference, written as a loop whose
every iteration does all of the op's work on one row (or one element)
while it sits in registers: one pass over memory. numba compiles each loop
to machine code for this CPU the first time it is called, vectorizes its
inner loops (SIMD), and ``prange`` shares its iterations among a thread per
core. ``cache=True`` keeps the machine code in ``__pycache__`` beside this
file, so a machine compiles once. numba checks that cache against this
file only, which is why everything it compiles lives here; the constants
it takes from ``special.py`` are frozen into the machine code, and the
tests compare them with the reference's (after changing them, delete
``tinyvit/kernels/__pycache__``).

One iteration of a ``prange`` loop is what one thread of a CUDA kernel
would do: the rows are independent, each writes only its own output.
Where rows must be added together (LayerNorm's weight gradient), each part
of the rows sums its own, and the parts are added afterwards in a fixed
order, so the result does not depend on the number of threads.

Four rules keep the loops vectorized and exact:

* **No library calls for e^x.** numba from PyPI has no vector math library,
  so ``math.exp`` in a loop is one scalar call per element and stops the
  vectorizer. ``exp_nonpositive`` writes e^x out: range reduction, a Taylor
  series, and 2^k made from its bits, its relative error below the float's
  epsilon (tested).
* **Literals in the input's precision.** numba types ``0.5`` as float64 and
  would do float32 arithmetic in float64, at half the vector width: every
  constant is cast with ``real = x.dtype.type`` first.
* **fastmath only where its effect is bounded.** ``contract`` lets ``a * b + c``
  round once instead of twice (never less accurate); ``reassoc`` lets a row
  sum be added in vector lanes, in another order than left to right: every
  order has the same error bound, ``(n - 1) u sum |x_i|``. The tests hold
  each kernel to its reference within it. AdamW's update uses neither, and
  equals its reference to the bit.
* **Outputs apart from inputs.** numba cannot know whether two arrays share
  memory, so a vectorized loop first checks at run time that its output
  does not overlap what it reads, and where it does (a softmax written over
  its input) runs its scalar version instead, several times slower. A loop
  here reads one array and writes another.

Each op starts numba's threads before its first loop, once, told to sleep
when idle (``cpu_runtime.start_numba_threads``): OpenBLAS needs the cores
between the loops. The matrix products stay with NumPy (OpenBLAS): ``linear``
leaves only its bias, added and summed, to loops, and the attention
(``attention_cpu.py``) hands its products to NumPy and its softmax, scale and
row sums to ``softmax_rows`` and ``softmax_backward_rows``. ``KERNELS`` maps
each op's name to its kernel; ``kernels/__init__.py`` registers them for the
``"cpu"`` device. A kernel
imports nothing from ``functional``: the argument checks come from
``op_checks``, the cases it leaves to the reference (softmax along another
axis, float16) from ``dispatch.reference``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .. import dispatch
from ..op_checks import check_cross_entropy, check_layer_norm, check_linear
from ..special import ERF_COEFFICIENTS, ERF_P, SQRT_2_OVER_PI, TANH_CUBIC
from ..tensor import Tensor, as_tensor
from .cpu_runtime import start_numba_threads

ELEMENTWISE = {"contract"}  # a * b + c rounded once (a fused multiply-add)
ROW_SUMS = {"contract", "reassoc"}  # ...and sums added in vector lanes

# e^t = 2^k e^r with t = k ln 2 + r: ln 2 in two parts, the first with 9 significant
# bits so that k * LN2_HI is exact for every k an exponent can hold
LN2_HI = 0.693359375
LN2_LO = -2.1219444005469058277e-4  # ln 2 - LN2_HI
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
ROWS_PER_PART = 64  # rows summed by one iteration, for the sums over rows
ADD_ON_CORES = 1 << 16  # fewer elements than this: NumPy adds them on one core, sooner
NORMAL_CDF_FLOAT32_ERROR = 1.2e-7  # max |Phi - normal_cdf_and_gauss| in float32, tested
# R(s) of the float32 Gaussian CDF below, c0 .. c9 (fit_gauss_tail_coefficients refits c1 ..)
GAUSS_TAIL_COEFFICIENTS = (
    0.5,
    -0.9104745035862861,
    0.8040713604439419,
    -0.23364096616173124,
    -0.13267693628194646,
    0.05885214279056429,
    0.05411062719530996,
    -0.0061673343666551195,
    -0.036750872714463735,
    0.015532812824494684,
)
GAUSS_TAIL_DEGREE = len(GAUSS_TAIL_COEFFICIENTS) - 1


# ---------------------------------------------------------------------------
# the scalar maths of the loops: e^t, Phi(x), tanh(u)
# ---------------------------------------------------------------------------


def exp_nonpositive(t):
    """``e^t`` for ``t <= 0``; in Python, ``math.exp``. In a loop, numba compiles the body
    that ``_exp_nonpositive_for`` below returns for the type of ``t``."""
    return math.exp(t)


@overload(exp_nonpositive, jit_options={"fastmath": ELEMENTWISE})
def _exp_nonpositive_for(t):
    """``e^t`` for ``t <= 0`` in ``t``'s precision, relative error below its epsilon, in
    a form a loop can vectorize; 0 where ``e^t`` is below the smallest normal number.

    With ``k`` the integer nearest ``t / ln 2`` and ``r = t - k ln 2`` (so
    ``|r| <= ln 2 / 2``), ``e^t = 2^k e^r``: ``e^r`` by its Taylor series (to
    ``r^7 / 7!`` for float32, ``r^13 / 13!`` for float64), and ``2^k`` written
    straight into the bits of a float, whose exponent field holds ``k + 127``
    (float32) or ``k + 1023`` (float64). numba calls this once per type of ``t``
    and compiles the function it returns, with these constants in it.
    """
    single = t == types.float32
    real, bits = (np.float32, np.int32) if single else (np.float64, np.int64)
    mantissa, bias = (23, 127) if single else (52, 1023)
    taylor = tuple(real(1.0 / math.factorial(n)) for n in range(7 if single else 13, -1, -1))
    lowest = real(math.log(np.finfo(real).tiny))
    log2_e, ln2_hi, ln2_lo = real(1.0 / math.log(2.0)), real(LN2_HI), real(LN2_LO)

    def exp_nonpositive_body(t):
        if t < lowest:
            return real(0.0)
        k = np.floor(t * log2_e + real(0.5))
        r = (t - k * ln2_hi) - k * ln2_lo
        p = taylor[0]
        for n in range(1, len(taylor)):  # Horner's rule
            p = p * r + taylor[n]
        return p * bits((bits(k) + bias) << mantissa).view(real)

    return exp_nonpositive_body


def normal_cdf_and_gauss(x):
    """``Phi(x)`` and ``e^(-x^2 / 2)``; in Python, by ``math.erfc``. In a loop, numba
    compiles the body that ``_normal_cdf_and_gauss_for`` below returns for ``x``'s type."""
    return 0.5 * math.erfc(-x * INV_SQRT_2), math.exp(-0.5 * x * x)


@overload(normal_cdf_and_gauss, jit_options={"fastmath": ELEMENTWISE})
def _normal_cdf_and_gauss_for(x):
    """``Phi(x)`` and the Gaussian ``e^(-x^2 / 2)`` (GELU's derivative needs it too), from
    ``Phi(-|x|) = e^(-x^2 / 2) R(a) / (1 + p a)``, ``a = |x| / sqrt 2``, ``p = ERF_P``, and
    ``Phi(|x|) = 1 - Phi(-|x|)``: nothing cancels. ``R`` is smooth, written in the
    reference's variable ``s = p a / (1 + p a)``, which maps ``[0, inf)`` to ``[0, 1)``.

    * float64: ``R(s) = e^Q(s) / 2`` with the reference's erf fit ``Q`` (``special.py``),
      its logarithm turned into the division: the reference to rounding.
    * float32: ``R(s)`` a polynomial of degree 9 fitted to it, ``GAUSS_TAIL_COEFFICIENTS``
      (``fit_gauss_tail_coefficients``): one exponential instead of two, within
      ``NORMAL_CDF_FLOAT32_ERROR`` of ``Phi``, as the reference's own float32 erf is.
    """
    single = x == types.float32
    real = np.float32 if single else np.float64
    a_to_pa = real(INV_SQRT_2 * ERF_P)
    fit = GAUSS_TAIL_COEFFICIENTS if single else ERF_COEFFICIENTS
    fit = tuple(real(c) for c in fit[::-1])  # highest power first, for Horner's rule

    def normal_cdf_and_gauss_body(x):
        pa = abs(x) * a_to_pa
        inverse = real(1.0) / (pa + real(1.0))
        s = pa * inverse
        r = fit[0]
        for n in range(1, len(fit)):
            r = r * s + fit[n]
        if not single:  # r = Q(s) / s, the reference's fit: R = e^Q / 2
            r = real(0.5) * exp_nonpositive(r * s)
        gauss = exp_nonpositive(real(-0.5) * x * x)
        tail = gauss * r * inverse  # Phi(-|x|)
        return (tail if x < real(0.0) else real(1.0) - tail), gauss

    return normal_cdf_and_gauss_body


def fit_gauss_tail_coefficients(degree=GAUSS_TAIL_DEGREE) -> np.ndarray:
    """Refit ``R(s) = 1/2 + c1 s + ... + c_degree s^degree`` (``R(0) = 1/2`` exactly, so
    ``Phi(0) = 1/2``) by least squares on its relative error, against ``math.erfc``.

    On 60,000 points of ``a`` in ``[0, 13.5]``, where ``e^(-x^2 / 2)`` still is a
    float32; further out ``Phi(-|x|)`` is 0 in float32. Returns ``c1 .. c_degree``.
    """
    a = np.concatenate(
        [np.linspace(0, 2, 20000), np.linspace(2, 6, 20000), np.linspace(6, 13.5, 20000)]
    )
    pa = a * (INV_SQRT_2 * ERF_P)
    s = pa / (1.0 + pa)
    tail = np.array([0.5 * math.erfc(v * INV_SQRT_2) for v in a])
    r = tail * (1.0 + pa) / np.exp(-0.5 * a * a)  # R(s), the target
    powers = s[:, None] ** np.arange(1, degree + 1) / r[:, None]  # (points, degree)
    coefficients, *_ = np.linalg.lstsq(powers, 1.0 - 0.5 / r, rcond=None)
    return coefficients


@njit(inline="always", fastmath=ELEMENTWISE)
def gelu_and_slope(x):
    """``x Phi(x)`` and its derivative ``Phi(x) + x phi(x)``, with the Gaussian density
    ``phi(x) = e^(-x^2 / 2) / sqrt(2 pi)``."""
    real = type(x)
    cdf, gauss = normal_cdf_and_gauss(x)
    return x * cdf, cdf + x * (gauss * real(INV_SQRT_2PI))


@njit(inline="always", fastmath=ELEMENTWISE)
def gelu_tanh_and_slope(x):
    """The tanh form ``x (1 + t) / 2``, ``t = tanh(u)``, ``u = sqrt(2/pi) (x + c x^3)`` with
    ``c = 0.044715``, and its derivative ``(1 + t) / 2 + x (1 - t^2) u' / 2``; ``tanh(u)``
    as ``(1 - e) / (1 + e)``, ``e = e^(-2|u|)``, with the sign of ``u``."""
    real = type(x)
    u = real(SQRT_2_OVER_PI) * (x + real(TANH_CUBIC) * x * x * x)
    e = exp_nonpositive(real(-2.0) * abs(u))
    t = (real(1.0) - e) / (real(1.0) + e)
    t = t if u >= real(0.0) else -t
    du = real(SQRT_2_OVER_PI) * (real(1.0) + real(3.0 * TANH_CUBIC) * x * x)
    half_x = real(0.5) * x
    return half_x * (real(1.0) + t), real(0.5) * (real(1.0) + t) + half_x * (real(1.0) - t * t) * du


# ---------------------------------------------------------------------------
# the loops
# ---------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=ELEMENTWISE)
def gelu_loop(x, y, slope):
    """``y = x Phi(x)`` and its derivative ``slope``, element by element."""
    for i in prange(x.size):
        y[i], slope[i] = gelu_and_slope(x[i])


@njit(parallel=True, cache=True, fastmath=ELEMENTWISE)
def gelu_tanh_loop(x, y, slope):
    """The tanh form, ``y`` and its derivative ``slope``."""
    for i in prange(x.size):
        y[i], slope[i] = gelu_tanh_and_slope(x[i])


@njit(parallel=True, cache=True)
def multiply_loop(a, b, out):
    """``out = a * b``, element by element."""
    for i in prange(a.size):
        out[i] = a[i] * b[i]


@njit(parallel=True, cache=True)
def add_loop(a, b, out):
    """``out = a + b``, element by element."""
    for i in prange(a.size):
        out[i] = a[i] + b[i]


@njit(parallel=True, cache=True)
def add_bias_loop(y, bias):
    """``y += bias`` on every row: the linear layer's bias, added where the product left it."""
    rows, n = y.shape
    for i in prange(rows):
        for j in range(n):
            y[i, j] += bias[j]


@njit(parallel=True, cache=True, fastmath=ROW_SUMS)
def column_sums_loop(g, parts):
    """``parts[p]`` = the sum of rows ``p * ROWS_PER_PART ...`` of ``g``: the bias's gradient
    in parts, one per iteration, added afterwards in a fixed order."""
    rows, n = g.shape
    real = g.dtype.type
    for part in prange(parts.shape[0]):
        parts[part, :] = real(0.0)
        for i in range(part * ROWS_PER_PART, min(rows, (part + 1) * ROWS_PER_PART)):
            for j in range(n):
                parts[part, j] += g[i, j]


@njit(nogil=True, cache=True, fastmath=ROW_SUMS)
def softmax_rows(x, y, scale):
    """``y = softmax(scale x)`` row by row, on the calling thread: the rows' maxima, then in
    each row ``e = exp(scale x - max)`` and its sum, then ``e / sum``. (``y`` may be ``x``,
    and the result is the same, but the loop then runs unvectorized: the fourth rule.)

    The maxima come first, in a loop of their own: a running maximum is a chain
    in which each step waits for the one before, and with every row's chain
    in one loop the CPU runs several rows' chains at once.
    """
    rows, n = x.shape
    real = x.dtype.type
    top = np.empty(rows, dtype=x.dtype)
    for i in range(rows):
        largest = scale * x[i, 0]
        for j in range(1, n):
            largest = max(largest, scale * x[i, j])
        top[i] = largest
    for i in range(rows):
        total = real(0.0)
        for j in range(n):
            e = exp_nonpositive(scale * x[i, j] - top[i])
            y[i, j] = e
            total += e
        inverse = real(1.0) / total
        for j in range(n):
            y[i, j] *= inverse


@njit(nogil=True, cache=True, fastmath=ROW_SUMS)
def softmax_backward_rows(y, g, gx, scale):
    """``gx = y (g - sum(g y)) scale`` row by row, on the calling thread (``gx`` may be ``g``,
    unvectorized, as in ``softmax_rows``)."""
    rows, n = y.shape
    real = y.dtype.type
    for i in range(rows):
        total = real(0.0)
        for j in range(n):
            total += g[i, j] * y[i, j]
        for j in range(n):
            gx[i, j] = y[i, j] * (g[i, j] - total) * scale


@njit(parallel=True, cache=True)
def softmax_loop(x, y, scale):
    """``softmax_rows`` on every core, each iteration ``ROWS_PER_PART`` rows."""
    rows = x.shape[0]
    for part in prange(-(-rows // ROWS_PER_PART)):
        lo, hi = part * ROWS_PER_PART, min(rows, (part + 1) * ROWS_PER_PART)
        softmax_rows(x[lo:hi], y[lo:hi], scale)


@njit(parallel=True, cache=True)
def softmax_backward_loop(y, g, gx, scale):
    """``softmax_backward_rows`` on every core, each iteration ``ROWS_PER_PART`` rows."""
    rows = y.shape[0]
    for part in prange(-(-rows // ROWS_PER_PART)):
        lo, hi = part * ROWS_PER_PART, min(rows, (part + 1) * ROWS_PER_PART)
        softmax_backward_rows(y[lo:hi], g[lo:hi], gx[lo:hi], scale)


@njit(parallel=True, cache=True, fastmath=ROW_SUMS)
def layer_norm_loop(x, weight, bias, eps, y, mean, rstd):
    """Row by row: the mean, ``r = 1 / sqrt(var + eps)``, ``y = (x - mean) r weight + bias``;
    keeps ``mean`` and ``rstd = r`` for the backward."""
    rows, dim = x.shape
    real = x.dtype.type
    for i in prange(rows):
        total = real(0.0)
        for j in range(dim):
            total += x[i, j]
        mu = total / real(dim)
        squares = real(0.0)
        for j in range(dim):
            squares += (x[i, j] - mu) * (x[i, j] - mu)
        r = real(1.0) / np.sqrt(squares / real(dim) + eps)
        for j in range(dim):
            y[i, j] = (x[i, j] - mu) * r * weight[j] + bias[j]
        mean[i], rstd[i] = mu, r


@njit(parallel=True, cache=True, fastmath=ROW_SUMS)
def layer_norm_backward_loop(g, x, weight, mean, rstd, gx, gw_parts, gb_parts):
    """Row by row, with ``xhat = (x - mean) r`` made again and ``h = g weight``:
    ``gx = r (h - mean(h) - xhat mean(h xhat))``; each part of ``ROWS_PER_PART`` rows
    adds its ``g xhat`` and ``g`` into its own row of ``gw_parts`` and ``gb_parts``."""
    rows, dim = x.shape
    real = x.dtype.type
    for part in prange(gw_parts.shape[0]):
        gw_parts[part, :] = real(0.0)
        gb_parts[part, :] = real(0.0)
        for i in range(part * ROWS_PER_PART, min(rows, (part + 1) * ROWS_PER_PART)):
            sum_h, sum_hx = real(0.0), real(0.0)
            for j in range(dim):
                xhat = (x[i, j] - mean[i]) * rstd[i]
                sum_h += g[i, j] * weight[j]
                sum_hx += g[i, j] * weight[j] * xhat
                gw_parts[part, j] += g[i, j] * xhat
                gb_parts[part, j] += g[i, j]
            mean_h, mean_hx = sum_h / real(dim), sum_hx / real(dim)
            for j in range(dim):
                xhat = (x[i, j] - mean[i]) * rstd[i]
                gx[i, j] = rstd[i] * (g[i, j] * weight[j] - mean_h - xhat * mean_hx)


@njit(cache=True, fastmath=ROW_SUMS)
def cross_entropy_loop(logits, probs, smoothing, losses, grad):
    """Row by row (one example each; too few for threads): with ``p = (1 - e) probs + e / C``,
    ``logp = x - max - log(sum(exp(x - max)))``, ``loss = -sum(p logp)`` and the gradient
    ``softmax(x) sum(p) - p``."""
    batch, classes = logits.shape
    real = logits.dtype.type
    keep, spread = real(1.0 - smoothing), real(smoothing / classes)
    for b in range(batch):
        top = logits[b, 0]
        for c in range(1, classes):
            top = max(top, logits[b, c])
        total = real(0.0)
        for c in range(classes):
            total += exp_nonpositive(logits[b, c] - top)
        log_total = real(math.log(total))
        loss, mass = real(0.0), real(0.0)
        for c in range(classes):
            p = probs[b, c] * keep + spread if smoothing else probs[b, c]
            loss -= p * ((logits[b, c] - top) - log_total)
            mass += p
            grad[b, c] = p  # for now: the target
        for c in range(classes):
            softmax = exp_nonpositive((logits[b, c] - top) - log_total)
            grad[b, c] = softmax * mass - grad[b, c]
        losses[b] = loss


@njit(parallel=True, cache=True)
def adamw_loop(param, grad, m, v, decay, beta1, rest1, beta2, rest2, step_size, bias2, eps):
    """AdamW element by element, in the reference's order of operations (so to the bit):
    ``p *= decay``, ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= step_size m / (sqrt(v) bias2 + eps)``; ``rest1 = 1 - b1``, ``rest2 = 1 - b2``."""
    for i in prange(param.size):
        m[i] = m[i] * beta1 + rest1 * grad[i]
        v[i] = v[i] * beta2 + rest2 * (grad[i] * grad[i])
        denominator = np.sqrt(v[i]) * bias2 + eps
        param[i] = param[i] * decay - step_size * (m[i] / denominator)


# ---------------------------------------------------------------------------
# the ops: arrays in the loops' layout, the loops, the backward
# ---------------------------------------------------------------------------

LOOP_DTYPES = (np.float32, np.float64)


def _rows(a):
    """``a`` as a C-contiguous ``(rows, last axis)`` array (a view when it already is)."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def _parts(rows):
    """How many parts of ``ROWS_PER_PART`` rows the sums over ``rows`` rows are made in."""
    return -(-rows // ROWS_PER_PART)


def linear(x, weight, bias=None) -> Tensor:
    """The products stay with NumPy (OpenBLAS); the bias is added, and its gradient summed,
    by loops on every core rather than by NumPy on one."""
    x, weight, bias = check_linear(x, weight, bias)
    if x.dtype not in LOOP_DTYPES:
        return dispatch.reference("linear")(x, weight, bias)
    start_numba_threads()
    x2 = x.data.reshape(-1, x.shape[-1])  # (M, in)
    y = x2 @ weight.data.T  # (M, out)
    if bias is not None:
        add_bias_loop(y, np.ascontiguousarray(bias.data))

    def backward(g):
        g2 = _rows(g)  # (M, out)
        gx = (g2 @ weight.data).reshape(x.shape) if x.requires_grad else None
        gw = g2.T @ x2 if weight.requires_grad else None  # (out, in)
        gb = None
        if bias is not None and bias.requires_grad:
            parts = np.empty((_parts(g2.shape[0]), g2.shape[1]), dtype=g2.dtype)
            column_sums_loop(g2, parts)
            gb = parts.sum(axis=0)  # (out,)
        return gx, gw, gb

    return Tensor.from_op(
        y.reshape(*x.shape[:-1], weight.shape[0]), (x, weight, bias), backward, "linear"
    )


def softmax(x, axis=-1) -> Tensor:
    x = as_tensor(x)
    if axis not in (-1, x.ndim - 1) or x.dtype not in LOOP_DTYPES:
        return dispatch.reference("softmax")(x, axis)  # not rows, or a dtype without loops
    start_numba_threads()
    one = x.dtype.type(1.0)
    y = np.empty(x.shape, dtype=x.dtype)
    softmax_loop(_rows(x.data), y.reshape(-1, x.shape[-1]), one)

    def backward(g):
        gx = np.empty(y.shape, dtype=y.dtype)
        softmax_backward_loop(_rows(y), _rows(g), gx.reshape(-1, y.shape[-1]), one)
        return (gx,)

    return Tensor.from_op(y, (x,), backward, "softmax")


def cross_entropy(logits, target, label_smoothing=0.0, reduction="mean") -> Tensor:
    logits, probs = check_cross_entropy(logits, target, label_smoothing, reduction)
    if logits.dtype not in LOOP_DTYPES:
        return dispatch.reference("cross_entropy")(logits, target, label_smoothing, reduction)
    start_numba_threads()
    batch = logits.shape[0]
    per_example = np.empty(batch, dtype=logits.dtype)  # (B,)
    grad = np.empty(logits.shape, dtype=logits.dtype)  # (B, C): d(sum of losses)/d logits
    cross_entropy_loop(_rows(logits.data), _rows(probs), float(label_smoothing), per_example, grad)
    if reduction == "none":
        loss = per_example
    else:
        total = per_example.mean() if reduction == "mean" else per_example.sum()
        loss = np.asarray(total, dtype=logits.dtype)

    def backward(g):
        if reduction == "none":
            return (grad * g[:, None],)
        return (grad * (g / batch if reduction == "mean" else g),)

    return Tensor.from_op(loss, (logits,), backward, "cross_entropy")


def layer_norm(x, weight=None, bias=None, eps=1e-6) -> Tensor:
    x, weight, bias = check_layer_norm(x, weight, bias)
    if x.dtype not in LOOP_DTYPES:
        return dispatch.reference("layer_norm")(x, weight, bias, eps)
    start_numba_threads()
    real, dim = x.dtype.type, x.shape[-1]
    w = np.ones(dim, x.dtype) if weight is None else np.ascontiguousarray(weight.data)
    b = np.zeros(dim, x.dtype) if bias is None else np.ascontiguousarray(bias.data)
    rows = _rows(x.data)  # (R, D)
    y = np.empty(rows.shape, dtype=x.dtype)
    mean = np.empty(rows.shape[0], dtype=x.dtype)  # (R,)
    rstd = np.empty(rows.shape[0], dtype=x.dtype)  # (R,)
    layer_norm_loop(rows, w, b, real(eps), y, mean, rstd)

    def backward(g):
        parts = _parts(rows.shape[0])
        gx = np.empty(rows.shape, dtype=x.dtype)
        gw_parts = np.empty((parts, dim), dtype=x.dtype)
        gb_parts = np.empty((parts, dim), dtype=x.dtype)
        layer_norm_backward_loop(_rows(g), rows, w, mean, rstd, gx, gw_parts, gb_parts)
        gw = gw_parts.sum(axis=0) if weight is not None and weight.requires_grad else None
        gb = gb_parts.sum(axis=0) if bias is not None and bias.requires_grad else None
        return (gx.reshape(x.shape) if x.requires_grad else None), gw, gb

    return Tensor.from_op(y.reshape(x.shape), (x, weight, bias), backward, "layer_norm")


def gelu(x, approximate="none") -> Tensor:
    """The loop writes the derivative beside ``y`` (every piece of it is at hand; the
    loop's time is arithmetic, not memory) and keeps it instead of ``x``: the
    backward is one product."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', not {approximate!r}")
    x = as_tensor(x)
    if x.dtype not in LOOP_DTYPES:
        return dispatch.reference("gelu")(x, approximate)
    start_numba_threads()
    flat = _flat(x.data)
    y, slope = np.empty(flat.shape, dtype=x.dtype), np.empty(flat.shape, dtype=x.dtype)
    (gelu_loop if approximate == "none" else gelu_tanh_loop)(flat, y, slope)

    def backward(g):
        gx = np.empty(flat.shape, dtype=x.dtype)
        multiply_loop(_flat(g), slope, gx)
        return (gx.reshape(x.shape),)

    return Tensor.from_op(y.reshape(x.shape), (x,), backward, "gelu")


def add_arrays(a, b):
    """``a + b`` on every core, for two arrays of one shape, dtype and C order with at least
    ``ADD_ON_CORES`` elements (residual connections and gradients added up); anything else
    (broadcasting, a number, a small array) is NumPy's ``a + b``."""
    same = isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
    if (
        not same
        or a.dtype not in LOOP_DTYPES
        or a.size < ADD_ON_CORES
        or not (a.flags.c_contiguous and b.flags.c_contiguous)
    ):
        return dispatch.reference("add_arrays")(a, b)
    start_numba_threads()
    out = np.empty(a.shape, dtype=a.dtype)
    add_loop(a.reshape(-1), b.reshape(-1), out.reshape(-1))
    return out


# ---------------------------------------------------------------------------
# AdamW, over an optimizer's whole buffer at once
# ---------------------------------------------------------------------------


def adamw_update(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    """``optim.adamw_update`` as one loop: each element read and written once."""
    if param.dtype not in LOOP_DTYPES:
        return dispatch.reference("adamw_update")(
            param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay
        )
    start_numba_threads()
    real = param.dtype.type
    beta1, beta2 = betas
    step_size = lr / (1.0 - beta1**step)
    bias2 = 1.0 / math.sqrt(1.0 - beta2**step)  # dividing sqrt(v) by sqrt(1 - b2^t)
    adamw_loop(
        param, grad, exp_avg, exp_avg_sq, real(1.0 - lr * weight_decay),
        real(beta1), real(1.0 - beta1), real(beta2), real(1.0 - beta2),
        real(step_size), real(bias2), real(eps),
    )  # fmt: skip


KERNELS = {
    "add_arrays": add_arrays,
    "linear": linear,
    "softmax": softmax,
    "cross_entropy": cross_entropy,
    "layer_norm": layer_norm,
    "gelu": gelu,
    "adamw_update": adamw_update,
}
