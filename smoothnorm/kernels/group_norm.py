"""Group normalization kernels, serving layer norm (groups = 1), instance norm (groups = C) and group norm.

PyTorch's GroupNorm semantics: x (N, C) or (N, C, H, W) splits its channels into G groups of C / G consecutive
channels; per sample and group, with the M = (C / G) * H * W values of the group,

    mean = mean(x),  var = mean((x - mean)^2) (biased),  y = (x - mean) / sqrt(var + eps) * gamma[c] + beta[c]

with a per-channel affine. There are no running statistics: every mode uses the sample's own statistics.

A sample's group is one contiguous slab of M elements, so the forward pass runs one work item per (sample, group):
statistics in one pass (shifted sums in float64, shift = the slab's first element, which bounds the relative
error of the variance by ~M * 2^-53 however large the mean), then the output while the slab is in cache. The
backward pass reduces dgamma, dbeta over samples, so its items are (sample chunk, group) pairs, each owning one row
of per-channel partial sums; rows merge in a fixed order. The chunk count depends on the shape only, so results are
bit-identical for any thread count. NaN or Inf in a group makes that group's output NaN.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# Sample chunks in the backward pass (each owns a row of dgamma / dbeta partials): enough for load balance on a
# few cores when G = 1, a constant so the split depends on the shape only.
_BACKWARD_CHUNKS = 16


def _as_ncs(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
    if x.ndim not in (2, 4):
        raise ValueError(f"{name}: expected a 2D or 4D array, (N, C) or (N, C, H, W), got ndim {x.ndim} "
                         f"(shape {x.shape})")
    x = np.ascontiguousarray(x)
    s = x.shape[2] * x.shape[3] if x.ndim == 4 else 1
    return x.reshape(x.shape[0], x.shape[1], s)


def _check_groups(groups, channels: int) -> int:
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups: expected a positive integer, got {groups!r}")
    if channels % groups != 0:
        raise ValueError(f"groups: expected a divisor of the channel count {channels}, got {groups}")
    return int(groups)


def _vector(name: str, v, channels: int, dtype, default: float | None = None):
    if v is None:
        return None if default is None else np.full(channels, default, dtype=dtype)
    v = np.asarray(v)
    if v.shape != (channels,):
        raise ValueError(f"{name}: expected shape ({channels},) (C, the channels of x), got {v.shape}")
    if v.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of x), got {v.dtype}")
    return np.ascontiguousarray(v)


def _stats(name: str, v, n: int, groups: int, dtype) -> np.ndarray:
    v = np.asarray(v)
    if v.shape != (n, groups):
        raise ValueError(f"{name}: expected shape ({n}, {groups}) (N, groups), got {v.shape}")
    if v.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of x), got {v.dtype}")
    return np.ascontiguousarray(v)


def _check_output(name: str, out, channels: int, dtype) -> None:
    if out is None:
        return
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array of shape ({channels},), got {type(out).__name__}")
    if out.shape != (channels,):
        raise ValueError(f"{name}: expected shape ({channels},) (C, the channels of x), got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of x), got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array (it is overwritten in place)")


# ---------------------------------------------------------------------------------------------------------------
# Kernels: x, y, dy, dx are flat views of (N, C, S) arrays; the slab of (sample n, group g) starts at (n C + g Cg) S.
#
# Reductions use _LANES independent accumulators over consecutive elements (lane l sums elements l, l + _LANES,
# ...), then add the lanes in order: the loop over lanes vectorizes without letting the compiler reassociate, and
# the order is fixed in the source. Indices are uint64 (signed ones make Numba add a wraparound select that turns
# vector loads into gathers). Work is split into a shape-only number of tasks, each with its own lane buffers.

_LANES = 64
_TASKS = 256


@njit(cache=True, error_model="numpy")
def _lane_moments(x, start, length, k, lane_s, lane_q):
    """(sum(d), sum(d^2)) with d = x - k over x[start:start + length], float64, by lanes."""
    rows = np.uint64(length // _LANES)
    ustart = np.uint64(start)
    s = 0.0
    q = 0.0
    if rows > 0:  # short runs (instance norm on 4x4 maps) skip the lane set-up and fold
        lane_s[:] = 0.0
        lane_q[:] = 0.0
        for r in range(rows):
            base = ustart + r * np.uint64(_LANES)
            for lane in range(np.uint64(_LANES)):
                d = float(x[base + lane]) - k
                lane_s[lane] += d
                lane_q[lane] += d * d
        for lane in range(np.uint64(_LANES)):
            s += lane_s[lane]
            q += lane_q[lane]
    # The rest (all of a short run): four accumulators so the adds do not wait on each other.
    s0 = s1 = s2 = s3 = 0.0
    q0 = q1 = q2 = q3 = 0.0
    i = ustart + rows * np.uint64(_LANES)
    end = ustart + np.uint64(length)
    four = np.uint64(4)
    while i + four <= end:
        d0 = float(x[i]) - k
        d1 = float(x[i + np.uint64(1)]) - k
        d2 = float(x[i + np.uint64(2)]) - k
        d3 = float(x[i + np.uint64(3)]) - k
        s0 += d0
        s1 += d1
        s2 += d2
        s3 += d3
        q0 += d0 * d0
        q1 += d1 * d1
        q2 += d2 * d2
        q3 += d3 * d3
        i += four
    while i < end:
        d0 = float(x[i]) - k
        s0 += d0
        q0 += d0 * d0
        i += np.uint64(1)
    return s + ((s0 + s1) + (s2 + s3)), q + ((q0 + q1) + (q2 + q3))


@njit(cache=True, error_model="numpy")
def _lane_grad_sums(dy, x, start, length, m, lane_g, lane_p):
    """(sum(dy), sum(dy (x - m))) over [start, start + length), float64, by lanes."""
    rows = np.uint64(length // _LANES)
    ustart = np.uint64(start)
    sg = 0.0
    sp = 0.0
    if rows > 0:
        lane_g[:] = 0.0
        lane_p[:] = 0.0
        for r in range(rows):
            base = ustart + r * np.uint64(_LANES)
            for lane in range(np.uint64(_LANES)):
                g = float(dy[base + lane])
                lane_g[lane] += g
                lane_p[lane] += g * (float(x[base + lane]) - m)
        for lane in range(np.uint64(_LANES)):
            sg += lane_g[lane]
            sp += lane_p[lane]
    g0 = g1 = g2 = g3 = 0.0
    p0 = p1 = p2 = p3 = 0.0
    i = ustart + rows * np.uint64(_LANES)
    end = ustart + np.uint64(length)
    four = np.uint64(4)
    while i + four <= end:
        a0 = float(dy[i])
        a1 = float(dy[i + np.uint64(1)])
        a2 = float(dy[i + np.uint64(2)])
        a3 = float(dy[i + np.uint64(3)])
        g0 += a0
        g1 += a1
        g2 += a2
        g3 += a3
        p0 += a0 * (float(x[i]) - m)
        p1 += a1 * (float(x[i + np.uint64(1)]) - m)
        p2 += a2 * (float(x[i + np.uint64(2)]) - m)
        p3 += a3 * (float(x[i + np.uint64(3)]) - m)
        i += four
    while i < end:
        a0 = float(dy[i])
        g0 += a0
        p0 += a0 * (float(x[i]) - m)
        i += np.uint64(1)
    return sg + ((g0 + g1) + (g2 + g3)), sp + ((p0 + p1) + (p2 + p3))


@njit(cache=True, parallel=True, error_model="numpy")
def _group_norm_forward(x, N, C, S, G, gamma, beta, eps, tasks, y, mean, invstd):
    cg = C // G
    length = cg * S
    count = float(length)
    uS = np.uint64(S)
    total = N * G
    for t in prange(tasks):
        lane_s = np.empty(_LANES)
        lane_q = np.empty(_LANES)
        i0 = (t * total) // tasks
        g = i0 % G
        for item in range(i0, ((t + 1) * total) // tasks):
            # Slabs are laid out in (n, g) order: slab `item` starts at item * length (no division per slab).
            start = item * length
            # Shifted sums (shift = the slab's first element) keep var accurate however large the mean.
            k = float(x[start])
            sd, sq = _lane_moments(x, start, length, k, lane_s, lane_q)
            md = sd / count
            v = sq / count - md * md
            # Rounding can leave a tiny negative value; `v < 0` is False for NaN, so NaN survives.
            if v < 0.0:
                v = 0.0
            m = k + md
            inv = 1.0 / math.sqrt(v + eps)
            mean[item] = m
            invstd[item] = inv
            c0 = g * cg
            ustart = np.uint64(start)
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


@njit(cache=True, parallel=True, error_model="numpy")
def _group_norm_backward(dy, x, N, C, S, G, mean, invstd, gamma, chunks, dx, part_g, part_b):
    """dx = invstd (gamma dy - mean(gamma dy) - xhat mean(gamma dy xhat)) per slab; per-chunk dgamma, dbeta rows."""
    cg = C // G
    count = float(cg * S)
    uS = np.uint64(S)
    for item in prange(chunks * G):
        lane_g = np.empty(_LANES)
        lane_p = np.empty(_LANES)
        j = item // G
        g = item % G
        c0 = g * cg
        for n in range((j * N) // chunks, ((j + 1) * N) // chunks):
            ng = n * G + g
            m = float(mean[ng])
            inv = float(invstd[ng])
            start = (n * C + c0) * S
            ustart = np.uint64(start)
            sum_gdy = 0.0
            sum_gdyx = 0.0
            for jc in range(cg):
                c = c0 + jc
                if S == 1:
                    sdy = float(dy[ustart + np.uint64(jc)])
                    sdyx = sdy * (float(x[ustart + np.uint64(jc)]) - m)
                else:
                    sdy, sdyx = _lane_grad_sums(dy, x, start + jc * S, S, m, lane_g, lane_p)
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


def group_norm_forward(
    x: np.ndarray,
    groups: int,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group normalization, as torch.nn.functional.group_norm (layer norm: groups=1; instance norm: groups=C).

    x: (N, C) or (N, C, H, W), float32 or float64; groups: a divisor of C; gamma, beta: (C,) of x's dtype or None.
    Returns (y, mean, invstd): y like x; mean and invstd = 1 / sqrt(var + eps), each (N, groups) of x's dtype.
    """
    x3 = _as_ncs("x", x)
    N, C, S = x3.shape
    G = _check_groups(groups, C)
    eps = float(eps)
    if not eps > 0.0:
        raise ValueError(f"eps: expected a positive number, got {eps}")
    gamma = _vector("gamma", gamma, C, x3.dtype, 1.0)
    beta = _vector("beta", beta, C, x3.dtype, 0.0)
    y3 = np.empty_like(x3)
    mean = np.empty(N * G)
    invstd = np.empty(N * G)
    if x3.size:
        tasks = min(N * G, _TASKS)
        _group_norm_forward(x3.reshape(-1), N, C, S, G, gamma, beta, eps, tasks, y3.reshape(-1), mean, invstd)
    dt = x3.dtype
    return y3.reshape(np.shape(x)), mean.reshape(N, G).astype(dt), invstd.reshape(N, G).astype(dt)


