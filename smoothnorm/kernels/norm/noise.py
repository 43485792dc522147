"""Noisy BatchNorm's per-element noise, drawn by a counter-based generator in one parallel pass.

Elements come in pairs along each (sample, channel) row of an (N, C, ...) array: with L the row's length and
P = ceil(L / 2), pair q holds elements q and q + P (in a row of odd length the last pair has one element). Pair q of
row r = i C + j (sample i, channel j) has the counter e = r P + q and two 64-bit hashes h1 = splitmix64(key +
(2e + 1) G), h2 = splitmix64(key + (2e + 2) G) (G the golden-ratio increment, `key` a hash of the layer's step seed
and the array's shape). Their two 24-bit halves give uniforms u1 on (0, 1], u2, v1, v2 on [0, 1), and the pair's
two elements are

    scale s = sigma_j + r_sigma z,  z = sqrt(-2 ln u1) cos(2 pi u2) and sqrt(-2 ln u1) sin(2 pi u2) (Box-Muller)
    shift m = mu_j - r_mu + 2 r_mu v,  v = v1 and v2.

z and v are float32 (24-bit uniforms: normals reach about 5.8 standard deviations) whatever the array's dtype;
s and m are computed in float64 and rounded to the array's dtype, so a float32 and a float64 network with one seed
see the same noise up to that rounding. ln, cos and sin are series written out here (_ln_unit, _cos_sin_turn: no
branches and no library calls, so the loop runs in vector registers); they are within a few float32 roundings of
the library's. Each value depends on its index only, so the pass splits its work any way and the bits do not depend
on the thread count.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix_int(z: int) -> int:
    """splitmix64's finaliser on a Python int (the key's hash; the kernel's twin is _mix)."""
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def noise_key(seed: int, shape: tuple[int, ...]) -> int:
    """The generator's key for a layer's step seed and an input shape (another shape: other noise)."""
    z = int(seed) & _MASK
    for d in (len(shape), *shape):
        z = _mix_int((z + (int(d) + 1) * _GOLDEN) & _MASK)
    return z


@njit(cache=True, inline="always")
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


_F32 = np.float32
_LN2 = _F32(math.log(2.0))
_QUARTER_TURN = _F32(0.5 * math.pi)
# Series coefficients, as multiplications (a division by a constant is not one): atanh's 1/(2k+1), and Taylor's
# 1/(2k)! and 1/(2k+1)!, k = 1..4.
_A = tuple(_F32(1.0 / (2 * k + 1)) for k in range(1, 5))
_C = tuple(_F32(1.0 / math.factorial(2 * k)) for k in range(1, 5))
_S = tuple(_F32(1.0 / math.factorial(2 * k + 1)) for k in range(1, 5))


@njit(cache=True, inline="always")
def _ln_unit(u):
    """ln(u) for a float32 u in [2^-24, 1], branch-free so that loops over it vectorise.

    u = 2^e m with m in [sqrt(1/2), sqrt(2)) by a binary search on the exponent (comparisons, not bits); then
    ln m = 2 atanh(t), t = (m - 1) / (m + 1), |t| < 0.172, by its series to t^9 (the next term is below 3e-9
    relative). Near u = 1 the result is e = 0 and ln m itself, so there is no cancellation."""
    one, zero = _F32(1.0), _F32(0.0)
    small = u < _F32(2.0 ** -16)
    e = _F32(-16.0) if small else zero
    m = u * _F32(2.0 ** 16) if small else u
    small = m < _F32(2.0 ** -8)
    e -= _F32(8.0) if small else zero
    m *= _F32(2.0 ** 8) if small else one
    small = m < _F32(0.0625)
    e -= _F32(4.0) if small else zero
    m *= _F32(16.0) if small else one
    small = m < _F32(0.25)
    e -= _F32(2.0) if small else zero
    m *= _F32(4.0) if small else one
    small = m < _F32(0.5)
    e -= one if small else zero
    m *= _F32(2.0) if small else one
    small = m < _F32(0.70710678)
    e -= one if small else zero
    m *= _F32(2.0) if small else one
    t = (m - one) / (m + one)
    t2 = t * t
    return e * _LN2 + _F32(2.0) * t * (one + t2 * (_A[0] + t2 * (_A[1] + t2 * (_A[2] + t2 * _A[3]))))


