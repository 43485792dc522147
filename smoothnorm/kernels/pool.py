"""2x2 max-pooling (stride 2) forward and backward kernels, with PyTorch's floor and NaN semantics."""

import numpy as np
from numba import njit, prange

from smoothnorm.kernels._checks import _output_array


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _maxpool2d_forward(x, y, argmax):
    # x (P, H, W), y and argmax (P, H//2, W//2), P = N*C planes: one plane per task keeps writes disjoint.
    planes, out_h, out_w = y.shape
    for p in prange(planes):
        for i in range(out_h):
            r = 2 * i
            for j in range(out_w):
                c = 2 * j
                # Window order 0: (r, c), 1: (r, c+1), 2: (r+1, c), 3: (r+1, c+1). As torch, start from -inf at
                # position 0, keep the first of tied maxima (strict >) and let a NaN win (so the output is NaN).
                best = -np.inf
                code = 0
                for k in range(4):
                    v = x[p, r + (k >> 1), c + (k & 1)]
                    if v > best or v != v:
                        best = v
                        code = k
                y[p, i, j] = best
                argmax[p, i, j] = code


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _maxpool2d_backward(dy, argmax, dx):
    # dx (P, H, W) is fully written here (zeros included), so the caller can allocate it with np.empty.
    planes, out_h, out_w = dy.shape
    height, width = dx.shape[1], dx.shape[2]
    zero = dx.dtype.type(0)
    for p in prange(planes):
        for r in range(height):
            for c in range(width):
                dx[p, r, c] = zero
        for i in range(out_h):
            for j in range(out_w):
                # `& 3` keeps a corrupted argmax inside its window instead of writing out of bounds.
                k = argmax[p, i, j] & 3
                dx[p, 2 * i + (k >> 1), 2 * j + (k & 1)] = dy[p, i, j]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _maxpool2d_gather(x, argmax, y):
    # y (P, H//2, W//2) = x at each window's recorded arg-max: the max-pool's directional derivative.
    planes, out_h, out_w = y.shape
    for p in prange(planes):
        for i in range(out_h):
            for j in range(out_w):
                k = argmax[p, i, j] & 3
                y[p, i, j] = x[p, 2 * i + (k >> 1), 2 * j + (k & 1)]


def maxpool2d_forward(
    x: np.ndarray, *, out: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Max-pool over 2x2 windows with stride 2; odd trailing rows/columns are dropped (floor, as torch).

    x: (N, C, H, W) float32 or float64, H, W >= 2.
    Returns y (N, C, H//2, W//2) in x's dtype and argmax (int8, y's shape): the winner's position in its window,
    row-major 0..3 (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).
    out: optional (y, argmax) arrays to write into and return (C-contiguous, those shapes and dtypes, apart from x):
    a layer that keeps its buffers saves fresh memory's page faults.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x: expected ndim 4 (N, C, H, W), got ndim {x.ndim} with shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x: expected dtype float32 or float64, got {x.dtype}")
    n, c, h, w = x.shape
    if h < 2 or w < 2:
        raise ValueError(f"x: expected H >= 2 and W >= 2 for a 2x2 window, got shape {x.shape}")
    x = np.ascontiguousarray(x)
    shape = (n, c, h // 2, w // 2)
    y_out, argmax_out = (None, None) if out is None else out
    y = _output_array("out[0] (y)", y_out, shape, x.dtype, x)
    argmax = _output_array("out[1] (argmax)", argmax_out, shape, np.dtype(np.int8), x)
    planes_out = (n * c, h // 2, w // 2)
    _maxpool2d_forward(x.reshape(n * c, h, w), y.reshape(planes_out), argmax.reshape(planes_out))
    return y, argmax


def maxpool2d_backward(
    dy: np.ndarray, argmax: np.ndarray, input_shape: tuple[int, int, int, int], *, out: np.ndarray | None = None
) -> np.ndarray:
    """Gradient of 2x2 max-pooling: dy routed to each window's argmax, zero elsewhere.

    dy: (N, C, H//2, W//2) float32 or float64; argmax: int8 of the same shape, from maxpool2d_forward;
    input_shape: (N, C, H, W) of the forward input. Returns dx of input_shape in dy's dtype (in `out` if given: a
    C-contiguous array of that shape and dtype, apart from dy and argmax; every element is written).
    """
    dy = np.asarray(dy)
    argmax = np.asarray(argmax)
    if dy.ndim != 4:
        raise ValueError(f"dy: expected ndim 4 (N, C, H//2, W//2), got ndim {dy.ndim} with shape {dy.shape}")
    if dy.dtype not in (np.float32, np.float64):
        raise ValueError(f"dy: expected dtype float32 or float64, got {dy.dtype}")
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise ValueError(f"input_shape: expected a tuple (N, C, H, W), got {input_shape!r}") from None
    if len(input_shape) != 4:
        raise ValueError(f"input_shape: expected 4 entries (N, C, H, W), got {input_shape}")
    n, c, h, w = input_shape
    expected = (n, c, h // 2, w // 2)
    if dy.shape != expected:
        raise ValueError(f"dy: expected shape {expected} for input_shape {input_shape}, got {dy.shape}")
    if argmax.dtype != np.int8:
        raise ValueError(f"argmax: expected dtype int8 (from maxpool2d_forward), got {argmax.dtype}")
    if argmax.shape != dy.shape:
        raise ValueError(f"argmax: expected shape {dy.shape} (the shape of dy), got {argmax.shape}")
    dy = np.ascontiguousarray(dy)
    argmax = np.ascontiguousarray(argmax)
    dx = _output_array("out", out, input_shape, dy.dtype, dy, argmax)
    planes_out = (n * c, h // 2, w // 2)
    _maxpool2d_backward(dy.reshape(planes_out), argmax.reshape(planes_out), dx.reshape(n * c, h, w))
    return dx


def maxpool2d_gather(x: np.ndarray, argmax: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """x (N, C, H, W) read at the arg-max positions of a max-pool (int8 argmax (N, C, H//2, W//2) from
    maxpool2d_forward): the pooled output's directional derivative along x with the winners held fixed (the
    R-pass of Hessian products). Returns an array of argmax's shape in x's dtype (in `out` if given: C-contiguous,
    that shape and dtype, apart from x and argmax)."""
    x = np.asarray(x)
    argmax = np.asarray(argmax)
    if x.ndim != 4 or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x: expected a float32 or float64 (N, C, H, W) array, got {x.dtype} shape {x.shape}")
    n, c, h, w = x.shape
    shape = (n, c, h // 2, w // 2)
    if argmax.dtype != np.int8 or argmax.shape != shape:
        raise ValueError(f"argmax: expected int8 of shape {shape} (from maxpool2d_forward), got {argmax.dtype} "
                         f"{argmax.shape}")
    x, argmax = np.ascontiguousarray(x), np.ascontiguousarray(argmax)
    y = _output_array("out", out, shape, x.dtype, x, argmax)
    _maxpool2d_gather(x.reshape(n * c, h, w), argmax.reshape(n * c, h // 2, w // 2), y.reshape(n * c, h // 2, w // 2))
    return y
