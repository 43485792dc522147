"""Noisy BatchNorm's noise generator (kernels/norm/noise.py): its ln, cos and sin series against the library's, the
drawn arrays against a NumPy twin of the module's formula (hashes in uint64 arithmetic, library ln/cos/sin in
float64), the element layout of odd rows, and the same bits at any thread count."""

import numpy as np
import pytest
from numba import njit

from smoothnorm.kernels.norm import noise
from tests.helpers import assert_same_at_thread_counts


@njit(error_model="numpy")
def _ln_all(u, out):
    for k in range(u.shape[0]):
        out[k] = noise._ln_unit(u[k])


@njit(error_model="numpy")
def _cos_sin_all(u, cos, sin):
    for k in range(u.shape[0]):
        cos[k], sin[k] = noise._cos_sin_turn(u[k])


def test_ln_series_is_within_float32_roundings_of_the_library_on_every_uniform():
    # Every value u1 can take: (1 .. 2^24) 2^-24.
    u = (np.arange(1, 2**24 + 1, dtype=np.float32) * np.float32(2.0**-24)).astype(np.float32)
    ours = np.empty_like(u)
    _ln_all(u, ours)
    exact = np.log(u.astype(np.float64))
    # Relative to |ln u| and to the float32 spacing at u: near u = 1, ln u is tiny and must stay accurate there too.
    error = np.abs(ours - exact)
    assert np.all(error <= 4 * np.finfo(np.float32).eps * np.abs(exact) + 1e-12), error.max()
    assert ours[-1] == 0.0 and np.all(ours[:-1] < 0)


def test_cos_sin_series_are_within_float32_roundings_of_the_library():
    u = (np.arange(0, 2**24, 7, dtype=np.float32) * np.float32(2.0**-24)).astype(np.float32)
    cos, sin = np.empty_like(u), np.empty_like(u)
    _cos_sin_all(u, cos, sin)
    angle = 2 * np.pi * u.astype(np.float64)
    assert np.abs(cos - np.cos(angle)).max() < 4e-7
    assert np.abs(sin - np.sin(angle)).max() < 4e-7
    # The quarter turns land on the axes exactly.
    quarters = np.array([0.0, 0.25, 0.5, 0.75], np.float32)
    c, s = np.empty_like(quarters), np.empty_like(quarters)
    _cos_sin_all(quarters, c, s)
    np.testing.assert_array_equal(c, [1, 0, -1, 0])
    np.testing.assert_array_equal(s, [0, 1, 0, -1])


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(noise._M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(noise._M2)
    return z ^ (z >> np.uint64(31))


def _noise_twin(seed, mu, sigma, r_mu, r_sigma, shape):
    """The module docstring's formula in NumPy, float64 library functions."""
    n, c = shape[:2]
    inner = int(np.prod(shape[2:], dtype=np.int64))
    pairs = (inner + 1) // 2
    key = np.uint64(noise.noise_key(seed, shape))
    golden = np.uint64(noise._GOLDEN)
    e = np.arange(n * c * pairs, dtype=np.uint64).reshape(n, c, pairs)
    with np.errstate(over="ignore"):
        h1 = _mix(key + (np.uint64(2) * e + np.uint64(1)) * golden)
        h2 = _mix(key + (np.uint64(2) * e + np.uint64(2)) * golden)
    lift = 2.0**-24
    u1 = ((h1 >> np.uint64(40)).astype(np.float64) + 1.0) * lift
    u2 = (h1 & np.uint64(0xFFFFFF)).astype(np.float64) * lift
    radius = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)], axis=2)
    v = np.concatenate([(h2 >> np.uint64(40)).astype(np.float64), (h2 & np.uint64(0xFFFFFF)).astype(np.float64)],
                       axis=2) * lift
    # Pair q holds elements q and q + pairs: the first halves, then the second halves (an odd row drops the last).
    z, v = z[:, :, :inner], v[:, :, :inner]
    scale = sigma[None, :, None] + r_sigma * z
    shift = mu[None, :, None] - r_mu + 2 * r_mu * v
    return scale.reshape(shape), shift.reshape(shape)


@pytest.mark.parametrize("shape", [(7, 3), (5, 4, 3, 3), (3, 2, 4, 4), (2, 3, 1, 1), (4, 2, 5, 1), (2, 1, 32, 32)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_draw_matches_a_numpy_twin_of_the_formula(rng, shape, dtype):
    c = shape[1]
    mu, sigma = rng.uniform(-0.5, 0.5, c), rng.uniform(1.0, 1.25, c)
    scale, shift = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
    noise.draw_noise(11, mu, sigma, 0.1, 0.3, scale, shift)
    want_scale, want_shift = _noise_twin(11, mu, sigma, 0.1, 0.3, shape)
    # z is float32 (series within a few roundings of the library; sqrt(-2 ln u) amplifies ln's error near u = 1).
    np.testing.assert_allclose(scale, want_scale, rtol=0, atol=1e-6)
    np.testing.assert_allclose(shift, want_shift, rtol=0, atol=1e-6)


def test_another_seed_or_shape_draws_other_noise():
    mu, sigma = np.zeros(3), np.ones(3)
    draws = []
    for seed, shape in [(1, (4, 3, 2, 2)), (2, (4, 3, 2, 2)), (1, (4, 3, 4, 1))]:
        scale, shift = np.empty(shape), np.empty(shape)
        noise.draw_noise(seed, mu, sigma, 0.1, 0.1, scale, shift)
        draws.append(scale.ravel())
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])


@pytest.mark.parametrize("shape", [(33, 5, 7, 7), (300, 64)])
def test_same_bits_at_any_thread_count(shape):
    mu, sigma = np.linspace(-0.5, 0.5, shape[1]), np.linspace(1.0, 1.25, shape[1])

    def draw():
        scale, shift = np.empty(shape, np.float32), np.empty(shape, np.float32)
        noise.draw_noise(5, mu, sigma, 0.1, 0.1, scale, shift)
        return scale, shift

    assert_same_at_thread_counts(draw)
