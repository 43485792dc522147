"""Lp batch normalization with running statistics (eval mode) and the running update (the paper's section 3.3).

y = gamma (x - running_mean) / (running_norm + eps) + beta, the running statistics constants in the backward pass;
the parallel kernels are BatchNorm's fixed-statistics ones (kernels/norm/batch.py) with 1 / (running_norm + eps) for
1 / sqrt(running_var + eps). The batch-statistics kernels, the formulas and the work split are in
kernels/norm/lp.py.
"""

from __future__ import annotations

import numpy as np

from smoothnorm.kernels._checks import _same_as
from smoothnorm.kernels.norm.batch import _fixed_stats_backward, _fixed_stats_forward
from smoothnorm.kernels.norm.channel_blocks import (
    _as_ncs,
    _channel_vector,
    _check_eps,
    _check_momentum,
    _check_parameter_grads,
    _plan,
    _running_update_arrays,
    _store_parameter_grads,
)

__all__ = ["lp_norm_eval_forward", "lp_norm_eval_backward", "lp_norm_update_running"]


def lp_norm_eval_forward(
    x: np.ndarray,
    running_mean: np.ndarray,
    running_norm: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
) -> np.ndarray:
    """Lp normalization with running statistics (eval mode): y = gamma (x - rm) / (rn + eps) + beta.

    x: (N, C) or (N, C, H, W), float32 or float64; running_mean, running_norm, gamma, beta: (C,) of x's dtype
    (gamma, beta may be None). Returns y, like x.
    """
    x3 = _as_ncs("x", x)
    N, C, S = x3.shape
    eps = _check_eps(eps, positive=True)
    running_mean = _channel_vector("running_mean", running_mean, C, x3.dtype)
    running_norm = _channel_vector("running_norm", running_norm, C, x3.dtype)
    gamma = _channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    beta = _channel_vector("beta", beta, C, x3.dtype, 0.0)
    center = running_mean.astype(np.float64)
    scale = gamma.astype(np.float64) / (running_norm.astype(np.float64) + eps)
    y3 = np.empty_like(x3)
    block, chunks = _plan(N, C, S, x3.itemsize, 1)
    _fixed_stats_forward(x3.reshape(-1), N, C, S, center, scale, beta.astype(np.float64), block, chunks,
                         y3.reshape(-1))
    return y3.reshape(np.shape(x))


def lp_norm_eval_backward(
    dy: np.ndarray,
    x: np.ndarray,
    running_mean: np.ndarray,
    running_norm: np.ndarray,
    gamma: np.ndarray | None = None,
    dgamma: np.ndarray | None = None,
    dbeta: np.ndarray | None = None,
    eps: float = 1e-5,
) -> np.ndarray:
    """Gradient of lp_norm_eval_forward (running statistics are constants).

    dy, x: (N, C) or (N, C, H, W) of one dtype; running_mean, running_norm, gamma: (C,) (gamma may be None).
    dgamma, dbeta: (C,) arrays overwritten in place with sum(dy * xhat) and sum(dy) when given. Returns dx.
    """
    x3 = _as_ncs("x", x)
    dy3 = _same_as("dy", dy, np.asarray(x), "x").reshape(x3.shape)
    N, C, S = x3.shape
    eps = _check_eps(eps, positive=True)
    running_mean = _channel_vector("running_mean", running_mean, C, x3.dtype)
    running_norm = _channel_vector("running_norm", running_norm, C, x3.dtype)
    gamma = _channel_vector("gamma", gamma, C, x3.dtype, 1.0)
    _check_parameter_grads(dgamma, dbeta, C, x3.dtype)
    inv = 1.0 / (running_norm.astype(np.float64) + eps)
    dx3 = np.empty_like(x3)
    block, chunks = _plan(N, C, S, x3.itemsize, 2)
    need_sums = dgamma is not None or dbeta is not None
    dg, db = _fixed_stats_backward(dy3.reshape(-1), x3.reshape(-1), N, C, S, running_mean.astype(np.float64), inv,
                                   gamma, need_sums, block, chunks, dx3.reshape(-1))
    _store_parameter_grads(dgamma, dbeta, dg, db)
    return dx3.reshape(np.shape(x))


def lp_norm_update_running(
    running_mean: np.ndarray,
    running_norm: np.ndarray,
    mean: np.ndarray,
    norm: np.ndarray,
    momentum: float = 0.1,
) -> None:
    """Update running statistics in place: rm = (1-m) rm + m mean, rn = (1-m) rn + m norm (no bias correction).

    running_mean, running_norm: (C,) arrays updated in place; mean, norm: (C,) from lp_norm_train_forward.
    """
    mean, norm = _running_update_arrays(running_mean, running_norm, mean, norm, ("running_norm", "norm"))
    momentum = _check_momentum(momentum)
    running_mean[...] = (1.0 - momentum) * running_mean.astype(np.float64) + momentum * mean.astype(np.float64)
    running_norm[...] = (1.0 - momentum) * running_norm.astype(np.float64) + momentum * norm.astype(np.float64)
