"""Noisy batch normalization kernels (the paper's Algorithm 1): batch norm fused with fixed per-element noise.

With xhat = (x - mean) / sqrt(var + eps) (batch statistics per channel over (N, H, W)) and per-element noise arrays
s (scale) and m (shift) of x's shape, drawn by the caller:

    after the affine (default):  out = s * (gamma * xhat + beta) + m
    before the affine:           out = gamma * (s * xhat + m) + beta

The noise is a constant for the backward pass. Fusing it into batch norm's passes saves two full passes over
memory against batch norm followed by an elementwise noise kernel: the statistics pass reads x, the output pass
reads x, s, m; the gradient-sum pass reads dout, s, x (before the affine, a second pass over the block, from cache,
reads dout and m), the dx pass reads them again from cache. The passes are the normalization skeleton's
(kernels/norm/skeleton.py) with BatchNorm's statistics (its moments sums and finish) and the noise in the finish,
apply and gradient pieces below; the work split is shape-only, so results are bit-identical for any thread count.
NaN or Inf propagates.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from smoothnorm.kernels._checks import _same_as
from smoothnorm.kernels.norm import arguments
from smoothnorm.kernels.norm.batch import _channel_shift, _finish_moments, _train_grad_coefficients
from smoothnorm.kernels.norm.channel_blocks import _block_map, _block_sums, _float64_copy, _plan, _zeros
from smoothnorm.kernels.norm.skeleton import _channel_passes, _moment_sums, _total


@njit(cache=True, nogil=True, error_model="numpy")
def _noisy_finish(v, c0, c1):
    """The channels' statistics and output coefficients out = s ((x - mean) scale + off_s) + m gain_m + off."""
    shift, acc_s, acc_q = v[1]
    mean, scale, off_s, gain_m, off = v[2]
    gamma, beta, eps, count, var, invstd, _, _, before = v[3]
    for c in range(c0, c1):
        _finish_moments(_total(acc_s, c), _total(acc_q, c), shift, count, eps, c, mean, var, invstd)
        g = float(gamma[c])
        scale[c] = g * invstd[c]
        if before:
            off_s[c] = 0.0
            gain_m[c] = g
            off[c] = float(beta[c])
        else:
            off_s[c] = float(beta[c])
            gain_m[c] = 1.0
            off[c] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _after_value(state, i, j, k, a, b1, k4):
    """Noise after the affine: y[i] = s ((x - k) a + b1) + m."""
    (x, s, m), y = state
    y[i] = float(s[i]) * ((float(x[i]) - k) * a + b1) + float(m[i])


@njit(cache=True, nogil=True, error_model="numpy")
def _before_value(state, i, j, k, a, gm, b2):
    """Noise before the affine: y[i] = s (x - k) a + m gm + b2."""
    (x, s, m), y = state
    y[i] = float(s[i]) * ((float(x[i]) - k) * a) + float(m[i]) * gm + b2


@njit(inline="always")
def _noisy_map(v, c0, c1, n0, n1, before_value, after_value):
    """The output pass by placement, with per-element functions of state ((x, s, m), y) and the coefficients
    (center, scale, gain_m, off) before the affine, (center, scale, off_s) after it. Inlined, as channel_blocks'
    loops, so each caller's functions are bound at compile time (also kernels/norm/batch_relu.py's, with ReLU)."""
    C, S, y, x = v[0]
    center, scale, off_s, gain_m, off = v[2]
    s, m, before = v[3][6], v[3][7], v[3][8]
    if before:
        _block_map(C, S, c0, c1, n0, n1, (center, scale, gain_m, off), before_value, (x, s, m), y)
    else:
        _block_map(C, S, c0, c1, n0, n1, (center, scale, off_s, off_s), after_value, (x, s, m), y)


@njit(cache=True, nogil=True, error_model="numpy")
def _noisy_apply(v, c0, c1, n0, n1):
    """y = s ((x - mean) scale + off_s) + m gain_m + off, by placement."""
    _noisy_map(v, c0, c1, n0, n1, _before_value, _after_value)


@njit(cache=True, nogil=True, error_model="numpy")
def _noisy_grad_terms(state, i, j, k, k2, k3, k4):
    """Column j += (g, g (x - k)) with g = dout s, the batch-norm gradient's input."""
    (dout, x, s), col1, col2 = state
    g = float(dout[i]) * float(s[i])
    col1[j] += g
    col2[j] += g * (float(x[i]) - k)


