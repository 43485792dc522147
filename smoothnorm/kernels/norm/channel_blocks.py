"""Per-channel statistics over (N, S): the work split and the block loops shared by the normalizations that use
batch statistics (BatchNorm, noisy BatchNorm, the Lp batch norms; the three passes over them are skeleton.py's, the
argument checks arguments.py's).

Layout. Every input is viewed as (N, C, S): (N, C) has S = 1, (N, C, H, W) has S = H * W. Statistics are per
channel over (N, S). The building blocks:

- `_plan(N, C, S, itemsize, arrays)` splits the work into items of (channel block, batch chunk);
- `_visit_block` runs a per-element function over a block in the fixed order below; on it, `_block_sums` adds a
  block's per-channel sums of two terms into float64 accumulators (by columns), and `_block_map` writes a
  per-element value (y, dx) from per-channel coefficients.

Work split. A work item is a block of consecutive channels (and, when there are too few blocks to keep the threads
busy, a chunk of the batch). Within an item the loops run batch-outer, channel-inner, so memory is read in
contiguous runs of (block channels * S) elements even when S is tiny (4x4 feature maps); a block is sized so that
the arrays it touches fit in L2, and the second pass over a block (normalize after statistics, write dx after the
sums) is served from cache. One pass over memory for statistics, one for the output. Each item owns its channels (or
its own row of partial sums), partials are merged in a fixed order, and the split depends on the shape only: results
are bit-identical for any thread count.

"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

# Bytes of input (all arrays a pass reads) per work item: with the output it writes, well inside a 2 MiB L2
# (1.25 MiB on older Intel, 1 MiB on AMD Zen 4), so the second pass over an item hits cache. Items aim to be at
# least _MIN_ITEM_ELEMENTS elements (scheduling overhead) and at least _TARGET_ITEMS in number (load balance on a
# few cores); all are constants, so the split depends on the shape only.
_BLOCK_BYTES = 1 << 19
_MIN_ITEM_ELEMENTS = 1 << 14
_TARGET_ITEMS = 8


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
# Block loops (serial; called inside the parallel kernels' prange). A block is channels [c0, c1) of batch rows
# [n0, n1); arrays are flat C-order views of (N, C, S), so row n of a block is the contiguous run
# x[(n*C + c0)*S : (n*C + c1)*S]. Runs of one channel (S elements) are long enough for S >= _RUN to loop over
# with per-channel scalars; below that (S = 1 for (N, C) inputs, 4 for 2x2 maps) the loop goes once over the
# whole row of the block with per-position coefficients expanded from per-channel ones. Both loops vectorize.
#
# Reductions are "by column": position j of a block row accumulates over n into col[j] (elementwise, so it
# vectorizes without letting the compiler reassociate sums), and each channel's S columns are added at the end in
# order. Summation order is thus fixed in the source: results do not depend on the compiler, the CPU or the thread
# count, and columns of N terms then S terms round less than one sequential sum of N * S terms.
#
# The per-element work is an @njit function passed to the loop (`body`, `terms`, `value`); the loops are inlined
# into their callers at Numba's IR level (inline="always"), so each call is a direct call that LLVM inlines into the
# vectorized loop, and no function object is passed at run time (see skeleton.py on why that matters for caching).
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
def _float64_copy(values):
    """values in float64 (a serial loop, for parallel kernels; see _zeros)."""
    out = np.empty(values.shape[0])
    for c in range(values.shape[0]):
        out[c] = float(values[c])
    return out


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
def _same_array(a, b):
    """Whether a and b are the same (C,) array (same data)."""
    return a.ctypes.data == b.ctypes.data


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


@njit(inline="always")
def _visit_block(C, S, c0, c1, n0, n1, R, runs, coefs, body, state):
    """body(state, i, j, k1, k2, k3, k4) for every element i of the block, batch rows in order: j is its column and
    k1..k4 the four (C,) float64 arrays of `coefs` at its channel.

    runs (and S >= _RUN): per (row, channel), with the coefficients as scalars, j the position in the block row.
    Otherwise per block row with per-position copies of the coefficients, R rows at a time (j the position within
    the group of R rows). With R = 1 both give every element the same column, visited in the same order.
    """
    q1, q2, q3, q4 = coefs
    if runs and S >= _RUN:
        uS = np.uint64(S)
        for n in range(n0, n1):
            for c in range(c0, c1):
                base = np.uint64((n * C + c) * S)
                off = np.uint64((c - c0) * S)
                k1, k2, k3, k4 = q1[c], q2[c], q3[c], q4[c]
                for s in range(uS):
                    body(state, base + s, off + s, k1, k2, k3, k4)
        return
    # Per-position copies, one per distinct array (a body that needs fewer than four repeats one).
    e1 = _expand(q1, c0, c1, S, R)
    e2 = e1 if _same_array(q2, q1) else _expand(q2, c0, c1, S, R)
    e3 = e2 if _same_array(q3, q2) else _expand(q3, c0, c1, S, R)
    e4 = e3 if _same_array(q4, q3) else _expand(q4, c0, c1, S, R)
    width = (c1 - c0) * S
    wide = np.uint64(width * R)
    # Whole groups of R rows first (one run of width * R), then the rows left over one at a time (width each).
    groups = (n1 - n0) // R
    for g in range(groups):
        base = np.uint64(((n0 + g * R) * C + c0) * S)
        for j in range(wide):
            body(state, base + j, j, e1[j], e2[j], e3[j], e4[j])
    for n in range(n0 + groups * R, n1):
        base = np.uint64((n * C + c0) * S)
        for j in range(np.uint64(width)):
            body(state, base + j, j, e1[j], e2[j], e3[j], e4[j])


@njit(inline="always")
def _block_sums(C, S, c0, c1, n0, n1, runs, grouped, center, terms, srcs, acc1, acc2, row):
    """acc1[row, c] += sum(t1), acc2[row, c] += sum(t2) over the block, by columns in float64, where terms(state, i,
    j, k, ...) adds element i's (t1, t2) to the column arrays in state = (srcs, col1, col2), k = center[c].

    grouped: short runs take _group_rows rows at a time, which changes the columns and so the bits: each kernel's
    choice is fixed (BatchNorm's statistics group rows, noisy BatchNorm's gradient sums and the Lp sums do not).
    runs: loop per channel on long runs (see _visit_block; the same bits, faster with a coefficient at large S).
    """
    R = _group_rows(C, S, c0, c1) if grouped and not (runs and S >= _RUN) else 1
    col1 = np.zeros((c1 - c0) * S * R)
    col2 = np.zeros((c1 - c0) * S * R)
    _visit_block(C, S, c0, c1, n0, n1, R, runs, (center, center, center, center), terms, (srcs, col1, col2))
    _fold_columns(col1, c0, c1, S, acc1, row, R)
    _fold_columns(col2, c0, c1, S, acc2, row, R)


@njit(inline="always")
def _block_map(C, S, c0, c1, n0, n1, coefs, value, srcs, dst):
    """dst[i] = value(...) for every element i of the block: value(state, i, j, k1, k2, k3, k4) writes it from
    state = (srcs, dst) and the four per-channel coefficient arrays `coefs` at i's channel. Elementwise, so the
    loop order and row groups change nothing but speed."""
    R = _group_rows(C, S, c0, c1) if S < _RUN else 1
    _visit_block(C, S, c0, c1, n0, n1, R, True, coefs, value, (srcs, dst))
