"""Lp batch normalization kernels (the paper's section 3.3): center by the batch mean, divide by a p-norm average.

Per unit (a channel, with H and W treated as part of the batch), with M = N * H * W values y:

    mu = mean(y),   n_p = mean(|y|) (p = 1),  sqrt(mean(y^2)) (p = 2),  max(|y|) (p = inf)
    out = gamma * (y - mu) / (n_p + eps) + beta

The norm is of the *un-centered* activations ("normalizes them by the average of their lp-norm (before shifting the
mean)"), and eps is added to the norm, not under a square root, so one rule serves all three p. The backward pass
goes through both mu and n_p; for p = inf the subgradient puts the whole derivative of max |y| on one element, the
first arg-max in (n, h, w) order, so ties resolve the same way on every run; sign(0) = 0 for p = 1, and the p = 2
norm's derivative y / (M n_2) is taken as 0 when n_2 = 0 (every y is 0; the output is beta).

Work split (kernels/norm/channel_blocks.py): inputs are viewed as (N, C, S); a work item is a block of consecutive
channels and, when there are too few blocks for the threads, a chunk of the batch. Loops run batch-outer,
channel-inner inside an item so memory is read in runs of (block * S) elements, and a block is sized to stay in L2
for the second pass. Items own their channels or their own row of partial sums; rows merge in a fixed order; the
split depends on the shape only, so results are bit-identical for any thread count. Sums are float64. NaN or Inf
in a channel makes that channel's output NaN (the mean carries it); nothing is masked.

The validation and work-split helpers (_as_ncs, _plan, _item_range, _expand, ...) come from
kernels/norm/channel_blocks.py, as do the affine and gradient-sum block helpers; the ones below are the p-norm's.
The eval-mode kernels (running statistics) and the running update are in kernels/norm/lp_eval.py.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from smoothnorm.kernels._checks import _same_as
from smoothnorm.kernels.norm.channel_blocks import (
    _RUN,
    _as_ncs,
    _block_affine,
    _block_grad_sums,
    _channel_vector,
    _check_count,
    _check_eps,
    _check_parameter_grads,
    _expand,
    _filled,
    _fold_columns,
    _int_zeros,
    _item_range,
    _merge_rows,
    _plan,
    _store_parameter_grads,
    _zeros,
)
from smoothnorm.kernels.norm.lp_eval import lp_norm_eval_backward, lp_norm_eval_forward, lp_norm_update_running

__all__ = [
    "lp_norm_train_forward",
    "lp_norm_train_backward",
    "lp_norm_eval_forward",
    "lp_norm_eval_backward",
    "lp_norm_update_running",
]

# Integer codes for p (a jitted function never takes another as an argument, so the norm is chosen by a code).
_P_CODES = {1: 1, 2: 2, math.inf: 0}


# ---------------------------------------------------------------------------------------------------------------
# Validation


def _p_code(p) -> int:
    """The kernel code of p in {1, 2, inf}."""
    try:
        return _P_CODES[float(p)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"p: expected 1, 2 or math.inf, got {p!r}") from None


# ---------------------------------------------------------------------------------------------------------------
# Block helpers (serial; called inside prange; the layout is channel_blocks.py's). A block is channels [c0, c1) of
# batch rows [n0, n1); arrays are flat C-order views of (N, C, S), so row n of a block is the contiguous run
# x[(n C + c0) S : (n C + c1) S] of width (c1 - c0) S. Each helper loops once over that run per row with
# per-position coefficients expanded from per-channel ones, so the loop vectorizes whatever S is (1 for (N, C)
# inputs, 4 for 2x2 maps); elementwise passes over runs of S >= _RUN use per-channel scalars instead.
#
# Reductions are "by column": position j of a block row accumulates over n into col[j] (elementwise, so it
# vectorizes without letting the compiler reassociate), and each channel's S columns are then added in order. The
# summation order is fixed in the source, so results do not depend on the compiler, the CPU or the thread count.
#
# Indices are uint64: with signed indices Numba adds a negative-index wraparound select that turns vector loads into
# gathers. Slicing a row per (n, c) instead would create views whose reference counts are atomics shared by all
# threads.


@njit(cache=True, nogil=True, error_model="numpy")
def _block_lp_sums(x, C, S, p, c0, c1, n0, n1, acc_s, acc_n, acc_i, row):
    """acc_s[row, c] += sum(x); acc_n[row, c] += sum|x| (p = 1) or sum x^2 (p = 2); for p = inf, acc_n[row, c] is
    the block's max |x| (when larger than the value it holds) and acc_i[row, c] its first position n S + s."""
    width = np.uint64((c1 - c0) * S)
    col_s = np.zeros(width)
    col_n = np.zeros(width)
    col_i = np.zeros(width, dtype=np.int64)
    if p == 0:
        col_n[:] = -1.0
    for n in range(n0, n1):
        base = np.uint64((n * C + c0) * S)
        if p == 1:
            for j in range(width):
                v = float(x[base + j])
                col_s[j] += v
                col_n[j] += abs(v)
        elif p == 2:
            for j in range(width):
                v = float(x[base + j])
                col_s[j] += v
                col_n[j] += v * v
        else:
            for j in range(width):
                v = float(x[base + j])
                col_s[j] += v
                # Strict >: a column keeps its first (smallest n) maximum. NaN never wins (the sum carries it).
                a = abs(v)
                if a > col_n[j]:
                    col_n[j] = a
                    col_i[j] = n
    _fold_columns(col_s, c0, c1, S, acc_s, row)
    if p != 0:
        _fold_columns(col_n, c0, c1, S, acc_n, row)
        return
    for c in range(c0, c1):
        best = acc_n[row, c]
        where = acc_i[row, c]
        for s in range(S):
            j = (c - c0) * S + s
            pos = col_i[j] * S + s
            # Ties go to the smaller position n S + s, so the arg-max is the first in (n, h, w) order.
            if col_n[j] > best or (col_n[j] == best and pos < where):
                best = col_n[j]
                where = pos
        acc_n[row, c] = best
        acc_i[row, c] = where


