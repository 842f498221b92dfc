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
# and Phi(|x|) = 1 - Phi(-|x|). P is a polynomial of degree 12 in t in [0, 1].
# Its coefficients (p = 0.47) come from a least-squares fit of the relative
# error of erfc on [0, 9] (``fit_normal_cdf_coefficients``); Phi is then
# within 2e-10 everywhere, and accurate relatively far into the lower tail.

NORMAL_CDF_P = 0.47
NORMAL_CDF_COEFFICIENTS = (
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
)

# float32 carries about seven digits, and a form with half the passes over the
# data reaches them. The tanh GELU of the original ViT code already has the
# right shape, Phi(x) ~ (1 + tanh(x (b0 + b1 x^2))) / 2 with b0 = sqrt(2/pi);
# give the slope five more terms,
#
#     Phi(x) ~ (1 + tanh(x B(min(x^2, C^2)))) / 2,   B(v) = b0 + b1 v + ... + b6 v^6,
#
# and it is within 1e-7 of Phi in float32 (float32's own rounding near 1 is
# 6e-8). Past |x| = C = 5.5, where Phi is within 2e-8 of 0 or 1, the slope
# stops growing, so the polynomial never runs away and tanh saturates. The
# coefficients come from a least-squares fit of B on [0, C], each point
# weighted by how much an error in B moves Phi (``fit_tanh_cdf_coefficients``).
# The fit finds b0 = 0.79788 = sqrt(2/pi) and b1 = 0.0363 = 0.0455 b0, next
# to the tanh form's 0.044715 b0.

TANH_CDF_CLAMP = 5.5
TANH_CDF_COEFFICIENTS = (
    0.7978849991030805,
    0.03633280231247723,
    -3.225384212291955e-05,
    -5.5461484029231026e-05,
    3.9953668626713085e-06,
    -1.348758255184744e-07,
    1.834170325512737e-09,
)


def normal_cdf(x, with_pdf=False):
    """The standard normal CDF ``Phi(x)`` of an array (and its density, ``phi(x)``).

    Returns ``cdf`` or ``(cdf, pdf)``, in the array's dtype: float64 inputs
    use the erfc form (within 2e-10), others the tanh form (within 1e-7; with
    it GELU and its derivative take 24 passes over the data instead of 45).
    """
    if x.dtype == np.float64:
        return _normal_cdf_erfc(x, with_pdf)
    return _normal_cdf_tanh(x, with_pdf)


def _normal_cdf_erfc(x, with_pdf):
    xp = xp_of(x)
    z = xp.abs(x)
    z *= 1.0 / math.sqrt(2.0)  # z = |x| / sqrt 2
    t = z * NORMAL_CDF_P
    t += 1.0
    xp.divide(1.0, t, out=t)  # t = 1 / (1 + p z), in (0, 1]
    tail = t * NORMAL_CDF_COEFFICIENTS[-1]  # Horner's rule for t P(t)
    for c in NORMAL_CDF_COEFFICIENTS[-2::-1]:
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


def _normal_cdf_tanh(x, with_pdf):
    xp = xp_of(x)
    square = x * x
    v = xp.minimum(square, TANH_CDF_CLAMP**2)
    slope = v * TANH_CDF_COEFFICIENTS[-1]  # Horner's rule for B(v)
    for b in TANH_CDF_COEFFICIENTS[-2:0:-1]:
        slope += b
        slope *= v
    slope += TANH_CDF_COEFFICIENTS[0]
    cdf = slope  # reuse the memory: Phi = (1 + tanh(x B(v))) / 2
    cdf *= x
    xp.tanh(cdf, out=cdf)
    cdf += 1.0
    cdf *= 0.5
    if not with_pdf:
        return cdf
    pdf = square  # reuse the memory: phi = exp(-x^2 / 2 - log sqrt(2 pi))
    pdf *= -0.5
    pdf -= 0.5 * math.log(2.0 * math.pi)
    xp.exp(pdf, out=pdf)
    return cdf, pdf


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


def fit_tanh_cdf_coefficients(clamp: float = TANH_CDF_CLAMP, degree: int = 6) -> np.ndarray:
    """Refit ``b0..b_degree`` of the tanh form's slope ``B(v)``, ``v = x^2``, on ``[0, clamp]``.

    The exact slope is ``atanh(2 Phi(x) - 1) / x = log(Phi(x) / Phi(-x)) / (2 x)``;
    an error ``e`` in it moves Phi by about ``2 x Phi(x) Phi(-x) e``, which is the weight.
    """
    x = np.linspace(1e-3, clamp, 40000)
    upper = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])  # Phi(x)
    lower = np.array([0.5 * math.erfc(v / math.sqrt(2)) for v in x])  # Phi(-x)
    exact = np.log(upper / lower) / (2 * x)
    weight = x * upper * lower
    powers = (x * x)[:, None] ** np.arange(degree + 1)  # (points, degree + 1)
    coefficients, *_ = np.linalg.lstsq(powers * weight[:, None], exact * weight, rcond=None)
    return coefficients
