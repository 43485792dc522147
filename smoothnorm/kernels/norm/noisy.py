"""Noisy batch normalization kernels (the paper's Algorithm 1): batch norm fused with fixed per-element noise.

With xhat = (x - mean) / sqrt(var + eps) (batch statistics per channel over (N, H, W)) and per-element noise arrays
s (scale) and m (shift) of x's shape, drawn by the caller:

    after the affine (default):  out = s * (gamma * xhat + beta) + m
    before the affine:           out = gamma * (s * xhat + m) + beta

The noise is a constant for the backward pass. Fusing it into batch norm's passes saves two full passes over
memory against batch norm followed by an elementwise noise kernel: the statistics pass reads x, the output pass
reads x, s, m; the gradient-sum pass reads dout, s, x (and m before the affine), the dx pass reads them again from
cache. Statistics use the same shifted float64 sums as kernels/norm/batch.py (_block_moments), and the work split of
kernels/norm/channel_blocks.py (shape-only, so bit-identical for any thread count). NaN or Inf propagates.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from smoothnorm.kernels._checks import _same_as
from smoothnorm.kernels.norm.channel_blocks import (  # BatchNorm's statistics and work split
    _RUN,
    _as_ncs,
    _block_moments,
    _channel_vector,
    _check_count,
    _check_eps,
    _check_parameter_grads,
    _expand,
    _fold_columns,
    _item_range,
    _merge_rows,
    _plan,
    _store_parameter_grads,
    _zeros,
)


@njit(cache=True, nogil=True, error_model="numpy")
def _finish(sum_d, sum_q, shift, count, eps, gamma, beta, before, c, mean, var, invstd, scale, off_s, gain_m, off):
    """Statistics of channel c and the output coefficients out = s ((x - mean) scale + off_s) + m gain_m + off."""
    md = sum_d / count
    v = sum_q / count - md * md
    # Rounding can leave a tiny negative value; `v < 0` is False for NaN, so NaN survives.
    if v < 0.0:
        v = 0.0
    mean[c] = shift[c] + md
    var[c] = v
    invstd[c] = 1.0 / math.sqrt(v + eps)
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
def _block_noisy_affine(x, s, m, C, S, c0, c1, n0, n1, center, scale, off_s, gain_m, off, before, y):
    """y = s ((x - center) scale + off_s) + m (after the affine) or s (x - center) scale + m gain_m + off (before)."""
    if S >= _RUN:
        uS = np.uint64(S)
        for n in range(n0, n1):
            for c in range(c0, c1):
                base = np.uint64((n * C + c) * S)
                k = center[c]
                a = scale[c]
                if before:
                    gm = gain_m[c]
                    b2 = off[c]
                    for i in range(base, base + uS):
                        y[i] = float(s[i]) * ((float(x[i]) - k) * a) + float(m[i]) * gm + b2
                else:
                    b1 = off_s[c]
                    for i in range(base, base + uS):
                        y[i] = float(s[i]) * ((float(x[i]) - k) * a + b1) + float(m[i])
        return
    width = np.uint64((c1 - c0) * S)
    ke = _expand(center, c0, c1, S)
    ae = _expand(scale, c0, c1, S)
    if before:
        gm = _expand(gain_m, c0, c1, S)
        b2 = _expand(off, c0, c1, S)
        for n in range(n0, n1):
            base = np.uint64((n * C + c0) * S)
            for j in range(width):
                i = base + j
                y[i] = float(s[i]) * ((float(x[i]) - ke[j]) * ae[j]) + float(m[i]) * gm[j] + b2[j]
    else:
        b1 = _expand(off_s, c0, c1, S)
        for n in range(n0, n1):
            base = np.uint64((n * C + c0) * S)
            for j in range(width):
                i = base + j
                y[i] = float(s[i]) * ((float(x[i]) - ke[j]) * ae[j] + b1[j]) + float(m[i])


@njit(cache=True, nogil=True, error_model="numpy")
def _block_noisy_grad_sums(dout, x, s, m, C, S, c0, c1, n0, n1, center, before, acc1, acc2, acc3, acc4, row):
    """Over the block, by columns: acc1 += sum(dout s), acc2 += sum(dout s (x - center)); before the affine also
    acc3 += sum(dout m), acc4 += sum(dout). All in float64."""
    width = np.uint64((c1 - c0) * S)
    col1 = np.zeros(width)
    col2 = np.zeros(width)
    if S >= _RUN and not before:
        # The default placement on long runs: per-channel centers, no per-position loads besides the data.
        uS = np.uint64(S)
        for n in range(n0, n1):
            for c in range(c0, c1):
                base = np.uint64((n * C + c) * S)
                off = np.uint64((c - c0) * S)
                k = center[c]
                for j in range(uS):
                    i = base + j
                    g = float(dout[i]) * float(s[i])
                    col1[off + j] += g
                    col2[off + j] += g * (float(x[i]) - k)
        _fold_columns(col1, c0, c1, S, acc1, row)
        _fold_columns(col2, c0, c1, S, acc2, row)
        return
    ke = _expand(center, c0, c1, S)
    if before:
        col3 = np.zeros(width)
        col4 = np.zeros(width)
        for n in range(n0, n1):
            base = np.uint64((n * C + c0) * S)
            for j in range(width):
                i = base + j
                d = float(dout[i])
                g = d * float(s[i])
                col1[j] += g
                col2[j] += g * (float(x[i]) - ke[j])
                col3[j] += d * float(m[i])
                col4[j] += d
        _fold_columns(col3, c0, c1, S, acc3, row)
        _fold_columns(col4, c0, c1, S, acc4, row)
    else:
        for n in range(n0, n1):
            base = np.uint64((n * C + c0) * S)
            for j in range(width):
                i = base + j
                g = float(dout[i]) * float(s[i])
                col1[j] += g
                col2[j] += g * (float(x[i]) - ke[j])
    _fold_columns(col1, c0, c1, S, acc1, row)
    _fold_columns(col2, c0, c1, S, acc2, row)


@njit(cache=True, nogil=True, error_model="numpy")
def _grad_coefficients(t1, t2, t3, t4, gamma, invstd, count, before, c, a, b, k, dgamma, dbeta):
    """dx = a (dout s) + b (x - mean) + k, the batch-norm backward of g' = dout s; dgamma and dbeta of the layer."""
    inv = float(invstd[c])
    g = float(gamma[c])
    a[c] = g * inv
    b[c] = -g * inv * inv * inv * (t2 / count)
    k[c] = -g * inv * (t1 / count)
    if before:
        dgamma[c] = t2 * inv + t3
        dbeta[c] = t4
    else:
        dgamma[c] = t2 * inv
        dbeta[c] = t1


