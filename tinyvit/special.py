"""The error function, written here because NumPy has none: the package's one ``erf``.

The exact GELU of the ViT paper's MLP (Eq. 3) is ``x * Phi(x)``, where
``Phi(x) = (1 + erf(x / sqrt(2))) / 2`` is the Gaussian CDF. NumPy ships no
``erf`` and tinyvit takes no SciPy, so this module builds one from ``exp``,
``log1p`` and ``expm1``, which both NumPy and CuPy have.

The idea. For ``x >= 0``, ``erfc(x) = 1 - erf(x)`` falls like ``exp(-x**2)``.
Divide that out, and what is left is smooth and tame on the whole half-line
once it is written in the variable ``s = p*x / (1 + p*x)``, which squeezes
``[0, inf)`` into ``[0, 1)``:

    log erfc(x) = -x**2 - log(1 + p*x) + Q(s),    Q(s) = c1*s + ... + c12*s**12

so that ``erf(x) = -expm1(Q(s) - log1p(p*x) - x**2)``, and ``erf(-x) = -erf(x)``.
Two choices keep float32 accurate as well as float64. ``Q`` has no constant
term, so near ``x = 0`` every term is small and there is no cancellation; and
``1 - exp(.)`` is evaluated as ``-expm1(.)``, which is exact for tiny
arguments. The coefficients ``c1..c12`` (with ``p = 0.4``) come from a least-
squares fit of ``Q`` to ``math.erfc`` on 90,000 points of ``[0, 26]``:
``fit_erf_coefficients()`` below redoes that fit, and the tests check that it
gives these numbers back and that the result is within 1e-9 of ``math.erf``
in float64; in float32 within 1e-7 with correctly rounded ``exp`` and
``log`` (NumPy's), and within 1e-7 plus 2 ulp of the result where each of
them may be 2 ulp off (CUDA's documented bound).

Everything in tinyvit that needs erf takes it from here: ``functional.gelu``
(the reference GELU, in every dtype, through ``normal_cdf``), ``Tensor.erf``
and so ``composed.gelu``.
(The CPU kernel's float32 GELU uses a faster form of the Gaussian CDF with a
stated error bound: ``normal_cdf_and_gauss`` in ``kernels/cpu.py``.)
"""

from __future__ import annotations

import math

import numpy as np

from .backend import xp_of

ERF_P = 0.4
ERF_COEFFICIENTS = (
    -1.8209478922059905,
    -0.0498245836266622,
    0.4489284764613199,
    0.17025623429736778,
    -0.14369148092816023,
    -0.30662374461731307,
    0.4123954612447789,
    -0.9553429122120883,
    1.9230106115978256,
    -1.9102149515784637,
    0.9188129544171687,
    -0.17541504032451868,
)


def log_erfc(ax):
    """``log erfc(ax)`` for ``ax >= 0``, a NumPy or CuPy array: the fit above, in its dtype."""
    xp = xp_of(ax)
    px = ax * ERF_P
    s = px / (px + 1.0)  # in [0, 1)
    # Horner's rule for Q(s) = s * (c1 + s * (c2 + ... + s * c12))
    q = s * ERF_COEFFICIENTS[-1]
    for c in ERF_COEFFICIENTS[-2::-1]:
        q += c
        q *= s
    q -= xp.log1p(px)
    q -= ax * ax
    return q  # log erfc(ax)


def erf(x):
    """The error function of a NumPy or CuPy array, in the array's own dtype."""
    xp = xp_of(x)
    q = log_erfc(xp.abs(x))
    out = xp.expm1(q, out=q)
    out *= -1.0  # erf(|x|) = 1 - erfc(|x|) = -expm1(log erfc(|x|))
    return xp.copysign(out, x, out=out)


def normal_cdf(x):
    """The Gaussian CDF ``Phi(x) = (1 + erf(x / sqrt 2)) / 2`` of an array, in its dtype.

    Written so that nothing cancels. In the left tail ``1 + erf`` is one
    minus almost one: float32 would keep only the first few digits of a
    ``Phi`` of 1e-5. But ``Phi(-|x|) = erfc(|x| / sqrt 2) / 2`` is the
    exponential of the same ``log erfc`` that ``erf`` computes, with no
    subtraction at all; and ``Phi(|x|) = 1 - Phi(-|x|)``.
    """
    xp = xp_of(x)
    tail = xp.exp(log_erfc(xp.abs(x) * (1.0 / math.sqrt(2.0))))
    tail *= 0.5  # Phi(-|x|) = erfc(|x| / sqrt 2) / 2
    return xp.where(x < 0, tail, 1.0 - tail)


# The tanh form of Phi in the original ViT code (GELU's approximate="tanh"), shared by the
# reference GELU and its CPU kernel: Phi(x) ~ (1 + tanh(SQRT_2_OVER_PI (x + TANH_CUBIC x^3))) / 2.
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715


def fit_erf_coefficients(p: float = ERF_P, degree: int = len(ERF_COEFFICIENTS)) -> np.ndarray:
    """Refit ``c1..c_degree`` of ``Q(s)`` by least squares against ``math.erfc``.

    Dense near 0, where erf changes fastest, and out to 26, where erfc
    underflows float64. Returns the coefficients of ``s**1 .. s**degree``.
    """
    x = np.concatenate(
        [np.linspace(0, 1, 30000), np.linspace(1, 6, 30000), np.linspace(6, 26, 30000)]
    )
    s = p * x / (1 + p * x)
    target = np.log([math.erfc(v) for v in x]) + np.log1p(p * x) + x * x
    powers = s[:, None] ** np.arange(1, degree + 1)  # (points, degree)
    coefficients, *_ = np.linalg.lstsq(powers, target, rcond=None)
    return coefficients