@njit(cache=True, nogil=True, error_model="numpy")
def _finish_lp(sum_x, acc_norm, p, count, eps, gamma, beta, c, mean, norm, scale, offset):
    """Mean, p-norm average and the output's per-channel scale (gamma / (norm + eps)) and offset of channel c."""
    mean[c] = sum_x / count
    if p == 1:
        nrm = acc_norm / count
    elif p == 2:
        nrm = math.sqrt(acc_norm / count)
    else:
        # NaN never wins a comparison, so the max skips it: carry it over from the sum instead.
        nrm = acc_norm if sum_x == sum_x else sum_x
    norm[c] = nrm
    scale[c] = float(gamma[c]) / (nrm + eps)
    offset[c] = float(beta[c])


@njit(cache=True, nogil=True, error_model="numpy")
def _block_lp_grad_apply(dy, x, C, S, p, c0, c1, n0, n1, a, b, k, dx):
    """dx = a[c] dy + k[c] + b[c] * (sign(x) for p=1, x for p=2, nothing for p=inf), in float64."""
    if S >= _RUN:
        uS = np.uint64(S)
        for n in range(n0, n1):
            for c in range(c0, c1):
                base = np.uint64((n * C + c) * S)
                ac = a[c]
                bc = b[c]
                kc = k[c]
                if p == 1:
                    for i in range(base, base + uS):
                        v = float(x[i])
                        sg = 1.0 if v > 0.0 else (-1.0 if v < 0.0 else v * 0.0)
                        dx[i] = ac * float(dy[i]) + kc + bc * sg
                elif p == 2:
                    for i in range(base, base + uS):
                        dx[i] = ac * float(dy[i]) + kc + bc * float(x[i])
                else:
                    for i in range(base, base + uS):
                        dx[i] = ac * float(dy[i]) + kc
        return
    width = np.uint64((c1 - c0) * S)
    ae = _expand(a, c0, c1, S)
    be = _expand(b, c0, c1, S)
    ke = _expand(k, c0, c1, S)
    for n in range(n0, n1):
        base = np.uint64((n * C + c0) * S)
        if p == 1:
            for j in range(width):
                v = float(x[base + j])
                # sign(x), with sign(0) = 0 and NaN kept.
                sg = 1.0 if v > 0.0 else (-1.0 if v < 0.0 else v * 0.0)
                dx[base + j] = ae[j] * float(dy[base + j]) + ke[j] + be[j] * sg
        elif p == 2:
            for j in range(width):
                dx[base + j] = ae[j] * float(dy[base + j]) + ke[j] + be[j] * float(x[base + j])
        else:
            for j in range(width):
                dx[base + j] = ae[j] * float(dy[base + j]) + ke[j]


