"""Winograd 3x3 convolution (stride 1, padding 1): F(4x4,3x3) and F(2x2,3x3) for forward, input and weight gradient.

Method (Lavin & Gray 2016). An output tile of m x m pixels is computed from an (m+2) x (m+2) input patch d as
    Y = A^T [ (G g G^T) (.) (B^T d B) ] A,        (.) elementwise, summed over input channels,
so the sum over input channels becomes one GEMM per transform point xi (alpha^2 of them, alpha = m + 2):
    M[xi] (C_out, T) = U[xi] (C_out, C_in) @ V[xi] (C_in, T)        U = G g G^T, V = B^T d B for T tiles.
m = 4 (alpha = 6, points 0, 1, -1, 2, -2, infinity) where the map is at least 4x4, m = 2 (points 0, 1, -1, infinity)
below. F(4x4) does 36 multiplies per 16 outputs and channel pair where im2col does 144 (4x fewer); F(2x2) 16 per 4.
- input gradient: the same forward on dy, with the kernel rotated 180 degrees and its channels swapped;
- weight gradient: the adjoint of the forward, dW = G^T [ sum over tiles (A dy A^T) (.) (B^T d B) ] G: per point,
  dW^[xi] (C_out, C_in) += dY^[xi] (C_out, T) @ V[xi]^T, then the inverse transform (in float64, after the workers'
  partials are summed in worker order, so results repeat to the bit for a given thread count).
Weights are transformed once per call, in float64, then rounded to the working dtype.

Work is split like conv.py's im2col: each worker owns a contiguous block of samples and walks its tiles in groups of
`group` tiles (sized so the transformed group stays in cache), with its own single-threaded GEMMs inside one
parallel region. Tile transforms run over rows of `group` tiles at a time (contiguous, so they vectorise); only the
gathering of patches and the scattering of output tiles touch pixels one by one.

Accuracy (relative L2 error against a float64 direct convolution, measured on every VGG layer shape,
tests/kernels/test_winograd.py): see docs/PROTOCOL.md, "Convolution algorithms".
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from smoothnorm.kernels._blas import _DGEMM, _SGEMM, _gemm, _single_threaded_blas
from smoothnorm.kernels._checks import _check_output, _float_array

# Bytes of transformed data per tile group and worker (V and M in the forward; X^ and dY^ in the weight gradient),
# and the tile count per group between which it is kept. On VGG's layers (batch 64, float32, 2 workers) 8 MB groups
# ran 1.2-1.6x faster than 1-2 MB ones (GEMMs of 32-64 columns are inefficient); 32 MB groups (over 1000 tiles at
# 64 channels) ran 1.6x slower on the 32x32 layers: the group must stay within L2 plus a share of L3.
_GROUP_BYTES = 8 << 20
_MIN_GROUP_TILES = 32
_MAX_GROUP_TILES = 256
# As in conv.py: calls this small run as one serial worker.
_PARALLEL_MIN_MACS = 1 << 20


def output_tile(h: int, w: int) -> int:
    """Output tile size m of F(m x m, 3x3) for an h x w map: 4 when both sides are at least 4, else 2."""
    return 4 if min(h, w) >= 4 else 2


def winograd_pays(pass_name: str, c_in: int, c_out: int, h: int, w: int) -> bool:
    """The fixed rule behind algorithm="auto": True where Winograd measured faster than im2col for this pass.

    pass_name: "forward", "input" (gradient) or "weight" (gradient); the layer is (C_in -> C_out) on an h x w map.
    Written from one run of benchmarks/bench_conv.py (batch 128, float32, 2 threads, AMD EPYC with AVX-512; table
    in benchmarks/README.md): Winograd won every pass of every VGG layer by 1.08-1.76x except
    - VGG's first layer (3 input channels): per-point GEMMs with 3 rows cost more than the transforms save
      (im2col 1.25x faster forward, 1.9x backward);
    - the backward on 2x2 maps (F(2x2), 512 -> 512): im2col 1.1x faster, as were im2col dW with Winograd dx.
    """
    if pass_name not in ("forward", "input", "weight"):
        raise ValueError(f"pass_name: expected 'forward', 'input' or 'weight', got {pass_name!r}")
    if min(c_in, c_out) < 16:
        return False
    return pass_name == "forward" or min(h, w) >= 4


# ----------------------------------------------------------------------------------------------------------------
# One-dimensional transforms over rows of tiles: `src` and `dst` are 2-D C-contiguous, the k-th operand is row
# s0 + k*ss of src (d0 + k*ds of dst), and every row holds one value per tile (count of them).


@njit(cache=True, nogil=True, error_model="numpy")
def _bt6(src, s0, ss, dst, d0, ds, count):
    """B^T d for F(4x4,3x3): 6 -> 6."""
    a0, a1, a2 = src[s0], src[s0 + ss], src[s0 + 2 * ss]
    a3, a4, a5 = src[s0 + 3 * ss], src[s0 + 4 * ss], src[s0 + 5 * ss]
    o0, o1, o2 = dst[d0], dst[d0 + ds], dst[d0 + 2 * ds]
    o3, o4, o5 = dst[d0 + 3 * ds], dst[d0 + 4 * ds], dst[d0 + 5 * ds]
    two = dst.dtype.type(2)
    four = dst.dtype.type(4)
    five = dst.dtype.type(5)
    for t in range(count):
        x0, x1, x2, x3, x4, x5 = a0[t], a1[t], a2[t], a3[t], a4[t], a5[t]
        p = x4 - four * x2
        q = x3 - four * x1
        r = x4 - x2
        s = two * (x3 - x1)
        o0[t] = four * x0 - five * x2 + x4
        o1[t] = p + q
        o2[t] = p - q
        o3[t] = r + s
        o4[t] = r - s
        o5[t] = four * x1 - five * x3 + x5


@njit(cache=True, nogil=True, error_model="numpy")
def _bt4(src, s0, ss, dst, d0, ds, count):
    """B^T d for F(2x2,3x3): 4 -> 4."""
    a0, a1, a2, a3 = src[s0], src[s0 + ss], src[s0 + 2 * ss], src[s0 + 3 * ss]
    o0, o1, o2, o3 = dst[d0], dst[d0 + ds], dst[d0 + 2 * ds], dst[d0 + 3 * ds]
    for t in range(count):
        x0, x1, x2, x3 = a0[t], a1[t], a2[t], a3[t]
        o0[t] = x0 - x2
        o1[t] = x1 + x2
        o2[t] = x2 - x1
        o3[t] = x1 - x3


@njit(cache=True, nogil=True, error_model="numpy")
def _at6(src, s0, ss, dst, d0, ds, count):
    """A^T m for F(4x4,3x3): 6 -> 4."""
    a0, a1, a2 = src[s0], src[s0 + ss], src[s0 + 2 * ss]
    a3, a4, a5 = src[s0 + 3 * ss], src[s0 + 4 * ss], src[s0 + 5 * ss]
    o0, o1, o2, o3 = dst[d0], dst[d0 + ds], dst[d0 + 2 * ds], dst[d0 + 3 * ds]
    two = dst.dtype.type(2)
    four = dst.dtype.type(4)
    eight = dst.dtype.type(8)
    for t in range(count):
        s12 = a1[t] + a2[t]
        d12 = a1[t] - a2[t]
        s34 = a3[t] + a4[t]
        d34 = a3[t] - a4[t]
        o0[t] = a0[t] + s12 + s34
        o1[t] = d12 + two * d34
        o2[t] = s12 + four * s34
        o3[t] = d12 + eight * d34 + a5[t]


@njit(cache=True, nogil=True, error_model="numpy")
def _at4(src, s0, ss, dst, d0, ds, count):
    """A^T m for F(2x2,3x3): 4 -> 2."""
    a0, a1, a2, a3 = src[s0], src[s0 + ss], src[s0 + 2 * ss], src[s0 + 3 * ss]
    o0, o1 = dst[d0], dst[d0 + ds]
    for t in range(count):
        o0[t] = a0[t] + a1[t] + a2[t]
        o1[t] = a1[t] - a2[t] - a3[t]


@njit(cache=True, nogil=True, error_model="numpy")
def _a6(src, s0, ss, dst, d0, ds, count):
    """A e for F(4x4,3x3) (the adjoint of A^T, used on dy tiles): 4 -> 6."""
    a0, a1, a2, a3 = src[s0], src[s0 + ss], src[s0 + 2 * ss], src[s0 + 3 * ss]
    o0, o1, o2 = dst[d0], dst[d0 + ds], dst[d0 + 2 * ds]
    o3, o4, o5 = dst[d0 + 3 * ds], dst[d0 + 4 * ds], dst[d0 + 5 * ds]
    two = dst.dtype.type(2)
    four = dst.dtype.type(4)
    eight = dst.dtype.type(8)
    for t in range(count):
        e0, e1, e2, e3 = a0[t], a1[t], a2[t], a3[t]
        s02 = e0 + e2
        s13 = e1 + e3
        t02 = e0 + four * e2
        t13 = two * e1 + eight * e3
        o0[t] = e0
        o1[t] = s02 + s13
        o2[t] = s02 - s13
        o3[t] = t02 + t13
        o4[t] = t02 - t13
        o5[t] = e3


@njit(cache=True, nogil=True, error_model="numpy")
def _a4(src, s0, ss, dst, d0, ds, count):
    """A e for F(2x2,3x3): 2 -> 4."""
    a0, a1 = src[s0], src[s0 + ss]
    o0, o1, o2, o3 = dst[d0], dst[d0 + ds], dst[d0 + 2 * ds], dst[d0 + 3 * ds]
    for t in range(count):
        e0, e1 = a0[t], a1[t]
        o0[t] = e0
        o1[t] = e0 + e1
        o2[t] = e0 - e1
        o3[t] = -e1


# ----------------------------------------------------------------------------------------------------------------
# Tile-group transforms (serial, inside one worker).


@njit(cache=True, nogil=True, error_model="numpy")
def _tile_origins(g0, count, tiles_per_image, tiles_w, m, tile_n, tile_r, tile_c):
    """Sample and top-left output pixel of tiles g0 .. g0+count-1 (numbered by sample, tile row, tile column)."""
    for t in range(count):
        g = g0 + t
        n = g // tiles_per_image
        rem = g - n * tiles_per_image
        tr = rem // tiles_w
        tile_n[t] = n
        tile_r[t] = tr * m
        tile_c[t] = (rem - tr * tiles_w) * m


@njit(cache=True, nogil=True, error_model="numpy")
def _gather(src, n, ch, r0, c0, size, dst, t):
    """dst[i*size + j, t] = src[n, ch, r0 + i, c0 + j], zero outside the plane."""
    h, w = src.shape[2], src.shape[3]
    plane = src[n, ch]
    zero = dst.dtype.type(0)
    if r0 >= 0 and c0 >= 0 and r0 + size <= h and c0 + size <= w:
        for i in range(size):
            row = plane[r0 + i, c0:]
            for j in range(size):
                dst[i * size + j, t] = row[j]
    else:
        for i in range(size):
            r = r0 + i
            if r < 0 or r >= h:
                for j in range(size):
                    dst[i * size + j, t] = zero
            else:
                for j in range(size):
                    c = c0 + j
                    dst[i * size + j, t] = plane[r, c] if 0 <= c < w else zero


@njit(cache=True, nogil=True, error_model="numpy")
def _input_transform(x, m, count, tile_n, tile_r, tile_c, v, scratch):
    """v[xi*C + c, t] = (B^T d B)[xi] of the (m+2)^2 patch of tile t, channel c (padding 1: patches start at -1)."""
    alpha = m + 2
    a2 = alpha * alpha
    channels = x.shape[1]
    d = scratch[:a2]
    rows = scratch[a2 : 2 * a2]
    for c in range(channels):
        for t in range(count):
            _gather(x, tile_n[t], c, tile_r[t] - 1, tile_c[t] - 1, alpha, d, t)
        for i in range(alpha):
            if m == 4:
                _bt6(d, i * alpha, 1, rows, i * alpha, 1, count)
            else:
                _bt4(d, i * alpha, 1, rows, i * alpha, 1, count)
        for j in range(alpha):
            if m == 4:
                _bt6(rows, j, alpha, v, j * channels + c, alpha * channels, count)
            else:
                _bt4(rows, j, alpha, v, j * channels + c, alpha * channels, count)


@njit(cache=True, nogil=True, error_model="numpy")
def _output_transform(mat, y, bias, m, count, tile_n, tile_r, tile_c, scratch):
    """y[n, co, tile] = (A^T M A)[co, t] + bias[co], clipped to the map; mat rows xi*C_out + co."""
    alpha = m + 2
    channels = y.shape[1]
    h, w = y.shape[2], y.shape[3]
    half = scratch[: alpha * m]
    out = scratch[alpha * m : alpha * m + m * m]
    has_bias = bias.shape[0] > 0
    for co in range(channels):
        for i in range(alpha):
            if m == 4:
                _at6(mat, i * alpha * channels + co, channels, half, i * m, 1, count)
            else:
                _at4(mat, i * alpha * channels + co, channels, half, i * m, 1, count)
        for b in range(m):
            if m == 4:
                _at6(half, b, m, out, b, m, count)
            else:
                _at4(half, b, m, out, b, m, count)
        bv = bias[co] if has_bias else y.dtype.type(0)
        for t in range(count):
            plane = y[tile_n[t], co]
            r0 = tile_r[t]
            c0 = tile_c[t]
            for a in range(min(m, h - r0)):
                row = plane[r0 + a, c0:]
                for b in range(min(m, w - c0)):
                    row[b] = out[a * m + b, t] + bv


@njit(cache=True, nogil=True, error_model="numpy")
def _gradient_transform(dy, m, count, tile_n, tile_r, tile_c, e, scratch):
    """e[xi*C_out + co, t] = (A dy A^T)[xi] of dy's m x m tile t (zero outside the map)."""
    alpha = m + 2
    channels = dy.shape[1]
    d = scratch[: m * m]
    rows = scratch[m * m : m * m + m * alpha]
    for co in range(channels):
        for t in range(count):
            _gather(dy, tile_n[t], co, tile_r[t], tile_c[t], m, d, t)
        for i in range(m):
            if m == 4:
                _a6(d, i * m, 1, rows, i * alpha, 1, count)
            else:
                _a4(d, i * m, 1, rows, i * alpha, 1, count)
        for j in range(alpha):
            if m == 4:
                _a6(rows, j, alpha, e, j * channels + co, alpha * channels, count)
            else:
                _a4(rows, j, alpha, e, j * channels + co, alpha * channels, count)


