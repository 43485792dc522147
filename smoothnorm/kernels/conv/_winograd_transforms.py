"""Winograd transforms for kernels/conv/winograd.py: the one-dimensional transforms, the tile-group transforms of
inputs, outputs and output gradients, and the weight transforms (see winograd.py's docstring for the method).

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
from numba import njit, prange

from smoothnorm.kernels._division import divide

# ----------------------------------------------------------------------------------------------------------------
# One-dimensional transforms over runs of tiles, between rows of 2-D arrays (one value per tile). Each result row is
# its own loop: one store and at most five loads, so LLVM's runtime alias checks stay few enough to vectorise, and
# the loops index 2-D arrays directly (no array views: in Numba each view costs atomic reference counting, which
# dominated these loops when they took views). Column offsets are unsigned, so indexing has no wraparound tests.


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _bt(m, src, r0, r1, r2, r3, r4, r5, lo, hi, dst, d0, ds, dc, count):
    """dst[d0 + k*ds, dc + t] = (B^T x)[k]: x[k] = src[r_k, lo + t] for k < m, src[r_k, hi + t] for k >= m."""
    o0, o1, o2, o3 = d0, d0 + ds, d0 + 2 * ds, d0 + 3 * ds
    if m == 4:
        two = dst.dtype.type(2)
        four = dst.dtype.type(4)
        five = dst.dtype.type(5)
        for t in range(count):
            u = np.uintp(t)
            dst[o0, dc + u] = four * src[r0, lo + u] - five * src[r2, lo + u] + src[r4, hi + u]
        for t in range(count):
            u = np.uintp(t)
            dst[o1, dc + u] = (src[r4, hi + u] - four * src[r2, lo + u]) + (src[r3, lo + u] - four * src[r1, lo + u])
        for t in range(count):
            u = np.uintp(t)
            dst[o2, dc + u] = (src[r4, hi + u] - four * src[r2, lo + u]) - (src[r3, lo + u] - four * src[r1, lo + u])
        for t in range(count):
            u = np.uintp(t)
            dst[o3, dc + u] = (src[r4, hi + u] - src[r2, lo + u]) + two * (src[r3, lo + u] - src[r1, lo + u])
        for t in range(count):
            u = np.uintp(t)
            dst[o3 + ds, dc + u] = (src[r4, hi + u] - src[r2, lo + u]) - two * (src[r3, lo + u] - src[r1, lo + u])
        for t in range(count):
            u = np.uintp(t)
            dst[o3 + 2 * ds, dc + u] = four * src[r1, lo + u] - five * src[r3, lo + u] + src[r5, hi + u]
    else:
        # Operands 2 and 3 are r2, r3 at hi.
        for t in range(count):
            u = np.uintp(t)
            dst[o0, dc + u] = src[r0, lo + u] - src[r2, hi + u]
        for t in range(count):
            u = np.uintp(t)
            dst[o1, dc + u] = src[r1, lo + u] + src[r2, hi + u]
        for t in range(count):
            u = np.uintp(t)
            dst[o2, dc + u] = src[r2, hi + u] - src[r1, lo + u]
        for t in range(count):
            u = np.uintp(t)
            dst[o3, dc + u] = src[r1, lo + u] - src[r3, hi + u]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _at(m, src, s0, ss, dst, d0, ds, count):
    """dst[d0 + k*ds, t] = (A^T x)[k], x[k] = src[s0 + k*ss, t]: m+2 -> m (the output transform)."""
    a0, a1, a2, a3 = s0, s0 + ss, s0 + 2 * ss, s0 + 3 * ss
    if m == 4:
        a4, a5 = s0 + 4 * ss, s0 + 5 * ss
        two = dst.dtype.type(2)
        four = dst.dtype.type(4)
        eight = dst.dtype.type(8)
        for t in range(count):
            dst[d0, t] = src[a0, t] + (src[a1, t] + src[a2, t]) + (src[a3, t] + src[a4, t])
        for t in range(count):
            dst[d0 + ds, t] = (src[a1, t] - src[a2, t]) + two * (src[a3, t] - src[a4, t])
        for t in range(count):
            dst[d0 + 2 * ds, t] = (src[a1, t] + src[a2, t]) + four * (src[a3, t] + src[a4, t])
        for t in range(count):
            dst[d0 + 3 * ds, t] = (src[a1, t] - src[a2, t]) + eight * (src[a3, t] - src[a4, t]) + src[a5, t]
    else:
        for t in range(count):
            dst[d0, t] = src[a0, t] + src[a1, t] + src[a2, t]
        for t in range(count):
            dst[d0 + ds, t] = src[a1, t] - src[a2, t] - src[a3, t]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _a(m, src, s0, ss, dst, d0, ds, count):
    """dst[d0 + k*ds, t] = (A x)[k], x[k] = src[s0 + k*ss, t]: m -> m+2 (the adjoint of A^T, on dy tiles)."""
    if m == 4:
        e0, e1, e2, e3 = s0, s0 + ss, s0 + 2 * ss, s0 + 3 * ss
        two = dst.dtype.type(2)
        four = dst.dtype.type(4)
        eight = dst.dtype.type(8)
        for t in range(count):
            dst[d0, t] = src[e0, t]
        for t in range(count):
            dst[d0 + ds, t] = (src[e0, t] + src[e2, t]) + (src[e1, t] + src[e3, t])
        for t in range(count):
            dst[d0 + 2 * ds, t] = (src[e0, t] + src[e2, t]) - (src[e1, t] + src[e3, t])
        for t in range(count):
            dst[d0 + 3 * ds, t] = (src[e0, t] + four * src[e2, t]) + (two * src[e1, t] + eight * src[e3, t])
        for t in range(count):
            dst[d0 + 4 * ds, t] = (src[e0, t] + four * src[e2, t]) - (two * src[e1, t] + eight * src[e3, t])
        for t in range(count):
            dst[d0 + 5 * ds, t] = src[e3, t]
    else:
        e0, e1 = s0, s0 + ss
        for t in range(count):
            dst[d0, t] = src[e0, t]
        for t in range(count):
            dst[d0 + ds, t] = src[e0, t] + src[e1, t]
        for t in range(count):
            dst[d0 + 2 * ds, t] = src[e0, t] - src[e1, t]
        for t in range(count):
            dst[d0 + 3 * ds, t] = -src[e1, t]


# ----------------------------------------------------------------------------------------------------------------
# Tile-group transforms (serial, inside one worker). A group: images n0 .. n0+nb-1, tile rows tr0 .. tr0+trows-1.


@njit(cache=True, nogil=True, error_model="numpy")
def _pixel_offsets(channels, h, w, m, n0, nb, tr0, trows):
    """off[t, a*m + j] = flat index in an (N, channels, h, w) array, channel 0, of pixel (a, j) of tile t."""
    tw = w // m
    run = tw * nb
    off = np.empty((trows * run, m * m), dtype=np.uintp)
    for r in range(trows):
        for tc in range(tw):
            for b in range(nb):
                t = r * run + tc * nb + b
                base = ((n0 + b) * channels * h + m * (tr0 + r)) * w + m * tc
                for a in range(m):
                    for j in range(m):
                        off[t, a * m + j] = base + a * w + j
    return off


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
    flat = planes_buf[: m * prows * width]
    planes = flat.reshape(m * prows, width)
    cols = cols_buf[: alpha * m * width].reshape(alpha * m, width)
    # The padding stays zero: every channel rewrites the same interior.
    flat[:] = 0
    row0 = m * tr0 - 1
    r_lo = max(row0, 0)
    r_hi = min(h, row0 + prows)
    # Image column q - 1 goes to phase q % m, tile column q // m (unsigned offsets: no wraparound tests).
    offsets = np.empty(w, dtype=np.uintp)
    for col in range(w):
        offsets[col] = ((col + 1) % m) * prows * width + ((col + 1) // m) * nb
    zero = np.uintp(0)
    shift = np.uintp(nb)
    for c in range(channels):
        for b in range(nb):
            plane = x[n0 + b, c]
            for r in range(r_lo, r_hi):
                src = plane[r]
                dst = flat[(r - row0) * width + b :]
                for col in range(w):
                    dst[offsets[col]] = src[col]
        for r in range(trows):
            # cols[i*m + p] = (B^T along the m+2 padded rows of tile row r)[i], phase p.
            for p in range(m):
                s0 = p * prows + m * r
                _bt(m, planes, s0, s0 + 1, s0 + 2, s0 + 3, s0 + 4, s0 + 5, zero, zero, cols, p, m, zero, width)
            # B along columns: the m phases, then phases 0 and 1 one tile to the right; into v's run of tiles.
            lo = np.uintp(r * run)
            for i in range(alpha):
                k = i * m
                d0 = i * alpha * channels + c
                if m == 4:
                    _bt(m, cols, k, k + 1, k + 2, k + 3, k, k + 1, zero, shift, v, d0, channels, lo, run)
                else:
                    _bt(m, cols, k, k + 1, k, k + 1, k, k + 1, zero, shift, v, d0, channels, lo, run)


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
    whole = h % m == 0 and w % m == 0
    y_flat = y.reshape(y.size)
    off = _pixel_offsets(channels, h, w, m, n0, nb, tr0, trows) if whole else np.empty((0, 0), dtype=np.uintp)
    for co in range(channels):
        for i in range(alpha):
            _at(m, mat, i * alpha * channels + co, channels, half, i * m, 1, count)
        for j in range(m):
            _at(m, half, j, m, out, j, m, count)
        bv = bias[co] if has_bias else y.dtype.type(0)
        if whole:
            base = np.uintp(co * h * w)
            # Tile by tile: its m*m pixels lie on m rows of the plane (writes far apart in memory cost more).
            for t in range(count):
                for k in range(m * m):
                    y_flat[base + off[t, k]] = out[k, t] + bv
            continue
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
    whole = h % m == 0 and w % m == 0
    dy_flat = dy.reshape(dy.size)
    off = _pixel_offsets(channels, h, w, m, n0, nb, tr0, trows) if whole else np.empty((0, 0), dtype=np.uintp)
    if not whole:
        d[:] = 0  # tiles past the map's edge; every channel rewrites the same interior
    for co in range(channels):
        if whole:
            base = np.uintp(co * h * w)
            for t in range(count):
                for k in range(m * m):
                    d[k, t] = dy_flat[base + off[t, k]]
        else:
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
            _a(m, d, i * m, 1, rows, i * alpha, 1, count)
        for j in range(alpha):
            _a(m, rows, j, alpha, e, j * channels + co, alpha * channels, count)


# ----------------------------------------------------------------------------------------------------------------
# Weight transforms: float64 arithmetic over rows of channels, the rows in parallel (each row's arithmetic is the
# same whichever thread runs it, so the bits do not depend on the thread count). The divisions by 6, 12 and 24 go
# through kernels/_division.divide: the quotient x / d correctly rounded, the same bits, without a divide
# instruction (they took 35-45% of these transforms' time). Serial they took 4.1-4.5 ms
# (forward and rotated) and 8.2 ms (inverse) at 512 x 512 channels on the quiet 2-core EPYC: 8-13% of a VGG-11-BN
# step over its ten transforms and five inverses.


_R6, _R12, _R24 = 1.0 / 6.0, 1.0 / 12.0, 1.0 / 24.0  # correctly rounded reciprocals, for divide()


@njit(cache=True, nogil=True, error_model="numpy")
def _g6(src, s0, ss, dst, d0, ds, count):
    """G g for F(4x4,3x3): 3 -> 6."""
    a0, a1, a2 = src[s0], src[s0 + ss], src[s0 + 2 * ss]
    o0, o1, o2 = dst[d0], dst[d0 + ds], dst[d0 + 2 * ds]
    o3, o4, o5 = dst[d0 + 3 * ds], dst[d0 + 4 * ds], dst[d0 + 5 * ds]
    for t in range(count):
        g0, g1, g2 = a0[t], a1[t], a2[t]
        s02 = g0 + g2
        p = divide(g0, 24.0, _R24) + divide(g2, 6.0, _R6)
        q = divide(g1, 12.0, _R12)
        o0[t] = g0 / 4.0
        o1[t] = -divide(s02 + g1, 6.0, _R6)
        o2[t] = -divide(s02 - g1, 6.0, _R6)
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
        o0[t] = a0[t] / 4.0 - divide(s12, 6.0, _R6) + divide(s34, 24.0, _R24)
        o1[t] = divide(a2[t] - a1[t], 6.0, _R6) + divide(a3[t] - a4[t], 12.0, _R12)
        o2[t] = divide(s34 - s12, 6.0, _R6) + a5[t]


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


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _transform_weights(weight, m, flip, u):
    """u[a*alpha + b, r, c] = (G g G^T)[a, b] with g = weight[r, c] (flip False) or rot180(weight[c, r]) (True)."""
    alpha = m + 2
    rows, cols = u.shape[1], u.shape[2]
    u2 = u.reshape(alpha * alpha * rows, cols)
    for r in prange(rows):
        taps = np.empty((9, cols))
        half = np.empty((alpha * 3, cols))
        # Indexed directly, not through a view per (r, c): each Numba view costs reference counting.
        if flip:
            for c in range(cols):
                for k in range(9):
                    taps[k, c] = weight[c, r, 2 - k // 3, 2 - k % 3]
        else:
            for c in range(cols):
                for k in range(9):
                    taps[k, c] = weight[r, c, k // 3, k % 3]
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


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _inverse_weight_transform(parts, m, dweight):
    """dweight[co, ci] = G^T (sum over workers of parts[t, :, co, ci], in worker order) G, in float64."""
    alpha = m + 2
    a2 = alpha * alpha
    workers = parts.shape[0]
    c_out, c_in = dweight.shape[0], dweight.shape[1]
    for co in prange(c_out):
        merged = np.empty((a2, c_in))
        half = np.empty((3 * alpha, c_in))
        taps = np.empty((9, c_in))
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
            for k in range(9):
                dweight[co, c, k // 3, k % 3] = taps[k, c]
