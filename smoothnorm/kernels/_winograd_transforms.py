"""Winograd transforms for kernels/winograd.py: the one-dimensional transforms, the tile-group transforms of inputs,
outputs and output gradients, and the weight transforms (see winograd.py's docstring for the method).

Tile groups. A group is `nb` consecutive images times `trows` consecutive tile rows (all of them when whole images
fit a group), and its tiles are numbered t = (r*tw + tc)*nb + b for tile row tr0 + r, tile column tc and image
n0 + b: the image is the fastest axis, then the tile column. Every transformed tensor of a group (V, M, dY^) is a
matrix with one row per (transform point, channel) and one column per tile, as the per-point GEMMs want, and every
transform loop runs over contiguous runs of tiles, so it vectorises.

The input transform never gathers (m+2) x (m+2) patches: each input plane is split once into m column phases
(phase p holds the padded columns m*tc + p, image fastest), every pixel read once. Neighbouring tiles' patches
overlap by two columns, and with phases they are shifted views of the same rows: B^T along columns is a combination
of m+2 phase rows (whole rows of tiles at once), and B along rows a combination of the m phases and the first two
phases shifted by one tile. The output (A^T M A) and dy (A dy A^T) transforms run over the whole group's tiles;
only the moves between an image's pixels and the group layout are scalar (one per pixel).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# ----------------------------------------------------------------------------------------------------------------
# One-dimensional transforms over runs of tiles: x0.. are the operands, o0.. the results, one value per tile, on
# 1-D views (a bare loop index, so nothing keeps LLVM from vectorising).


@njit(cache=True, nogil=True, error_model="numpy")
def _bt6(x0, x1, x2, x3, x4, x5, o0, o1, o2, o3, o4, o5, count):
    """B^T d for F(4x4,3x3): 6 -> 6."""
    two = o0.dtype.type(2)
    four = o0.dtype.type(4)
    five = o0.dtype.type(5)
    for t in range(count):
        a0, a1, a2, a3, a4, a5 = x0[t], x1[t], x2[t], x3[t], x4[t], x5[t]
        p = a4 - four * a2
        q = a3 - four * a1
        r = a4 - a2
        s = two * (a3 - a1)
        o0[t] = four * a0 - five * a2 + a4
        o1[t] = p + q
        o2[t] = p - q
        o3[t] = r + s
        o4[t] = r - s
        o5[t] = four * a1 - five * a3 + a5


@njit(cache=True, nogil=True, error_model="numpy")
def _bt4(x0, x1, x2, x3, o0, o1, o2, o3, count):
    """B^T d for F(2x2,3x3): 4 -> 4."""
    for t in range(count):
        a0, a1, a2, a3 = x0[t], x1[t], x2[t], x3[t]
        o0[t] = a0 - a2
        o1[t] = a1 + a2
        o2[t] = a2 - a1
        o3[t] = a1 - a3


@njit(cache=True, nogil=True, error_model="numpy")
def _bt_rows(m, src, s0, ss, dst, d0, ds, count):
    """dst rows d0 + k*ds = B^T (src rows s0 + k*ss), over the first count columns."""
    if m == 4:
        _bt6(src[s0], src[s0 + ss], src[s0 + 2 * ss], src[s0 + 3 * ss], src[s0 + 4 * ss], src[s0 + 5 * ss],
             dst[d0], dst[d0 + ds], dst[d0 + 2 * ds], dst[d0 + 3 * ds], dst[d0 + 4 * ds], dst[d0 + 5 * ds],
             count)  # fmt: skip
    else:
        _bt4(src[s0], src[s0 + ss], src[s0 + 2 * ss], src[s0 + 3 * ss],
             dst[d0], dst[d0 + ds], dst[d0 + 2 * ds], dst[d0 + 3 * ds], count)  # fmt: skip


@njit(cache=True, nogil=True, error_model="numpy")
def _at_rows(m, src, s0, ss, dst, d0, ds, count):
    """dst rows d0 + k*ds = A^T (src rows s0 + k*ss): m+2 -> m (the output transform)."""
    a0, a1, a2, a3 = src[s0], src[s0 + ss], src[s0 + 2 * ss], src[s0 + 3 * ss]
    if m == 4:
        a4, a5 = src[s0 + 4 * ss], src[s0 + 5 * ss]
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
    else:
        o0, o1 = dst[d0], dst[d0 + ds]
        for t in range(count):
            o0[t] = a0[t] + a1[t] + a2[t]
            o1[t] = a1[t] - a2[t] - a3[t]


@njit(cache=True, nogil=True, error_model="numpy")
def _a_rows(m, src, s0, ss, dst, d0, ds, count):
    """dst rows d0 + k*ds = A (src rows s0 + k*ss): m -> m+2 (the adjoint of A^T, on dy tiles)."""
    if m == 4:
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
    else:
        a0, a1 = src[s0], src[s0 + ss]
        o0, o1, o2, o3 = dst[d0], dst[d0 + ds], dst[d0 + 2 * ds], dst[d0 + 3 * ds]
        for t in range(count):
            e0, e1 = a0[t], a1[t]
            o0[t] = e0
            o1[t] = e0 + e1
            o2[t] = e0 - e1
            o3[t] = -e1


# ----------------------------------------------------------------------------------------------------------------
# Tile-group transforms (serial, inside one worker). A group: images n0 .. n0+nb-1, tile rows tr0 .. tr0+trows-1.


@njit(cache=True, nogil=True, error_model="numpy")
def _input_transform(x, m, n0, nb, tr0, trows, v, planes_buf, cols_buf):
    """v[xi*C + c, t] = (B^T d B)[xi] of the (m+2)^2 input patch of tile t, channel c (padding 1: zero outside).

    planes_buf: at least m*(m*trows + 2)*(tw + 1)*nb values, cols_buf (m+2)*m*(tw + 1)*nb (module doc).
    """
    alpha = m + 2
    channels, h, w = x.shape[1], x.shape[2], x.shape[3]
    tw = -(-w // m)
    width = (tw + 1) * nb
    prows = m * trows + 2
    run = tw * nb
    # planes[p*prows + i, tc*nb + b] = padded row i of the group (image row m*tr0 - 1 + i), padded column m*tc + p
    # (image column m*tc + p - 1) of image n0 + b.
    planes = planes_buf[: m * prows * width].reshape(m * prows, width)
    cols = cols_buf[: alpha * m * width].reshape(alpha * m, width)
    # The padding stays zero: every channel rewrites the same interior.
    planes[:] = 0
    row0 = m * tr0 - 1
    r_lo = max(row0, 0)
    r_hi = min(h, row0 + prows)
    for c in range(channels):
        for b in range(nb):
            plane = x[n0 + b, c]
            for r in range(r_lo, r_hi):
                src = plane[r]
                for p in range(m):
                    dst = planes[p * prows + r - row0, b:]
                    # Image column tc*m + p - 1 must lie in 0 .. w-1.
                    for tc in range(1 if p == 0 else 0, (w - p) // m + 1):
                        dst[tc * nb] = src[tc * m + p - 1]
        for r in range(trows):
            # cols[i*m + p] = (B^T along the m+2 padded rows of tile row r)[i], phase p.
            for p in range(m):
                _bt_rows(m, planes, p * prows + m * r, 1, cols, p, m, width)
            # B along columns: the m phases, then phases 0 and 1 one tile to the right; into v's run of tiles.
            lo = r * run
            for i in range(alpha):
                k = i * m
                dst = (i * alpha) * channels + c
                if m == 4:
                    _bt6(cols[k, :run], cols[k + 1, :run], cols[k + 2, :run], cols[k + 3, :run],
                         cols[k, nb : nb + run], cols[k + 1, nb : nb + run],
                         v[dst, lo:], v[dst + channels, lo:], v[dst + 2 * channels, lo:],
                         v[dst + 3 * channels, lo:], v[dst + 4 * channels, lo:], v[dst + 5 * channels, lo:],
                         run)  # fmt: skip
                else:
                    _bt4(cols[k, :run], cols[k + 1, :run], cols[k, nb : nb + run], cols[k + 1, nb : nb + run],
                         v[dst, lo:], v[dst + channels, lo:], v[dst + 2 * channels, lo:],
                         v[dst + 3 * channels, lo:], run)  # fmt: skip


@njit(cache=True, nogil=True, error_model="numpy")
def _output_transform(mat, y, bias, m, n0, nb, tr0, trows, scratch):
    """y[n0 + b, co, tile] = (A^T M A)[co, t] + bias[co], clipped to the map; mat rows xi*C_out + co.

    scratch: at least (m+2)*m + m*m values per tile of the group.
    """
    alpha = m + 2
    channels, h, w = y.shape[1], y.shape[2], y.shape[3]
    tw = -(-w // m)
    run = tw * nb
    count = trows * run
    half = scratch[: alpha * m * count].reshape(alpha * m, count)
    out = scratch[alpha * m * count : (alpha * m + m * m) * count].reshape(m * m, count)
    has_bias = bias.shape[0] > 0
    for co in range(channels):
        for i in range(alpha):
            _at_rows(m, mat, i * alpha * channels + co, channels, half, i * m, 1, count)
        for j in range(m):
            _at_rows(m, half, j, m, out, j, m, count)
        bv = bias[co] if has_bias else y.dtype.type(0)
        for b in range(nb):
            for r in range(trows):
                for a in range(min(m, h - m * (tr0 + r))):
                    row = y[n0 + b, co, m * (tr0 + r) + a]
                    for j in range(m):
                        src = out[a * m + j, r * run + b :]
                        dst = row[j:]
                        for tc in range((w - j + m - 1) // m):
                            dst[tc * m] = src[tc * nb] + bv


@njit(cache=True, nogil=True, error_model="numpy")
def _gradient_transform(dy, m, n0, nb, tr0, trows, e, scratch):
    """e[xi*C_out + co, t] = (A dy A^T)[xi] of dy's m x m tile t (zero outside the map).

    scratch: at least m*m + m*(m+2) values per tile of the group.
    """
    alpha = m + 2
    channels, h, w = dy.shape[1], dy.shape[2], dy.shape[3]
    tw = -(-w // m)
    run = tw * nb
    count = trows * run
    d = scratch[: m * m * count].reshape(m * m, count)
    rows = scratch[m * m * count : (m * m + m * alpha) * count].reshape(m * alpha, count)
    if h % m or w % m:
        d[:] = 0  # tiles past the map's edge; every channel rewrites the same interior
    for co in range(channels):
        for b in range(nb):
            for r in range(trows):
                for a in range(min(m, h - m * (tr0 + r))):
                    row = dy[n0 + b, co, m * (tr0 + r) + a]
                    for j in range(m):
                        src = row[j:]
                        dst = d[a * m + j, r * run + b :]
                        for tc in range((w - j + m - 1) // m):
                            dst[tc * nb] = src[tc * m]
        for i in range(m):
            _a_rows(m, d, i * m, 1, rows, i * alpha, 1, count)
        for j in range(alpha):
            _a_rows(m, rows, j, alpha, e, j * channels + co, alpha * channels, count)


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