# ----------------------------------------------------------------------------------------------------------------
# Weight transforms: float64 arithmetic over rows of channels. Serial: a parallel region costs more to start on a
# loaded 2-core machine (milliseconds to wake a thread) than these take (about 2 ms for 512 x 512 channels).


@njit(cache=True, nogil=True, error_model="numpy")
def _g6(src, s0, ss, dst, d0, ds, count):
    """G g for F(4x4,3x3): 3 -> 6."""
    a0, a1, a2 = src[s0], src[s0 + ss], src[s0 + 2 * ss]
    o0, o1, o2 = dst[d0], dst[d0 + ds], dst[d0 + 2 * ds]
    o3, o4, o5 = dst[d0 + 3 * ds], dst[d0 + 4 * ds], dst[d0 + 5 * ds]
    for t in range(count):
        g0, g1, g2 = a0[t], a1[t], a2[t]
        s02 = g0 + g2
        p = g0 / 24.0 + g2 / 6.0
        q = g1 / 12.0
        o0[t] = g0 / 4.0
        o1[t] = -(s02 + g1) / 6.0
        o2[t] = -(s02 - g1) / 6.0
        o3[t] = p + q
        o4[t] = p - q
        o5[t] = g2


@njit(cache=True, nogil=True, error_model="numpy")
def _g4(src, s0, ss, dst, d0, ds, count):
    """G g for F(2x2,3x3): 3 -> 4."""
    a0, a1, a2 = src[s0], src[s0 + ss], src[s0 + 2 * ss]
    o0, o1, o2, o3 = dst[d0], dst[d0 + ds], dst[d0 + 2 * ds], dst[d0 + 3 * ds]
    for t in range(count):
        g0, g1, g2 = a0[t], a1[t], a2[t]
        s02 = g0 + g2
        o0[t] = g0
        o1[t] = (s02 + g1) / 2.0
        o2[t] = (s02 - g1) / 2.0
        o3[t] = g2


