"""Lp batch normalization with running statistics (eval mode) and the running update (the paper's section 3.3).

y = gamma (x - running_mean) / (running_norm + eps) + beta, the running statistics constants in the backward pass;
the parallel kernels are BatchNorm's eval-mode ones (kernels/norm/batch.py) with 1 / (running_norm + eps) for
1 / sqrt(running_var + eps). The batch-statistics kernels, the formulas and the work split are in
kernels/norm/lp.py.
"""

from __future__ import annotations

import numpy as np

from smoothnorm.kernels.norm import arguments
from smoothnorm.kernels.norm.batch import _fixed_stats_apply, _fixed_stats_gradient

__all__ = ["lp_norm_eval_forward", "lp_norm_eval_backward", "lp_norm_update_running"]


def lp_norm_eval_forward(x: np.ndarray, running_mean: np.ndarray, running_norm: np.ndarray,
                         gamma: np.ndarray | None = None, beta: np.ndarray | None = None, eps: float = 1e-5, *,
                         out: np.ndarray | None = None) -> np.ndarray:
    """Lp normalization with running statistics (eval mode): y = gamma (x - rm) / (rn + eps) + beta.

    x: (N, C) or (N, C, H, W), float32 or float64; running_mean, running_norm, gamma, beta: (C,) of x's dtype
    (gamma, beta may be None). Returns y, like x; out: optional C-contiguous array like x to write y into (x
    itself is allowed).
    """
    eps = arguments.check_eps(eps, positive=True)
    return _fixed_stats_apply(x, running_mean, running_norm, gamma, beta, eps, out, "running_norm")


def lp_norm_eval_backward(dy: np.ndarray, x: np.ndarray, running_mean: np.ndarray, running_norm: np.ndarray,
                          gamma: np.ndarray | None = None, dgamma: np.ndarray | None = None,
                          dbeta: np.ndarray | None = None, eps: float = 1e-5, *, out: np.ndarray | None = None
                          ) -> np.ndarray:
    """Gradient of lp_norm_eval_forward (running statistics are constants).

    dy, x: (N, C) or (N, C, H, W) of one dtype; running_mean, running_norm, gamma: (C,) (gamma may be None).
    dgamma, dbeta: (C,) arrays overwritten in place with sum(dy * xhat) and sum(dy) when given. Returns dx, like x;
    out: optional C-contiguous array like x to write dx into (dy itself is allowed).
    """
    eps = arguments.check_eps(eps, positive=True)
    return _fixed_stats_gradient(dy, x, running_mean, running_norm, gamma, dgamma, dbeta, eps, out, "running_norm")


def lp_norm_update_running(running_mean: np.ndarray, running_norm: np.ndarray, mean: np.ndarray, norm: np.ndarray,
                           momentum: float = 0.1) -> None:
    """Update running statistics in place: rm = (1-m) rm + m mean, rn = (1-m) rn + m norm (no bias correction).

    running_mean, running_norm: (C,) arrays updated in place; mean, norm: (C,) from lp_norm_train_forward.
    """
    mean, norm = arguments.running_update_arrays(running_mean, running_norm, mean, norm, ("running_norm", "norm"))
    momentum = arguments.check_momentum(momentum)
    running_mean[...] = (1.0 - momentum) * running_mean.astype(np.float64) + momentum * mean.astype(np.float64)
    running_norm[...] = (1.0 - momentum) * running_norm.astype(np.float64) + momentum * norm.astype(np.float64)