@njit(cache=True, nogil=True, error_model="numpy")
def _block_noisy_grad_apply(dout, x, s, C, S, c0, c1, n0, n1, center, a, b, k, dx):
    """dx = a[c] (dout s) + b[c] (x - center[c]) + k[c] in float64, over the block."""
    if S >= _RUN:
        uS = np.uint64(S)
        for n in range(n0, n1):
            for c in range(c0, c1):
                base = np.uint64((n * C + c) * S)
                mc = center[c]
                ac = a[c]
                bc = b[c]
                kc = k[c]
                for i in range(base, base + uS):
                    dx[i] = ac * (float(dout[i]) * float(s[i])) + bc * (float(x[i]) - mc) + kc
        return
    width = np.uint64((c1 - c0) * S)
    me = _expand(center, c0, c1, S)
    ae = _expand(a, c0, c1, S)
    be = _expand(b, c0, c1, S)
    ke = _expand(k, c0, c1, S)
    for n in range(n0, n1):
        base = np.uint64((n * C + c0) * S)
        for j in range(width):
            i = base + j
            dx[i] = ae[j] * (float(dout[i]) * float(s[i])) + be[j] * (float(x[i]) - me[j]) + ke[j]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _noisy_batch_norm_forward(x, s, m, N, C, S, gamma, beta, eps, before, block, chunks, y):
    count = float(N * S)
    shift = np.empty(C)
    for c in range(C):
        shift[c] = float(x[c * S])
    mean = np.empty(C)
    var = np.empty(C)
    invstd = np.empty(C)
    scale = np.empty(C)
    off_s = np.empty(C)
    gain_m = np.empty(C)
    off = np.empty(C)
    acc_s = _zeros((chunks, C))
    acc_q = _zeros((chunks, C))
    blocks = (C + block - 1) // block
    if chunks == 1:
        for blk in prange(blocks):
            c0 = blk * block
            c1 = min(C, c0 + block)
            _block_moments(x, C, S, c0, c1, 0, N, shift, acc_s, acc_q, 0)
            for c in range(c0, c1):
                _finish(acc_s[0, c], acc_q[0, c], shift, count, eps, gamma, beta, before, c, mean, var, invstd,
                        scale, off_s, gain_m, off)
            _block_noisy_affine(x, s, m, C, S, c0, c1, 0, N, mean, scale, off_s, gain_m, off, before, y)
    else:
        for item in prange(blocks * chunks):
            c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
            _block_moments(x, C, S, c0, c1, n0, n1, shift, acc_s, acc_q, item % chunks)
        for c in range(C):
            _finish(_merge_rows(acc_s, c), _merge_rows(acc_q, c), shift, count, eps, gamma, beta, before, c, mean,
                    var, invstd, scale, off_s, gain_m, off)
        for item in prange(blocks * chunks):
            c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
            _block_noisy_affine(x, s, m, C, S, c0, c1, n0, n1, mean, scale, off_s, gain_m, off, before, y)
    return mean, var, invstd


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _noisy_batch_norm_backward(dout, x, s, m, N, C, S, mean, invstd, gamma, before, block, chunks, dx):
    count = float(N * S)
    center = np.empty(C)
    for c in range(C):
        center[c] = float(mean[c])
    a = np.empty(C)
    b = np.empty(C)
    k = np.empty(C)
    dgamma = np.empty(C)
    dbeta = np.empty(C)
    acc1 = _zeros((chunks, C))
    acc2 = _zeros((chunks, C))
    acc3 = _zeros((chunks, C))
    acc4 = _zeros((chunks, C))
    blocks = (C + block - 1) // block
    if chunks == 1:
        for blk in prange(blocks):
            c0 = blk * block
            c1 = min(C, c0 + block)
            _block_noisy_grad_sums(dout, x, s, m, C, S, c0, c1, 0, N, center, before, acc1, acc2, acc3, acc4, 0)
            for c in range(c0, c1):
                _grad_coefficients(acc1[0, c], acc2[0, c], acc3[0, c], acc4[0, c], gamma, invstd, count, before, c,
                                   a, b, k, dgamma, dbeta)
            _block_noisy_grad_apply(dout, x, s, C, S, c0, c1, 0, N, center, a, b, k, dx)
    else:
        for item in prange(blocks * chunks):
            c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
            _block_noisy_grad_sums(dout, x, s, m, C, S, c0, c1, n0, n1, center, before, acc1, acc2, acc3, acc4,
                                   item % chunks)
        for c in range(C):
            _grad_coefficients(_merge_rows(acc1, c), _merge_rows(acc2, c), _merge_rows(acc3, c), _merge_rows(acc4, c),
                               gamma, invstd, count, before, c, a, b, k, dgamma, dbeta)
        for item in prange(blocks * chunks):
            c0, c1, n0, n1 = _item_range(item, chunks, block, C, N)
            _block_noisy_grad_apply(dout, x, s, C, S, c0, c1, n0, n1, center, a, b, k, dx)
    return dgamma, dbeta


