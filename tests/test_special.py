"""The error function behind the exact GELU."""

from __future__ import annotations

import math

import numpy as np

from tinyvit.backend import to_numpy
from tinyvit.special import ERF_COEFFICIENTS, ERF_P, erf, fit_erf_coefficients

GRID = np.concatenate([np.linspace(-7, 7, 200001), [0.0, -0.0, 1e-30, -1e-8, 40.0, -40.0]])


def test_erf_float64_within_1e9_of_math_erf(xp):
    got = to_numpy(erf(xp.asarray(GRID)))
    want = np.array([math.erf(v) for v in GRID])
    assert got.dtype == np.float64
    assert np.abs(got - want).max() < 1e-9


def test_erf_float32_within_1e7(xp):
    x = GRID.astype(np.float32)
    got = to_numpy(erf(xp.asarray(x)))
    want = np.array([math.erf(float(v)) for v in x])
    assert got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-7
    small = np.abs(want) > 1e-30  # near zero the error is relative, not only absolute
    assert (np.abs(got - want)[small] / np.abs(want[small])).max() < 1e-6


def test_erf_is_odd_and_keeps_signed_zero(xp):
    x = xp.asarray(np.linspace(0, 5, 101))
    np.testing.assert_array_equal(to_numpy(erf(-x)), -to_numpy(erf(x)))
    assert math.copysign(1.0, float(to_numpy(erf(xp.asarray([-0.0])))[0])) == -1.0


def test_the_coefficients_are_the_documented_fit():
    np.testing.assert_allclose(fit_erf_coefficients(ERF_P), ERF_COEFFICIENTS, rtol=1e-6, atol=1e-9)


def test_normal_cdf_and_pdf(xp):
    from tinyvit.special import normal_cdf

    x = np.concatenate([np.linspace(-12, 12, 100001), [0.0, -0.0, 40.0, -40.0]])
    want_cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    want_pdf = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    cdf, pdf = (to_numpy(a) for a in normal_cdf(xp.asarray(x), with_pdf=True))
    assert np.abs(cdf - want_cdf).max() < 2e-10
    np.testing.assert_allclose(pdf, want_pdf, rtol=1e-12, atol=1e-300)
    tail = x < -3  # far in the lower tail the CDF is tiny: it stays accurate relatively
    np.testing.assert_allclose(cdf[tail], want_cdf[tail], rtol=1e-8)
    x32 = x.astype(np.float32)
    cdf32 = to_numpy(normal_cdf(xp.asarray(x32)))
    assert cdf32.dtype == np.float32
    want32 = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2)) for v in x32])
    assert np.abs(cdf32 - want32).max() < 3e-7


def test_normal_cdf_coefficients_are_the_documented_fits():
    from tinyvit.special import (
        NORMAL_CDF_COEFFICIENTS,
        NORMAL_CDF_P,
        TANH_CDF_CLAMP,
        TANH_CDF_COEFFICIENTS,
        fit_normal_cdf_coefficients,
        fit_tanh_cdf_coefficients,
    )

    refit = fit_normal_cdf_coefficients(NORMAL_CDF_P)
    np.testing.assert_allclose(refit, NORMAL_CDF_COEFFICIENTS, rtol=1e-6, atol=1e-9)
    refit = fit_tanh_cdf_coefficients(TANH_CDF_CLAMP)
    np.testing.assert_allclose(refit, TANH_CDF_COEFFICIENTS, rtol=1e-6, atol=1e-12)
    assert abs(TANH_CDF_COEFFICIENTS[0] - math.sqrt(2 / math.pi)) < 1e-6  # the tanh GELU's slope


def test_normal_cdf_float32_tanh_form(xp):
    """float32's form: within 1.5e-7 of Phi, its density to float32 rounding of x^2 / 2, calm at
    inputs far past the clamp (no overflow, no NaN, exactly 0 and 1 in the tails)."""
    from tinyvit.special import normal_cdf

    x = np.concatenate([np.linspace(-9, 9, 200001), [0.0, 5.5, -5.5, 60.0, -60.0, 1e4, -1e4]])
    x = x.astype(np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        cdf, pdf = (to_numpy(a) for a in normal_cdf(xp.asarray(x), with_pdf=True))
    wide = x.astype(np.float64)
    want = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in wide])
    assert cdf.dtype == pdf.dtype == np.float32
    assert np.abs(cdf - want).max() < 1.5e-7
    np.testing.assert_allclose(
        pdf, np.exp(-wide * wide / 2) / math.sqrt(2 * math.pi), rtol=1e-5, atol=1e-37
    )
    assert (cdf[x >= 6] == 1).all() and (cdf[x <= -60] == 0).all()
    assert (np.diff(cdf[:200001]) >= 0).all()  # never decreasing