@njit(cache=True, nogil=True, error_model="numpy")
def _lp_grad_coefficients(sum_dy, sum_dyu, p, gamma, norm, eps, count, c, a, b, k, kinf, dgamma, dbeta):
    """Coefficients of dx = a dy + k + b f(x) (+ kinf sign(x) at the arg-max for p = inf), and dgamma, dbeta.

    With d = norm + eps and u = x - mean: d out / d x_i = gamma/d (dy_i - mean(dy)) - K d norm / d x_i, where
    K = gamma sum(dy u) / d^2 and d norm / d x_i = sign(x_i)/M (p=1), x_i/(M norm) (p=2), sign(x_i) at the arg-max
    (p=inf).
    """
    g = float(gamma[c])
    nrm = float(norm[c])
    d = nrm + eps
    big_k = g * sum_dyu / (d * d)
    a[c] = g / d
    k[c] = -g * (sum_dy / count) / d
    kinf[c] = 0.0
    if p == 1:
        b[c] = -big_k / count
    elif p == 2:
        # norm == 0 means every x is 0 and so is u: the term vanishes (taken as 0 rather than 0/0).
        b[c] = 0.0 if nrm == 0.0 else -big_k / (count * nrm)
    else:
        b[c] = 0.0
        kinf[c] = -big_k
    dgamma[c] = sum_dyu / d
    dbeta[c] = sum_dy