def _noise_arrays(scale_noise, shift_noise, x: np.ndarray, shape: tuple, need_shift: bool = True):
    s = _same_as("scale_noise", scale_noise, x, "x").reshape(shape)
    if not need_shift and shift_noise is None:
        return s, s  # a placeholder the kernel never reads
    m = _same_as("shift_noise", shift_noise, x, "x").reshape(shape)
    return s, m


def noisy_batch_norm_forward(
    x: np.ndarray,
    scale_noise: np.ndarray,
    shift_noise: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
    before_affine: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batch normalization (batch statistics) with fixed noise: s * (gamma xhat + beta) + m (Algorithm 1).

    x: (N, C) or (N, C, H, W), float32 or float64; scale_noise (s), shift_noise (m): arrays like x;
    gamma, beta: (C,) of x's dtype or None; before_affine: gamma * (s xhat + m) + beta instead.
    Returns (y, mean, invstd, var) as batch_norm_train_forward: the statistics are those of x (noise-free).
    """
    x3 = _as_ncs("x", x)
    xa = np.asarray(x)
    N, C, S = x3.shape
    _check_count(xa.shape, N * S)
    eps = _check_eps(eps)
    s3, m3 = _noise_arrays(scale_noise, shift_noise, xa, x3.shape)
    gamma = _channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    beta = _channel_vector("beta", beta, C, x3.dtype, 0.0)
    y3 = np.empty_like(x3)
    block, chunks = _plan(N, C, S, x3.itemsize, 3)
    mean, var, invstd = _noisy_batch_norm_forward(x3.reshape(-1), s3.reshape(-1), m3.reshape(-1), N, C, S, gamma,
                                                  beta, eps, bool(before_affine), block, chunks, y3.reshape(-1))
    dt = x3.dtype
    return y3.reshape(xa.shape), mean.astype(dt), invstd.astype(dt), var.astype(dt)


def noisy_batch_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    scale_noise: np.ndarray,
    shift_noise: np.ndarray | None,
    mean: np.ndarray,
    invstd: np.ndarray,
    gamma: np.ndarray | None = None,
    dgamma: np.ndarray | None = None,
    dbeta: np.ndarray | None = None,
    before_affine: bool = False,
) -> np.ndarray:
    """Gradient of noisy_batch_norm_forward with the noise held constant, through the batch statistics.

    dy, x, scale_noise: like x; shift_noise: like x (needed only before the affine, for dgamma; may be None
    otherwise); mean, invstd: (C,) from the forward pass; gamma: (C,) or None.
    dgamma, dbeta: (C,) arrays overwritten in place when given. Returns dx, like x.
    """
    x3 = _as_ncs("x", x)
    xa = np.asarray(x)
    dy3 = _same_as("dy", dy, xa, "x").reshape(x3.shape)
    N, C, S = x3.shape
    _check_count(xa.shape, N * S)
    before = bool(before_affine)
    s3, m3 = _noise_arrays(scale_noise, shift_noise, xa, x3.shape, need_shift=before)
    mean = _channel_vector("mean", mean, C, x3.dtype)
    invstd = _channel_vector("invstd", invstd, C, x3.dtype)
    gamma = _channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    _check_parameter_grads(dgamma, dbeta, C, x3.dtype)
    dx3 = np.empty_like(x3)
    block, chunks = _plan(N, C, S, x3.itemsize, 4 if before else 3)
    dg, db = _noisy_batch_norm_backward(dy3.reshape(-1), x3.reshape(-1), s3.reshape(-1), m3.reshape(-1), N, C, S,
                                        mean, invstd, gamma, before, block, chunks, dx3.reshape(-1))
    _store_parameter_grads(dgamma, dbeta, dg, db)
    return dx3.reshape(xa.shape)
