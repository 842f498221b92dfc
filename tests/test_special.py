"""The error function behind the exact GELU."""

from __future__ import annotations

import math

import numpy as np

from tinyvit.backend import to_numpy
from tinyvit.special import ERF_COEFFICIENTS, ERF_P, erf, fit_erf_coefficients, normal_cdf

GRID = np.concatenate([np.linspace(-7, 7, 200001), [0.0, -0.0, 1e-30, -1e-8, 40.0, -40.0]])


def test_erf_float64_within_1e9_of_math_erf(xp):
    got = to_numpy(erf(xp.asarray(GRID)))
    want = np.array([math.erf(v) for v in GRID])
    assert got.dtype == np.float64
    assert np.abs(got - want).max() < 1e-9


# CUDA documents up to 2 ulp for expf, expm1f and log1pf; NumPy's are correctly rounded.
ULPS = 2


def test_erf_float32_within_1e7_and_2_ulp(xp, ulps):
    """Within 1e-7 of math.erf with correctly rounded exp and log (NumPy), and within
    1e-7 plus 2 ulp of the result when they are 1 or 2 ulp off (``ulps``: on the
    stand-in's cuda device they are made so; a GPU's are what they are)."""
    x = GRID.astype(np.float32)
    got = to_numpy(erf(xp.asarray(x)))
    want = np.array([math.erf(float(v)) for v in x])
    assert got.dtype == np.float32
    error = np.abs(got - want)
    # erf = -expm1(q), q = Q(s) - log1p(p|x|) - x^2: 2 ulp of expm1's result, and 2 ulp of
    # log1p's, which move q and so erf by erfc(|x|) times as much.
    ulp = lambda a: np.spacing(np.abs(a).astype(np.float32)).astype(np.float64)  # noqa: E731
    erfc = 1.0 - np.abs(want)
    margin = ULPS * (ulp(want) + erfc * ulp(np.log1p(ERF_P * np.abs(x.astype(np.float64)))))
    assert (error - margin).max() < 1e-7
    if xp is np:  # the exact maths library: 1e-7 itself
        assert error.max() < 1e-7
    small = np.abs(want) > 1e-30  # near zero the error is relative, not only absolute
    assert (error[small] / np.abs(want[small])).max() < 1e-6


def test_normal_cdf_float32_has_no_cancellation_in_the_left_tail(xp, ulps):
    """Phi(x) to a few ulp of itself everywhere, also where 1 + erf would keep only the first
    digits (x < -3), with exp and log off by up to 2 ulp."""
    x = np.linspace(-12, 12, 24001).astype(np.float32)
    got = to_numpy(normal_cdf(xp.asarray(x))).astype(np.float64)
    want = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2)) for v in x])
    error = np.abs(got - want)
    # Relative to Phi itself: float32 rounding of log erfc ~ -x^2 / 2 costs |x^2 / 2| ulp,
    # and exp's 2 ulp add 2 more. 1 + erf would be off by 6e-8 absolute: 2e-3 of Phi(-4).
    relative = error / np.maximum(want, 1e-38) / np.maximum(1.0, x.astype(np.float64) ** 2 / 2)
    assert relative[x < 0].max() < 1e-6
    assert error.max() < 1e-7 + ULPS * 6e-8


def test_erf_is_odd_and_keeps_signed_zero(xp):
    x = xp.asarray(np.linspace(0, 5, 101))
    np.testing.assert_array_equal(to_numpy(erf(-x)), -to_numpy(erf(x)))
    assert math.copysign(1.0, float(to_numpy(erf(xp.asarray([-0.0])))[0])) == -1.0


def test_the_coefficients_are_the_documented_fit():
    np.testing.assert_allclose(fit_erf_coefficients(ERF_P), ERF_COEFFICIENTS, rtol=1e-6, atol=1e-9)