@njit(cache=True, nogil=True, error_model="numpy")
def _shift_noise_terms(state, i, j, k, k2, k3, k4):
    """Column j += (dout m, dout): the gradients of gamma and beta through the noise before the affine."""
    (dout, m), col3, col4 = state
    d = float(dout[i])
    col3[j] += d * float(m[i])
    col4[j] += d


@njit(cache=True, nogil=True, error_model="numpy")
def _noisy_grad_sums(v, c0, c1, n0, n1, row):
    """sum(dout s), sum(dout s (x - center)); before the affine also sum(dout m), sum(dout). No row groups."""
    C, S, _, dout, x = v[0]
    center, acc1, acc2, acc3, acc4 = v[1]
    s, m, before = v[3][5], v[3][6], v[3][7]
    _block_sums(C, S, c0, c1, n0, n1, True, False, center, _noisy_grad_terms, (dout, x, s), acc1, acc2, row)
    if before:
        _block_sums(C, S, c0, c1, n0, n1, False, False, center, _shift_noise_terms, (dout, m), acc3, acc4, row)


@njit(cache=True, nogil=True, error_model="numpy")
def _noisy_grad_finish(v, c0, c1):
    """dx = a (dout s) + b (x - mean) + k, the batch-norm backward of g' = dout s; dgamma and dbeta of the layer."""
    _, acc1, acc2, acc3, acc4 = v[1]
    _, a, b, k = v[2]
    gamma, invstd, count, dgamma, dbeta, _, _, before = v[3]
    for c in range(c0, c1):
        t2 = _total(acc2, c)
        _train_grad_coefficients(c, _total(acc1, c), t2, gamma, invstd, count, a, b, k, dgamma, dbeta)
        if before:
            dgamma[c] = t2 * float(invstd[c]) + _total(acc3, c)
            dbeta[c] = _total(acc4, c)


@njit(cache=True, nogil=True, error_model="numpy")
def _noisy_gradient_value(state, i, j, m, a, b, k):
    """dx[i] = a (dout s) + b (x - m) + k."""
    (dout, x, s), dx = state
    dx[i] = a * (float(dout[i]) * float(s[i])) + b * (float(x[i]) - m) + k


@njit(cache=True, nogil=True, error_model="numpy")
def _noisy_grad_apply(v, c0, c1, n0, n1):
    """dx = a (dout s) + b (x - mean) + k (coefficients (mean, a, b, k))."""
    C, S, dx, dout, x = v[0]
    _block_map(C, S, c0, c1, n0, n1, v[2], _noisy_gradient_value, (dout, x, v[3][5]), dx)


# ---------------------------------------------------------------------------------------------------------------
# Parallel kernels: x, s, m, y, dout, dx are flat views of (N, C, S) arrays.


@njit(inline="always")
def _noisy_forward_passes(x, s, m, N, C, S, gamma, beta, eps, before, block, chunks, y, apply):
    """The forward with its output pass `apply` (noisy BatchNorm's here; with ReLU in batch_relu.py). Inlined into
    each parallel entry, as skeleton._channel_passes, so the piece is bound at compile time."""
    mean, var, invstd = np.empty(C), np.empty(C), np.empty(C)
    scale, off_s, gain_m, off = np.empty((4, C))
    acc_s, acc_q = _zeros((2, chunks, C))
    v = ((C, S, y, x), (_channel_shift(x, C, S), acc_s, acc_q), (mean, scale, off_s, gain_m, off),
         (gamma, beta, eps, float(N * S), var, invstd, s, m, before))
    _channel_passes(N, C, block, chunks, v, _moment_sums, _noisy_finish, apply, True)
    return mean, var, invstd


@njit(inline="always")
def _noisy_backward_passes(arrays, s, m, N, C, mean, invstd, gamma, before, block, chunks, sums, apply):
    """The backward over `arrays` (C, S, dx, dout, x), or with the ReLU output before x in batch_relu.py, with its
    gradient sums and dx pieces (inlined, as _noisy_forward_passes)."""
    center = _float64_copy(mean)
    a, b, k = np.empty((3, C))
    dgamma, dbeta = np.empty(C), np.empty(C)
    acc1, acc2, acc3, acc4 = _zeros((4, chunks, C))
    v = (arrays, (center, acc1, acc2, acc3, acc4), (center, a, b, k),
         (gamma, invstd, float(N * arrays[1]), dgamma, dbeta, s, m, before))
    _channel_passes(N, C, block, chunks, v, sums, _noisy_grad_finish, apply, True)
    return dgamma, dbeta


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _noisy_batch_norm_forward(x, s, m, N, C, S, gamma, beta, eps, before, block, chunks, y):
    return _noisy_forward_passes(x, s, m, N, C, S, gamma, beta, eps, before, block, chunks, y, _noisy_apply)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _noisy_batch_norm_backward(dout, x, s, m, N, C, S, mean, invstd, gamma, before, block, chunks, dx):
    return _noisy_backward_passes((C, S, dx, dout, x), s, m, N, C, mean, invstd, gamma, before, block, chunks,
                                  _noisy_grad_sums, _noisy_grad_apply)


