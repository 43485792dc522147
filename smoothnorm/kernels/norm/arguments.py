"""Argument checks of the normalization kernels' public functions (kernels/norm): inputs viewed as (N, C, S), per-
channel vectors, eps, momentum, the buffers written in place and the `out=` array. Each error names the argument.
Internal to kernels.norm; the checks every kernel family shares are kernels._checks'.

Outputs. Kernels write new arrays unless the caller passes `out=` (`result_array`), in place over an input allowed:
every normalization kernel reads a block's inputs before it writes that block's output. For arrays of tens of MB the
page faults of fresh memory cost about as much as the kernel.
"""

from __future__ import annotations

import numpy as np

from smoothnorm.kernels._checks import _check_output, _output_array, _same_as


def as_ncs(name: str, x) -> np.ndarray:
    """Validate a float32/float64 (N, C) or (N, C, H, W) array; return it as a C-contiguous (N, C, S) array."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
    if x.ndim not in (2, 4):
        raise ValueError(
            f"{name}: expected a 2D or 4D array, (N, C) or (N, C, H, W), got ndim {x.ndim} (shape {x.shape})"
        )
    x = np.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[1]
    s = x.shape[2] * x.shape[3] if x.ndim == 4 else 1
    return x.reshape(n, c, s)


def exact_array(name: str, v, shape: tuple, dtype, what: str) -> np.ndarray:
    """Validate a required array of exactly `shape` (described by `what`) and `dtype` (x's); return it C-contiguous."""
    if v is None:
        raise ValueError(f"{name}: expected an array of shape {shape}, got None")
    v = np.asarray(v)
    if v.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} ({what}), got {v.shape}")
    if v.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of x), got {v.dtype}")
    return np.ascontiguousarray(v)


def channel_vector(name: str, v, channels: int, dtype, default: float | None = None) -> np.ndarray:
    """Validate a per-channel vector of shape (C,) and the given dtype. None gives `default` filled where the
    vector is optional (gamma, beta), and is an error where it is required (default None)."""
    if v is None and default is not None:
        return np.full(channels, default, dtype=dtype)
    return exact_array(name, v, (channels,), dtype, "C, the channels of x")


def affine_parameters(gamma, beta, channels: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """gamma and beta as (C,) vectors of x's dtype; None gives ones (no scale) and zeros (no shift)."""
    return channel_vector("gamma", gamma, channels, dtype, 1.0), channel_vector("beta", beta, channels, dtype, 0.0)


def batch_input(x, count: bool = True) -> tuple[np.ndarray, int, int, int]:
    """(x3, N, C, S): x as a C-contiguous (N, C, S) array and its sizes. count: batch statistics need N * S > 1."""
    x3 = as_ncs("x", x)
    N, C, S = x3.shape
    if count:
        check_count(np.shape(x), N * S)
    return x3, N, C, S


def backward_input(dy, x, count: bool = True) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """(x3, dy3, N, C, S) of a backward pass: as batch_input, with dy (like x) as an (N, C, S) array too."""
    x3, N, C, S = batch_input(x, count)
    return x3, _same_as("dy", dy, np.asarray(x), "x").reshape(x3.shape), N, C, S


def result_array(out, x, x3: np.ndarray, *inputs: np.ndarray) -> np.ndarray:
    """The array like x that a kernel writes y or dx into: new, or `out` (which may be one of the inputs itself:
    every kernel here reads a block's inputs before it writes that block's output)."""
    return _output_array("out", out, np.shape(x), x3.dtype, *inputs, may_alias=True)


def in_dtype(dtype, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The kernels' float64 statistics in x's dtype (the public contract)."""
    return tuple(a.astype(dtype, copy=False) for a in arrays)


def check_parameter_grads(dgamma, dbeta, channels: int, dtype) -> None:
    """dgamma and dbeta, where given, are (C,) buffers of x's dtype that the backward pass overwrites."""
    for name, buf in (("dgamma", dgamma), ("dbeta", dbeta)):
        if buf is not None:
            _check_output(name, buf, (channels,), dtype)


def statistics_and_gamma(mean, invstd, gamma, dgamma, dbeta, channels: int, dtype) -> tuple[np.ndarray, ...]:
    """A BatchNorm backward's mean, invstd and gamma (None: ones) as (C,) vectors of x's dtype; checks dgamma, dbeta."""
    mean = channel_vector("mean", mean, channels, dtype)
    invstd = channel_vector("invstd", invstd, channels, dtype)
    gamma = channel_vector("gamma", gamma, channels, dtype, 1.0)
    check_parameter_grads(dgamma, dbeta, channels, dtype)
    return mean, invstd, gamma


def store_parameter_grads(dgamma, dbeta, dg, db) -> None:
    """Overwrite the caller's dgamma and dbeta buffers (those given) with the computed gradients."""
    if dgamma is not None:
        dgamma[...] = dg
    if dbeta is not None:
        dbeta[...] = db


def check_momentum(momentum: float) -> float:
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum: expected a number in [0, 1], got {momentum}")
    return momentum


def running_update_arrays(running_mean, running_stat, mean, stat, stat_names: tuple[str, str]):
    """Check a running update's arguments: the running buffers (overwritten in place, of running_mean's dtype) and
    the batch statistics, all (C,) with C the length of the batch mean. Returns (mean, stat) C-contiguous."""
    mean_a = np.asarray(mean)
    if mean_a.ndim != 1:
        raise ValueError(f"mean: expected a 1-D array (C,), got shape {mean_a.shape}")
    channels = mean_a.shape[0]
    dt = np.asarray(running_mean).dtype
    if dt not in (np.float32, np.float64):
        raise ValueError(f"running_mean: expected dtype float32 or float64, got {dt}")
    _check_output("running_mean", running_mean, (channels,), dt)
    _check_output(stat_names[0], running_stat, (channels,), dt)
    return channel_vector("mean", mean, channels, dt), channel_vector(stat_names[1], stat, channels, dt)


def check_count(x_shape: tuple, n: int) -> None:
    if n < 2:
        raise ValueError(f"x: batch statistics need more than 1 value per channel (N * H * W > 1), got shape {x_shape}")


def check_eps(eps: float, positive: bool = False) -> float:
    """eps >= 0 where it is added to a variance under a square root; eps > 0 (`positive`) where it is a divisor's
    only guard (Lp norms divide by norm + eps)."""
    eps = float(eps)
    if positive and not eps > 0.0:
        raise ValueError(f"eps: expected a positive number, got {eps}")
    if not eps >= 0.0:
        raise ValueError(f"eps: expected a non-negative number, got {eps}")
    return eps
