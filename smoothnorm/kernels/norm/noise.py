"""Noisy BatchNorm's per-element noise, drawn by a counter-based generator in one parallel pass.

Elements come in pairs along each (sample, channel) row of an (N, C, ...) array (a row of odd length ends with a
pair of its own). Pair q of row r = i C + j (sample i, channel j) has the counter e = r ceil(L / 2) + q (L the row's
length) and two 64-bit hashes h1 = splitmix64(key + (2e + 1) G), h2 = splitmix64(key + (2e + 2) G) (G the golden-ratio
increment, `key` a hash of the layer's step seed and the array's shape). Their two 24-bit halves give uniforms
u1 on (0, 1], u2, v1, v2 on [0, 1), and the pair's two elements are

    scale s = sigma_j + r_sigma z,  z = sqrt(-2 ln u1) cos(2 pi u2) and sqrt(-2 ln u1) sin(2 pi u2) (Box-Muller)
    shift m = mu_j - r_mu + 2 r_mu v,  v = v1 and v2.

The draws are float32 (24-bit uniforms: normals reach about 5.8 standard deviations) whatever the array's dtype, so a
float32 and a float64 network with one seed see the same noise up to the rounding of mu_j, sigma_j. Each value
depends on its index only, so the pass splits its work any way and the bits do not depend on the thread count.
"""

from __future__ import annotations

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


@njit(cache=True, inline="always")
def _uniforms(h):
    """The two 24-bit halves of a hash as float32 uniforms on [0, 1)."""
    scale = np.float32(2.0 ** -24)
    return np.float32(h >> np.uint64(40)) * scale, np.float32(h & np.uint64(0xFFFFFF)) * scale


@njit(cache=True, parallel=True, nogil=True)
def _draw(key, mu, sigma, r_mu, r_sigma, scale, shift):
    """Fill scale, shift (N, C, L) with the noise of the module docstring."""
    n, c, inner = scale.shape
    pairs = (inner + 1) // 2
    golden = np.uint64(_GOLDEN)
    two, one = np.uint64(2), np.uint64(1)
    lift = np.float32(2.0 ** -24)
    turn = np.float32(2.0 * np.pi)
    for i in prange(n):
        for j in range(c):
            s0, m0 = np.float32(sigma[j]), np.float32(mu[j] - r_mu)
            rs, rm = np.float32(r_sigma), np.float32(2.0 * r_mu)
            base = (i * c + j) * pairs
            for q in range(pairs):
                e = np.uint64(base + q)
                u1, u2 = _uniforms(_mix(key + (two * e + one) * golden))
                v1, v2 = _uniforms(_mix(key + (two * e + two) * golden))
                radius = np.sqrt(np.float32(-2.0) * np.log(u1 + lift))
                angle = turn * u2
                k = 2 * q
                scale[i, j, k] = s0 + rs * (radius * np.cos(angle))
                shift[i, j, k] = m0 + rm * v1
                if k + 1 < inner:
                    scale[i, j, k + 1] = s0 + rs * (radius * np.sin(angle))
                    shift[i, j, k + 1] = m0 + rm * v2


def draw_noise(seed: int, mu: np.ndarray, sigma: np.ndarray, r_mu: float, r_sigma: float, scale: np.ndarray,
               shift: np.ndarray) -> None:
    """Fill `scale` and `shift` (C-contiguous, one shape (N, C, ...) and float dtype) with the noise of a layer
    whose step seed is `seed` and per-channel parameters `mu`, `sigma` (float64, length C)."""
    shape = scale.shape
    n, c = shape[0], shape[1]
    inner = int(np.prod(shape[2:], dtype=np.int64))
    key = np.uint64(noise_key(seed, shape))
    _draw(key, mu, sigma, float(r_mu), float(r_sigma), scale.reshape(n, c, inner), shift.reshape(n, c, inner))
