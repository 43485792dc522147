"""Argument checks shared by the kernels (linear, conv, Winograd, pooling, the BatchNorm R-pass): each error names
the argument, what was expected and what was given. Kernels import nothing from the rest of smoothnorm, so these
live here."""

import numpy as np


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


def _check_out(name: str, a, shape: tuple, dtype, *inputs) -> None:
    """A kernel's output buffer (`out=`): a writeable C-contiguous array of `shape` and `dtype` that shares no
    memory with the kernel's inputs (the kernels read inputs after writing parts of the output)."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array of shape {tuple(shape)}, got {type(a).__name__}")
    if a.shape != tuple(shape) or a.dtype != dtype:
        raise ValueError(f"{name}: expected shape {tuple(shape)} and dtype {np.dtype(dtype)}, got {a.shape} {a.dtype}")
    if not (a.flags.c_contiguous and a.flags.writeable):
        raise ValueError(f"{name}: expected a writeable C-contiguous array")
    if any(np.may_share_memory(a, b) for b in inputs):
        raise ValueError(f"{name}: shares memory with an input; this kernel cannot run in place")


def _output_array(name: str, out, shape: tuple, dtype, *inputs) -> np.ndarray:
    """The array a kernel writes its result into: a new one when `out` is None, else `out` after `_check_out`."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    _check_out(name, out, shape, dtype, *inputs)
    return out
