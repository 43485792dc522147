"""Group normalization kernels, serving layer norm (groups = 1), instance norm (groups = C) and group norm.

PyTorch's GroupNorm semantics: x (N, C) or (N, C, H, W) splits its channels into G groups of C / G consecutive
channels; per sample and group, with the M = (C / G) * H * W values of the group,

    mean = mean(x),  var = mean((x - mean)^2) (biased),  y = (x - mean) / sqrt(var + eps) * gamma[c] + beta[c]

with a per-channel affine. There are no running statistics: every mode uses the sample's own statistics.

A sample's group is one contiguous slab of M elements, so the forward pass works on tiles of consecutive slabs:
statistics in one pass (shifted sums in float64, shift = the slab's first element, which bounds the relative
error of the variance by ~M * 2^-53 however large the mean), then the output while the tile is in cache. The
backward pass reduces dgamma, dbeta over samples, so its items are (sample chunk, block of groups) pairs, each
owning part of one row of per-channel partial sums; rows merge in a fixed order. The split depends on the shape
only, so results are bit-identical for any thread count. NaN or Inf in a group makes that group's output NaN.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from smoothnorm.kernels.norm import arguments

# Sample chunks in the backward pass (each owns a row of dgamma / dbeta partials): enough items for load balance on a
# few cores, a constant so the split depends on the shape only.
_BACKWARD_CHUNKS = 16


def _check_groups(groups, channels: int) -> int:
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups: expected a positive integer, got {groups!r}")
    if channels % groups != 0:
        raise ValueError(f"groups: expected a divisor of the channel count {channels}, got {groups}")
    return int(groups)


# ---------------------------------------------------------------------------------------------------------------
# Kernels: x, y, dy, dx are flat views of (N, C, S) arrays; slab `item` = (sample n, group g), item = n G + g, is
# the contiguous run [item L, (item + 1) L) with L = (C / G) S.
#
# Reductions (a slab's sum and sum of squares, a channel's sum(dy) and sum(dy (x - mean))) are short horizontal sums
# of one contiguous run (16 values per slab for instance norm on 4x4 maps), which a fixed-order loop cannot
# vectorize: they are compiled with the `reassoc` flag alone (no nnan / ninf, so NaN and Inf still propagate), which
# lets LLVM vectorize them, 2-3x faster. Their summation order is then LLVM's: fixed for a given machine and
# independent of the thread count. Indices are uint64 (signed ones make Numba add a wraparound select that turns
# vector loads into gathers). Work splits into a shape-only number of tasks.

_TASKS = 256
# The forward pass handles slabs in tiles of up to _TILE slabs and about _TILE_ELEMENTS values: statistics of the
# tile, then one vectorizable loop for the square roots and divisions, then the output while the tile is in cache.
_TILE = 64
_TILE_ELEMENTS = 1 << 13


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _run_moments(x, start, length, k):
    """(sum(d), sum(d^2)) with d = x - k over x[start:start + length], float64; reassociated."""
    ustart = np.uint64(start)
    s = 0.0
    q = 0.0
    for i in range(ustart, ustart + np.uint64(length)):
        d = float(x[i]) - k
        s += d
        q += d * d
    return s, q


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _run_grad_sums(dy, x, start, length, m):
    """(sum(dy), sum(dy (x - m))) over [start, start + length), float64; reassociated."""
    ustart = np.uint64(start)
    sg = 0.0
    sp = 0.0
    for i in range(ustart, ustart + np.uint64(length)):
        g = float(dy[i])
        sg += g
        sp += g * (float(x[i]) - m)
    return sg, sp


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _group_norm_forward(x, N, C, S, G, gamma, beta, eps, tasks, tile, y, mean, invstd):
    cg = C // G
    length = cg * S
    count = float(length)
    uS = np.uint64(S)
    total = N * G
    for t in prange(tasks):
        tile_k = np.empty(tile)
        tile_s = np.empty(tile)
        tile_q = np.empty(tile)
        i0 = (t * total) // tasks
        i1 = ((t + 1) * total) // tasks
        for t0 in range(i0, i1, tile):
            t1 = min(i1, t0 + tile)
            for item in range(t0, t1):
                start = item * length
                # Shifted sums (shift = the slab's first value) keep var accurate however large the mean.
                k = float(x[start])
                tile_k[item - t0] = k
                tile_s[item - t0], tile_q[item - t0] = _run_moments(x, start, length, k)
            for j in range(t1 - t0):
                md = tile_s[j] / count
                v = tile_q[j] / count - md * md
                # Rounding can leave a tiny negative value; `v < 0` is False for NaN, so NaN survives.
                if v < 0.0:
                    v = 0.0
                mean[t0 + j] = tile_k[j] + md
                invstd[t0 + j] = 1.0 / math.sqrt(v + eps)
            g = t0 % G
            for item in range(t0, t1):
                m = mean[item]
                inv = invstd[item]
                c0 = g * cg
                ustart = np.uint64(item * length)
                if S == 1:
                    for j in range(np.uint64(cg)):
                        c = np.uint64(c0) + j
                        y[ustart + j] = (float(x[ustart + j]) - m) * (float(gamma[c]) * inv) + float(beta[c])
                else:
                    for jc in range(cg):
                        a = float(gamma[c0 + jc]) * inv
                        b = float(beta[c0 + jc])
                        base = ustart + np.uint64(jc) * uS
                        for i in range(base, base + uS):
                            y[i] = (float(x[i]) - m) * a + b
                g += 1
                if g == G:
                    g = 0


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _group_norm_backward(dy, x, N, C, S, G, mean, invstd, gamma, chunks, gblocks, dx, part_g, part_b):
    """dx = invstd (gamma dy - mean(gamma dy) - xhat mean(gamma dy xhat)) per slab; per-chunk dgamma, dbeta rows.

    Items are (sample chunk, block of groups); an item walks its samples, and each sample's groups in order, so it
    reads memory contiguously, and it owns its chunk's row of partial sums for the channels of its groups.
    """
    cg = C // G
    count = float(cg * S)
    uS = np.uint64(S)
    per = (G + gblocks - 1) // gblocks
    for item in prange(chunks * gblocks):
        j = item // gblocks
        g0 = (item % gblocks) * per
        g1 = min(G, g0 + per)
        for n in range((j * N) // chunks, ((j + 1) * N) // chunks):
            for g in range(g0, g1):
                c0 = g * cg
                ng = n * G + g
                m = float(mean[ng])
                inv = float(invstd[ng])
                start = ng * cg * S
                ustart = np.uint64(start)
                sum_gdy = 0.0
                sum_gdyx = 0.0
                for jc in range(cg):
                    c = c0 + jc
                    if S == 1:
                        sdy = float(dy[ustart + np.uint64(jc)])
                        sdyx = sdy * (float(x[ustart + np.uint64(jc)]) - m)
                    else:
                        sdy, sdyx = _run_grad_sums(dy, x, start + jc * S, S, m)
                    part_b[j, c] += sdy
                    part_g[j, c] += sdyx * inv
                    gc = float(gamma[c])
                    sum_gdy += gc * sdy
                    sum_gdyx += gc * sdyx
                # dx = a_c dy + b (x - mean) + k with a_c = gamma_c inv, b = -inv^3 mean(gamma dy (x - mean)),
                # k = -inv mean(gamma dy).
                b = -inv * inv * inv * (sum_gdyx / count)
                kk = -inv * (sum_gdy / count)
                if S == 1:
                    for jj in range(np.uint64(cg)):
                        i = ustart + jj
                        dx[i] = float(gamma[np.uint64(c0) + jj]) * inv * float(dy[i]) + b * (float(x[i]) - m) + kk
                else:
                    for jc in range(cg):
                        a = float(gamma[c0 + jc]) * inv
                        base = ustart + np.uint64(jc) * uS
                        for i in range(base, base + uS):
                            dx[i] = a * float(dy[i]) + b * (float(x[i]) - m) + kk


# ---------------------------------------------------------------------------------------------------------------
# Public API


def group_norm_forward(x: np.ndarray, groups: int, gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
                       eps: float = 1e-5, *, out: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group normalization, as torch.nn.functional.group_norm (layer norm: groups=1; instance norm: groups=C).

    x: (N, C) or (N, C, H, W), float32 or float64; groups: a divisor of C; gamma, beta: (C,) of x's dtype or None.
    Returns (y, mean, invstd): y like x; mean and invstd = 1 / sqrt(var + eps), each (N, groups) of x's dtype.
    out: optional C-contiguous array like x to write y into (x itself is allowed: a slab's statistics are taken
    before its output is written).
    """
    x3, N, C, S = arguments.batch_input(x, count=False)
    G = _check_groups(groups, C)
    eps = arguments.check_eps(eps, positive=True)
    gamma, beta = arguments.affine_parameters(gamma, beta, C, x3.dtype)
    y = arguments.result_array(out, x, x3, x3)
    mean = np.empty(N * G)
    invstd = np.empty(N * G)
    if x3.size:
        tasks = min(N * G, _TASKS)
        tile = max(1, min(_TILE, _TILE_ELEMENTS // (C // G * S)))
        _group_norm_forward(x3.reshape(-1), N, C, S, G, gamma, beta, eps, tasks, tile, y.reshape(-1), mean, invstd)
    return (y, *arguments.in_dtype(x3.dtype, mean.reshape(N, G), invstd.reshape(N, G)))


def group_norm_backward(dy: np.ndarray, x: np.ndarray, groups: int, mean: np.ndarray, invstd: np.ndarray,
                        gamma: np.ndarray | None = None, dgamma: np.ndarray | None = None,
                        dbeta: np.ndarray | None = None, *, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of group_norm_forward, through each sample's group statistics.

    dy, x: (N, C) or (N, C, H, W) of one dtype; mean, invstd: (N, groups) from the forward pass; gamma: (C,) or None.
    dgamma, dbeta: (C,) arrays overwritten in place with sum(dy * xhat) and sum(dy) over (N, H, W) when given.
    Returns dx, like x; out: optional C-contiguous array like x to write dx into (dy itself is allowed).
    """
    x3, dy3, N, C, S = arguments.backward_input(dy, x, count=False)
    G = _check_groups(groups, C)
    mean = arguments.exact_array("mean", mean, (N, G), x3.dtype, "N, groups")
    invstd = arguments.exact_array("invstd", invstd, (N, G), x3.dtype, "N, groups")
    gamma = arguments.channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    arguments.check_parameter_grads(dgamma, dbeta, C, x3.dtype)
    dx = arguments.result_array(out, x, x3, x3, dy3)
    chunks = max(1, min(N, _BACKWARD_CHUNKS))
    # With few samples, split the groups too so there are enough items for the threads.
    gblocks = max(1, min(G, -(-_BACKWARD_CHUNKS // chunks)))
    part_g = np.zeros((chunks, C))
    part_b = np.zeros((chunks, C))
    if x3.size:
        _group_norm_backward(dy3.reshape(-1), x3.reshape(-1), N, C, S, G, mean.reshape(-1), invstd.reshape(-1),
                             gamma, chunks, gblocks, dx.reshape(-1), part_g, part_b)
    # Rows summed in chunk order: a fixed order, so dgamma and dbeta repeat bit for bit.
    if chunks > 1:
        arguments.store_parameter_grads(dgamma, dbeta, part_g.sum(axis=0), part_b.sum(axis=0))
    else:
        arguments.store_parameter_grads(dgamma, dbeta, part_g[0], part_b[0])
    return dx