@njit(cache=True, inline="always")
def _cos_sin_turn(u):
    """cos(2 pi u) and sin(2 pi u) for a float32 u in [0, 1), branch-free: 4 u = q + r with q the nearest integer,
    so the angle left is |theta| = |r| pi / 2 <= pi / 4, where Taylor series to theta^8 and theta^9 err by less than
    3e-8; the quarter q mod 4 then rotates (cos, sin) by q right angles."""
    one = _F32(1.0)
    four = _F32(4.0) * u
    q = np.floor(four + _F32(0.5))
    theta = (four - q) * _QUARTER_TURN
    t2 = theta * theta
    c = one - t2 * (_C[0] - t2 * (_C[1] - t2 * (_C[2] - t2 * _C[3])))
    s = theta * (one - t2 * (_S[0] - t2 * (_S[1] - t2 * (_S[2] - t2 * _S[3]))))
    k = q - _F32(4.0) * np.floor(q * _F32(0.25))  # q mod 4 (q is 0..4)
    cos = c if k == _F32(0.0) else (-s if k == one else (-c if k == _F32(2.0) else s))
    sin = s if k == _F32(0.0) else (c if k == one else (-s if k == _F32(2.0) else -c))
    return cos, sin


@njit(cache=True, inline="always")
def _pair(key, e):
    """Pair counter e's two normals (Box-Muller) and two uniforms, float32."""
    golden = np.uint64(_GOLDEN)
    h1 = _mix(key + (np.uint64(2) * e + np.uint64(1)) * golden)
    h2 = _mix(key + (np.uint64(2) * e + np.uint64(2)) * golden)
    lift = _F32(2.0 ** -24)
    bits24 = np.uint64(0xFFFFFF)
    u1 = (_F32(np.int32(h1 >> np.uint64(40))) + _F32(1.0)) * lift  # on (0, 1]
    radius = np.sqrt(_F32(-2.0) * _ln_unit(u1))
    cos, sin = _cos_sin_turn(_F32(np.int32(h1 & bits24)) * lift)
    v1 = _F32(np.int32(h2 >> np.uint64(40))) * lift
    v2 = _F32(np.int32(h2 & bits24)) * lift
    return radius * cos, radius * sin, v1, v2


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _draw(key, mu, sigma, r_mu, r_sigma, scale, shift):
    """Fill scale, shift (N, C, L) with the noise of the module docstring: per sample, every pair's values in one
    vectorised loop (_pairs), then each row's elements from them."""
    n, c, inner = scale.shape
    half = inner // 2
    pairs = inner - half
    r_range = 2.0 * r_mu
    for i in prange(n):
        z1, z2 = np.empty(c * pairs, np.float32), np.empty(c * pairs, np.float32)
        v1, v2 = np.empty(c * pairs, np.float32), np.empty(c * pairs, np.float32)
        _pairs(key, i * c * pairs, z1, z2, v1, v2)
        for j in range(c):
            s0, m0 = sigma[j], mu[j] - r_mu
            row = j * pairs
            for q in range(pairs):
                scale[i, j, q] = s0 + r_sigma * z1[row + q]
                shift[i, j, q] = m0 + r_range * v1[row + q]
            for q in range(half):
                scale[i, j, pairs + q] = s0 + r_sigma * z2[row + q]
                shift[i, j, pairs + q] = m0 + r_range * v2[row + q]


@njit(cache=True, nogil=True, error_model="numpy")
def _pairs(key, base, z1, z2, v1, v2):
    """The normal pairs and uniform pairs of counters base, base + 1, ... (a vectorised loop: four separate
    outputs, and error_model="numpy" keeps the division in ln from checking for zero, which would stop it)."""
    for p in range(z1.shape[0]):
        z1[p], z2[p], v1[p], v2[p] = _pair(key, np.uint64(base + p))


def draw_noise(seed: int, mu: np.ndarray, sigma: np.ndarray, r_mu: float, r_sigma: float, scale: np.ndarray,
               shift: np.ndarray) -> None:
    """Fill `scale` and `shift` (C-contiguous, one shape (N, C, ...) and float dtype) with the noise of a layer
    whose step seed is `seed` and per-channel parameters `mu`, `sigma` (float64, length C)."""
    shape = scale.shape
    n, c = shape[0], shape[1]
    inner = int(np.prod(shape[2:], dtype=np.int64))
    key = np.uint64(noise_key(seed, shape))
    _draw(key, mu, sigma, float(r_mu), float(r_sigma), scale.reshape(n, c, inner), shift.reshape(n, c, inner))
