"""The normalization skeleton: per-channel statistics over (N, C, S) in three passes, written once for BatchNorm
(train and eval mode, forward and backward), noisy BatchNorm and the Lp batch norms.

    sums    per work item (channel block, batch chunk), add the block's sums into its row of partials
    finish  per channel (of a block, or all), merge the rows in a fixed order (`_total`), compute the statistics
            and coefficients
    apply   per work item, write the output (y or dx) from the coefficients

Work items are channel_blocks' (shape-only split, so results are bit-identical for any thread count). With one item
the passes run without a thread team (whose start costs more than small inputs, such as (1000, 10), take); with one
batch chunk each channel block runs its three passes fused, the apply reading the block from cache.

A variant is a tiny `@njit(cache=True, parallel=True)` entry that allocates its arrays, packs them into `v` and
calls `_channel_passes` with its three pieces, plain `@njit` functions:

    sums(v, c0, c1, n0, n1, row)    finish(v, c0, c1)    apply(v, c0, c1, n0, n1)

v = (arrays, partials, coefficients, rest), four flat tuples of arrays and scalars:
    arrays        (C, S, y, x) for a forward pass, (C, S, dx, dy, x) for a backward pass (flat views)
    partials      the (rows, C) float64 partial sums, after the (C,) values they are taken relative to
    coefficients  the (C,) float64 arrays the apply pass reads
    rest          what only finish reads or writes: parameters, scalars, the statistics returned
The stock pieces below serve several variants: BatchNorm's moments (train forward, noisy forward), the gradient
sums (BatchNorm, Lp and eval backward), the affine apply (BatchNorm and Lp forward, eval forward) and BatchNorm's
gradient apply.

Why the driver is inlined (inline="always"). A jitted function may take another as an argument: it is compiled once
per function passed (the argument's type is the function itself), and from a jitted caller the function is bound
at compile time. But a parallel=True function that receives one passes the function object's address into its
thread team, and a compiled function that holds an address is not cached ("uses dynamic globals"): each process
would recompile every variant. Inlined at Numba's IR level, the driver's loops become the entry's own, every call
to a piece is a direct call, and the entry caches like any kernel. For the same reason the block loops that take a
per-element function (channel_blocks) are inlined. Nested tuples cannot enter a parallel loop either (only one
level of a tuple is unpacked into the thread team's arguments): v's four tuples are unpacked before each loop and
packed again inside.
"""

from __future__ import annotations

from numba import njit, prange

from smoothnorm.kernels.norm.channel_blocks import _block_map, _block_sums


@njit(cache=True, nogil=True, error_model="numpy")
def _item_range(item, chunks, block, C, N):
    """Channel range, batch range and row of partials of work item `item` (items are block-major, chunk-minor)."""
    b = item // chunks
    j = item % chunks
    c0 = b * block
    c1 = min(C, c0 + block)
    n0 = (j * N) // chunks
    n1 = ((j + 1) * N) // chunks
    return c0, c1, n0, n1, j


@njit(inline="always")
def _total(partials, c):
    """Channel c's total over the rows of partials: the one row's value, or the rows summed in row order (a fixed
    order: deterministic). Inlined: a call per channel and statistic cost Lp's (128, 512) forward 15%."""
    if partials.shape[0] == 1:
        return partials[0, c]
    t = 0.0
    for j in range(partials.shape[0]):
        t += partials[j, c]
    return t


@njit(cache=True, nogil=True, error_model="numpy")
def _unpacked(v):
    """v itself. Called rather than inlined: Numba's array analysis takes a tuple built of integers and arrays for a
    shape and, unpacking v's tuples, fails on a dimension mismatch; it does not look into a call's result."""
    return v


@njit(inline="always")
def _fused_item(v0, v1, v2, v3, item, block, C, N, sums, finish, apply):
    """Channel block `item` over the whole batch: sums, finish and apply in a row, the block still in cache."""
    v = (v0, v1, v2, v3)
    # Ranges from a call, never literal zeros: the pieces then compile once for all paths, not once per literal.
    c0, c1, n0, n1, row = _item_range(item, 1, block, C, N)
    sums(v, c0, c1, n0, n1, row)
    finish(v, c0, c1)
    apply(v, c0, c1, n0, n1)