@njit(cache=True, nogil=True, error_model="numpy")
def _gt6(src, s0, ss, dst, d0, ds, count):
    """G^T w for F(4x4,3x3) (the adjoint of G): 6 -> 3."""
    a0, a1, a2 = src[s0], src[s0 + ss], src[s0 + 2 * ss]
    a3, a4, a5 = src[s0 + 3 * ss], src[s0 + 4 * ss], src[s0 + 5 * ss]
    o0, o1, o2 = dst[d0], dst[d0 + ds], dst[d0 + 2 * ds]
    for t in range(count):
        s12 = a1[t] + a2[t]
        s34 = a3[t] + a4[t]
        o0[t] = a0[t] / 4.0 - s12 / 6.0 + s34 / 24.0
        o1[t] = (a2[t] - a1[t]) / 6.0 + (a3[t] - a4[t]) / 12.0
        o2[t] = (s34 - s12) / 6.0 + a5[t]


@njit(cache=True, nogil=True, error_model="numpy")
def _gt4(src, s0, ss, dst, d0, ds, count):
    """G^T w for F(2x2,3x3): 4 -> 3."""
    a0, a1, a2, a3 = src[s0], src[s0 + ss], src[s0 + 2 * ss], src[s0 + 3 * ss]
    o0, o1, o2 = dst[d0], dst[d0 + ds], dst[d0 + 2 * ds]
    for t in range(count):
        s12 = (a1[t] + a2[t]) / 2.0
        o0[t] = a0[t] + s12
        o1[t] = (a1[t] - a2[t]) / 2.0
        o2[t] = s12 + a3[t]