# ---------------------------------------------------------------------------------------------------------------
# Parallel kernels: x, y, dy, dx are flat views of (N, C, S) arrays.


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _lp_norm_forward(x, N, C, S, p, gamma, beta, eps, block, chunks, y):
    count = float(N * S)
    mean = np.empty(C)
    norm = np.empty(C)
    scale = np.empty(C)
    offset = np.empty(C)
    acc_s = _zeros((chunks, C))
    acc_n = _filled((chunks, C), -1.0 if p == 0 else 0.0)
    acc_i = _int_zeros((chunks, C))
    argmax = _int_zeros(C)
    blocks = (C + block - 1) // block
    if chunks == 1:
        # Fused: statistics of a block, then its output while the block is still in cache.
        for blk in prange(blocks):
            c0 = blk * block
            c1 = min(C, c0 + block)
            _block_lp_sums(x, C, S, p, c0, c1, 0, N, acc_s, acc_n, acc_i, 0)
            for c in range(c0, c1):
                _finish_lp(acc_s[0, c], acc_n[0, c], p, count, eps, gamma, beta, c, mean, norm, scale, offset)
                argmax[c] = acc_i[0, c]
            _block_affine(x, C, S, c0, c1, 0, N, mean, scale, offset, y)
    else:
        for item in prange(blocks * chunks):
            c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
            _block_lp_sums(x, C, S, p, c0, c1, n0, n1, acc_s, acc_n, acc_i, item % chunks)
        for c in range(C):
            if p == 0:
                # Chunks hold increasing n: strict > keeps the first arg-max.
                best = acc_n[0, c]
                argmax[c] = acc_i[0, c]
                for j in range(1, chunks):
                    if acc_n[j, c] > best:
                        best = acc_n[j, c]
                        argmax[c] = acc_i[j, c]
            else:
                best = _merge_rows(acc_n, c)
            _finish_lp(_merge_rows(acc_s, c), best, p, count, eps, gamma, beta, c, mean, norm, scale, offset)
        for item in prange(blocks * chunks):
            c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
            _block_affine(x, C, S, c0, c1, n0, n1, mean, scale, offset, y)
    return mean, norm, argmax


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _lp_norm_backward(dy, x, N, C, S, p, mean, norm, argmax, gamma, eps, block, chunks, dx):
    count = float(N * S)
    center = np.empty(C)
    for c in range(C):
        center[c] = float(mean[c])
    a = np.empty(C)
    b = np.empty(C)
    k = np.empty(C)
    kinf = np.empty(C)
    dgamma = np.empty(C)
    dbeta = np.empty(C)
    acc_dy = _zeros((chunks, C))
    acc_dyx = _zeros((chunks, C))
    blocks = (C + block - 1) // block
    if chunks == 1:
        for blk in prange(blocks):
            c0 = blk * block
            c1 = min(C, c0 + block)
            _block_grad_sums(dy, x, C, S, c0, c1, 0, N, center, acc_dy, acc_dyx, 0)
            for c in range(c0, c1):
                _lp_grad_coefficients(acc_dy[0, c], acc_dyx[0, c], p, gamma, norm, eps, count, c, a, b, k, kinf,
                                      dgamma, dbeta)
            _block_lp_grad_apply(dy, x, C, S, p, c0, c1, 0, N, a, b, k, dx)
    else:
        for item in prange(blocks * chunks):
            c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
            _block_grad_sums(dy, x, C, S, c0, c1, n0, n1, center, acc_dy, acc_dyx, item % chunks)
        for c in range(C):
            _lp_grad_coefficients(_merge_rows(acc_dy, c), _merge_rows(acc_dyx, c), p, gamma, norm, eps, count, c,
                                  a, b, k, kinf, dgamma, dbeta)
        for item in prange(blocks * chunks):
            c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
            _block_lp_grad_apply(dy, x, C, S, p, c0, c1, n0, n1, a, b, k, dx)
    if p == 0:
        # The max's derivative lands on one element per channel: rewrite it with the extra term (serial, C writes).
        for c in range(C):
            j = argmax[c]
            i = ((j // S) * C + c) * S + j % S
            v = float(x[i])
            sg = 1.0 if v > 0.0 else (-1.0 if v < 0.0 else v * 0.0)
            dx[i] = a[c] * float(dy[i]) + k[c] + kinf[c] * sg
    return dgamma, dbeta


# ---------------------------------------------------------------------------------------------------------------
# Public API


def lp_norm_train_forward(
    x: np.ndarray,
    p: float,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lp batch normalization with batch statistics (train and probe modes), paper section 3.3.

    x: (N, C) or (N, C, H, W), float32 or float64; p: 1, 2 or math.inf; gamma, beta: (C,) of x's dtype or None.
    Returns (y, mean, norm, argmax): y like x; mean and the p-norm average norm, (C,) of x's dtype; argmax, (C,)
    int64, the position n * H * W + h * W + w of the first max |x| per channel (p = inf; zeros otherwise).
    Keep (mean, norm, argmax) for the backward pass and (mean, norm) for the running update.
    """
    code = _p_code(p)
    x3 = _as_ncs("x", x)
    N, C, S = x3.shape
    _check_count(np.shape(x), N * S)
    eps = _check_eps(eps, positive=True)
    gamma = _channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    beta = _channel_vector("beta", beta, C, x3.dtype, 0.0)
    y3 = np.empty_like(x3)
    block, chunks = _plan(N, C, S, x3.itemsize, 1)
    mean, norm, argmax = _lp_norm_forward(x3.reshape(-1), N, C, S, code, gamma, beta, eps, block, chunks,
                                          y3.reshape(-1))
    dt = x3.dtype
    return y3.reshape(np.shape(x)), mean.astype(dt), norm.astype(dt), argmax


def lp_norm_train_backward(
    dy: np.ndarray,
    x: np.ndarray,
    p: float,
    mean: np.ndarray,
    norm: np.ndarray,
    argmax: np.ndarray | None = None,
    gamma: np.ndarray | None = None,
    dgamma: np.ndarray | None = None,
    dbeta: np.ndarray | None = None,
    eps: float = 1e-5,
) -> np.ndarray:
    """Gradient of lp_norm_train_forward, through the batch mean and the batch norm.

    dy, x: (N, C) or (N, C, H, W) of one dtype; mean, norm: (C,) from the forward pass; argmax: (C,) int64 from
    the forward pass (required for p = inf); gamma: (C,) or None; eps: the forward's eps.
    dgamma, dbeta: (C,) arrays overwritten in place with sum(dy * xhat) and sum(dy) when given. Returns dx.
    """
    code = _p_code(p)
    x3 = _as_ncs("x", x)
    dy3 = _same_as("dy", dy, np.asarray(x), "x").reshape(x3.shape)
    N, C, S = x3.shape
    _check_count(np.shape(x), N * S)
    eps = _check_eps(eps, positive=True)
    mean = _channel_vector("mean", mean, C, x3.dtype)
    norm = _channel_vector("norm", norm, C, x3.dtype)
    if code == 0:
        if argmax is None:
            raise ValueError("argmax: expected the (C,) int64 arg-max from lp_norm_train_forward for p = inf, "
                             "got None")
        argmax = np.ascontiguousarray(argmax)
        if argmax.shape != (C,) or argmax.dtype != np.int64:
            raise ValueError(f"argmax: expected an int64 array of shape ({C},), got {argmax.dtype} {argmax.shape}")
        if argmax.size and (argmax.min() < 0 or argmax.max() >= N * S):
            raise ValueError(f"argmax: expected positions in [0, {N * S}), got [{argmax.min()}, {argmax.max()}]")
    else:
        argmax = np.zeros(C, dtype=np.int64)
    gamma = _channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    _check_parameter_grads(dgamma, dbeta, C, x3.dtype)
    dx3 = np.empty_like(x3)
    block, chunks = _plan(N, C, S, x3.itemsize, 2)
    dg, db = _lp_norm_backward(dy3.reshape(-1), x3.reshape(-1), N, C, S, code, mean, norm, argmax, gamma, eps,
                               block, chunks, dx3.reshape(-1))
    _store_parameter_grads(dgamma, dbeta, dg, db)
    return dx3.reshape(np.shape(x))
