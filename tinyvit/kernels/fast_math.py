"""The Gaussian CDF in float32, in fewer passes over memory: the tanh form with a longer slope.

The exact GELU is ``x Phi(x)``, and its derivative ``Phi(x) + x phi(x)``.
The reference (``functional.gelu``) takes ``Phi`` from the package's one
``erf`` (``special.erf``): about twenty operations, each a pass over the
whole activation. float32 carries about seven digits, and a form with half
the passes reaches them. The tanh GELU of the original ViT code already has
the right shape, ``Phi(x) ~ (1 + tanh(x (b0 + b1 x^2))) / 2`` with
``b0 = sqrt(2/pi)``; give the slope five more terms,

    Phi(x) ~ (1 + tanh(x B(min(x^2, C^2)))) / 2,   B(v) = b0 + b1 v + ... + b6 v^6,

and it is within 1.5e-7 of ``Phi`` in float32 (float32's own rounding near
1 is 6e-8). Past ``|x| = C = 5.5``, where ``Phi`` is within 2e-8 of 0 or 1,
the slope stops growing, so the polynomial never runs away and tanh
saturates. The coefficients come from a least-squares fit of ``B`` on
``[0, C]``, each point weighted by how much an error in ``B`` moves ``Phi``
(``fit_tanh_cdf_coefficients`` redoes it; the tests check it gives these
numbers back). The fit finds ``b0 = 0.79788 = sqrt(2/pi)`` and ``b1 = 0.0363
= 0.0455 b0``, next to the tanh form's ``0.044715 b0``.

The density ``phi(x) = exp(-x^2/2) / sqrt(2 pi)`` reuses ``x^2``: the whole
GELU with its derivative takes 24 passes instead of 45. Used by the CPU
kernel for float32 only; float64 (gradient checks) keeps the reference erf.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import xp_of

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
TANH_CDF_ERROR_BOUND = 1.5e-7  # max |Phi - this| over float32 inputs, checked by the tests


def normal_cdf_tanh(x, with_pdf=False):
    """``Phi(x)`` (and ``phi(x)`` with ``with_pdf``) of a float32 array, within 1.5e-7.

    Every operation after the first writes into an array it already made, so
    a block of ``x`` that fits in cache stays there for all of them.
    """
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


def fit_tanh_cdf_coefficients(clamp: float = TANH_CDF_CLAMP, degree: int = 6) -> np.ndarray:
    """Refit ``b0..b_degree`` of the slope ``B(v)``, ``v = x^2``, on ``[0, clamp]``.

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
