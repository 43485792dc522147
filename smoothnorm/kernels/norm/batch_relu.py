"""BatchNorm with batch statistics followed by ReLU, in one pass over memory each way: the two kernels of
kernels/norm/batch.py and kernels/activation.py composed, with the same bits.

In VGG every BatchNorm is followed by a ReLU. Run as two layers, the ReLU reads BatchNorm's output and writes its
own, and in the backward pass writes a masked gradient that BatchNorm then reads twice (sums, then dx): passes over
activations that, at VGG's shapes, no longer fit in cache. Here the forward's apply pass writes relu(BatchNorm(x))
directly, and the backward's two passes read the upstream gradient and apply the ReLU mask (the fused output y > 0)
as they go.

Same bits as the two layers, by construction: every output is BatchNorm's float64 affine rounded to x's dtype
(as BatchNorm stores it) and then ReLU's select (`v < 0` False for NaN, -0.0 kept); the backward's masked gradient
is 0 where y <= 0, else dy (a NaN output passes it, as torch's threshold_backward), in dy's dtype, used exactly
where BatchNorm's backward would read the stored masked array. The statistics, the sums' order and the coefficients are
BatchNorm's own pieces (skeleton.py).

Noisy BatchNorm (kernels/norm/noisy.py, the paper's Algorithm 1) followed by ReLU is fused the same way from noisy
BatchNorm's pieces: its output, rounded, then ReLU's select; its gradient pieces read the masked gradient where they
read dout.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from smoothnorm.kernels._checks import _same_as
from smoothnorm.kernels.norm import arguments
from smoothnorm.kernels.norm.batch import _train_backward_passes, _train_forward_passes
from smoothnorm.kernels.norm.channel_blocks import _block_map, _block_sums, _plan
from smoothnorm.kernels.norm.noisy import _noise_arrays, _noisy_backward_passes, _noisy_forward_passes, _noisy_map

# ---------------------------------------------------------------------------------------------------------------
# Pieces: BatchNorm's forward apply with ReLU's select; its gradient sums and apply with ReLU's mask.


@njit(cache=True, nogil=True, error_model="numpy")
def _affine_relu_value(state, i, j, k, a, b, k4):
    """y[i] = relu(BatchNorm's y[i]): the float64 affine rounded to y's dtype, then ReLU's select."""
    srcs, y = state
    zero = y.dtype.type(0)
    v = y.dtype.type((float(srcs[0][i]) - k) * a + b)
    y[i] = zero if v < zero else v


@njit(cache=True, nogil=True, error_model="numpy")
def _affine_relu_apply(v, c0, c1, n0, n1):
    """y = relu((x - center) scale + offset) (coefficients (center, scale, offset))."""
    C, S, y, x = v[0]
    center, scale, offset = v[2]
    _block_map(C, S, c0, c1, n0, n1, (center, scale, offset, offset), _affine_relu_value, (x,), y)


@njit(inline="always")
def _masked(dy, y, i):
    """ReLU's input gradient at element i, in dy's dtype as ReLU's backward stores it: 0 where its output y <= 0,
    else dy. The pieces below use it exactly where the unfused pieces read that stored value (`float()` of a
    float32 scalar stays float32 in Numba, so the expressions around it are copied as they are)."""
    return dy.dtype.type(0) if y[i] <= y.dtype.type(0) else dy[i]


@njit(cache=True, nogil=True, error_model="numpy")
def _masked_gradient_terms(state, i, j, k, k2, k3, k4):
    """Column j += (g, g (x - k)) at element i, g the masked gradient."""
    srcs, col_dy, col_dyx = state
    dy, y, x = srcs
    g = float(_masked(dy, y, i))
    col_dy[j] += g
    col_dyx[j] += g * (float(x[i]) - k)


@njit(cache=True, nogil=True, error_model="numpy")
def _masked_gradient_sums(v, c0, c1, n0, n1, row):
    """BatchNorm's gradient sums (as skeleton._gradient_sums: same rows, columns and order) of the masked dy."""
    C, S, _, dy, y, x = v[0]
    center, acc_dy, acc_dyx = v[1]
    _block_sums(C, S, c0, c1, n0, n1, True, True, center, _masked_gradient_terms, (dy, y, x), acc_dy, acc_dyx, row)


@njit(cache=True, nogil=True, error_model="numpy")
def _masked_gradient_value(state, i, j, m, a, b, k):
    """dx[i] = a g + b (x[i] - m) + k in float64, g the masked gradient."""
    srcs, dx = state
    dy, y, x = srcs
    dx[i] = a * float(_masked(dy, y, i)) + b * (float(x[i]) - m) + k


@njit(cache=True, nogil=True, error_model="numpy")
def _masked_gradient_apply(v, c0, c1, n0, n1):
    """dx = a g + b (x - center) + k (coefficients (center, a, b, k))."""
    C, S, dx, dy, y, x = v[0]
    _block_map(C, S, c0, c1, n0, n1, v[2], _masked_gradient_value, (dy, y, x), dx)


# Noisy BatchNorm's pieces with ReLU (noisy.py's, on state (x, s, m) and (dout, y, x, s)).


@njit(cache=True, nogil=True, error_model="numpy")
def _after_relu_value(state, i, j, k, a, b1, k4):
    """y[i] = relu(s ((x - k) a + b1) + m), the noisy output rounded to y's dtype first."""
    (x, s, m), y = state
    zero = y.dtype.type(0)
    v = y.dtype.type(float(s[i]) * ((float(x[i]) - k) * a + b1) + float(m[i]))
    y[i] = zero if v < zero else v


@njit(cache=True, nogil=True, error_model="numpy")
def _before_relu_value(state, i, j, k, a, gm, b2):
    """y[i] = relu(s (x - k) a + m gm + b2), the noisy output rounded to y's dtype first."""
    (x, s, m), y = state
    zero = y.dtype.type(0)
    v = y.dtype.type(float(s[i]) * ((float(x[i]) - k) * a) + float(m[i]) * gm + b2)
    y[i] = zero if v < zero else v


@njit(cache=True, nogil=True, error_model="numpy")
def _noisy_relu_apply(v, c0, c1, n0, n1):
    """relu of noisy.py's apply, by placement."""
    _noisy_map(v, c0, c1, n0, n1, _before_relu_value, _after_relu_value)


@njit(cache=True, nogil=True, error_model="numpy")
def _masked_noisy_grad_terms(state, i, j, k, k2, k3, k4):
    """Column j += (g, g (x - k)) with g = (masked dout) s."""
    (dout, y, x, s), col1, col2 = state
    g = float(_masked(dout, y, i)) * float(s[i])
    col1[j] += g
    col2[j] += g * (float(x[i]) - k)


@njit(cache=True, nogil=True, error_model="numpy")
def _masked_shift_noise_terms(state, i, j, k, k2, k3, k4):
    """Column j += (d m, d), d the masked dout (noise before the affine)."""
    (dout, y, m), col3, col4 = state
    d = float(_masked(dout, y, i))
    col3[j] += d * float(m[i])
    col4[j] += d


@njit(cache=True, nogil=True, error_model="numpy")
def _masked_noisy_grad_sums(v, c0, c1, n0, n1, row):
    """noisy.py's gradient sums (same rows, columns and order) of the masked dout."""
    C, S, _, dout, y, x = v[0]
    center, acc1, acc2, acc3, acc4 = v[1]
    s, m, before = v[3][5], v[3][6], v[3][7]
    _block_sums(C, S, c0, c1, n0, n1, True, False, center, _masked_noisy_grad_terms, (dout, y, x, s), acc1, acc2,
                row)
    if before:
        _block_sums(C, S, c0, c1, n0, n1, False, False, center, _masked_shift_noise_terms, (dout, y, m), acc3, acc4,
                    row)


@njit(cache=True, nogil=True, error_model="numpy")
def _masked_noisy_gradient_value(state, i, j, mm, a, b, k):
    """dx[i] = a ((masked dout) s) + b (x - mm) + k."""
    (dout, y, x, s), dx = state
    dx[i] = a * (float(_masked(dout, y, i)) * float(s[i])) + b * (float(x[i]) - mm) + k


@njit(cache=True, nogil=True, error_model="numpy")
def _masked_noisy_grad_apply(v, c0, c1, n0, n1):
    """dx = a ((masked dout) s) + b (x - mean) + k (coefficients (mean, a, b, k))."""
    C, S, dx, dout, y, x = v[0]
    _block_map(C, S, c0, c1, n0, n1, v[2], _masked_noisy_gradient_value, (dout, y, x, v[3][5]), dx)


# ---------------------------------------------------------------------------------------------------------------
# Parallel kernels (batch.py's train variants with these pieces).


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _batch_norm_relu_train_forward(x, N, C, S, gamma, beta, eps, block, chunks, y):
    return _train_forward_passes(x, N, C, S, gamma, beta, eps, block, chunks, y, _affine_relu_apply)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _batch_norm_relu_train_backward(dy, y, x, N, C, S, mean, invstd, gamma, block, chunks, dx):
    return _train_backward_passes((C, S, dx, dy, y, x), N, C, mean, invstd, gamma, block, chunks,
                                  _masked_gradient_sums, _masked_gradient_apply)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _noisy_batch_norm_relu_forward(x, s, m, N, C, S, gamma, beta, eps, before, block, chunks, y):
    return _noisy_forward_passes(x, s, m, N, C, S, gamma, beta, eps, before, block, chunks, y, _noisy_relu_apply)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _noisy_batch_norm_relu_backward(dout, y, x, s, m, N, C, S, mean, invstd, gamma, before, block, chunks, dx):
    return _noisy_backward_passes((C, S, dx, dout, y, x), s, m, N, C, mean, invstd, gamma, before, block, chunks,
                                  _masked_noisy_grad_sums, _masked_noisy_grad_apply)


# ---------------------------------------------------------------------------------------------------------------
# Public API


def batch_norm_relu_train_forward(x: np.ndarray, gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
                                  eps: float = 1e-5, *, out: np.ndarray | None = None
                                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """relu(batch_norm_train_forward(x, gamma, beta, eps)[0]) in one pass, the same bits.

    Arguments and returns as batch_norm_train_forward: (y, mean, invstd, var), y the ReLU's output (like x), the
    statistics BatchNorm's. out: optional C-contiguous array like x to write y into (x itself is allowed).
    """
    x3, N, C, S = arguments.batch_input(x)
    block, chunks = _plan(N, C, S, x3.itemsize, 1)
    eps = arguments.check_eps(eps)
    gamma, beta = arguments.affine_parameters(gamma, beta, C, x3.dtype)
    y = arguments.result_array(out, x, x3, x3)
    mean, var, invstd = _batch_norm_relu_train_forward(x3.reshape(-1), N, C, S, gamma, beta, eps, block, chunks,
                                                       y.reshape(-1))
    return y, *arguments.in_dtype(x3.dtype, mean, invstd, var)


def batch_norm_relu_train_backward(dy: np.ndarray, y: np.ndarray, x: np.ndarray, mean: np.ndarray,
                                   invstd: np.ndarray, gamma: np.ndarray | None = None,
                                   dgamma: np.ndarray | None = None, dbeta: np.ndarray | None = None, *,
                                   out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of batch_norm_relu_train_forward: batch_norm_train_backward(relu_backward(dy, y), x, ...), the same
    bits, without the masked gradient in memory.

    dy: the gradient of the ReLU's output; y: batch_norm_relu_train_forward's output; x, mean, invstd, gamma, dgamma,
    dbeta as batch_norm_train_backward. Returns dx, like x; out: optional C-contiguous array like x to write dx into
    (dy itself is allowed, y is not).
    """
    x3, dy3, N, C, S = arguments.backward_input(dy, x)
    y3 = _same_as("y", y, np.asarray(x), "x").reshape(x3.shape)
    block, chunks = _plan(N, C, S, x3.itemsize, 2)  # BatchNorm backward's work split: its sums, so its bits
    dx = arguments.result_array(out, x, x3, x3, dy3)
    if out is not None and np.may_share_memory(dx, y3):
        raise ValueError("out: expected an array that does not overlap y (dx is written while y is still read)")
    mean, invstd, gamma = arguments.statistics_and_gamma(mean, invstd, gamma, dgamma, dbeta, C, x3.dtype)
    dg, db = _batch_norm_relu_train_backward(dy3.reshape(-1), y3.reshape(-1), x3.reshape(-1), N, C, S, mean, invstd,
                                             gamma, block, chunks, dx.reshape(-1))
    arguments.store_parameter_grads(dgamma, dbeta, dg, db)
    return dx


def noisy_batch_norm_relu_forward(x: np.ndarray, scale_noise: np.ndarray, shift_noise: np.ndarray,
                                  gamma: np.ndarray | None = None, beta: np.ndarray | None = None, eps: float = 1e-5,
                                  before_affine: bool = False, *, out: np.ndarray | None = None
                                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """relu(noisy_batch_norm_forward(...)[0]) in one pass, the same bits; arguments and returns as
    noisy_batch_norm_forward (y the ReLU's output). out: optional C-contiguous array like x (x, s or m allowed)."""
    x3, N, C, S = arguments.batch_input(x)
    block, chunks = _plan(N, C, S, x3.itemsize, 3)  # noisy BatchNorm's forward work split
    eps = arguments.check_eps(eps)
    s3, m3 = _noise_arrays(scale_noise, shift_noise, np.asarray(x), x3.shape)
    gamma, beta = arguments.affine_parameters(gamma, beta, C, x3.dtype)
    y = arguments.result_array(out, x, x3, x3, s3, m3)
    mean, var, invstd = _noisy_batch_norm_relu_forward(x3.reshape(-1), s3.reshape(-1), m3.reshape(-1), N, C, S,
                                                       gamma, beta, eps, bool(before_affine), block, chunks,
                                                       y.reshape(-1))
    return y, *arguments.in_dtype(x3.dtype, mean, invstd, var)


def noisy_batch_norm_relu_backward(dy: np.ndarray, y: np.ndarray, x: np.ndarray, scale_noise: np.ndarray,
                                   shift_noise: np.ndarray | None, mean: np.ndarray, invstd: np.ndarray,
                                   gamma: np.ndarray | None = None, dgamma: np.ndarray | None = None,
                                   dbeta: np.ndarray | None = None, before_affine: bool = False, *,
                                   out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of noisy_batch_norm_relu_forward: noisy_batch_norm_backward(relu_backward(dy, y), ...), the same
    bits. dy: the gradient of the ReLU's output; y: the fused forward's output; the rest as
    noisy_batch_norm_backward. out: optional C-contiguous array like x (dy itself is allowed, y is not)."""
    before = bool(before_affine)
    x3, dy3, N, C, S = arguments.backward_input(dy, x)
    y3 = _same_as("y", y, np.asarray(x), "x").reshape(x3.shape)
    block, chunks = _plan(N, C, S, x3.itemsize, 4 if before else 3)  # noisy BatchNorm's backward work split
    s3, m3 = _noise_arrays(scale_noise, shift_noise, np.asarray(x), x3.shape, need_shift=before)
    mean, invstd, gamma = arguments.statistics_and_gamma(mean, invstd, gamma, dgamma, dbeta, C, x3.dtype)
    dx = arguments.result_array(out, x, x3, x3, dy3, s3, m3)
    if out is not None and np.may_share_memory(dx, y3):
        raise ValueError("out: expected an array that does not overlap y (dx is written while y is still read)")
    dg, db = _noisy_batch_norm_relu_backward(dy3.reshape(-1), y3.reshape(-1), x3.reshape(-1), s3.reshape(-1),
                                             m3.reshape(-1), N, C, S, mean, invstd, gamma, before, block, chunks,
                                             dx.reshape(-1))
    arguments.store_parameter_grads(dgamma, dbeta, dg, db)
    return dx
