"""Normalization kernels: batch normalization (train / probe / eval) forward and backward.

Layout. Every input is viewed as (N, C, S): (N, C) has S = 1, (N, C, H, W) has S = H * W. Batch statistics are
per channel over (N, S). The building blocks below are reusable by other normalizations that need per-channel
statistics over (N, S) (noisy and Lp batch norm):

- `_plan(N, C, S, itemsize, arrays)` splits the work into items of (channel block, batch chunk);
- `_block_moments` adds shifted sums of x and x^2 of a block into per-channel float64 accumulators;
- `_block_grad_sums` adds sum(dy) and sum(dy * (x - center)) of a block;
- `_block_affine` writes y = (x - center) * scale + offset, `_block_grad_apply` writes dx = a dy + b (x - center) + k.

Work split. A work item is a block of consecutive channels (and, when there are too few blocks to keep the threads
busy, a chunk of the batch). Within an item the loops run batch-outer, channel-inner, so memory is read in
contiguous runs of (block channels * S) elements even when S is tiny (4x4 feature maps); a block is sized so that
the arrays it touches fit in L2, and the second pass over a block (normalize after statistics, write dx after the
sums) is served from cache. One pass over memory for statistics, one for the output. Each item owns its channels (or
its own row of partial sums), partials are merged in a fixed order, and the split depends on the shape only: results
are bit-identical for any thread count.

Numerics of the statistics. One pass computes, per channel, sums of d = x - K and d^2 in float64, with the shift K
the channel's first element (the "shifted data" algorithm). var = mean(d^2) - mean(d)^2 then loses only about
eps64 * (mean - K)^2 / var relatively, and since K is one of the samples, (mean - K)^2 <= n * var: the relative error
is at most ~n * 2^-53 however large the mean is compared to the standard deviation (unshifted sum / sum of squares
would lose everything at mean / std ~ 1e8, and in float32 accumulation already at ~1e3). Welford's update would cost
a division per element and serialize the loop; an exact two-pass mean-then-deviations scheme would cost a third
pass. Elementwise passes compute in float64 too, with the float64 mean, so a float32 output carries one rounding
even when mean >> std (a float32 mean alone would shift it by |mean| 2^-24 / std); the passes are memory-bound, so
the wider arithmetic costs little. The cached mean is rounded to x's dtype (the public contract); the backward pass
uses it as given. NaN or Inf anywhere in a channel makes that channel's variance, and so its whole output, NaN;
nothing is masked.

Outputs. y and dx are new arrays unless `out=` is given (keyword-only, beyond the fixed API): for arrays of tens of
MB the page faults of fresh memory cost about as much as the kernel, so a caller that owns its buffers can pass
them (see `_output`; in place over x or dy is allowed).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit, prange

# Bytes of input (all arrays a pass reads) per work item: with the output it writes, well inside a 2 MiB L2
# (1.25 MiB on older Intel, 1 MiB on AMD Zen 4), so the second pass over an item hits cache. Items aim to be at
# least _MIN_ITEM_ELEMENTS elements (scheduling overhead) and at least _TARGET_ITEMS in number (load balance on a
# few cores); all are constants, so the split depends on the shape only.
_BLOCK_BYTES = 1 << 19
_MIN_ITEM_ELEMENTS = 1 << 14
_TARGET_ITEMS = 8


# ---------------------------------------------------------------------------------------------------------------
# Validation


def _as_ncs(name: str, x) -> np.ndarray:
    """Validate a float32/float64 (N, C) or (N, C, H, W) array; return it as a C-contiguous (N, C, S) array."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
    if x.ndim not in (2, 4):
        raise ValueError(
            f"{name}: expected a 2D or 4D array, (N, C) or (N, C, H, W), got ndim {x.ndim} (shape {x.shape})"
        )
    x = np.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[1]
    s = x.shape[2] * x.shape[3] if x.ndim == 4 else 1
    return x.reshape(n, c, s)


def _same_as(name: str, a, ref: np.ndarray, ref_name: str) -> np.ndarray:
    """Validate that a matches ref's shape and dtype; return it C-contiguous."""
    a = np.asarray(a)
    if a.shape != ref.shape:
        raise ValueError(f"{name}: expected shape {ref.shape} (the shape of {ref_name}), got {a.shape}")
    if a.dtype != ref.dtype:
        raise ValueError(f"{name}: expected dtype {ref.dtype} (the dtype of {ref_name}), got {a.dtype}")
    return np.ascontiguousarray(a)


