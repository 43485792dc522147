"""Batch normalization kernels (train / probe / eval) forward and backward: BatchNorm's statistics and the pieces
that make its variants of the normalization skeleton (skeleton.py; work split and block loops in channel_blocks.py).
Eval mode's kernels also serve the Lp norms' eval mode (lp_eval.py).

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
from numba import njit

from smoothnorm.kernels.norm import arguments
from smoothnorm.kernels.norm.channel_blocks import _block_map, _float64_copy, _plan, _zeros
from smoothnorm.kernels.norm.skeleton import (
    _affine_apply,
    _affine_value,
    _channel_passes,
    _gradient_apply,
    _gradient_sums,
    _moment_sums,
    _no_finish,
    _no_sums,
    _total,
)


@njit(cache=True, nogil=True, error_model="numpy")
def _channel_shift(x, C, S):
    """Each channel's first value in float64: the shift K of the shifted sums (x flat (N, C, S))."""
    shift = np.empty(C)
    for c in range(C):
        shift[c] = float(x[c * S])
    return shift


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
def _moments_finish(v, c0, c1):
    """Train forward: the channels' statistics, and the affine y = (x - mean) gamma invstd + beta."""
    shift, acc_s, acc_q = v[1]
    mean, scale, offset = v[2]
    gamma, beta, eps, count, var, invstd = v[3]
    for c in range(c0, c1):
        _finish_moments(_total(acc_s, c), _total(acc_q, c), shift, count, eps, c, mean, var, invstd)
        scale[c] = float(gamma[c]) * invstd[c]
        offset[c] = float(beta[c])


@njit(cache=True, nogil=True, error_model="numpy")
def _train_grad_finish(v, c0, c1):
    """Train backward: the channels' dx coefficients and parameter gradients."""
    _, acc_dy, acc_dyx = v[1]
    _, a, b, k = v[2]
    gamma, invstd, count, dgamma, dbeta = v[3]
    for c in range(c0, c1):
        _train_grad_coefficients(c, _total(acc_dy, c), _total(acc_dyx, c), gamma, invstd, count, a, b, k, dgamma,
                                 dbeta)


@njit(cache=True, nogil=True, error_model="numpy")
def _fixed_grad_sums(v, c0, c1, n0, n1, row):
    """Eval backward: the gradient sums, only where dgamma or dbeta is wanted."""
    if v[3][0]:
        _gradient_sums(v, c0, c1, n0, n1, row)


@njit(cache=True, nogil=True, error_model="numpy")
def _fixed_grad_finish(v, c0, c1):
    """Eval backward: dgamma = sum(dy (x - center)) inv and dbeta = sum(dy) of the channels."""
    _, acc_dy, acc_dyx = v[1]
    _, inv, dgamma, dbeta = v[3]
    for c in range(c0, c1):
        dgamma[c] = _total(acc_dyx, c) * inv[c]
        dbeta[c] = _total(acc_dy, c)


@njit(cache=True, nogil=True, error_model="numpy")
def _fixed_grad_apply(v, c0, c1, n0, n1):
    """Eval backward: dx = dy scale (coefficients (zeros, scale, zeros))."""
    C, S, dx, dy, _ = v[0]
    zeros, scale, _ = v[2]
    _block_map(C, S, c0, c1, n0, n1, (zeros, scale, zeros, zeros), _affine_value, (dy,), dx)


# ---------------------------------------------------------------------------------------------------------------
# Parallel kernels, one per variant: x, y, dy, dx are flat views of (N, C, S) arrays.


@njit(inline="always")
def _train_forward_passes(x, N, C, S, gamma, beta, eps, block, chunks, y, apply):
    """The train forward with its output pass `apply` (BatchNorm's affine here; with ReLU in batch_relu.py).
    Inlined into each parallel entry, as skeleton._channel_passes, so the piece is bound at compile time."""
    shift = _channel_shift(x, C, S)
    mean, var, invstd = np.empty(C), np.empty(C), np.empty(C)
    scale, offset = np.empty((2, C))
    acc_s, acc_q = _zeros((2, chunks, C))
    v = ((C, S, y, x), (shift, acc_s, acc_q), (mean, scale, offset), (gamma, beta, eps, float(N * S), var, invstd))
    _channel_passes(N, C, block, chunks, v, _moment_sums, _moments_finish, apply, True)
    return mean, var, invstd


