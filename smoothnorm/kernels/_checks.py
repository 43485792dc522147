"""Argument checks shared by every kernel's public function: each error names the argument, what was expected and
what was given. Kernels import nothing from the rest of smoothnorm, so these live here.

Inputs are coerced (`np.asarray(a, order="C")`: a copy only when needed); the arrays a kernel writes are not: an
`out=` buffer (`_output_array`) and a buffer overwritten in place (`_check_output`, gradients and running
statistics) must already have the right shape and dtype.
"""

import numpy as np


def _float_array(name: str, a, ndim: int | None = None, dtype=None, like: str = "x") -> np.ndarray:
    """Check ndim (unless None) and dtype (float32/float64, or exactly `dtype`, the dtype of the argument `like`);
    return a C-contiguous array (a 0-d array stays 0-d, unlike with np.ascontiguousarray)."""
    a = np.asarray(a)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected ndim {ndim}, got ndim {a.ndim} with shape {a.shape}")
    if dtype is None:
        if a.dtype not in (np.float32, np.float64):
            raise ValueError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    elif a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of {like}), got {a.dtype}")
    return np.asarray(a, order="C")


def _same_as(name: str, a, ref: np.ndarray, ref_name: str) -> np.ndarray:
    """Check that `a` has the shape and dtype of `ref` (the argument `ref_name`); return it C-contiguous."""
    a = np.asarray(a)
    if a.shape != ref.shape:
        raise ValueError(f"{name}: expected shape {ref.shape} (the shape of {ref_name}), got {a.shape}")
    if a.dtype != ref.dtype:
        raise ValueError(f"{name}: expected dtype {ref.dtype} (the dtype of {ref_name}), got {a.dtype}")
    return np.asarray(a, order="C")


def _check_output(name: str, a, shape: tuple, dtype) -> None:
    """A buffer a kernel overwrites in place (a gradient, a running statistic; often a view into a flat vector) must
    already be right: no coercion, no copy."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a writeable numpy array of shape {shape}, got {type(a).__name__}")
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    if a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (matching x), got {a.dtype}")
    if not a.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array (it is overwritten in place), got a read-only one")


def _check_out(name: str, a, shape: tuple, dtype, *inputs, may_alias: bool = False) -> None:
    """A kernel's result buffer (`out=`): a writeable C-contiguous array of `shape` and `dtype`.

    may_alias=False: it shares no memory with the inputs (the kernel reads inputs after writing parts of the
    output). may_alias=True: it may also be one of the inputs exactly, for kernels that read each block of their
    inputs before writing that block of the output (in place); a partial overlap is still refused.
    """
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array of shape {tuple(shape)}, got {type(a).__name__}")
    if a.shape != tuple(shape) or a.dtype != dtype:
        raise ValueError(f"{name}: expected shape {tuple(shape)} and dtype {np.dtype(dtype)}, got {a.shape} {a.dtype}")
    if not (a.flags.c_contiguous and a.flags.writeable):
        raise ValueError(f"{name}: expected a writeable C-contiguous array")
    for b in inputs:
        if not np.may_share_memory(a, b):
            continue
        if not may_alias:
            raise ValueError(f"{name}: shares memory with an input; this kernel cannot run in place")
        # Read only on an overlap: the interface dict costs about as much as the rest of the check.
        if b.__array_interface__["data"][0] != a.__array_interface__["data"][0]:
            raise ValueError(f"{name}: overlaps an input partially (it may be an input itself, or separate memory)")


def _output_array(name: str, out, shape: tuple, dtype, *inputs, may_alias: bool = False) -> np.ndarray:
    """The array a kernel writes its result into: a new one when `out` is None, else `out` after `_check_out`.

    A caller that owns its buffers (a layer reusing its output between steps) saves the page faults of fresh
    memory, which for arrays of tens of MB cost about as much as a memory-bound kernel.
    """
    if out is None:
        return np.empty(shape, dtype=dtype)
    _check_out(name, out, shape, dtype, *inputs, may_alias=may_alias)
    return out