def _channel_vector(name: str, v, channels: int, dtype, default: float | None = None):
    """Validate a per-channel vector of shape (C,) and the given dtype; None gives `default` filled (or None)."""
    if v is None:
        return None if default is None else np.full(channels, default, dtype=dtype)
    v = np.asarray(v)
    if v.shape != (channels,):
        raise ValueError(f"{name}: expected shape ({channels},) (C, the channels of x), got {v.shape}")
    if v.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of x), got {v.dtype}")
    return np.ascontiguousarray(v)


def _check_count(x_shape: tuple, n: int) -> None:
    if n < 2:
        raise ValueError(f"x: batch statistics need more than 1 value per channel (N * H * W > 1), got shape {x_shape}")


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not eps >= 0.0:
        raise ValueError(f"eps: expected a non-negative number, got {eps}")
    return eps


# ---------------------------------------------------------------------------------------------------------------
# Work split


@functools.lru_cache(maxsize=256)
def _plan(n: int, c: int, s: int, itemsize: int, arrays: int) -> tuple[int, int]:
    """Channels per block and number of batch chunks for an (n, c, s) problem reading `arrays` inputs.

    Depends on the shape only (never on the thread count), so results repeat bit for bit on any machine setting.
    """
    total = n * c * s
    target = max(1, min(_TARGET_ITEMS, total // _MIN_ITEM_ELEMENTS))
    per_channel = max(1, n * s * itemsize * arrays)
    block = max(1, min(_BLOCK_BYTES // per_channel, -(-c // target)))
    blocks = -(-c // block) if c > 0 else 0
    chunks = 1
    if 0 < blocks < target:
        chunks = max(1, min(n, -(-target // blocks)))
    return block, chunks


# ---------------------------------------------------------------------------------------------------------------
# Block helpers (serial; called inside the parallel kernels' prange). A block is channels [c0, c1) of batch rows
# [n0, n1); arrays are flat C-order views of (N, C, S), so row n of a block is the contiguous run
# x[(n*C + c0)*S : (n*C + c1)*S]. Runs of one channel (S elements) are long enough for S >= _RUN to loop over
# with per-channel scalars; below that (S = 1 for (N, C) inputs, 4 for 2x2 maps) each helper loops once over the
# whole row of the block with per-position coefficients expanded from per-channel ones. Both loops vectorize.
#
# Reductions are "by column": position j of a block row accumulates over n into col[j] (elementwise, so it
# vectorizes without letting the compiler reassociate sums), and each channel's S columns are added at the end in
# order. Summation order is thus fixed in the source: results do not depend on the compiler, the CPU or the thread
# count, and columns of N terms then S terms round less than one sequential sum of N * S terms.
#
# Indices are uint64: with signed indices Numba adds a negative-index wraparound select that turns vector loads
# into gathers. Slicing a row per (n, c) instead would create views whose reference counts are atomics shared by
# all threads.

_RUN = 16
# In a block that spans all channels, consecutive batch rows follow each other in memory: the short-run loops then
# take _WIDE // (C*S) rows at a time, so (N, 10) inputs loop over 60 elements instead of 10 (the moments pass 2.4x
# faster at (1000, 10)). Columns are then per (row in group, position), folded in that order.
_WIDE = 64


@njit(cache=True, error_model="numpy")
def _group_rows(C, S, c0, c1):
    """Batch rows the short-run loops take at a time: more than one only when the block spans all channels."""
    if c0 == 0 and c1 == C and C * S < _WIDE:
        return _WIDE // (C * S)
    return 1


@njit(cache=True, error_model="numpy")
def _zeros(shape):
    """np.zeros for parallel kernels: there, np.zeros would be a parallel loop of its own (a thread-team start)."""
    return np.zeros(shape)


@njit(cache=True, error_model="numpy")
def _int_zeros(shape):
    """np.zeros(shape, np.int64) for parallel kernels (see _zeros)."""
    return np.zeros(shape, dtype=np.int64)


@njit(cache=True, error_model="numpy")
def _filled(shape, value):
    """np.full(shape, value) in float64 for parallel kernels (see _zeros)."""
    return np.full(shape, float(value))


@njit(cache=True, error_model="numpy")
def _expand(values, c0, c1, S, R=1):
    """Per-position copy (float64) of per-channel values[c0:c1], each repeated S times; all that R times over."""
    width = (c1 - c0) * S
    out = np.empty(width * R)
    uS = np.uint64(S)
    for r in range(R):
        for c in range(c0, c1):
            v = float(values[c])
            off = np.uint64(r * width + (c - c0) * S)
            for j in range(off, off + uS):
                out[j] = v
    return out


@njit(cache=True, error_model="numpy")
def _fold_columns(col, c0, c1, S, acc, row, R=1):
    """acc[row, c] += sum of channel c's columns of col (R groups of S), in order."""
    width = (c1 - c0) * S
    for c in range(c0, c1):
        t = 0.0
        for r in range(R):
            for j in range(r * width + (c - c0) * S, r * width + (c - c0 + 1) * S):
                t += col[j]
        acc[row, c] += t


@njit(cache=True, error_model="numpy")
def _block_moments(x, C, S, c0, c1, n0, n1, shift, acc_s, acc_q, row):
    """acc_s[row, c] += sum(d), acc_q[row, c] += sum(d^2), d = x[n, c, :] - shift[c] in float64, over the block."""
    width = (c1 - c0) * S
    if S >= _RUN:
        col_s = np.zeros(width)
        col_q = np.zeros(width)
        uS = np.uint64(S)
        for n in range(n0, n1):
            for c in range(c0, c1):
                base = np.uint64((n * C + c) * S)
                off = np.uint64((c - c0) * S)
                k = shift[c]
                for s in range(uS):
                    d = float(x[base + s]) - k
                    col_s[off + s] += d
                    col_q[off + s] += d * d
        _fold_columns(col_s, c0, c1, S, acc_s, row)
        _fold_columns(col_q, c0, c1, S, acc_q, row)
        return
    R = _group_rows(C, S, c0, c1)
    wide = np.uint64(width * R)
    col_s = np.zeros(wide)
    col_q = np.zeros(wide)
    ke = _expand(shift, c0, c1, S, R)
    groups = (n1 - n0) // R
    for g in range(groups):
        base = np.uint64(((n0 + g * R) * C + c0) * S)
        for j in range(wide):
            d = float(x[base + j]) - ke[j]
            col_s[j] += d
            col_q[j] += d * d
    for n in range(n0 + groups * R, n1):
        base = np.uint64((n * C + c0) * S)
        for j in range(np.uint64(width)):
            d = float(x[base + j]) - ke[j]
            col_s[j] += d
            col_q[j] += d * d
    _fold_columns(col_s, c0, c1, S, acc_s, row, R)
    _fold_columns(col_q, c0, c1, S, acc_q, row, R)


@njit(cache=True, error_model="numpy")
def _block_grad_sums(dy, x, C, S, c0, c1, n0, n1, center, acc_dy, acc_dyx, row):
    """acc_dy[row, c] += sum(dy), acc_dyx[row, c] += sum(dy * (x - center[c])) in float64, over the block."""
    width = (c1 - c0) * S
    if S >= _RUN:
        col_dy = np.zeros(width)
        col_dyx = np.zeros(width)
        uS = np.uint64(S)
        for n in range(n0, n1):
            for c in range(c0, c1):
                base = np.uint64((n * C + c) * S)
                off = np.uint64((c - c0) * S)
                k = center[c]
                for s in range(uS):
                    g = float(dy[base + s])
                    col_dy[off + s] += g
                    col_dyx[off + s] += g * (float(x[base + s]) - k)
        _fold_columns(col_dy, c0, c1, S, acc_dy, row)
        _fold_columns(col_dyx, c0, c1, S, acc_dyx, row)
        return
    R = _group_rows(C, S, c0, c1)
    wide = np.uint64(width * R)
    col_dy = np.zeros(wide)
    col_dyx = np.zeros(wide)
    ke = _expand(center, c0, c1, S, R)
    groups = (n1 - n0) // R
    for gr in range(groups):
        base = np.uint64(((n0 + gr * R) * C + c0) * S)
        for j in range(wide):
            g = float(dy[base + j])
            col_dy[j] += g
            col_dyx[j] += g * (float(x[base + j]) - ke[j])
    for n in range(n0 + groups * R, n1):
        base = np.uint64((n * C + c0) * S)
        for j in range(np.uint64(width)):
            g = float(dy[base + j])
            col_dy[j] += g
            col_dyx[j] += g * (float(x[base + j]) - ke[j])
    _fold_columns(col_dy, c0, c1, S, acc_dy, row, R)
    _fold_columns(col_dyx, c0, c1, S, acc_dyx, row, R)


@njit(cache=True, error_model="numpy")
def _block_affine(x, C, S, c0, c1, n0, n1, center, scale, offset, y):
    """y = (x - center[c]) * scale[c] + offset[c], computed in float64, stored in y's dtype, over the block."""
    if S >= _RUN:
        uS = np.uint64(S)
        for n in range(n0, n1):
            for c in range(c0, c1):
                base = np.uint64((n * C + c) * S)
                k = center[c]
                a = scale[c]
                b = offset[c]
                for i in range(base, base + uS):
                    y[i] = (float(x[i]) - k) * a + b
        return
    R = _group_rows(C, S, c0, c1)
    width = (c1 - c0) * S
    wide = np.uint64(width * R)
    ke = _expand(center, c0, c1, S, R)
    ae = _expand(scale, c0, c1, S, R)
    be = _expand(offset, c0, c1, S, R)
    groups = (n1 - n0) // R
    for g in range(groups):
        base = np.uint64(((n0 + g * R) * C + c0) * S)
        for j in range(wide):
            y[base + j] = (float(x[base + j]) - ke[j]) * ae[j] + be[j]
    for n in range(n0 + groups * R, n1):
        base = np.uint64((n * C + c0) * S)
        for j in range(np.uint64(width)):
            y[base + j] = (float(x[base + j]) - ke[j]) * ae[j] + be[j]


@njit(cache=True, error_model="numpy")
def _block_grad_apply(dy, x, C, S, c0, c1, n0, n1, center, a, b, k, dx):
    """dx = a[c] * dy + b[c] * (x - center[c]) + k[c], computed in float64, stored in dx's dtype."""
    if S >= _RUN:
        uS = np.uint64(S)
        for n in range(n0, n1):
            for c in range(c0, c1):
                base = np.uint64((n * C + c) * S)
                m = center[c]
                ac = a[c]
                bc = b[c]
                kc = k[c]
                for i in range(base, base + uS):
                    dx[i] = ac * float(dy[i]) + bc * (float(x[i]) - m) + kc
        return
    R = _group_rows(C, S, c0, c1)
    width = (c1 - c0) * S
    wide = np.uint64(width * R)
    me = _expand(center, c0, c1, S, R)
    ae = _expand(a, c0, c1, S, R)
    be = _expand(b, c0, c1, S, R)
    ke = _expand(k, c0, c1, S, R)
    groups = (n1 - n0) // R
    for g in range(groups):
        base = np.uint64(((n0 + g * R) * C + c0) * S)
        for j in range(wide):
            i = base + j
            dx[i] = ae[j] * float(dy[i]) + be[j] * (float(x[i]) - me[j]) + ke[j]
    for n in range(n0 + groups * R, n1):
        base = np.uint64((n * C + c0) * S)
        for j in range(np.uint64(width)):
            i = base + j
            dx[i] = ae[j] * float(dy[i]) + be[j] * (float(x[i]) - me[j]) + ke[j]


@njit(cache=True, error_model="numpy")
def _item_range(item, chunks, block, C, N):
    """Channel range and batch range of work item `item` (items are block-major, chunk-minor)."""
    b = item // chunks
    j = item % chunks
    c0 = b * block
    c1 = min(C, c0 + block)
    n0 = (j * N) // chunks
    n1 = ((j + 1) * N) // chunks
    return c0, c1, n0, n1


@njit(cache=True, error_model="numpy")
def _merge_rows(partials, c):
    """Sum of partials[:, c] in row order (a fixed order: deterministic)."""
    t = 0.0
    for j in range(partials.shape[0]):
        t += partials[j, c]
    return t


@njit(cache=True, error_model="numpy")
def _finish_moments(sum_d, sum_q, shift, count, eps, c, mean, var, invstd):
    """Mean, biased variance and 1/sqrt(var + eps) of channel c from its shifted sums."""
    md = sum_d / count
    v = sum_q / count - md * md
    # Rounding can leave a tiny negative value; `v < 0` is False for NaN, so NaN survives.
    if v < 0.0:
        v = 0.0
    mean[c] = shift[c] + md
    var[c] = v
    invstd[c] = 1.0 / math.sqrt(v + eps)


@njit(cache=True, error_model="numpy")
def _train_grad_coefficients(c, sum_dy, sum_dyx, gamma, invstd, count, a, b, k, dgamma, dbeta):
    """Channel c of dx = a dy + b (x - mean) + k: a = gamma invstd, b = -a invstd mean(dy xhat), k = -a mean(dy).

    sum_dyx = sum(dy (x - mean)), so mean(dy xhat) = invstd sum_dyx / count; dgamma = sum(dy xhat), dbeta = sum(dy).
    """
    inv = float(invstd[c])
    g = float(gamma[c])
    a[c] = g * inv
    b[c] = -g * inv * inv * inv * (sum_dyx / count)
    k[c] = -g * inv * (sum_dy / count)
    dgamma[c] = sum_dyx * inv
    dbeta[c] = sum_dy


@njit(cache=True, error_model="numpy")
def _train_forward_block(x, C, S, c0, c1, N, gamma, beta, eps, count, shift, acc_s, acc_q, mean, var, invstd, scale,
                         offset, y):
    """Channels [c0, c1) over the whole batch, fused: statistics, then the output while the block is in cache."""
    _block_moments(x, C, S, c0, c1, 0, N, shift, acc_s, acc_q, 0)
    for c in range(c0, c1):
        _finish_moments(acc_s[0, c], acc_q[0, c], shift, count, eps, c, mean, var, invstd)
        scale[c] = float(gamma[c]) * invstd[c]
        offset[c] = float(beta[c])
    _block_affine(x, C, S, c0, c1, 0, N, mean, scale, offset, y)


@njit(cache=True, error_model="numpy")
def _train_backward_block(dy, x, C, S, c0, c1, N, gamma, invstd, count, center, acc_dy, acc_dyx, a, b, k, dgamma,
                          dbeta, dx):
    """Channels [c0, c1) over the whole batch, fused: gradient sums, then dx while the block is in cache."""
    _block_grad_sums(dy, x, C, S, c0, c1, 0, N, center, acc_dy, acc_dyx, 0)
    for c in range(c0, c1):
        _train_grad_coefficients(c, acc_dy[0, c], acc_dyx[0, c], gamma, invstd, count, a, b, k, dgamma, dbeta)
    _block_grad_apply(dy, x, C, S, c0, c1, 0, N, center, a, b, k, dx)


# ---------------------------------------------------------------------------------------------------------------
# Parallel kernels: x, y, dy, dx are flat views of (N, C, S) arrays.


@njit(cache=True, parallel=True, error_model="numpy")
def _batch_norm_train_forward(x, N, C, S, gamma, beta, eps, block, chunks, y):
    count = float(N * S)
    shift = np.empty(C)
    for c in range(C):
        shift[c] = float(x[c * S])
    mean = np.empty(C)
    var = np.empty(C)
    invstd = np.empty(C)
    scale = np.empty(C)
    offset = np.empty(C)
    acc_s = _zeros((chunks, C))
    acc_q = _zeros((chunks, C))
    blocks = (C + block - 1) // block
    if chunks == 1 and blocks == 1:
        # One work item (small inputs such as (1000, 10)): no thread team, whose start costs more than the work.
        _train_forward_block(x, C, S, 0, C, N, gamma, beta, eps, count, shift, acc_s, acc_q, mean, var, invstd,
                             scale, offset, y)
    elif chunks == 1:
        for b in prange(blocks):
            c0 = b * block
            _train_forward_block(x, C, S, c0, min(C, c0 + block), N, gamma, beta, eps, count, shift, acc_s, acc_q,
                                 mean, var, invstd, scale, offset, y)
    else:
        for item in prange(blocks * chunks):
            c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
            _block_moments(x, C, S, c0, c1, n0, n1, shift, acc_s, acc_q, item % chunks)
        for c in range(C):
            _finish_moments(_merge_rows(acc_s, c), _merge_rows(acc_q, c), shift, count, eps, c, mean, var, invstd)
            scale[c] = float(gamma[c]) * invstd[c]
            offset[c] = float(beta[c])
        for item in prange(blocks * chunks):
            c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
            _block_affine(x, C, S, c0, c1, n0, n1, mean, scale, offset, y)
    return mean, var, invstd


@njit(cache=True, parallel=True, error_model="numpy")
def _batch_norm_train_backward(dy, x, N, C, S, mean, invstd, gamma, block, chunks, dx):
    count = float(N * S)
    center = np.empty(C)
    for c in range(C):
        center[c] = float(mean[c])
    a = np.empty(C)
    b = np.empty(C)
    k = np.empty(C)
    dgamma = np.empty(C)
    dbeta = np.empty(C)
    acc_dy = _zeros((chunks, C))
    acc_dyx = _zeros((chunks, C))
    blocks = (C + block - 1) // block
    if chunks == 1 and blocks == 1:
        _train_backward_block(dy, x, C, S, 0, C, N, gamma, invstd, count, center, acc_dy, acc_dyx, a, b, k, dgamma,
                              dbeta, dx)
    elif chunks == 1:
        for blk in prange(blocks):
            c0 = blk * block
            _train_backward_block(dy, x, C, S, c0, min(C, c0 + block), N, gamma, invstd, count, center, acc_dy,
                                  acc_dyx, a, b, k, dgamma, dbeta, dx)
    else:
        for item in prange(blocks * chunks):
            c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
            _block_grad_sums(dy, x, C, S, c0, c1, n0, n1, center, acc_dy, acc_dyx, item % chunks)
        for c in range(C):
            sum_dy = _merge_rows(acc_dy, c)
            sum_dyx = _merge_rows(acc_dyx, c)
            _train_grad_coefficients(c, sum_dy, sum_dyx, gamma, invstd, count, a, b, k, dgamma, dbeta)
        for item in prange(blocks * chunks):
            c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
            _block_grad_apply(dy, x, C, S, c0, c1, n0, n1, center, a, b, k, dx)
    return dgamma, dbeta


@njit(cache=True, parallel=True, error_model="numpy")
def _batch_norm_eval_forward(x, N, C, S, running_mean, running_var, gamma, beta, eps, block, chunks, y):
    center = np.empty(C)
    scale = np.empty(C)
    offset = np.empty(C)
    for c in range(C):
        center[c] = float(running_mean[c])
        scale[c] = float(gamma[c]) / math.sqrt(float(running_var[c]) + eps)
        offset[c] = float(beta[c])
    blocks = (C + block - 1) // block
    for item in prange(blocks * chunks):
        c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
        _block_affine(x, C, S, c0, c1, n0, n1, center, scale, offset, y)


@njit(cache=True, parallel=True, error_model="numpy")
def _batch_norm_eval_backward(dy, x, N, C, S, running_mean, running_var, gamma, eps, need_sums, block, chunks, dx):
    center = np.empty(C)
    inv = np.empty(C)
    a = np.empty(C)
    zeros = _zeros(C)
    for c in range(C):
        center[c] = float(running_mean[c])
        inv[c] = 1.0 / math.sqrt(float(running_var[c]) + eps)
        a[c] = float(gamma[c]) * inv[c]
    acc_dy = _zeros((chunks, C))
    acc_dyx = _zeros((chunks, C))
    blocks = (C + block - 1) // block
    for item in prange(blocks * chunks):
        c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
        if need_sums:
            _block_grad_sums(dy, x, C, S, c0, c1, n0, n1, center, acc_dy, acc_dyx, item % chunks)
        # Running statistics are constants here: dx = gamma / sqrt(running_var + eps) * dy.
        _block_affine(dy, C, S, c0, c1, n0, n1, zeros, a, zeros, dx)
    dgamma = np.empty(C)
    dbeta = np.empty(C)
    for c in range(C):
        dgamma[c] = _merge_rows(acc_dyx, c) * inv[c]
        dbeta[c] = _merge_rows(acc_dy, c)
    return dgamma, dbeta


@njit(cache=True, error_model="numpy")
def _update_running(running_mean, running_var, mean, var, count, momentum):
    """rm = (1-m) rm + m mean, rv = (1-m) rv + m var n/(n-1), in float64, stored in the buffers' dtype."""
    for c in range(running_mean.shape[0]):
        unbiased = float(var[c]) * (count / (count - 1))
        running_mean[c] = (1.0 - momentum) * float(running_mean[c]) + momentum * float(mean[c])
        running_var[c] = (1.0 - momentum) * float(running_var[c]) + momentum * unbiased


# ---------------------------------------------------------------------------------------------------------------
# Public API


def batch_norm_train_forward(
    x: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batch normalization with batch statistics (train and probe modes), as torch's BatchNorm1d/2d.

    x: (N, C) or (N, C, H, W), float32 or float64; gamma, beta: (C,) of x's dtype, or None (no scale / no shift).
    Returns (y, mean, invstd, var): y like x; mean, invstd = 1 / sqrt(var + eps) and the biased variance var,
    each (C,) of x's dtype. Keep (mean, invstd) for the backward pass and (mean, var) for the running update.
    out: optional C-contiguous array like x to write y into (returned as y); see _output.
    """
    x3 = _as_ncs("x", x)
    N, C, S = x3.shape
    _check_count(np.shape(x), N * S)
    eps = _check_eps(eps)
    gamma = _channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    beta = _channel_vector("beta", beta, C, x3.dtype, 0.0)
    y = _output(out, x3, np.shape(x), (x3,))
    block, chunks = _plan(N, C, S, x3.itemsize, 1)
    mean, var, invstd = _batch_norm_train_forward(
        x3.reshape(-1), N, C, S, gamma, beta, eps, block, chunks, y.reshape(-1)
    )
    dt = x3.dtype
    return y, mean.astype(dt, copy=False), invstd.astype(dt, copy=False), var.astype(dt, copy=False)


def batch_norm_train_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    invstd: np.ndarray,
    gamma: np.ndarray | None = None,
    dgamma: np.ndarray | None = None,
    dbeta: np.ndarray | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Gradient of batch_norm_train_forward, through the batch statistics.

    dy, x: (N, C) or (N, C, H, W) of one dtype; mean, invstd: (C,) from the forward pass; gamma: (C,) or None.
    dgamma, dbeta: (C,) arrays overwritten in place with sum(dy * xhat) and sum(dy) when given.
    Returns dx, like x; out: optional C-contiguous array like x to write dx into (dy itself is allowed).
    """
    x3 = _as_ncs("x", x)
    dy3 = _same_as("dy", dy, np.asarray(x), "x").reshape(x3.shape)
    N, C, S = x3.shape
    _check_count(np.shape(x), N * S)
    mean = _channel_vector("mean", mean, C, x3.dtype)
    invstd = _channel_vector("invstd", invstd, C, x3.dtype)
    gamma = _channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    _check_output("dgamma", dgamma, C, x3.dtype)
    _check_output("dbeta", dbeta, C, x3.dtype)
    dx = _output(out, x3, np.shape(x), (x3, dy3))
    block, chunks = _plan(N, C, S, x3.itemsize, 2)
    dg, db = _batch_norm_train_backward(
        dy3.reshape(-1), x3.reshape(-1), N, C, S, mean, invstd, gamma, block, chunks, dx.reshape(-1)
    )
    if dgamma is not None:
        dgamma[...] = dg
    if dbeta is not None:
        dbeta[...] = db
    return dx


def batch_norm_eval_forward(
    x: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Batch normalization with running statistics (eval mode): y = (x - rm) / sqrt(rv + eps) * gamma + beta.

    x: (N, C) or (N, C, H, W), float32 or float64; running_mean, running_var, gamma, beta: (C,) of x's dtype
    (gamma, beta may be None). Returns y, like x; out: optional C-contiguous array like x to write y into.
    """
    x3 = _as_ncs("x", x)
    N, C, S = x3.shape
    eps = _check_eps(eps)
    running_mean = _channel_vector("running_mean", running_mean, C, x3.dtype)
    running_var = _channel_vector("running_var", running_var, C, x3.dtype)
    gamma = _channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    beta = _channel_vector("beta", beta, C, x3.dtype, 0.0)
    y = _output(out, x3, np.shape(x), (x3,))
    block, chunks = _plan(N, C, S, x3.itemsize, 1)
    _batch_norm_eval_forward(
        x3.reshape(-1), N, C, S, running_mean, running_var, gamma, beta, eps, block, chunks, y.reshape(-1)
    )
    return y


def batch_norm_eval_backward(
    dy: np.ndarray,
    x: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    gamma: np.ndarray | None = None,
    dgamma: np.ndarray | None = None,
    dbeta: np.ndarray | None = None,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Gradient of batch_norm_eval_forward (running statistics are constants).

    dy, x: (N, C) or (N, C, H, W) of one dtype; running_mean, running_var, gamma: (C,) (gamma may be None).
    dgamma, dbeta: (C,) arrays overwritten in place with sum(dy * xhat) and sum(dy) when given.
    Returns dx, like x; out: optional C-contiguous array like x to write dx into (dy itself is allowed).
    """
    x3 = _as_ncs("x", x)
    dy3 = _same_as("dy", dy, np.asarray(x), "x").reshape(x3.shape)
    N, C, S = x3.shape
    eps = _check_eps(eps)
    running_mean = _channel_vector("running_mean", running_mean, C, x3.dtype)
    running_var = _channel_vector("running_var", running_var, C, x3.dtype)
    gamma = _channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    _check_output("dgamma", dgamma, C, x3.dtype)
    _check_output("dbeta", dbeta, C, x3.dtype)
    need_sums = dgamma is not None or dbeta is not None
    dx = _output(out, x3, np.shape(x), (x3, dy3))
    block, chunks = _plan(N, C, S, x3.itemsize, 2)
    dg, db = _batch_norm_eval_backward(
        dy3.reshape(-1),
        x3.reshape(-1),
        N,
        C,
        S,
        running_mean,
        running_var,
        gamma,
        eps,
        need_sums,
        block,
        chunks,
        dx.reshape(-1),
    )
    if dgamma is not None:
        dgamma[...] = dg
    if dbeta is not None:
        dbeta[...] = db
    return dx


def batch_norm_update_running(
    running_mean: np.ndarray,
    running_var: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    count: int,
    momentum: float = 0.1,
) -> None:
    """Update running statistics in place, as torch: rm = (1-m) rm + m mean, rv = (1-m) rv + m var n/(n-1).

    running_mean, running_var: (C,) arrays updated in place; mean, var: (C,) batch mean and biased variance
    (from batch_norm_train_forward); count: n = N * H * W values per channel (> 1).
    """
    running_mean_a = np.asarray(running_mean)
    if running_mean_a.ndim != 1:
        raise ValueError(f"running_mean: expected a 1-D array (C,), got shape {running_mean_a.shape}")
    C = running_mean_a.shape[0]
    dt = running_mean_a.dtype
    if dt not in (np.float32, np.float64):
        raise ValueError(f"running_mean: expected dtype float32 or float64, got {dt}")
    _check_output("running_mean", running_mean, C, dt)
    _check_output("running_var", running_var, C, dt)
    mean = _channel_vector("mean", mean, C, dt)
    var = _channel_vector("var", var, C, dt)
    count = int(count)
    if count < 2:
        raise ValueError(f"count: expected the number of values per channel, > 1, got {count}")
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum: expected a number in [0, 1], got {momentum}")
    _update_running(running_mean, running_var, mean, var, count, momentum)


def _output(out, x3: np.ndarray, shape: tuple, inputs: tuple) -> np.ndarray:
    """The array a kernel writes its (N, C, ...) result into: a new one, or `out` after checks.

    A caller that owns its buffers (a layer reusing its output between steps) saves the page faults of fresh
    memory, which for arrays of tens of MB cost about as much as the kernel itself. `out` may be one of the inputs
    exactly (in place: every kernel reads a block's inputs before writing that block's outputs), but must not
    overlap one partially.
    """
    if out is None:
        return np.empty(shape, dtype=x3.dtype)
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out: expected a numpy array of shape {shape}, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out: expected shape {shape} (the shape of x), got {out.shape}")
    if out.dtype != x3.dtype:
        raise ValueError(f"out: expected dtype {x3.dtype} (the dtype of x), got {out.dtype}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out: expected a writeable C-contiguous array")
    for a in inputs:
        if np.may_share_memory(out, a) and a.__array_interface__["data"][0] != out.__array_interface__["data"][0]:
            raise ValueError("out: overlaps an input partially (it may be an input itself, or separate memory)")
    return out


def _check_output(name: str, out, channels: int, dtype) -> None:
    """An in-place output must be a writeable (C,) array of the given dtype (a view into a flat vector is fine)."""
    if out is None:
        return
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array of shape ({channels},), got {type(out).__name__}")
    if out.shape != (channels,):
        raise ValueError(f"{name}: expected shape ({channels},) (C, the channels of x), got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of x), got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array (it is overwritten in place)")
