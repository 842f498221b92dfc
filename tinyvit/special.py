"""The error function, written here because NumPy has none.

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
in float64 (1e-7 in float32).
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


def erf(x):
    """The error function of a NumPy or CuPy array, in the array's own dtype."""
    xp = xp_of(x)
    ax = xp.abs(x)
    px = ax * ERF_P
    s = px / (px + 1.0)  # in [0, 1)
    # Horner's rule for Q(s) = s * (c1 + s * (c2 + ... + s * c12))
    q = s * ERF_COEFFICIENTS[-1]
    for c in ERF_COEFFICIENTS[-2::-1]:
        q += c
        q *= s
    q -= xp.log1p(px)
    q -= ax * ax  # q = log erfc(|x|)
    out = xp.expm1(q, out=q)
    out *= -1.0  # erf(|x|) = 1 - erfc(|x|) = -expm1(log erfc(|x|))
    return xp.copysign(out, x, out=out)


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


# ---------------------------------------------------------------------------
# The Gaussian CDF, for GELU: fewer operations than 1 + erf, and the density for free
# ---------------------------------------------------------------------------
#
# GELU needs Phi(x) = (1 + erf(x / sqrt 2)) / 2 and, for its derivative, the
# density phi(x) = exp(-x^2 / 2) / sqrt(2 pi). Both contain exp(-x^2 / 2), so
# a form of Phi built around that factor gives phi for one multiplication:
#
#     Phi(-|x|) = erfc(z) / 2 = t exp(-z^2) P(t) / 2,   z = |x| / sqrt 2,  t = 1 / (1 + p z)
#
# and Phi(|x|) = 1 - Phi(-|x|). P is a polynomial in t in [0, 1]. Its
# coefficients (p = 0.47) come from a least-squares fit of the relative error
# of erfc on [0, 9] (``fit_normal_cdf_coefficients``): degree 12 keeps Phi
# within 2e-10 in float64, and float32, whose own rounding is about 1e-7,
# needs only degree 8, four fewer passes over the data.

NORMAL_CDF_P = 0.47
NORMAL_CDF_COEFFICIENTS = {
    12: (
        0.26517129121503435,
        0.26510888971494395,
        0.23660551842699565,
        0.17233414352830004,
        0.1202960927888689,
        -0.03461878343348238,
        0.04118126428387321,
        -0.02941351421700841,
        -0.30207733610260457,
        0.5462468240488589,
        -0.4082822166455608,
        0.1499535788123311,
        -0.022505752641137914,
    ),
    8: (
        0.2650932529202607,
        0.26678987446046304,
        0.22107857453923657,
        0.25294948901762837,
        -0.13771051580059157,
        0.48477785316884453,
        -0.5792410427467659,
        0.2746873318790279,
        -0.04842478047471511,
    ),
}


def normal_cdf(x, with_pdf=False):
    """The standard normal CDF ``Phi(x)`` of an array (and its density, ``phi(x)``).

    Returns ``cdf`` or ``(cdf, pdf)``, in the array's dtype: float64 inputs
    use the degree-12 polynomial, others the degree-8 one.
    """
    xp = xp_of(x)
    coefficients = NORMAL_CDF_COEFFICIENTS[12 if x.dtype == np.float64 else 8]
    z = xp.abs(x)
    z *= 1.0 / math.sqrt(2.0)  # z = |x| / sqrt 2
    t = z * NORMAL_CDF_P
    t += 1.0
    xp.divide(1.0, t, out=t)  # t = 1 / (1 + p z), in (0, 1]
    tail = t * coefficients[-1]  # Horner's rule for t P(t)
    for c in coefficients[-2::-1]:
        tail += c
        tail *= t
    gauss = z  # reuse z's memory for exp(-z^2) = exp(-x^2 / 2)
    xp.multiply(z, z, out=gauss)
    gauss *= -1.0
    xp.exp(gauss, out=gauss)
    tail *= gauss
    tail *= 0.5  # Phi(-|x|) = erfc(z) / 2: accurate however small
    # Phi(x) = tail where x < 0, else 1 - tail; as arithmetic, which is several
    # times faster than numpy.where: cdf = tail + [x >= 0] (1 - 2 tail).
    positive = xp.greater_equal(x, 0).astype(x.dtype)
    cdf = tail * -2.0
    cdf += 1.0
    cdf *= positive
    cdf += tail
    if not with_pdf:
        return cdf
    gauss *= 1.0 / math.sqrt(2.0 * math.pi)  # phi(x)
    return cdf, gauss


def fit_normal_cdf_coefficients(p: float = NORMAL_CDF_P, degree: int = 12) -> np.ndarray:
    """Refit ``P`` by least squares on the relative error of ``erfc`` (``math.erfc``)."""
    z = np.concatenate(
        [np.linspace(0, 1, 30000), np.linspace(1, 6, 30000), np.linspace(6, 9, 3000)]
    )
    t = 1 / (1 + p * z)
    target = np.array([math.erfc(v) for v in z]) * np.exp(z * z) / t  # the P that is exact
    powers = t[:, None] ** np.arange(degree + 1)  # (points, degree + 1)
    coefficients, *_ = np.linalg.lstsq(powers / target[:, None], np.ones_like(z), rcond=None)
    return coefficients