@njit(inline="always")
def _train_backward_passes(arrays, N, C, mean, invstd, gamma, block, chunks, sums, apply):
    """The train backward over `arrays` (C, S, dx, dy, x), or with the ReLU output before x in batch_relu.py, with
    its gradient sums and dx pieces (inlined, as _train_forward_passes)."""
    center = _float64_copy(mean)
    a, b, k = np.empty((3, C))
    dgamma, dbeta = np.empty(C), np.empty(C)
    acc_dy, acc_dyx = _zeros((2, chunks, C))
    v = (arrays, (center, acc_dy, acc_dyx), (center, a, b, k), (gamma, invstd, float(N * arrays[1]), dgamma, dbeta))
    _channel_passes(N, C, block, chunks, v, sums, _train_grad_finish, apply, True)
    return dgamma, dbeta


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _batch_norm_train_forward(x, N, C, S, gamma, beta, eps, block, chunks, y):
    return _train_forward_passes(x, N, C, S, gamma, beta, eps, block, chunks, y, _affine_apply)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _batch_norm_train_backward(dy, x, N, C, S, mean, invstd, gamma, block, chunks, dx):
    return _train_backward_passes((C, S, dx, dy, x), N, C, mean, invstd, gamma, block, chunks, _gradient_sums,
                                  _gradient_apply)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _fixed_stats_forward(x, N, C, S, center, scale, offset, block, chunks, y):
    """y = (x - center) scale + offset per channel, the (C,) float64 coefficients fixed: eval-mode normalization
    (here and in lp_eval.py) with scale = gamma / sqrt(running_var + eps) or gamma / (running_norm + eps)."""
    v = ((C, S, y, x), (), (center, scale, offset), ())
    _channel_passes(N, C, block, chunks, v, _no_sums, _no_finish, _affine_apply, False)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _fixed_stats_backward(dy, x, N, C, S, center, inv, gamma, need_sums, block, chunks, dx):
    """Gradient of y = gamma (x - center) inv + beta with center and inv (C,) float64 constants: dx = gamma inv dy;
    returns (dgamma, dbeta) = (sum(dy (x - center)) inv, sum(dy)) (zeros unless need_sums)."""
    scale = np.empty(C)
    for c in range(C):
        scale[c] = float(gamma[c]) * inv[c]
    dgamma, dbeta = np.empty(C), np.empty(C)
    acc_dy, acc_dyx = _zeros((2, chunks, C))
    zeros = _zeros(C)
    v = ((C, S, dx, dy, x), (center, acc_dy, acc_dyx), (zeros, scale, zeros), (need_sums, inv, dgamma, dbeta))
    _channel_passes(N, C, block, chunks, v, _fixed_grad_sums, _fixed_grad_finish, _fixed_grad_apply, False)
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


