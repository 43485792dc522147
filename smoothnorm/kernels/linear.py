"""Fully connected layer kernels: y = x @ weight.T + bias (PyTorch's weight layout, (out, in)).

The matrix products go to NumPy's BLAS (multithreaded, far faster than any loop we could write); Numba handles
only the bias add and the bias-gradient column sums, which NumPy runs on one thread.
"""

import numpy as np
from numba import njit, prange

# dbias is summed over tiles of _ROW_CHUNK rows x _COLUMN_BLOCK columns: column blocks give the threads work for
# wide layers, row chunks for tall batches. The tiling depends only on the shape, never on the thread count, so the
# sums repeat to the bit.
_ROW_CHUNK = 256
_COLUMN_BLOCK = 256


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
    # Each task owns one tile and its own row of float64 partials (race-free, and float64 because batches can be
    # long); the partials are then merged per column in chunk order.
    rows, cols = dy.shape
    n_chunks = max(1, (rows + _ROW_CHUNK - 1) // _ROW_CHUNK)
    n_blocks = (cols + _COLUMN_BLOCK - 1) // _COLUMN_BLOCK
    partials = np.empty((n_chunks, cols), dtype=np.float64)
    for task in prange(n_chunks * n_blocks):
        chunk = task // n_blocks
        start = (task % n_blocks) * _COLUMN_BLOCK
        stop = min(cols, start + _COLUMN_BLOCK)
        acc = partials[chunk, start:stop]
        acc[:] = 0.0
        for r in range(chunk * _ROW_CHUNK, min(rows, (chunk + 1) * _ROW_CHUNK)):
            row = dy[r, start:stop]
            for j in range(stop - start):
                acc[j] += row[j]
    for block in prange(n_blocks):
        for j in range(block * _COLUMN_BLOCK, min(cols, (block + 1) * _COLUMN_BLOCK)):
            total = 0.0
            for chunk in range(n_chunks):
                total += partials[chunk, j]
            out[j] = total


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
        _column_sums(dy, dbias)
    if not need_dx:
        return None
    return np.matmul(dy, weight)
