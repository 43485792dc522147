"""Batch normalization kernels (train / probe / eval) forward and backward, on the per-channel building blocks of
channel_blocks.py (layout, work split, block helpers).

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
them (in place over x or dy is allowed).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from smoothnorm.kernels._checks import _output_array, _same_as
from smoothnorm.kernels.norm.channel_blocks import (
    _as_ncs,
    _block_affine,
    _block_grad_apply,
    _block_grad_sums,
    _block_moments,
    _channel_vector,
    _check_count,
    _check_eps,
    _check_momentum,
    _check_parameter_grads,
    _item_range,
    _merge_rows,
    _plan,
    _running_update_arrays,
    _store_parameter_grads,
    _zeros,
)


@njit(cache=True, nogil=True, error_model="numpy")
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


@njit(cache=True, nogil=True, error_model="numpy")
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


@njit(cache=True, nogil=True, error_model="numpy")
def _train_forward_block(x, C, S, c0, c1, N, gamma, beta, eps, count, shift, acc_s, acc_q, mean, var, invstd, scale,
                         offset, y):
    """Channels [c0, c1) over the whole batch, fused: statistics, then the output while the block is in cache."""
    _block_moments(x, C, S, c0, c1, 0, N, shift, acc_s, acc_q, 0)
    for c in range(c0, c1):
        _finish_moments(acc_s[0, c], acc_q[0, c], shift, count, eps, c, mean, var, invstd)
        scale[c] = float(gamma[c]) * invstd[c]
        offset[c] = float(beta[c])
    _block_affine(x, C, S, c0, c1, 0, N, mean, scale, offset, y)


@njit(cache=True, nogil=True, error_model="numpy")
def _train_backward_block(dy, x, C, S, c0, c1, N, gamma, invstd, count, center, acc_dy, acc_dyx, a, b, k, dgamma,
                          dbeta, dx):
    """Channels [c0, c1) over the whole batch, fused: gradient sums, then dx while the block is in cache."""
    _block_grad_sums(dy, x, C, S, c0, c1, 0, N, center, acc_dy, acc_dyx, 0)
    for c in range(c0, c1):
        _train_grad_coefficients(c, acc_dy[0, c], acc_dyx[0, c], gamma, invstd, count, a, b, k, dgamma, dbeta)
    _block_grad_apply(dy, x, C, S, c0, c1, 0, N, center, a, b, k, dx)


# ---------------------------------------------------------------------------------------------------------------
# Parallel kernels: x, y, dy, dx are flat views of (N, C, S) arrays.


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
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


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
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


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _fixed_stats_forward(x, N, C, S, center, scale, offset, block, chunks, y):
    """y = (x - center) scale + offset per channel, the (C,) float64 coefficients fixed: eval-mode normalization
    (here and in lp_norm_eval.py) with scale = gamma / sqrt(running_var + eps) or gamma / (running_norm + eps)."""
    blocks = (C + block - 1) // block
    for item in prange(blocks * chunks):
        c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
        _block_affine(x, C, S, c0, c1, n0, n1, center, scale, offset, y)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _fixed_stats_backward(dy, x, N, C, S, center, inv, gamma, need_sums, block, chunks, dx):
    """Gradient of y = gamma (x - center) inv + beta with center and inv (C,) float64 constants: dx = gamma inv dy;
    returns (dgamma, dbeta) = (sum(dy (x - center)) inv, sum(dy)) (zeros unless need_sums)."""
    scale = np.empty(C)
    zeros = _zeros(C)
    for c in range(C):
        scale[c] = float(gamma[c]) * inv[c]
    acc_dy = _zeros((chunks, C))
    acc_dyx = _zeros((chunks, C))
    blocks = (C + block - 1) // block
    for item in prange(blocks * chunks):
        c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
        if need_sums:
            _block_grad_sums(dy, x, C, S, c0, c1, n0, n1, center, acc_dy, acc_dyx, item % chunks)
        _block_affine(dy, C, S, c0, c1, n0, n1, zeros, scale, zeros, dx)
    dgamma = np.empty(C)
    dbeta = np.empty(C)
    for c in range(C):
        dgamma[c] = _merge_rows(acc_dyx, c) * inv[c]
        dbeta[c] = _merge_rows(acc_dy, c)
    return dgamma, dbeta


@njit(cache=True, nogil=True, error_model="numpy")
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
    out: optional C-contiguous array like x to write y into (returned as y; x itself is allowed).
    """
    x3 = _as_ncs("x", x)
    N, C, S = x3.shape
    _check_count(np.shape(x), N * S)
    eps = _check_eps(eps)
    gamma = _channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    beta = _channel_vector("beta", beta, C, x3.dtype, 0.0)
    y = _output_array("out", out, np.shape(x), x3.dtype, x3, may_alias=True)
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
    _check_parameter_grads(dgamma, dbeta, C, x3.dtype)
    dx = _output_array("out", out, np.shape(x), x3.dtype, x3, dy3, may_alias=True)
    block, chunks = _plan(N, C, S, x3.itemsize, 2)
    dg, db = _batch_norm_train_backward(
        dy3.reshape(-1), x3.reshape(-1), N, C, S, mean, invstd, gamma, block, chunks, dx.reshape(-1)
    )
    _store_parameter_grads(dgamma, dbeta, dg, db)
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
    y = _output_array("out", out, np.shape(x), x3.dtype, x3, may_alias=True)
    block, chunks = _plan(N, C, S, x3.itemsize, 1)
    # Per-channel coefficients in float64, like every elementwise pass here.
    scale = gamma.astype(np.float64) / np.sqrt(running_var.astype(np.float64) + eps)
    _fixed_stats_forward(x3.reshape(-1), N, C, S, running_mean.astype(np.float64), scale, beta.astype(np.float64),
                         block, chunks, y.reshape(-1))
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
    _check_parameter_grads(dgamma, dbeta, C, x3.dtype)
    need_sums = dgamma is not None or dbeta is not None
    dx = _output_array("out", out, np.shape(x), x3.dtype, x3, dy3, may_alias=True)
    block, chunks = _plan(N, C, S, x3.itemsize, 2)
    inv = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    dg, db = _fixed_stats_backward(dy3.reshape(-1), x3.reshape(-1), N, C, S, running_mean.astype(np.float64), inv,
                                   gamma, need_sums, block, chunks, dx.reshape(-1))
    _store_parameter_grads(dgamma, dbeta, dg, db)
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
    mean, var = _running_update_arrays(running_mean, running_var, mean, var, ("running_var", "var"))
    count = int(count)
    if count < 2:
        raise ValueError(f"count: expected the number of values per channel, > 1, got {count}")
    momentum = _check_momentum(momentum)
    _update_running(running_mean, running_var, mean, var, count, momentum)
