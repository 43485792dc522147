"""kernels/conv/conv2d.py's im2col convolution: the serial building blocks run inside one worker (the unfolding of a
sub-chunk of samples into columns (im2col) and its adjoint (col2im), the zero-padded scratch plane they share, and
the float64 row sums of the bias gradient, also used by the Winograd path), then the work split (`_plan`), the
forward and backward workers and their parallel drivers. conv.py has the public functions, the choice of algorithm
and, in its docstring, the method.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import get_thread_id, njit, prange

from smoothnorm.kernels._blas import _gemm, _single_threaded_blas

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


# ----------------------------------------------------------------------------------------------------------------
# The im2col convolution: work split, workers (one contiguous block of samples each) and parallel drivers.

# Cap in bytes on the sub-chunk buffers of one call, summed over workers (cols plus the (C_out, nb*P) matrix).
# Sub-chunks of ~_TARGET_COLUMNS columns stay far below it; it binds only for very deep layers on small images.
_WORKSPACE_BYTES = 32 << 20
# Samples per sub-chunk: one when an image has at least this many output pixels (the GEMM is wide enough alone and
# y[n], dy[n] serve as the matrices), otherwise enough samples for about _TARGET_COLUMNS columns per GEMM (256-512
# columns ran fastest on VGG's layers: the sub-chunk then stays in cache between im2col and the GEMMs).
_DIRECT_PIXELS = 256
_TARGET_COLUMNS = 512
# Calls with fewer multiply-adds than this run as one serial worker: starting the thread team costs more than it
# saves (and much more on a loaded machine, where waking the second thread can take milliseconds).
_PARALLEL_MIN_MACS = 1 << 20
# The batch is split into blocks of samples whatever the thread count: each block is one work item with its own
# partial weight gradient, the partials are merged in block order, and threads only choose which blocks they run,
# so results are the same bits at any thread count. WORK_BLOCKS keeps up to four threads busy; but each block costs
# its own workspace and partial (Winograd's weight-gradient partial is 36 C_out C_in values), and where a partial
# passes LARGE_PARTIAL_BYTES (VGG's 256- and 512-channel layers at full width) merging four of them cost 7.5-10.5%
# of a 2-thread VGG-BN step, against one block per thread: those layers split into two blocks.
WORK_BLOCKS = 4
LARGE_PARTIAL_BYTES = 4 << 20


def work_blocks(n: int, parallel: bool, partial_bytes: int = 0) -> int:
    """The number of sample blocks a convolution over a batch of n splits into, given the bytes of one block's
    partial weight gradient: a function of the shape only."""
    if not parallel:
        return 1
    return max(1, min(n, WORK_BLOCKS if partial_bytes <= LARGE_PARTIAL_BYTES else 2))


def workspace_slots(workers: int, parallel: bool) -> int:
    """The number of per-thread workspaces a call over `workers` sample blocks needs: one per thread that can run a
    block at once. A thread runs its blocks one after another in its own workspace (`get_thread_id()` picks it), so
    at one thread every block reuses the same cache-warm buffers. Which buffer holds a block's temporaries never
    changes a result; the blocks themselves, and so the bits, depend on the shape only."""
    return max(1, min(workers, numba.get_num_threads())) if parallel else 1


def _plan(n: int, k: int, c_out: int, pixels: int, itemsize: int) -> tuple[int, int, bool]:
    """(blocks of samples, samples per sub-chunk, parallel): depends on the shape only, never on the thread count."""
    parallel = n * k * c_out * pixels >= _PARALLEL_MIN_MACS and _single_threaded_blas.available()
    workers = work_blocks(n, parallel, c_out * k * itemsize)
    per_worker = -(-n // workers)
    if pixels >= _DIRECT_PIXELS:
        return workers, 1, parallel
    budget = _WORKSPACE_BYTES // workers
    nb = min(per_worker, -(-_TARGET_COLUMNS // pixels), max(1, budget // ((k + c_out) * pixels * itemsize)))
    subchunks = -(-per_worker // nb)
    return workers, -(-per_worker // subchunks), parallel


@njit(cache=True, nogil=True, error_model="numpy")
def _forward_worker(sgemm, dgemm, x, w2, bias, y, s0, s1, nb, geom, cols_buf, mat_buf):
    """y[s0:s1] for one worker, in sub-chunks of nb samples."""
    c_out, k = w2.shape
    pixels = geom[6] * geom[7]
    padded = _padded_scratch(geom, x)
    offsets = _pixel_offsets(geom, padded.shape[1])
    y3 = y.reshape(y.shape[0], c_out, pixels)
    has_bias = bias.shape[0] > 0
    for n0 in range(s0, s1, nb):
        m = min(nb, s1 - n0)
        cols = cols_buf[: k * m * pixels].reshape(k, m * pixels)
        _im2col(x, n0, m, cols, geom, padded, offsets)
        if nb == 1:
            # y[n] is the (C_out, P) result itself; the bias enters as C with beta = 1.
            out = y3[n0]
            if has_bias:
                for co in range(c_out):
                    out[co, :] = bias[co]
            _gemm(sgemm, dgemm, w2, False, cols, False, out, 1.0 if has_bias else 0.0)
        else:
            mat = mat_buf[: c_out * m * pixels].reshape(c_out, m * pixels)
            _gemm(sgemm, dgemm, w2, False, cols, False, mat, 0.0)
            for co in range(c_out):
                bv = bias[co] if has_bias else y.dtype.type(0)
                for b in range(m):
                    src = mat[co, b * pixels : (b + 1) * pixels]
                    dst = y3[n0 + b, co]
                    for p in range(pixels):
                        dst[p] = src[p] + bv


@njit(cache=True, nogil=True, error_model="numpy")
def _backward_worker(sgemm, dgemm, dy, x, w2, dw, db, dx, need_dx, s0, s1, nb, geom, cols_buf, mat_buf):
    """For samples s0:s1: dw = sum dY @ cols.T, db = float64 sums of dy per channel, dx[s0:s1] if need_dx."""
    c_out, k = w2.shape
    pixels = geom[6] * geom[7]
    padded = _padded_scratch(geom, x)
    # col2im needs its own plane: _im2col relies on the border of `padded` staying zero.
    grad_padded = _padded_scratch(geom, x)
    offsets = _pixel_offsets(geom, padded.shape[1])
    dy3 = dy.reshape(dy.shape[0], c_out, pixels)
    db[:] = 0.0
    if s1 <= s0:
        dw[:, :] = 0
    for n0 in range(s0, s1, nb):
        m = min(nb, s1 - n0)
        if nb == 1:
            mat = dy3[n0]
        else:
            mat = mat_buf[: c_out * m * pixels].reshape(c_out, m * pixels)
            for co in range(c_out):
                for b in range(m):
                    mat[co, b * pixels : (b + 1) * pixels] = dy3[n0 + b, co]
        _add_row_sums(mat, db)
        cols = cols_buf[: k * m * pixels].reshape(k, m * pixels)
        _im2col(x, n0, m, cols, geom, padded, offsets)
        _gemm(sgemm, dgemm, mat, False, cols, True, dw, 0.0 if n0 == s0 else 1.0)
        if need_dx:
            # cols is spent once dW has it: its memory takes dcols.
            _gemm(sgemm, dgemm, w2, True, mat, False, cols, 0.0)
            _col2im(cols, dx, n0, m, geom, grad_padded, offsets)


# ----------------------------------------------------------------------------------------------------------------
# Parallel drivers: one prange over workers, each owning a contiguous block of samples (and, for the weight
# gradient, its own partial); the temporaries are the running thread's (workspace_slots).


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _forward_parallel(sgemm, dgemm, x, w2, bias, y, workers, nb, geom, cols_ws, mat_ws):
    n = x.shape[0]
    for t in prange(workers):
        _forward_worker(
            sgemm, dgemm, x, w2, bias, y, n * t // workers, n * (t + 1) // workers, nb, geom,
            cols_ws[get_thread_id()], mat_ws[get_thread_id()],
        )  # fmt: skip


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _backward_parallel(sgemm, dgemm, dy, x, w2, dw_ws, db_ws, dx, need_dx, workers, nb, geom, cols_ws, mat_ws):
    n = x.shape[0]
    for t in prange(workers):
        _backward_worker(
            sgemm,
            dgemm,
            dy,
            x,
            w2,
            dw_ws[t],
            db_ws[t],
            dx,
            need_dx,
            n * t // workers,
            n * (t + 1) // workers,
            nb,
            geom,
            cols_ws[get_thread_id()],
            mat_ws[get_thread_id()],
        )


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _sum_partials(parts, out):
    """out[r] = parts[0, r] + parts[1, r] + ... in worker order; threads own rows."""
    for r in prange(out.shape[0]):
        dst = out[r]
        dst[:] = parts[0, r]
        for t in range(1, parts.shape[0]):
            src = parts[t, r]
            for j in range(dst.shape[0]):
                dst[j] += src[j]
