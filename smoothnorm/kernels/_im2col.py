"""The serial building blocks of kernels/conv.py's im2col convolution, run inside one worker: the unfolding of a
sub-chunk of samples into columns (im2col) and its adjoint (col2im), the zero-padded scratch plane they share, and
the float64 row sums of the bias gradient (also used by the Winograd path). conv.py's docstring has the method.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Below this output width the im2col rows are gathered through an index table (a segment loop per output row has
# more overhead than work).
_GATHER_WIDTH = 8


@njit(cache=True, nogil=True, error_model="numpy")
def _pixel_offsets(geom, wp):
    """offsets[oh*w_out + ow] = flat index of the window's top-left corner in a padded plane of width wp.

    Unsigned, so indexing with them needs no negative-index wraparound test.
    """
    sh, sw, h_out, w_out = geom[2], geom[3], geom[6], geom[7]
    offsets = np.empty(h_out * w_out, dtype=np.uintp)
    for oh in range(h_out):
        for ow in range(w_out):
            offsets[oh * w_out + ow] = oh * sh * wp + ow * sw
    return offsets


# In the loops below every inner index is a bare loop counter over a view (`dst[j] = src[j]`), never `a[start + j]`:
# Numba must test a computed index for being negative (Python's wraparound), and that test in the inner loop kept
# LLVM from vectorising the copies (half the speed, measured).


@njit(cache=True, nogil=True, error_model="numpy")
def _fill_padded(plane, padded, ph, pw):
    """padded[ph + i, pw + j] = plane[i, j] wherever padded reaches; the border is left as it is."""
    rows = min(plane.shape[0], padded.shape[0] - ph)
    width = min(plane.shape[1], padded.shape[1] - pw)
    for i in range(rows):
        src = plane[i, :width]
        dst = padded[ph + i, pw : pw + width]
        for j in range(width):
            dst[j] = src[j]


@njit(cache=True, nogil=True, error_model="numpy")
def _im2col(x, n0, nb, cols, geom, padded, offsets):
    """cols[(ci*kh + ky)*kw + kx, b*P + oh*w_out + ow] = x[n0+b, ci, oh*sh - ph + ky, ow*sw - pw + kx], 0 outside.

    Each plane is first copied into `padded`, whose zero border never changes, so the unfolding has no bounds
    tests. Channels outermost: consecutive samples then write adjacent segments of the same kh*kw rows.
    """
    kh, kw, sh, sw, ph, pw, h_out, w_out = geom
    hp, wp = padded.shape
    flat = padded.reshape(hp * wp)
    pixels = h_out * w_out
    for ci in range(x.shape[1]):
        for b in range(nb):
            _fill_padded(x[n0 + b, ci], padded, ph, pw)
            base = b * pixels
            for ky in range(kh):
                for kx in range(kw):
                    row = cols[(ci * kh + ky) * kw + kx, base : base + pixels]
                    window = flat[ky * wp + kx :]
                    if w_out < _GATHER_WIDTH:
                        for p in range(pixels):
                            row[p] = window[offsets[p]]
                    else:
                        for oh in range(h_out):
                            dst = row[oh * w_out : (oh + 1) * w_out]
                            src = window[oh * sh * wp :]
                            if sw == 1:
                                for ow in range(w_out):
                                    dst[ow] = src[ow]
                            else:
                                for ow in range(w_out):
                                    dst[ow] = src[ow * sw]


@njit(cache=True, nogil=True, error_model="numpy")
def _col2im(dcols, dx, n0, nb, geom, padded, offsets):
    """Adjoint of _im2col: dx[n0+b] = dcols scattered back and summed (in a fixed tap order)."""
    kh, kw, sh, sw, ph, pw, h_out, w_out = geom
    h, w = dx.shape[2], dx.shape[3]
    hp, wp = padded.shape
    flat = padded.reshape(hp * wp)
    pixels = h_out * w_out
    rows_in = min(h, hp - ph)
    cols_in = min(w, wp - pw)
    zero = dx.dtype.type(0)
    for ci in range(dx.shape[1]):
        for b in range(nb):
            flat[:] = zero
            base = b * pixels
            for ky in range(kh):
                for kx in range(kw):
                    row = dcols[(ci * kh + ky) * kw + kx, base : base + pixels]
                    window = flat[ky * wp + kx :]
                    if w_out < _GATHER_WIDTH:
                        for p in range(pixels):
                            window[offsets[p]] += row[p]
                    else:
                        for oh in range(h_out):
                            src = row[oh * w_out : (oh + 1) * w_out]
                            dst = window[oh * sh * wp :]
                            if sw == 1:
                                for ow in range(w_out):
                                    dst[ow] += src[ow]
                            else:
                                for ow in range(w_out):
                                    dst[ow * sw] += src[ow]
            plane = dx[n0 + b, ci]
            # Input pixels no window reaches (stride leaving a remainder) get zero gradient.
            plane[rows_in:, :] = zero
            for i in range(rows_in):
                src = padded[ph + i, pw : pw + cols_in]
                dst = plane[i]
                for j in range(cols_in):
                    dst[j] = src[j]
                dst[cols_in:] = zero


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _row_sum(a3, n, r):
    """float64 sum of a3[n, r, :]; four interleaved partials pipeline the adds in a shape-fixed order (indexed
    directly: callers run it for every (sample, channel), and a Numba view per row costs reference counting)."""
    cols = a3.shape[2]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    j = 0
    while j + 4 <= cols:
        s0 += a3[n, r, j]
        s1 += a3[n, r, j + 1]
        s2 += a3[n, r, j + 2]
        s3 += a3[n, r, j + 3]
        j += 4
    while j < cols:
        s0 += a3[n, r, j]
        j += 1
    return (s0 + s1) + (s2 + s3)


@njit(cache=True, nogil=True, error_model="numpy")
def _add_row_sums(mat, sums):
    """sums[r] += float64 sum of mat[r] (C-contiguous 2-D), by _row_sum."""
    m3 = mat.reshape(1, mat.shape[0], mat.shape[1])
    for r in range(mat.shape[0]):
        sums[r] += _row_sum(m3, 0, r)


@njit(cache=True, nogil=True, error_model="numpy")
def _padded_scratch(geom, dtype_source):
    """Zeroed plane covering every window position: ((h_out-1)*sh + kh, (w_out-1)*sw + kw)."""
    kh, kw, sh, sw, h_out, w_out = geom[0], geom[1], geom[2], geom[3], geom[6], geom[7]
    return np.zeros(((h_out - 1) * sh + kh, (w_out - 1) * sw + kw), dtype=dtype_source.dtype)