@njit(cache=True, nogil=True, error_model="numpy")
def _transform_weights(weight, m, flip, u):
    """u[a*alpha + b, r, c] = (G g G^T)[a, b] with g = weight[r, c] (flip False) or rot180(weight[c, r]) (True)."""
    alpha = m + 2
    rows, cols = u.shape[1], u.shape[2]
    u2 = u.reshape(alpha * alpha * rows, cols)
    taps = np.empty((9, cols))
    half = np.empty((alpha * 3, cols))
    for r in range(rows):
        for c in range(cols):
            g = weight[c, r] if flip else weight[r, c]
            for k in range(9):
                taps[k, c] = g[2 - k // 3, 2 - k % 3] if flip else g[k // 3, k % 3]
        # half[a*3 + l] = (G g)[a, l]: columns of the kernel; then rows of that, into u.
        for col in range(3):
            if m == 4:
                _g6(taps, col, 3, half, col, 3, cols)
            else:
                _g4(taps, col, 3, half, col, 3, cols)
        for a in range(alpha):
            if m == 4:
                _g6(half, a * 3, 1, u2, a * alpha * rows + r, rows, cols)
            else:
                _g4(half, a * 3, 1, u2, a * alpha * rows + r, rows, cols)


@njit(cache=True, nogil=True, error_model="numpy")
def _inverse_weight_transform(parts, m, dweight):
    """dweight[co, ci] = G^T (sum over workers of parts[t, :, co, ci], in worker order) G, in float64."""
    alpha = m + 2
    a2 = alpha * alpha
    workers = parts.shape[0]
    c_out, c_in = dweight.shape[0], dweight.shape[1]
    merged = np.empty((a2, c_in))
    half = np.empty((3 * alpha, c_in))
    taps = np.empty((9, c_in))
    for co in range(c_out):
        for xi in range(a2):
            dst = merged[xi]
            src = parts[0, xi, co]
            for c in range(c_in):
                dst[c] = src[c]
            for t in range(1, workers):
                src = parts[t, xi, co]
                for c in range(c_in):
                    dst[c] += src[c]
        # half[k*alpha + b] = (G^T merged)[k, b]; taps[k*3 + l] = (half G)[k, l].
        for b in range(alpha):
            if m == 4:
                _gt6(merged, b, alpha, half, b, alpha, c_in)
            else:
                _gt4(merged, b, alpha, half, b, alpha, c_in)
        for k in range(3):
            if m == 4:
                _gt6(half, k * alpha, 1, taps, k * 3, 1, c_in)
            else:
                _gt4(half, k * alpha, 1, taps, k * 3, 1, c_in)
        for c in range(c_in):
            g = dweight[co, c]
            for k in range(9):
                g[k // 3, k % 3] = taps[k, c]


# ----------------------------------------------------------------------------------------------------------------
# Workers and parallel drivers.


@njit(cache=True, nogil=True, error_model="numpy")
def _forward_worker(sgemm, dgemm, x, u, bias, y, m, g_start, g_stop, group, v_buf, m_buf, scratch, origins):
    """y for tiles g_start .. g_stop-1, in groups of `group` tiles."""
    alpha = m + 2
    a2 = alpha * alpha
    c_in = x.shape[1]
    c_out = u.shape[1]
    tiles_w = -(-y.shape[3] // m)
    tiles_per_image = tiles_w * -(-y.shape[2] // m)
    tile_n, tile_r, tile_c = origins[0], origins[1], origins[2]
    for g0 in range(g_start, g_stop, group):
        count = min(group, g_stop - g0)
        _tile_origins(g0, count, tiles_per_image, tiles_w, m, tile_n, tile_r, tile_c)
        v = v_buf[: a2 * c_in * count].reshape(a2 * c_in, count)
        _input_transform(x, m, count, tile_n, tile_r, tile_c, v, scratch)
        mat = m_buf[: a2 * c_out * count].reshape(a2 * c_out, count)
        v3 = v.reshape(a2, c_in, count)
        m3 = mat.reshape(a2, c_out, count)
        for xi in range(a2):
            _gemm(sgemm, dgemm, u[xi], False, v3[xi], False, m3[xi], 0.0)
        _output_transform(mat, y, bias, m, count, tile_n, tile_r, tile_c, scratch)


@njit(cache=True, nogil=True, error_model="numpy")
def _weight_worker(sgemm, dgemm, dy, x, dw_hat, m, g_start, g_stop, group, v_buf, e_buf, scratch, origins):
    """dw_hat[xi] = sum over tiles g_start .. g_stop-1 of (A dy A^T)[xi] (B^T d B)[xi]^T (zero if no tiles)."""
    alpha = m + 2
    a2 = alpha * alpha
    c_in = x.shape[1]
    c_out = dy.shape[1]
    tiles_w = -(-dy.shape[3] // m)
    tiles_per_image = tiles_w * -(-dy.shape[2] // m)
    tile_n, tile_r, tile_c = origins[0], origins[1], origins[2]
    if g_stop <= g_start:
        dw_hat[:] = 0
    for g0 in range(g_start, g_stop, group):
        count = min(group, g_stop - g0)
        _tile_origins(g0, count, tiles_per_image, tiles_w, m, tile_n, tile_r, tile_c)
        v = v_buf[: a2 * c_in * count].reshape(a2 * c_in, count)
        _input_transform(x, m, count, tile_n, tile_r, tile_c, v, scratch)
        e = e_buf[: a2 * c_out * count].reshape(a2 * c_out, count)
        _gradient_transform(dy, m, count, tile_n, tile_r, tile_c, e, scratch)
        v3 = v.reshape(a2, c_in, count)
        e3 = e.reshape(a2, c_out, count)
        for xi in range(a2):
            _gemm(sgemm, dgemm, e3[xi], False, v3[xi], True, dw_hat[xi], 0.0 if g0 == g_start else 1.0)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _forward_parallel(sgemm, dgemm, x, u, bias, y, m, workers, group, v_ws, m_ws, scratch_ws, origins_ws):
    n = x.shape[0]
    tiles_per_image = (-(-y.shape[2] // m)) * (-(-y.shape[3] // m))
    for t in prange(workers):
        _forward_worker(
            sgemm, dgemm, x, u, bias, y, m,
            (n * t // workers) * tiles_per_image, (n * (t + 1) // workers) * tiles_per_image,
            group, v_ws[t], m_ws[t], scratch_ws[t], origins_ws[t],
        )  # fmt: skip


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _weight_parallel(sgemm, dgemm, dy, x, dw_ws, m, workers, group, v_ws, e_ws, scratch_ws, origins_ws):
    n = x.shape[0]
    tiles_per_image = (-(-dy.shape[2] // m)) * (-(-dy.shape[3] // m))
    for t in prange(workers):
        _weight_worker(
            sgemm, dgemm, dy, x, dw_ws[t], m,
            (n * t // workers) * tiles_per_image, (n * (t + 1) // workers) * tiles_per_image,
            group, v_ws[t], e_ws[t], scratch_ws[t], origins_ws[t],
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Planning and public functions.


def _plan(n: int, tiles: int, c_a: int, c_b: int, m: int, itemsize: int) -> tuple[int, int, bool]:
    """(workers, tiles per group, parallel) from the shape and thread count only (never from timing)."""
    a2 = (m + 2) ** 2
    macs = tiles * a2 * c_a * c_b
    parallel = macs >= _PARALLEL_MIN_MACS and _single_threaded_blas.available()
    workers = max(1, min(n, numba.get_num_threads())) if parallel else 1
    per_worker = -(-tiles // workers)
    group = max(_MIN_GROUP_TILES, _GROUP_BYTES // (a2 * (c_a + c_b) * itemsize))
    group = min(group, per_worker, _MAX_GROUP_TILES)
    # Even groups: the last one is not a sliver.
    return workers, -(-per_worker // -(-per_worker // group)), parallel


def _workspaces(workers: int, group: int, m: int, c_a: int, c_b: int, dtype) -> tuple[np.ndarray, ...]:
    a2 = (m + 2) ** 2
    return (
        np.empty((workers, a2 * c_a * group), dtype=dtype),
        np.empty((workers, a2 * c_b * group), dtype=dtype),
        np.empty((workers, 2 * a2, group), dtype=dtype),
        np.empty((workers, 3, group), dtype=np.int64),
    )


def _check_3x3(weight: np.ndarray) -> None:
    if weight.shape[2:] != (3, 3) or min(weight.shape[:2]) < 1:
        raise ValueError(f"weight: Winograd convolution needs shape (C_out, C_in, 3, 3), got {weight.shape}")


def _check_tile(tile: int | None, h: int, w: int) -> int:
    if tile is None:
        return output_tile(h, w)
    if tile not in (2, 4):
        raise ValueError(f"tile: expected None, 2 or 4 (the output tile of F(m x m, 3x3)), got {tile!r}")
    return int(tile)


def _run_forward(x: np.ndarray, u: np.ndarray, bias: np.ndarray, y: np.ndarray, m: int) -> None:
    n, c_in, h, w = x.shape
    c_out = u.shape[1]
    tiles = n * (-(-h // m)) * (-(-w // m))
    workers, group, parallel = _plan(n, tiles, c_in, c_out, m, x.itemsize)
    v_ws, m_ws, scratch_ws, origins_ws = _workspaces(workers, group, m, c_in, c_out, x.dtype)
    if parallel:
        with _single_threaded_blas:
            _forward_parallel(_SGEMM, _DGEMM, x, u, bias, y, m, workers, group, v_ws, m_ws, scratch_ws, origins_ws)
    else:
        _forward_worker(_SGEMM, _DGEMM, x, u, bias, y, m, 0, tiles, group, v_ws[0], m_ws[0], scratch_ws[0],
                        origins_ws[0])  # fmt: skip


def winograd_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, tile: int | None = None
) -> np.ndarray:
    """3x3 cross-correlation, stride 1, padding 1, by Winograd F(m x m, 3x3); same result as conv2d_forward.

    x: (N, C_in, H, W) float32 or float64; weight: (C_out, C_in, 3, 3); bias: (C_out,) or None; x's dtype for all.
    tile: output tile m (2 or 4), None for output_tile(H, W). Returns y (N, C_out, H, W).
    """
    x = _float_array("x", x, 4)
    weight = _float_array("weight", weight, 4, x.dtype)
    _check_3x3(weight)
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    if weight.shape[1] != c_in:
        raise ValueError(f"weight: expected {c_in} input channels (x has shape {x.shape}), got shape {weight.shape}")
    if min(h, w) < 1:
        raise ValueError(f"x: expected H, W >= 1, got shape {x.shape}")
    if bias is None:
        bias = np.empty(0, dtype=x.dtype)
    else:
        bias = _float_array("bias", bias, 1, x.dtype)
        if bias.shape != (c_out,):
            raise ValueError(f"bias: expected shape ({c_out},), got {bias.shape}")
    m = _check_tile(tile, h, w)
    y = np.empty((n, c_out, h, w), dtype=x.dtype)
    if n == 0:
        return y
    u = np.empty(((m + 2) ** 2, c_out, c_in), dtype=x.dtype)
    _transform_weights(weight, m, False, u)
    _run_forward(x, u, bias, y, m)
    return y


def winograd_backward_input(dy: np.ndarray, weight: np.ndarray, tile: int | None = None) -> np.ndarray:
    """dx of winograd_forward: dy correlated with the kernel rotated 180 degrees, channels swapped.

    dy: (N, C_out, H, W); weight: (C_out, C_in, 3, 3) in dy's dtype. Returns dx (N, C_in, H, W).
    """
    dy = _float_array("dy", dy, 4)
    weight = _float_array("weight", weight, 4, dy.dtype)
    _check_3x3(weight)
    n, c_out, h, w = dy.shape
    c_in = weight.shape[1]
    if weight.shape[0] != c_out:
        raise ValueError(f"weight: expected {c_out} output channels (dy has shape {dy.shape}), got {weight.shape}")
    if min(h, w) < 1:
        raise ValueError(f"dy: expected H, W >= 1, got shape {dy.shape}")
    m = _check_tile(tile, h, w)
    dx = np.empty((n, c_in, h, w), dtype=dy.dtype)
    if n == 0:
        return dx
    u = np.empty(((m + 2) ** 2, c_in, c_out), dtype=dy.dtype)
    _transform_weights(weight, m, True, u)
    _run_forward(dy, u, np.empty(0, dtype=dy.dtype), dx, m)
    return dx


def winograd_backward_weight(dy: np.ndarray, x: np.ndarray, dweight: np.ndarray, tile: int | None = None) -> None:
    """dweight (overwritten in place) of winograd_forward: the adjoint Winograd transform, summed over the batch.

    dy: (N, C_out, H, W); x: (N, C_in, H, W) the forward input; dweight: (C_out, C_in, 3, 3), x's dtype for all.
    """
    x = _float_array("x", x, 4)
    dy = _float_array("dy", dy, 4, x.dtype)
    n, c_in, h, w = x.shape
    c_out = dy.shape[1]
    if dy.shape[0] != n or dy.shape[2:] != (h, w):
        raise ValueError(f"dy: expected shape ({n}, C_out, {h}, {w}) (the forward output), got {dy.shape}")
    _check_output("dweight", dweight, (c_out, c_in, 3, 3), x.dtype)
    if min(h, w) < 1 or c_in < 1 or c_out < 1:
        raise ValueError(f"x: expected C_in, H, W >= 1 and dy C_out >= 1, got {x.shape} and {dy.shape}")
    m = _check_tile(tile, h, w)
    a2 = (m + 2) ** 2
    tiles = n * (-(-h // m)) * (-(-w // m))
    workers, group, parallel = _plan(max(n, 1), max(tiles, 1), c_in, c_out, m, x.itemsize)
    v_ws, e_ws, scratch_ws, origins_ws = _workspaces(workers, group, m, c_in, c_out, x.dtype)
    dw_ws = np.empty((workers, a2, c_out, c_in), dtype=x.dtype)
    if parallel:
        with _single_threaded_blas:
            _weight_parallel(_SGEMM, _DGEMM, dy, x, dw_ws, m, workers, group, v_ws, e_ws, scratch_ws, origins_ws)
    else:
        _weight_worker(_SGEMM, _DGEMM, dy, x, dw_ws[0], m, 0, tiles, group, v_ws[0], e_ws[0], scratch_ws[0],
                       origins_ws[0])  # fmt: skip
    if dweight.flags.c_contiguous:
        _inverse_weight_transform(dw_ws, m, dweight)
    else:
        out = np.empty((c_out, c_in, 3, 3), dtype=x.dtype)
        _inverse_weight_transform(dw_ws, m, out)
        dweight[...] = out