def group_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    groups: int,
    mean: np.ndarray,
    invstd: np.ndarray,
    gamma: np.ndarray | None = None,
    dgamma: np.ndarray | None = None,
    dbeta: np.ndarray | None = None,
) -> np.ndarray:
    """Gradient of group_norm_forward, through each sample's group statistics.

    dy, x: (N, C) or (N, C, H, W) of one dtype; mean, invstd: (N, groups) from the forward pass; gamma: (C,) or None.
    dgamma, dbeta: (C,) arrays overwritten in place with sum(dy * xhat) and sum(dy) over (N, H, W) when given.
    Returns dx, like x.
    """
    x3 = _as_ncs("x", x)
    xa = np.asarray(x)
    dy = np.asarray(dy)
    if dy.shape != xa.shape:
        raise ValueError(f"dy: expected shape {xa.shape} (the shape of x), got {dy.shape}")
    if dy.dtype != xa.dtype:
        raise ValueError(f"dy: expected dtype {xa.dtype} (the dtype of x), got {dy.dtype}")
    dy3 = np.ascontiguousarray(dy).reshape(x3.shape)
    N, C, S = x3.shape
    G = _check_groups(groups, C)
    mean = _stats("mean", mean, N, G, x3.dtype)
    invstd = _stats("invstd", invstd, N, G, x3.dtype)
    gamma = _vector("gamma", gamma, C, x3.dtype, 1.0)
    _check_output("dgamma", dgamma, C, x3.dtype)
    _check_output("dbeta", dbeta, C, x3.dtype)
    chunks = max(1, min(N, _BACKWARD_CHUNKS))
    part_g = np.zeros((chunks, C))
    part_b = np.zeros((chunks, C))
    dx3 = np.empty_like(x3)
    if x3.size:
        _group_norm_backward(dy3.reshape(-1), x3.reshape(-1), N, C, S, G, mean.reshape(-1), invstd.reshape(-1),
                             gamma, chunks, dx3.reshape(-1), part_g, part_b)
    # Rows summed in chunk order: a fixed order, so dgamma and dbeta repeat bit for bit.
    if dgamma is not None:
        dgamma[...] = part_g.sum(axis=0) if chunks > 1 else part_g[0]
    if dbeta is not None:
        dbeta[...] = part_b.sum(axis=0) if chunks > 1 else part_b[0]
    return dx3.reshape(np.shape(x))
