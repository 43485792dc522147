"""BatchNorm's R-pass with batch statistics, fused: the pieces of an exact Hessian-vector product.

The same mathematics as smoothnorm.nn.norms.rop (Standardization "var" with per-channel groups, then the plain
per-channel affine), which stays the general path and the reference these kernels are tested against. Per channel, with
z = (x - mean) * inv (inv = 1 / s, the forward pass's statistics), M = N * S values, a direction rx and parameter
directions rgamma, rbeta:

    forward:   rs = sum(z rx) / M,   rz = (rx - mean(rx) - z rs) * inv,   ry = gamma rz + rgamma z + rbeta
    backward:  dz = gamma dy,  rdz = gamma rdy + rgamma dy,  k = inv sum(dz z),
               rk = inv sum(rdz z) + inv^2 sum(dz (rx - mean rx)) - 2 k rs inv
               dx  = (dz - mean dz) inv - k z / M
               rdx = (rdz - mean rdz) inv - (dz - mean dz) rs inv^2 - rk z / M - k rz / M
               r dgamma = sum(rdy z + dy rz),   r dbeta = sum(rdy)

Each channel is one work item (sums in one pass, outputs in a second), channels in parallel: the results repeat to
the bit for any thread count. In NumPy the same R-pass made about 45 passes over float64 arrays of the layer's size
and was about half of an exact Hessian-vector product on VGG-11-BN.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from smoothnorm.kernels._checks import _check_out, _float_array, _output_array, _same_as
from smoothnorm.kernels.norm import arguments


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _forward_r(x, mean, inv, gamma, rgamma, rbeta, rx, ry, rx_mean, rs):
    n, c, s = x.shape
    m = n * s
    for ch in prange(c):
        mu, iv = mean[ch], inv[ch]
        sum_r = 0.0
        sum_zr = 0.0
        for i in range(n):
            for j in range(s):
                r = rx[i, ch, j]
                sum_r += r
                sum_zr += (x[i, ch, j] - mu) * iv * r
        mr = sum_r / m
        rsv = sum_zr / m
        rx_mean[ch] = mr
        rs[ch] = rsv
        g, rg, rb = gamma[ch], rgamma[ch], rbeta[ch]
        for i in range(n):
            for j in range(s):
                z = (x[i, ch, j] - mu) * iv
                ry[i, ch, j] = g * ((rx[i, ch, j] - mr - z * rsv) * iv) + rg * z + rb


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _backward_r(x, mean, inv, gamma, rgamma, rx, rx_mean, rs, dy, rdy, dx, rdx, r_dgamma, r_dbeta, need_dx):
    n, c, s = x.shape
    m = n * s
    for ch in prange(c):
        mu, iv, g, rg, mr, rsv = mean[ch], inv[ch], gamma[ch], rgamma[ch], rx_mean[ch], rs[ch]
        s_dz = s_dzz = s_rdz = s_rdzz = s_dzrc = s_rdy = s_rdyz = s_dyrz = 0.0
        for i in range(n):
            for j in range(s):
                z = (x[i, ch, j] - mu) * iv
                rc = rx[i, ch, j] - mr
                rz = (rc - z * rsv) * iv
                d = dy[i, ch, j]
                rd = rdy[i, ch, j]
                dz = g * d
                rdz = g * rd + rg * d
                s_dz += dz
                s_dzz += dz * z
                s_rdz += rdz
                s_rdzz += rdz * z
                s_dzrc += dz * rc
                s_rdy += rd
                s_rdyz += rd * z
                s_dyrz += d * rz
        r_dgamma[ch] = s_rdyz + s_dyrz
        r_dbeta[ch] = s_rdy
        if not need_dx:
            continue
        k = iv * s_dzz
        rk = iv * s_rdzz + iv * iv * s_dzrc - 2.0 * k * rsv * iv
        mean_dz = s_dz / m
        mean_rdz = s_rdz / m
        for i in range(n):
            for j in range(s):
                z = (x[i, ch, j] - mu) * iv
                rz = (rx[i, ch, j] - mr - z * rsv) * iv
                d = dy[i, ch, j]
                centred_dz = g * d - mean_dz
                dx[i, ch, j] = centred_dz * iv - k * z / m
                rdx[i, ch, j] = ((g * rdy[i, ch, j] + rg * d - mean_rdz) * iv - centred_dz * rsv * iv * iv
                                 - rk * z / m - k * rz / m)


def _f64_arrays(x3, vectors: dict, like_x: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """x3 as a float64 (N, C, S) array and the other arguments in float64: `vectors` (C,) each, `like_x` of x3's
    shape; in that order."""
    x3 = _float_array("x", np.asarray(x3, dtype=np.float64), 3)
    c = x3.shape[1]
    out = [arguments.channel_vector(k, np.asarray(v, dtype=np.float64), c, np.float64) for k, v in vectors.items()]
    out += [_same_as(k, np.asarray(v, dtype=np.float64), x3, "x") for k, v in like_x.items()]
    return x3, out


def batch_norm_r_forward(x3, mean, inv, gamma, rgamma, rbeta, rx3, *, out=None):
    """R-forward of BatchNorm with batch statistics: ry (N, C, S) float64, plus (rx_mean, rs) per channel for
    `batch_norm_r_backward`. x3, rx3: (N, C, S); mean, inv (1/s), gamma, rgamma, rbeta: (C,). out: an (N, C, S)
    float64 buffer for ry (C-contiguous, apart from the inputs), or None."""
    x3, (mean, inv, gamma, rgamma, rbeta, rx3) = _f64_arrays(
        x3, {"mean": mean, "inv": inv, "gamma": gamma, "rgamma": rgamma, "rbeta": rbeta}, {"rx": rx3})
    c = x3.shape[1]
    ry = _output_array("out", out, x3.shape, np.float64, x3, rx3)
    rx_mean, rs = np.empty(c), np.empty(c)
    _forward_r(x3, mean, inv, gamma, rgamma, rbeta, rx3, ry, rx_mean, rs)
    return ry, rx_mean, rs


def batch_norm_r_backward(x3, mean, inv, gamma, rgamma, rx3, rx_mean, rs, dy3, rdy3, r_dgamma, r_dbeta,
                          need_dx=True, *, out=None):
    """R-backward of BatchNorm with batch statistics: (dx, rdx) (N, C, S) float64, or (None, None) without need_dx;
    writes r d gamma and r d beta (C,) float64 in place. Arguments as `batch_norm_r_forward` and its results;
    out: a pair of (N, C, S) float64 buffers for (dx, rdx), or None."""
    x3, (mean, inv, gamma, rgamma, rx_mean, rs, rx3, dy3, rdy3) = _f64_arrays(
        x3, {"mean": mean, "inv": inv, "gamma": gamma, "rgamma": rgamma, "rx_mean": rx_mean, "rs": rs},
        {"rx": rx3, "dy": dy3, "rdy": rdy3})
    c = x3.shape[1]
    _check_out("r_dgamma", r_dgamma, (c,), np.float64)
    _check_out("r_dbeta", r_dbeta, (c,), np.float64)
    if not need_dx:
        empty = np.empty((0, 0, 0))
        _backward_r(x3, mean, inv, gamma, rgamma, rx3, rx_mean, rs, dy3, rdy3, empty, empty, r_dgamma, r_dbeta,
                    False)
        return None, None
    dx_out, rdx_out = (None, None) if out is None else out
    dx = _output_array("out[0] (dx)", dx_out, x3.shape, np.float64, dy3, rdy3, rx3, x3)
    rdx = _output_array("out[1] (rdx)", rdx_out, x3.shape, np.float64, dy3, rdy3, rx3, x3)
    _backward_r(x3, mean, inv, gamma, rgamma, rx3, rx_mean, rs, dy3, rdy3, dx, rdx, r_dgamma, r_dbeta, True)
    return dx, rdx