def _noise_arrays(scale_noise, shift_noise, x: np.ndarray, shape: tuple, need_shift: bool = True):
    s = _same_as("scale_noise", scale_noise, x, "x").reshape(shape)
    if not need_shift and shift_noise is None:
        return s, s  # a placeholder the kernel never reads
    m = _same_as("shift_noise", shift_noise, x, "x").reshape(shape)
    return s, m


def noisy_batch_norm_forward(x: np.ndarray, scale_noise: np.ndarray, shift_noise: np.ndarray,
                             gamma: np.ndarray | None = None, beta: np.ndarray | None = None, eps: float = 1e-5,
                             before_affine: bool = False, *, out: np.ndarray | None = None
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batch normalization (batch statistics) with fixed noise: s * (gamma xhat + beta) + m (Algorithm 1).

    x: (N, C) or (N, C, H, W), float32 or float64; scale_noise (s), shift_noise (m): arrays like x;
    gamma, beta: (C,) of x's dtype or None; before_affine: gamma * (s xhat + m) + beta instead.
    Returns (y, mean, invstd, var) as batch_norm_train_forward: the statistics are those of x (noise-free).
    out: optional C-contiguous array like x to write y into (x, s or m itself is allowed).
    """
    x3, N, C, S = arguments.batch_input(x)
    block, chunks = _plan(N, C, S, x3.itemsize, 3)
    eps = arguments.check_eps(eps)
    s3, m3 = _noise_arrays(scale_noise, shift_noise, np.asarray(x), x3.shape)
    gamma, beta = arguments.affine_parameters(gamma, beta, C, x3.dtype)
    y = arguments.result_array(out, x, x3, x3, s3, m3)
    mean, var, invstd = _noisy_batch_norm_forward(x3.reshape(-1), s3.reshape(-1), m3.reshape(-1), N, C, S, gamma,
                                                  beta, eps, bool(before_affine), block, chunks, y.reshape(-1))
    return y, *arguments.in_dtype(x3.dtype, mean, invstd, var)


def noisy_batch_norm_backward(dy: np.ndarray, x: np.ndarray, scale_noise: np.ndarray, shift_noise: np.ndarray | None,
                              mean: np.ndarray, invstd: np.ndarray, gamma: np.ndarray | None = None,
                              dgamma: np.ndarray | None = None, dbeta: np.ndarray | None = None,
                              before_affine: bool = False, *, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of noisy_batch_norm_forward with the noise held constant, through the batch statistics.

    dy, x, scale_noise: like x; shift_noise: like x (needed only before the affine, for dgamma; may be None
    otherwise); mean, invstd: (C,) from the forward pass; gamma: (C,) or None.
    dgamma, dbeta: (C,) arrays overwritten in place when given. Returns dx, like x; out: optional C-contiguous
    array like x to write dx into (dy itself is allowed).
    """
    before = bool(before_affine)
    x3, dy3, N, C, S = arguments.backward_input(dy, x)
    block, chunks = _plan(N, C, S, x3.itemsize, 4 if before else 3)
    s3, m3 = _noise_arrays(scale_noise, shift_noise, np.asarray(x), x3.shape, need_shift=before)
    mean, invstd, gamma = arguments.statistics_and_gamma(mean, invstd, gamma, dgamma, dbeta, C, x3.dtype)
    dx = arguments.result_array(out, x, x3, x3, dy3, s3, m3)
    dg, db = _noisy_batch_norm_backward(dy3.reshape(-1), x3.reshape(-1), s3.reshape(-1), m3.reshape(-1), N, C, S,
                                        mean, invstd, gamma, before, block, chunks, dx.reshape(-1))
    arguments.store_parameter_grads(dgamma, dbeta, dg, db)
    return dx
