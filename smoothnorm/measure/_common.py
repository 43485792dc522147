"""Shared by every measurement module: restoring the network bit for bit, float64 norms and distances, checks.

Probes visit points by writing `w0 - eta * d` into `net.params` in place (`_move_to`) inside `_preserved(net)`,
which restores params, grads and layer buffers on exit.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import numpy as np
from numba import njit, prange

from smoothnorm.kernels._blas import _single_threaded_blas


def one_blas_thread(fn):
    """Run `fn` with every OpenBLAS in the process held at one thread (kernels/_blas.py), restored after.

    For the iterative measurements (Lanczos, ARPACK, power iteration, Hutchinson) that alternate NumPy/SciPy linear
    algebra on long vectors with Hessian-vector products in Numba's kernels: a threaded BLAS call leaves its worker
    threads spinning, and the product's next parallel region then waits for a core (8 ms a time on 2 cores). The
    top-2 Hessian eigenvalues of a 784-512-512-10 BatchNorm MLP (batch 512) took 3.06 -> 1.85 s (bench_measure,
    quiet 2-core EPYC), and 20.8 -> 16.7 s on VGG-11-BN at 1/4 width (batch 64, one run); the values agree to
    rounding (BLAS's summation order depends on its thread count).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _single_threaded_blas:
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def _preserved(net) -> Iterator[np.ndarray]:
    """Restore params, grads and every layer buffer (running statistics, counters) on exit, bit for bit.

    Yields the saved copy of the params (read-only by convention: it is what gets restored).
    """
    params = net.params.copy()
    grads = net.grads.copy()
    buffers = [
        {name: np.array(value, copy=True) for name, value in layer.buffers().items()} for layer in net.layers
    ]
    try:
        yield params
    finally:
        net.params[...] = params
        net.grads[...] = grads
        for layer, saved in zip(net.layers, buffers):
            current = layer.buffers()
            for name, value in saved.items():
                current[name][...] = value


# Elements per block of the float64 sums below: fixed, so the sums repeat to the bit for any thread count.
_SUM_BLOCK = 1 << 15


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _block_pair_sums(a, b):
    """(sum a^2, sum b^2, sum a b, sum (a - b)^2) of one block, in float64, over two interleaved lanes (even and
    odd elements, added at the end): independent add chains rather than one latency-bound chain per sum."""
    n = a.size
    aa0 = bb0 = ab0 = dd0 = 0.0
    aa1 = bb1 = ab1 = dd1 = 0.0
    for j in range(n // 2):
        x = np.float64(a[2 * j])
        y = np.float64(b[2 * j])
        d = x - y
        aa0 += x * x
        bb0 += y * y
        ab0 += x * y
        dd0 += d * d
        x = np.float64(a[2 * j + 1])
        y = np.float64(b[2 * j + 1])
        d = x - y
        aa1 += x * x
        bb1 += y * y
        ab1 += x * y
        dd1 += d * d
    if n % 2:
        x = np.float64(a[n - 1])
        y = np.float64(b[n - 1])
        d = x - y
        aa0 += x * x
        bb0 += y * y
        ab0 += x * y
        dd0 += d * d
    return aa0 + aa1, bb0 + bb1, ab0 + ab1, dd0 + dd1


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _pair_sums(a, b):
    """(sum a^2, sum b^2, sum a b, sum (a - b)^2) over 1-D arrays, each element widened to float64 first.

    One pass and no temporaries (a float64 copy of VGG-11's 9.2M parameters costs 50-70 ms). Blocks of _SUM_BLOCK
    run in parallel and their sums are added in block order. Serial with one chain per sum it took 9-10 ms on
    VGG-11's parameters (two float32 vectors, 2-core EPYC).
    """
    n = a.size
    blocks = (n + _SUM_BLOCK - 1) // _SUM_BLOCK
    parts = np.empty((blocks, 4))
    for k in prange(blocks):
        lo = k * _SUM_BLOCK
        parts[k, 0], parts[k, 1], parts[k, 2], parts[k, 3] = _block_pair_sums(a[lo : lo + _SUM_BLOCK],
                                                                               b[lo : lo + _SUM_BLOCK])
    aa = bb = ab = dd = 0.0
    for k in range(blocks):
        aa += parts[k, 0]
        bb += parts[k, 1]
        ab += parts[k, 2]
        dd += parts[k, 3]
    return aa, bb, ab, dd


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _axpy_from(w0, eta, d, out):
    """out = w0 - eta * d elementwise in the arrays' dtype, rounded as NumPy's multiply then subtract round it."""
    n = out.size
    for k in prange((n + _SUM_BLOCK - 1) // _SUM_BLOCK):
        lo = k * _SUM_BLOCK
        w_b, d_b, o_b = w0[lo : lo + _SUM_BLOCK], d[lo : lo + _SUM_BLOCK], out[lo : lo + _SUM_BLOCK]
        for i in range(o_b.size):
            step = d_b[i] * eta
            o_b[i] = w_b[i] - step


def _flat(v) -> np.ndarray:
    v = np.asarray(v)
    if v.dtype not in (np.float32, np.float64):
        v = v.astype(np.float64)
    return np.ascontiguousarray(v.reshape(-1))


def _sums(a, b) -> tuple[float, float, float, float]:
    a, b = _flat(a), _flat(b)
    if a.size != b.size:
        raise ValueError(f"expected vectors of one size, got {a.size} and {b.size}")
    return _pair_sums(a, b)


def _norm64(v: np.ndarray) -> float:
    """Euclidean norm accumulated in float64 (NaN/Inf propagate, no warnings)."""
    v = _flat(v)
    return math.sqrt(_pair_sums(v, v)[0])


def _distance64(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b||_2 with the difference and the sum in float64."""
    return math.sqrt(_sums(a, b)[3])


def _check_batch(net, x, y) -> tuple[np.ndarray, np.ndarray]:
    x = net.check_input(x)
    if x.shape[0] < 1:
        raise ValueError("x: expected at least one sample, got an empty batch")
    return x, net.check_targets(y, x.shape[0])


def _check_etas(etas, name: str = "etas") -> np.ndarray:
    etas = np.asarray(etas, dtype=np.float64)
    if etas.ndim == 0:
        etas = etas.reshape(1)
    if etas.ndim != 1 or etas.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of step sizes, got shape {etas.shape}")
    if not np.isfinite(etas).all():
        raise ValueError(f"{name}: expected finite step sizes, got {etas.tolist()}")
    return etas


def _check_direction(net, direction, name: str = "direction", finite: bool = True) -> np.ndarray:
    d = np.asarray(direction)
    if d.shape != net.params.shape:
        raise ValueError(f"{name}: expected shape {net.params.shape} (the shape of net.params), got {d.shape}")
    if d.dtype.kind != "f":
        raise ValueError(f"{name}: expected a float array, got dtype {d.dtype}")
    if finite and not np.isfinite(d).all():
        raise ValueError(f"{name}: expected finite values")
    return np.ascontiguousarray(d, dtype=net.dtype)


def _base_loss_and_grad(net, x, y, grad, loss) -> tuple[float, np.ndarray]:
    """The loss and gradient at the current params: given ones are trusted (and copied), else one pass."""
    if grad is None:
        base_loss, g = net.loss_and_grad(x, y, mode="probe")
        return float(base_loss), g.copy()
    # A non-finite gradient (a diverged run) is measured like any other point, not rejected.
    g = _check_direction(net, grad, "grad", finite=False)
    if np.shares_memory(g, net.grads):
        g = g.copy()  # net.grads is overwritten by every probe point
    if loss is None:
        loss = net.loss(x, y, mode="probe")
    return float(loss), g


def _move_to(net, w0: np.ndarray, eta: float, direction: np.ndarray) -> None:
    """net.params = w0 - eta * direction, in the network's dtype (as a training step would compute it)."""
    out = net.params
    if w0.dtype == direction.dtype == out.dtype and w0.flags.c_contiguous and direction.flags.c_contiguous \
            and out.flags.c_contiguous and not np.shares_memory(out, direction) and not np.shares_memory(out, w0):
        with np.errstate(over="ignore"):  # a step too large for the dtype is a diverged point, measured as one
            step = out.dtype.type(eta)
        _axpy_from(w0.reshape(-1), step, direction.reshape(-1), out.reshape(-1))  # one parallel pass
        return
    with np.errstate(all="ignore"):
        np.multiply(direction, net.dtype.type(eta), out=out)
        np.subtract(w0, out, out=out)
