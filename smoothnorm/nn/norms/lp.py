"""Lp batch normalization layers (paper section 3.3): L1BatchNorm, L2BatchNorm, LinfBatchNorm."""

from __future__ import annotations

import math

import numpy as np

from smoothnorm.kernels.norm.lp import lp_norm_train_backward, lp_norm_train_forward
from smoothnorm.kernels.norm.lp_eval import lp_norm_eval_backward, lp_norm_eval_forward, lp_norm_update_running
from smoothnorm.nn.norms.base import _RunningStatsNorm
from smoothnorm.nn.norms.rop import FixedStandardization, Standardization, as_ncs

__all__ = ["LpBatchNorm", "L1BatchNorm", "L2BatchNorm", "LinfBatchNorm"]


class LpBatchNorm(_RunningStatsNorm):
    """Lp batch normalization (paper section 3.3): (y - mean) / (mean p-norm of the un-centered y + eps), then the
    affine. Buffers `running_mean`, `running_norm` (momentum average, no bias correction), `num_batches_tracked`."""

    p: float = 2.0
    _running_spread = "running_norm"

    def forward(self, x, mode):
        gamma, beta = self.params.get("weight"), self.params.get("bias")
        if mode == "eval":
            self._cache = ("eval", x)
            return lp_norm_eval_forward(x, self.running_mean, self.running_norm, gamma, beta, self.eps,
                                        out=self._reused("y", x))
        y, mean, norm, argmax = lp_norm_train_forward(x, self.p, gamma, beta, self.eps, out=self._reused("y", x))
        if mode == "train":
            lp_norm_update_running(self.running_mean, self.running_norm, mean, norm, self.momentum)
            self.num_batches_tracked += 1
        self._cache = ("batch", x, mean, norm, argmax)
        return y

    def backward(self, dy, need_dx=True):
        gamma = self.params.get("weight")
        dgamma, dbeta = self.grads.get("weight"), self.grads.get("bias")
        if self._cache[0] == "eval":
            x = self._cache[1]
            return lp_norm_eval_backward(
                dy, x, self.running_mean, self.running_norm, gamma, dgamma, dbeta, self.eps, out=self._reused("dx", x)
            )
        _, x, mean, norm, argmax = self._cache
        return lp_norm_train_backward(dy, x, self.p, mean, norm, argmax, gamma, dgamma, dbeta, self.eps,
                                      out=self._reused("dx", x))

    def _standardization(self):
        x = self._cache[1]
        self._remember_input_shape(x)
        if self._cache[0] == "eval":
            return FixedStandardization(as_ncs(x), self.running_mean, 1.0 / (self.running_norm.astype(np.float64)
                                                                              + self.eps))
        stat = {1.0: "l1", 2.0: "l2", math.inf: "linf"}[self.p]
        return Standardization(as_ncs(x), None, stat, self.eps, argmax=self._cache[4])


class L1BatchNorm(LpBatchNorm):
    """Lp batch normalization with p = 1: divide by mean |y| + eps."""

    p = 1.0


class L2BatchNorm(LpBatchNorm):
    """Lp batch normalization with p = 2: divide by sqrt(mean y^2) + eps."""

    p = 2.0


class LinfBatchNorm(LpBatchNorm):
    """Lp batch normalization with p = inf: divide by max |y| + eps (subgradient at the first arg-max)."""

    p = math.inf
