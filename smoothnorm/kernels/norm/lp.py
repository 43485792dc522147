"""Lp batch normalization kernels (the paper's section 3.3): center by the batch mean, divide by a p-norm average.

Per unit (a channel, with H and W treated as part of the batch), with M = N * H * W values y:

    mu = mean(y),   n_p = mean(|y|) (p = 1),  sqrt(mean(y^2)) (p = 2),  max(|y|) (p = inf)
    out = gamma * (y - mu) / (n_p + eps) + beta

The norm is of the *un-centered* activations ("normalizes them by the average of their lp-norm (before shifting the
mean)"), and eps is added to the norm, not under a square root, so one rule serves all three p. The backward pass
goes through both mu and n_p; for p = inf the subgradient puts the whole derivative of max |y| on one element, the
first arg-max in (n, h, w) order, so ties resolve the same way on every run; sign(0) = 0 for p = 1, and the p = 2
norm's derivative y / (M n_2) is taken as 0 when n_2 = 0 (every y is 0; the output is beta).

The passes are the normalization skeleton's (kernels/norm/skeleton.py: shape-only work split, partial sums merged in
a fixed order, so results are bit-identical for any thread count); the pieces below are the p-norm's: its sums (sum
of x and of |x| or x^2 by columns, or max |x| with its first position), its finish and its gradient apply. The
forward apply and the gradient sums are the skeleton's stock ones. Sums are float64. NaN or Inf in a channel makes
that channel's output NaN (the mean carries it); nothing is masked. The eval-mode kernels (running statistics) and
the running update are in kernels/norm/lp_eval.py.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from smoothnorm.kernels.norm import arguments
from smoothnorm.kernels.norm.channel_blocks import (
    _block_map,
    _block_sums,
    _filled,
    _float64_copy,
    _fold_columns,
    _int_zeros,
    _plan,
    _visit_block,
    _zeros,
)
from smoothnorm.kernels.norm.skeleton import _affine_apply, _channel_passes, _gradient_sums, _total

__all__ = ["lp_norm_train_forward", "lp_norm_train_backward"]

# p as a code (inf is 0). The kernels branch on it once per block, so one compiled kernel serves the three norms (a
# third of the compile time and of the cache that a kernel per p, binding its own pieces, would take).
_P_CODES = {1: 1, 2: 2, math.inf: 0}


def _p_code(p) -> int:
    """The kernel code of p in {1, 2, inf}."""
    try:
        return _P_CODES[float(p)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"p: expected 1, 2 or math.inf, got {p!r}") from None


@njit(cache=True, nogil=True, error_model="numpy")
def _sign(v):
    """sign(v) with sign(0) = 0 (of v's sign) and NaN kept."""
    return 1.0 if v > 0.0 else (-1.0 if v < 0.0 else v * 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Sums (partials (acc_s, acc_n, acc_i); no row groups, so the columns are one per position of a block row)


@njit(cache=True, nogil=True, error_model="numpy")
def _l1_terms(state, i, j, k, k2, k3, k4):
    """Column j += (x, |x|) at element i."""
    srcs, col_s, col_n = state
    v = float(srcs[0][i])
    col_s[j] += v
    col_n[j] += abs(v)


@njit(cache=True, nogil=True, error_model="numpy")
def _l2_terms(state, i, j, k, k2, k3, k4):
    """Column j += (x, x^2) at element i."""
    srcs, col_s, col_n = state
    v = float(srcs[0][i])
    col_s[j] += v
    col_n[j] += v * v


@njit(cache=True, nogil=True, error_model="numpy")
def _abs_max_terms(state, i, j, k, k2, k3, k4):
    """Column j += x at element i, and column j's max |x| with the offset i - j of its row (strict >: a column keeps
    its first, smallest-n, maximum; NaN never wins, the sum carries it)."""
    x, col_s, col_n, col_i = state
    v = float(x[i])
    col_s[j] += v
    a = abs(v)
    if a > col_n[j]:
        col_n[j] = a
        col_i[j] = i - j


@njit(cache=True, nogil=True, error_model="numpy")
def _block_abs_max(C, S, c0, c1, n0, n1, x, center, acc_s, acc_n, acc_i, row):
    """acc_s[row, c] += sum(x); acc_n[row, c] is the block's max |x| (when larger than the value it holds) and
    acc_i[row, c] its first position n S + s."""
    width = (c1 - c0) * S
    col_s = np.zeros(width)
    col_n = np.full(width, -1.0)
    # Each column's winning row, as the row's offset (n C + c0) S; row 0's where no value wins (all NaN).
    col_i = np.full(width, c0 * S, dtype=np.int64)
    _visit_block(C, S, c0, c1, n0, n1, 1, False, (center, center, center, center), _abs_max_terms,
                 (x, col_s, col_n, col_i))
    _fold_columns(col_s, c0, c1, S, acc_s, row)
    for c in range(c0, c1):
        best = acc_n[row, c]
        where = acc_i[row, c]
        for s in range(S):
            j = (c - c0) * S + s
            pos = ((col_i[j] // S - c0) // C) * S + s
            # Ties go to the smaller position n S + s, so the arg-max is the first in (n, h, w) order.
            if col_n[j] > best or (col_n[j] == best and pos < where):
                best = col_n[j]
                where = pos
        acc_n[row, c] = best
        acc_i[row, c] = where


@njit(cache=True, nogil=True, error_model="numpy")
def _lp_sums(v, c0, c1, n0, n1, row):
    C, S, _, x = v[0]
    acc_s, acc_n, acc_i = v[1]
    mean = v[2][0]  # not read: the block loops' coefficient slot
    p = v[3][4]
    if p == 1:
        _block_sums(C, S, c0, c1, n0, n1, False, False, mean, _l1_terms, (x,), acc_s, acc_n, row)
    elif p == 2:
        _block_sums(C, S, c0, c1, n0, n1, False, False, mean, _l2_terms, (x,), acc_s, acc_n, row)
    else:
        _block_abs_max(C, S, c0, c1, n0, n1, x, mean, acc_s, acc_n, acc_i, row)


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
def _lp_finish(v, c0, c1):
    """The channels' means, norms (rows merged: summed, or for p = inf the max, chunks holding increasing n, so
    strict > keeps the first arg-max) and output coefficients."""
    acc_s, acc_n, acc_i = v[1]
    mean, scale, offset = v[2]
    gamma, beta, eps, count, p, norm, argmax = v[3]
    for c in range(c0, c1):
        best = acc_n[0, c]
        argmax[c] = acc_i[0, c]
        if p == 0:
            for j in range(1, acc_n.shape[0]):
                if acc_n[j, c] > best:
                    best = acc_n[j, c]
                    argmax[c] = acc_i[j, c]
        else:
            best = _total(acc_n, c)
        _finish_lp(_total(acc_s, c), best, p, count, eps, gamma, beta, c, mean, norm, scale, offset)


# ---------------------------------------------------------------------------------------------------------------
# Gradient: dx = a dy + k + b f(x), f(x) = sign(x) (p = 1), x (p = 2), nothing (p = inf, whose max term lands on
# the arg-max element alone)


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


@njit(cache=True, nogil=True, error_model="numpy")
def _lp_grad_finish(v, c0, c1):
    """The channels' coefficients; for p = inf also dy and x at each channel's arg-max, read before the apply pass
    (which may write dx over dy)."""
    C, S, _, dy, x = v[0]
    _, acc_dy, acc_dyx = v[1]
    a, b, k, kinf = v[2]
    gamma, eps, count, p, norm, argmax, dgamma, dbeta, picked = v[3]
    for c in range(c0, c1):
        _lp_grad_coefficients(_total(acc_dy, c), _total(acc_dyx, c), p, gamma, norm, eps, count, c, a, b, k, kinf,
                              dgamma, dbeta)
        if p == 0:
            i = ((argmax[c] // S) * C + c) * S + argmax[c] % S
            picked[0, c] = float(dy[i])
            picked[1, c] = float(x[i])


@njit(cache=True, nogil=True, error_model="numpy")
def _l1_gradient_value(state, i, j, a, b, k, k4):
    (dy, x), dx = state
    dx[i] = a * float(dy[i]) + k + b * _sign(float(x[i]))


@njit(cache=True, nogil=True, error_model="numpy")
def _l2_gradient_value(state, i, j, a, b, k, k4):
    (dy, x), dx = state
    dx[i] = a * float(dy[i]) + k + b * float(x[i])


@njit(cache=True, nogil=True, error_model="numpy")
def _linf_gradient_value(state, i, j, a, b, k, k4):
    (dy, x), dx = state
    dx[i] = a * float(dy[i]) + k


@njit(cache=True, nogil=True, error_model="numpy")
def _lp_grad_apply(v, c0, c1, n0, n1):
    C, S, dx, dy, x = v[0]
    a, b, k, _ = v[2]
    p = v[3][3]
    if p == 1:
        _block_map(C, S, c0, c1, n0, n1, (a, b, k, k), _l1_gradient_value, (dy, x), dx)
    elif p == 2:
        _block_map(C, S, c0, c1, n0, n1, (a, b, k, k), _l2_gradient_value, (dy, x), dx)
    else:
        _block_map(C, S, c0, c1, n0, n1, (a, b, k, k), _linf_gradient_value, (dy, x), dx)


# ---------------------------------------------------------------------------------------------------------------
# Parallel kernels: x, y, dy, dx are flat views of (N, C, S) arrays.


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _lp_norm_forward(x, N, C, S, p, gamma, beta, eps, block, chunks, y):
    mean, norm, scale, offset = np.empty(C), np.empty(C), np.empty(C), np.empty(C)
    argmax = _int_zeros(C)
    partials = (_zeros((chunks, C)), _filled((chunks, C), -1.0 if p == 0 else 0.0), _int_zeros((chunks, C)))
    v = ((C, S, y, x), partials, (mean, scale, offset), (gamma, beta, eps, float(N * S), p, norm, argmax))
    _channel_passes(N, C, block, chunks, v, _lp_sums, _lp_finish, _affine_apply, True)
    return mean, norm, argmax


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _lp_norm_backward(dy, x, N, C, S, p, mean, norm, argmax, gamma, eps, block, chunks, dx):
    center = _float64_copy(mean)
    a, b, k, kinf = np.empty((4, C))
    dgamma, dbeta = np.empty(C), np.empty(C)
    picked = np.empty((2, C))
    acc_dy, acc_dyx = _zeros((2, chunks, C))
    v = ((C, S, dx, dy, x), (center, acc_dy, acc_dyx), (a, b, k, kinf),
         (gamma, eps, float(N * S), p, norm, argmax, dgamma, dbeta, picked))
    _channel_passes(N, C, block, chunks, v, _gradient_sums, _lp_grad_finish, _lp_grad_apply, True)
    if p == 0:
        # The max's derivative lands on one element per channel: rewrite it with the extra term (serial, C writes).
        for c in range(C):
            j = argmax[c]
            dx[((j // S) * C + c) * S + j % S] = a[c] * picked[0, c] + k[c] + kinf[c] * _sign(picked[1, c])
    return dgamma, dbeta


# ---------------------------------------------------------------------------------------------------------------
# Public API


def lp_norm_train_forward(x: np.ndarray, p: float, gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
                          eps: float = 1e-5, *, out: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lp batch normalization with batch statistics (train and probe modes), paper section 3.3.

    x: (N, C) or (N, C, H, W), float32 or float64; p: 1, 2 or math.inf; gamma, beta: (C,) of x's dtype or None.
    Returns (y, mean, norm, argmax): y like x; mean and the p-norm average norm, (C,) of x's dtype; argmax, (C,)
    int64, the position n * H * W + h * W + w of the first max |x| per channel (p = inf; zeros otherwise).
    Keep (mean, norm, argmax) for the backward pass and (mean, norm) for the running update.
    out: optional C-contiguous array like x to write y into (x itself is allowed).
    """
    code = _p_code(p)
    x3, N, C, S = arguments.batch_input(x)
    block, chunks = _plan(N, C, S, x3.itemsize, 1)
    eps = arguments.check_eps(eps, positive=True)
    gamma, beta = arguments.affine_parameters(gamma, beta, C, x3.dtype)
    y = arguments.result_array(out, x, x3, x3)
    mean, norm, argmax = _lp_norm_forward(x3.reshape(-1), N, C, S, code, gamma, beta, eps, block, chunks,
                                          y.reshape(-1))
    return (y, *arguments.in_dtype(x3.dtype, mean, norm), argmax)


def lp_norm_train_backward(dy: np.ndarray, x: np.ndarray, p: float, mean: np.ndarray, norm: np.ndarray,
                           argmax: np.ndarray | None = None, gamma: np.ndarray | None = None,
                           dgamma: np.ndarray | None = None, dbeta: np.ndarray | None = None, eps: float = 1e-5, *,
                           out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of lp_norm_train_forward, through the batch mean and the batch norm.

    dy, x: (N, C) or (N, C, H, W) of one dtype; mean, norm: (C,) from the forward pass; argmax: (C,) int64 from
    the forward pass (required for p = inf); gamma: (C,) or None; eps: the forward's eps.
    dgamma, dbeta: (C,) arrays overwritten in place with sum(dy * xhat) and sum(dy) when given. Returns dx, like x;
    out: optional C-contiguous array like x to write dx into (dy itself is allowed).
    """
    code = _p_code(p)
    x3, dy3, N, C, S = arguments.backward_input(dy, x)
    block, chunks = _plan(N, C, S, x3.itemsize, 2)
    eps = arguments.check_eps(eps, positive=True)
    mean = arguments.channel_vector("mean", mean, C, x3.dtype)
    norm = arguments.channel_vector("norm", norm, C, x3.dtype)
    argmax = _argmax_positions(argmax, code, C, N * S)
    gamma = arguments.channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    arguments.check_parameter_grads(dgamma, dbeta, C, x3.dtype)
    dx = arguments.result_array(out, x, x3, x3, dy3)
    dg, db = _lp_norm_backward(dy3.reshape(-1), x3.reshape(-1), N, C, S, code, mean, norm, argmax, gamma, eps,
                               block, chunks, dx.reshape(-1))
    arguments.store_parameter_grads(dgamma, dbeta, dg, db)
    return dx


def _argmax_positions(argmax, code: int, channels: int, positions: int) -> np.ndarray:
    """The forward's (C,) int64 arg-max positions in [0, N * H * W), required for p = inf (zeros otherwise)."""
    if code != 0:
        return np.zeros(channels, dtype=np.int64)
    if argmax is None:
        raise ValueError("argmax: expected the (C,) int64 arg-max from lp_norm_train_forward for p = inf, got None")
    argmax = np.ascontiguousarray(argmax)
    if argmax.shape != (channels,) or argmax.dtype != np.int64:
        raise ValueError(f"argmax: expected an int64 array of shape ({channels},), got {argmax.dtype} {argmax.shape}")
    if argmax.size and (argmax.min() < 0 or argmax.max() >= positions):
        raise ValueError(f"argmax: expected positions in [0, {positions}), got [{argmax.min()}, {argmax.max()}]")
    return argmax
