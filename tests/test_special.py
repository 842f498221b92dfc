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