@njit(inline="always")
def _channel_passes(N, C, block, chunks, v, sums, finish, apply, apply_needs_finish):
    """Run the three passes over channel blocks of `block` channels and `chunks` batch chunks (channel_blocks._plan).

    apply_needs_finish=False (eval mode, whose coefficients are known beforehand): with several chunks, each item's
    apply follows its sums directly, and finish (the parameter gradients) comes last.
    """
    v0, v1, v2, v3 = _unpacked(v)
    blocks = (C + block - 1) // block
    if chunks == 1 and blocks == 1:
        _fused_item(v0, v1, v2, v3, 0, C, C, N, sums, finish, apply)
    elif chunks == 1:
        for b in prange(blocks):
            _fused_item(v0, v1, v2, v3, b, block, C, N, sums, finish, apply)
    else:
        for item in prange(blocks * chunks):
            c0, c1, n0, n1, row = _item_range(item, chunks, block, C, N)
            w = (v0, v1, v2, v3)
            sums(w, c0, c1, n0, n1, row)
            if not apply_needs_finish:
                apply(w, c0, c1, n0, n1)
        finish(v, 0, C)
        if apply_needs_finish:
            for item in prange(blocks * chunks):
                c0, c1, n0, n1, _ = _item_range(item, chunks, block, C, N)
                apply((v0, v1, v2, v3), c0, c1, n0, n1)


# ---------------------------------------------------------------------------------------------------------------
# Stock pieces, and the per-element functions of their block loops (state: see channel_blocks._block_sums/_map).


@njit(cache=True, nogil=True, error_model="numpy")
def _no_sums(v, c0, c1, n0, n1, row):
    """The sums pass of a variant with nothing to sum (eval forward)."""


@njit(cache=True, nogil=True, error_model="numpy")
def _no_finish(v, c0, c1):
    """The finish pass of a variant with nothing to finish (eval forward)."""


@njit(cache=True, nogil=True, error_model="numpy")
def _moment_terms(state, i, j, k, k2, k3, k4):
    """Column j += (d, d^2), d = x[i] - k."""
    srcs, col_s, col_q = state
    d = float(srcs[0][i]) - k
    col_s[j] += d
    col_q[j] += d * d


@njit(cache=True, nogil=True, error_model="numpy")
def _moment_sums(v, c0, c1, n0, n1, row):
    """BatchNorm's statistics: sums of d = x - shift and d^2 (partials (shift, acc_s, acc_q)), in row groups."""
    C, S, _, x = v[0]
    shift, acc_s, acc_q = v[1]
    _block_sums(C, S, c0, c1, n0, n1, True, True, shift, _moment_terms, (x,), acc_s, acc_q, row)


@njit(cache=True, nogil=True, error_model="numpy")
def _gradient_terms(state, i, j, k, k2, k3, k4):
    """Column j += (dy, dy (x - k)) at element i."""
    srcs, col_dy, col_dyx = state
    dy, x = srcs
    g = float(dy[i])
    col_dy[j] += g
    col_dyx[j] += g * (float(x[i]) - k)


@njit(cache=True, nogil=True, error_model="numpy")
def _gradient_sums(v, c0, c1, n0, n1, row):
    """sum(dy) and sum(dy (x - center)) (partials (center, acc_dy, acc_dyx)), in row groups."""
    C, S, _, dy, x = v[0]
    center, acc_dy, acc_dyx = v[1]
    _block_sums(C, S, c0, c1, n0, n1, True, True, center, _gradient_terms, (dy, x), acc_dy, acc_dyx, row)


@njit(cache=True, nogil=True, error_model="numpy")
def _affine_value(state, i, j, k, a, b, k4):
    """y[i] = (x[i] - k) a + b in float64."""
    srcs, y = state
    y[i] = (float(srcs[0][i]) - k) * a + b


@njit(cache=True, nogil=True, error_model="numpy")
def _affine_apply(v, c0, c1, n0, n1):
    """y = (x - center) scale + offset (coefficients (center, scale, offset))."""
    C, S, y, x = v[0]
    center, scale, offset = v[2]
    _block_map(C, S, c0, c1, n0, n1, (center, scale, offset, offset), _affine_value, (x,), y)


@njit(cache=True, nogil=True, error_model="numpy")
def _gradient_value(state, i, j, m, a, b, k):
    """dx[i] = a dy[i] + b (x[i] - m) + k in float64."""
    srcs, dx = state
    dy, x = srcs
    dx[i] = a * float(dy[i]) + b * (float(x[i]) - m) + k


@njit(cache=True, nogil=True, error_model="numpy")
def _gradient_apply(v, c0, c1, n0, n1):
    """dx = a dy + b (x - center) + k (coefficients (center, a, b, k))."""
    C, S, dx, dy, x = v[0]
    _block_map(C, S, c0, c1, n0, n1, v[2], _gradient_value, (dy, x), dx)