def batch_norm_train_forward(x: np.ndarray, gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
                             eps: float = 1e-5, *, out: np.ndarray | None = None
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batch normalization with batch statistics (train and probe modes), as torch's BatchNorm1d/2d.

    x: (N, C) or (N, C, H, W), float32 or float64; gamma, beta: (C,) of x's dtype, or None (no scale / no shift).
    Returns (y, mean, invstd, var): y like x; mean, invstd = 1 / sqrt(var + eps) and the biased variance var,
    each (C,) of x's dtype. Keep (mean, invstd) for the backward pass and (mean, var) for the running update.
    out: optional C-contiguous array like x to write y into (returned as y; x itself is allowed).
    """
    x3, N, C, S = arguments.batch_input(x)
    block, chunks = _plan(N, C, S, x3.itemsize, 1)
    eps = arguments.check_eps(eps)
    gamma, beta = arguments.affine_parameters(gamma, beta, C, x3.dtype)
    y = arguments.result_array(out, x, x3, x3)
    mean, var, invstd = _batch_norm_train_forward(x3.reshape(-1), N, C, S, gamma, beta, eps, block, chunks,
                                                  y.reshape(-1))
    return y, *arguments.in_dtype(x3.dtype, mean, invstd, var)


def batch_norm_train_backward(dy: np.ndarray, x: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                              gamma: np.ndarray | None = None, dgamma: np.ndarray | None = None,
                              dbeta: np.ndarray | None = None, *, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of batch_norm_train_forward, through the batch statistics.

    dy, x: (N, C) or (N, C, H, W) of one dtype; mean, invstd: (C,) from the forward pass; gamma: (C,) or None.
    dgamma, dbeta: (C,) arrays overwritten in place with sum(dy * xhat) and sum(dy) when given.
    Returns dx, like x; out: optional C-contiguous array like x to write dx into (dy itself is allowed).
    """
    x3, dy3, N, C, S = arguments.backward_input(dy, x)
    block, chunks = _plan(N, C, S, x3.itemsize, 2)
    dx = arguments.result_array(out, x, x3, x3, dy3)
    mean, invstd, gamma = arguments.statistics_and_gamma(mean, invstd, gamma, dgamma, dbeta, C, x3.dtype)
    dg, db = _batch_norm_train_backward(dy3.reshape(-1), x3.reshape(-1), N, C, S, mean, invstd, gamma, block,
                                        chunks, dx.reshape(-1))
    arguments.store_parameter_grads(dgamma, dbeta, dg, db)
    return dx


def batch_norm_eval_forward(x: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray,
                            gamma: np.ndarray | None = None, beta: np.ndarray | None = None, eps: float = 1e-5, *,
                            out: np.ndarray | None = None) -> np.ndarray:
    """Batch normalization with running statistics (eval mode): y = (x - rm) / sqrt(rv + eps) * gamma + beta.

    x: (N, C) or (N, C, H, W), float32 or float64; running_mean, running_var, gamma, beta: (C,) of x's dtype
    (gamma, beta may be None). Returns y, like x; out: optional C-contiguous array like x to write y into.
    """
    return _fixed_stats_apply(x, running_mean, running_var, gamma, beta, arguments.check_eps(eps), out, "running_var")


def batch_norm_eval_backward(dy: np.ndarray, x: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray,
                             gamma: np.ndarray | None = None, dgamma: np.ndarray | None = None,
                             dbeta: np.ndarray | None = None, eps: float = 1e-5, *, out: np.ndarray | None = None
                             ) -> np.ndarray:
    """Gradient of batch_norm_eval_forward (running statistics are constants).

    dy, x: (N, C) or (N, C, H, W) of one dtype; running_mean, running_var, gamma: (C,) (gamma may be None).
    dgamma, dbeta: (C,) arrays overwritten in place with sum(dy * xhat) and sum(dy) when given.
    Returns dx, like x; out: optional C-contiguous array like x to write dx into (dy itself is allowed).
    """
    return _fixed_stats_gradient(dy, x, running_mean, running_var, gamma, dgamma, dbeta, arguments.check_eps(eps), out,
                                 "running_var")


def batch_norm_update_running(running_mean: np.ndarray, running_var: np.ndarray, mean: np.ndarray, var: np.ndarray,
                              count: int, momentum: float = 0.1) -> None:
    """Update running statistics in place, as torch: rm = (1-m) rm + m mean, rv = (1-m) rv + m var n/(n-1).

    running_mean, running_var: (C,) arrays updated in place; mean, var: (C,) batch mean and biased variance
    (from batch_norm_train_forward); count: n = N * H * W values per channel (> 1).
    """
    mean, var = arguments.running_update_arrays(running_mean, running_var, mean, var, ("running_var", "var"))
    count = int(count)
    if count < 2:
        raise ValueError(f"count: expected the number of values per channel, > 1, got {count}")
    _update_running(running_mean, running_var, mean, var, count, arguments.check_momentum(momentum))


# Eval mode, shared with the Lp norms (lp_eval.py): the spread is the running variance here (scale 1 / sqrt(rv +
# eps)), the running norm there (1 / (rn + eps)).


def _fixed_stats_apply(x, running_mean, running_spread, gamma, beta, eps, out, spread_name):
    x3, N, C, S = arguments.batch_input(x, count=False)
    block, chunks = _plan(N, C, S, x3.itemsize, 1)
    running_mean = arguments.channel_vector("running_mean", running_mean, C, x3.dtype)
    spread = _spread_term(arguments.channel_vector(spread_name, running_spread, C, x3.dtype), eps, spread_name)
    gamma, beta = arguments.affine_parameters(gamma, beta, C, x3.dtype)
    y = arguments.result_array(out, x, x3, x3)
    # Per-channel coefficients in float64, like every elementwise pass here.
    _fixed_stats_forward(x3.reshape(-1), N, C, S, running_mean.astype(np.float64), gamma.astype(np.float64) / spread,
                         beta.astype(np.float64), block, chunks, y.reshape(-1))
    return y


def _fixed_stats_gradient(dy, x, running_mean, running_spread, gamma, dgamma, dbeta, eps, out, spread_name):
    x3, dy3, N, C, S = arguments.backward_input(dy, x, count=False)
    block, chunks = _plan(N, C, S, x3.itemsize, 2)
    dx = arguments.result_array(out, x, x3, x3, dy3)
    running_mean = arguments.channel_vector("running_mean", running_mean, C, x3.dtype)
    inv = 1.0 / _spread_term(arguments.channel_vector(spread_name, running_spread, C, x3.dtype), eps, spread_name)
    gamma = arguments.channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    arguments.check_parameter_grads(dgamma, dbeta, C, x3.dtype)
    need_sums = dgamma is not None or dbeta is not None
    dg, db = _fixed_stats_backward(dy3.reshape(-1), x3.reshape(-1), N, C, S, running_mean.astype(np.float64), inv,
                                   gamma, need_sums, block, chunks, dx.reshape(-1))
    arguments.store_parameter_grads(dgamma, dbeta, dg, db)
    return dx


def _spread_term(spread: np.ndarray, eps: float, spread_name: str) -> np.ndarray:
    """The divisor of eval mode's output, sqrt(running_var + eps) or running_norm + eps, in float64."""
    if spread_name == "running_var":
        return np.sqrt(spread.astype(np.float64) + eps)
    return spread.astype(np.float64) + eps
