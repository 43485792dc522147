"""kernels/_division.divide: x / d for a constant d without a divide instruction, the same bits as the division."""

import math

import numpy as np
import pytest
from numba import njit

from smoothnorm.kernels._division import divide

DIVISORS = [3.0, 6.0, 12.0, 24.0, 10.0, 7.0]


@njit(cache=True)
def _differs(x, d, y):
    """Whether divide gives other bits than x / d (NaN counts as equal to NaN; a zero's sign counts)."""
    a = x / d
    b = divide(x, d, y)
    if a != a and b != b:
        return False
    return a != b or (a == 0.0 and math.copysign(1.0, a) != math.copysign(1.0, b))


@njit(cache=True)
def _mismatches(xs, d, y):
    """How many of xs give other bits (_differs)."""
    bad = 0
    for i in range(xs.shape[0]):
        bad += _differs(xs[i], d, y)
    return bad


@njit(cache=True)
def _mismatches_float32_patterns(d, y, start, stop, step):
    """As _mismatches over the float32 bit patterns start, start + step, ... below stop, widened to float64."""
    bad = 0
    bits = np.empty(1, dtype=np.uint32)
    value = bits.view(np.float32)
    for u in range(start, stop, step):
        bits[0] = u
        bad += _differs(np.float64(value[0]), d, y)
    return bad


def _hard_cases(rng, d, n):
    """Dividends whose quotient lies next to a midpoint between two doubles (where a plain x * (1/d) rounds the
    wrong way), at every scale, with their neighbours; sums and differences of float32 values (what the weight
    transforms divide); and the special values."""
    q = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
    near = (q + (np.nextafter(q, np.inf) - q) / 2) * d
    f32 = lambda: rng.standard_normal(n).astype(np.float32).astype(np.float64)  # noqa: E731
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, d, -d, 3.4e38, -1.4e-45, 1.7e308, 1e-300])
    return np.concatenate([near, np.nextafter(near, np.inf), np.nextafter(near, -np.inf), f32() + f32(),
                           f32() - 3.0 * f32(), rng.standard_normal(n), specials])


@pytest.mark.parametrize("d", DIVISORS)
def test_divide_gives_the_divisions_bits(rng, d):
    xs = _hard_cases(rng, d, 200_000)
    assert _mismatches(xs, d, 1.0 / d) == 0
    # The check can fail: a plain multiplication by the reciprocal differs on these dividends.
    assert np.count_nonzero(xs[:200_000] * (1.0 / d) != xs[:200_000] / d) > 1000


@pytest.mark.parametrize("d", [6.0, 12.0, 24.0])
def test_divide_on_float32_values(d):
    """Every 97th float32 bit pattern (44 million values: all exponents, signs, NaNs and infinities)."""
    assert _mismatches_float32_patterns(d, 1.0 / d, 0, 1 << 32, 97) == 0


def test_divide_keeps_signed_zeros_infinities_and_nan():
    xs = np.array([0.0, -0.0, np.inf, -np.inf, np.nan])
    out = np.array([divide(x, 6.0, 1.0 / 6.0) for x in xs])
    assert out.tobytes()[: 4 * 8] == (xs[:4] / 6.0).tobytes() and np.isnan(out[4])
