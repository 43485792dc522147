"""Fully connected layer kernels: y = x @ weight.T + bias (PyTorch's weight layout, (out, in)).

The matrix products go to NumPy's BLAS (multithreaded, far faster than any loop we could write); Numba handles
only the bias add and the bias-gradient column sums, which NumPy runs on one thread.
"""

import numpy as np
from numba import njit, prange

# Columns per dbias task: wide enough for contiguous row segments, narrow enough to give both cores work
# once out >= 2 * _COLUMN_BLOCK. Fixed, so the summation order does not depend on the thread count.
_COLUMN_BLOCK = 128


def _float_array(name: str, a, ndim: int, dtype=None) -> np.ndarray:
    """Check ndim and dtype (float32/float64, or exactly `dtype`); return a C-contiguous array."""
    a = np.asarray(a)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected ndim {ndim}, got ndim {a.ndim} with shape {a.shape}")
    if dtype is None:
        if a.dtype not in (np.float32, np.float64):
            raise ValueError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    elif a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype} (matching x), got {a.dtype}")
    return np.ascontiguousarray(a)


def _check_shape(name: str, a: np.ndarray, shape: tuple) -> None:
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")


def _check_output(name: str, a, shape: tuple, dtype) -> None:
    """An output buffer is written in place, so it must already be right: no coercion, no copy."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a writeable numpy array of shape {shape}, got {type(a).__name__}")
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    if a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype} (matching x), got {a.dtype}")
    if not a.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array (it is overwritten in place), got a read-only one")


@njit(cache=True, parallel=True, error_model="numpy")
def _add_bias(y, bias):
    rows, cols = y.shape
    for r in prange(rows):
        for j in range(cols):
            y[r, j] += bias[j]


@njit(cache=True, parallel=True, error_model="numpy")
def _column_sums(dy, out):
    # Each task owns a block of columns and walks all rows in order: race-free, and the same sums (to the bit)
    # for any thread count. Accumulate in float64 because the batch can be long.
    rows, cols = dy.shape
    for block in prange((cols + _COLUMN_BLOCK - 1) // _COLUMN_BLOCK):
        start = block * _COLUMN_BLOCK
        stop = min(cols, start + _COLUMN_BLOCK)
        acc = np.zeros(stop - start, dtype=np.float64)
        for r in range(rows):
            for j in range(start, stop):
                acc[j - start] += dy[r, j]
        for j in range(start, stop):
            out[j] = acc[j - start]


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Affine map y = x @ weight.T + bias.

    x: (N, in) float32 or float64; weight: (out, in) and bias: (out,) or None, in x's dtype.
    Returns y (N, out) in x's dtype.
    """
    x = _float_array("x", x, 2)
    weight = _float_array("weight", weight, 2, x.dtype)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight: expected shape (out, {x.shape[1]}) to match x {x.shape}, got {weight.shape}")
    y = np.matmul(x, weight.T)
    if bias is not None:
        bias = _float_array("bias", bias, 1, x.dtype)
        _check_shape("bias", bias, (weight.shape[0],))
        _add_bias(y, bias)
    return y


def linear_backward(
    dy: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    dweight: np.ndarray,
    dbias: np.ndarray | None = None,
    need_dx: bool = True,
) -> np.ndarray | None:
    """Gradients of y = x @ weight.T + bias; OVERWRITES dweight and dbias in place.

    dy: (N, out); x: (N, in) the forward input; weight: (out, in); all one dtype (float32 or float64).
    dweight: (out, in) and dbias: (out,) or None, written in place (views into a flat gradient vector).
    Returns dx (N, in), or None when need_dx is False (the first layer does not need it).
    """
    x = _float_array("x", x, 2)
    weight = _float_array("weight", weight, 2, x.dtype)
    dy = _float_array("dy", dy, 2, x.dtype)
    n, n_in = x.shape
    n_out = weight.shape[0]
    _check_shape("weight", weight, (n_out, n_in))
    _check_shape("dy", dy, (n, n_out))
    _check_output("dweight", dweight, (n_out, n_in), x.dtype)
    if dbias is not None:
        _check_output("dbias", dbias, (n_out,), x.dtype)
    # dy.T is a transposed view: BLAS reads it with a transpose flag, no copy.
    np.matmul(dy.T, x, out=dweight)
    if dbias is not None:
        if dbias.flags.c_contiguous:
            _column_sums(dy, dbias)
        else:
            dbias[...] = _column_sums_copy(dy)
    if not need_dx:
        return None
    return np.matmul(dy, weight)


def _column_sums_copy(dy: np.ndarray) -> np.ndarray:
    out = np.empty(dy.shape[1], dtype=dy.dtype)
    _column_sums(dy, out)
    return out
