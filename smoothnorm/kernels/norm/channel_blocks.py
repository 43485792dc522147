"""Per-channel statistics over (N, S): validation, work split and block helpers shared by the normalizations that
use batch statistics (batch norm in norm.py, noisy batch norm, Lp batch norm).

Layout. Every input is viewed as (N, C, S): (N, C) has S = 1, (N, C, H, W) has S = H * W. Statistics are per
channel over (N, S). The building blocks:

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

Outputs. Kernels write new arrays unless the caller passes `out=` (kernels._checks._output_array, in place over an
input allowed: every kernel reads a block's inputs before writing that block's outputs): for arrays of tens of MB
the page faults of fresh memory cost about as much as the kernel.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from smoothnorm.kernels._checks import _check_output

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


def _exact_array(name: str, v, shape: tuple, dtype, what: str) -> np.ndarray:
    """Validate a required array of exactly `shape` (described by `what`) and `dtype` (x's); return it C-contiguous."""
    if v is None:
        raise ValueError(f"{name}: expected an array of shape {shape}, got None")
    v = np.asarray(v)
    if v.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} ({what}), got {v.shape}")
    if v.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of x), got {v.dtype}")
    return np.ascontiguousarray(v)


def _channel_vector(name: str, v, channels: int, dtype, default: float | None = None) -> np.ndarray:
    """Validate a per-channel vector of shape (C,) and the given dtype. None gives `default` filled where the
    vector is optional (gamma, beta), and is an error where it is required (default None)."""
    if v is None and default is not None:
        return np.full(channels, default, dtype=dtype)
    return _exact_array(name, v, (channels,), dtype, "C, the channels of x")


def _check_parameter_grads(dgamma, dbeta, channels: int, dtype) -> None:
    """dgamma and dbeta, where given, are (C,) buffers of x's dtype that the backward pass overwrites."""
    for name, buf in (("dgamma", dgamma), ("dbeta", dbeta)):
        if buf is not None:
            _check_output(name, buf, (channels,), dtype)


def _store_parameter_grads(dgamma, dbeta, dg, db) -> None:
    """Overwrite the caller's dgamma and dbeta buffers (those given) with the computed gradients."""
    if dgamma is not None:
        dgamma[...] = dg
    if dbeta is not None:
        dbeta[...] = db


def _check_momentum(momentum: float) -> float:
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum: expected a number in [0, 1], got {momentum}")
    return momentum


def _running_update_arrays(running_mean, running_stat, mean, stat, stat_names: tuple[str, str]):
    """Check a running update's arguments: the running buffers (overwritten in place, of running_mean's dtype) and
    the batch statistics, all (C,) with C the length of the batch mean. Returns (mean, stat) C-contiguous."""
    mean_a = np.asarray(mean)
    if mean_a.ndim != 1:
        raise ValueError(f"mean: expected a 1-D array (C,), got shape {mean_a.shape}")
    channels = mean_a.shape[0]
    dt = np.asarray(running_mean).dtype
    if dt not in (np.float32, np.float64):
        raise ValueError(f"running_mean: expected dtype float32 or float64, got {dt}")
    _check_output("running_mean", running_mean, (channels,), dt)
    _check_output(stat_names[0], running_stat, (channels,), dt)
    return _channel_vector("mean", mean, channels, dt), _channel_vector(stat_names[1], stat, channels, dt)


def _check_count(x_shape: tuple, n: int) -> None:
    if n < 2:
        raise ValueError(f"x: batch statistics need more than 1 value per channel (N * H * W > 1), got shape {x_shape}")


def _check_eps(eps: float, positive: bool = False) -> float:
    """eps >= 0 where it is added to a variance under a square root; eps > 0 (`positive`) where it is a divisor's
    only guard (Lp norms divide by norm + eps)."""
    eps = float(eps)
    if positive and not eps > 0.0:
        raise ValueError(f"eps: expected a positive number, got {eps}")
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


@njit(cache=True, nogil=True, error_model="numpy")
def _group_rows(C, S, c0, c1):
    """Batch rows the short-run loops take at a time: more than one only when the block spans all channels."""
    if c0 == 0 and c1 == C and C * S < _WIDE:
        return _WIDE // (C * S)
    return 1


@njit(cache=True, nogil=True, error_model="numpy")
def _zeros(shape):
    """np.zeros for parallel kernels: there, np.zeros would be a parallel loop of its own (a thread-team start)."""
    return np.zeros(shape)


@njit(cache=True, nogil=True, error_model="numpy")
def _int_zeros(shape):
    """np.zeros(shape, np.int64) for parallel kernels (see _zeros)."""
    return np.zeros(shape, dtype=np.int64)


@njit(cache=True, nogil=True, error_model="numpy")
def _filled(shape, value):
    """np.full(shape, value) in float64 for parallel kernels (see _zeros)."""
    return np.full(shape, float(value))


@njit(cache=True, nogil=True, error_model="numpy")
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


@njit(cache=True, nogil=True, error_model="numpy")
def _fold_columns(col, c0, c1, S, acc, row, R=1):
    """acc[row, c] += sum of channel c's columns of col (R groups of S), in order."""
    width = (c1 - c0) * S
    for c in range(c0, c1):
        t = 0.0
        for r in range(R):
            for j in range(r * width + (c - c0) * S, r * width + (c - c0 + 1) * S):
                t += col[j]
        acc[row, c] += t


@njit(cache=True, nogil=True, error_model="numpy")
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


@njit(cache=True, nogil=True, error_model="numpy")
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


@njit(cache=True, nogil=True, error_model="numpy")
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


@njit(cache=True, nogil=True, error_model="numpy")
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


@njit(cache=True, nogil=True, error_model="numpy")
def _item_range(item, chunks, block, C, N):
    """Channel range and batch range of work item `item` (items are block-major, chunk-minor)."""
    b = item // chunks
    j = item % chunks
    c0 = b * block
    c1 = min(C, c0 + block)
    n0 = (j * N) // chunks
    n1 = ((j + 1) * N) // chunks
    return c0, c1, n0, n1


@njit(cache=True, nogil=True, error_model="numpy")
def _merge_rows(partials, c):
    """Sum of partials[:, c] in row order (a fixed order: deterministic)."""
    t = 0.0
    for j in range(partials.shape[0]):
        t += partials[j, c]
    return t
