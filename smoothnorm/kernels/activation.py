"""ReLU forward and backward kernels (elementwise, memory-bound)."""

import numpy as np
from numba import njit, prange

# Elements per parallel task. Fixed (not derived from the thread count or the shape) so every shape, including
# a batch smaller than the thread count, splits into balanced tasks; large enough that scheduling is negligible.
_BLOCK = 1 << 14


def _as_float_array(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    # Not np.ascontiguousarray, which turns a 0-d array into shape (1,).
    return np.asarray(a, order="C")


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _relu_forward(x, y):
    n = x.size
    zero = x.dtype.type(0)
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(block * _BLOCK, min(n, (block + 1) * _BLOCK)):
            v = x[i]
            # `v < 0` is False for NaN, so NaN passes through; -0.0 stays -0.0. Both as torch.relu.
            y[i] = zero if v < zero else v


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _relu_backward(dy, y, dx):
    n = dy.size
    zero = dy.dtype.type(0)
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(block * _BLOCK, min(n, (block + 1) * _BLOCK)):
            # torch's threshold_backward: zero where y <= 0; a NaN output passes its gradient through.
            dx[i] = zero if y[i] <= zero else dy[i]


def relu_forward(x: np.ndarray) -> np.ndarray:
    """Rectified linear unit, max(x, 0), propagating NaN.

    x: any shape, float32 or float64. Returns a new array of the same shape and dtype.
    """
    x = _as_float_array("x", x)
    y = np.empty_like(x)
    _relu_forward(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient of ReLU: dy where the forward output y > 0, else 0.

    dy, y: same shape and dtype (y is relu_forward's output). Returns dx, same shape and dtype.
    """
    dy = _as_float_array("dy", dy)
    y = _as_float_array("y", y)
    if y.shape != dy.shape:
        raise ValueError(f"y: expected shape {dy.shape} (the shape of dy), got {y.shape}")
    if y.dtype != dy.dtype:
        raise ValueError(f"y: expected dtype {dy.dtype} (the dtype of dy), got {y.dtype}")
    dx = np.empty_like(dy)
    _relu_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx
