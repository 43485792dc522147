"""Normalization layers (BatchNorm and its family) and the registry behind `norm=` in smoothnorm.models."""

from __future__ import annotations

import numpy as np

from smoothnorm._validate import choice
from smoothnorm.kernels.norm import (
    batch_norm_eval_backward,
    batch_norm_eval_forward,
    batch_norm_train_backward,
    batch_norm_train_forward,
    batch_norm_update_running,
)
from smoothnorm.layer import Layer


class _RunningStatsNorm(Layer):
    """Shared parts of normalizations over (N, H, W) per channel: affine parameters and running buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features: expected a positive integer, got {num_features}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1], got {momentum}")
        if not eps > 0:
            raise ValueError(f"eps: expected a positive value, got {eps}")
        self.num_features, self.eps, self.momentum, self.affine = int(num_features), float(eps), momentum, affine
        self.running_mean: np.ndarray | None = None
        self.running_var: np.ndarray | None = None
        self.num_batches_tracked = np.zeros((), dtype=np.int64)
        self._cache: tuple | None = None

    def param_shapes(self):
        return {"weight": (self.num_features,), "bias": (self.num_features,)} if self.affine else {}

    def init_params(self, rng, init):
        if self.affine:
            self.params["weight"][...] = 1
            self.params["bias"][...] = 0

    def output_shape(self, input_shape):
        if len(input_shape) not in (1, 3) or input_shape[0] != self.num_features:
            raise ValueError(
                f"{self.name}: expected input ({self.num_features},) or ({self.num_features}, H, W), "
                f"got {input_shape}"
            )
        return input_shape

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm(_RunningStatsNorm):
    """BatchNorm1d/2d with PyTorch's conventions (eps 1e-5, momentum 0.1, unbiased running variance)."""

    def allocate(self, dtype):
        self.running_mean = np.zeros(self.num_features, dtype=dtype)
        self.running_var = np.ones(self.num_features, dtype=dtype)

    def buffers(self):
        return {
            "running_mean": self.running_mean,
            "running_var": self.running_var,
            "num_batches_tracked": self.num_batches_tracked,
        }

    def forward(self, x, mode):
        gamma, beta = self.params.get("weight"), self.params.get("bias")
        if mode == "eval":
            self._cache = ("eval", x)
            return batch_norm_eval_forward(x, self.running_mean, self.running_var, gamma, beta, self.eps)
        y, mean, invstd, var = batch_norm_train_forward(x, gamma, beta, self.eps)
        if mode == "train":
            count = x.size // x.shape[1]
            batch_norm_update_running(self.running_mean, self.running_var, mean, var, count, self.momentum)
            self.num_batches_tracked += 1
        self._cache = ("batch", x, mean, invstd)
        return y

    def backward(self, dy, need_dx=True):
        gamma = self.params.get("weight")
        dgamma, dbeta = self.grads.get("weight"), self.grads.get("bias")
        if self._cache[0] == "eval":
            x = self._cache[1]
            return batch_norm_eval_backward(
                dy, x, self.running_mean, self.running_var, gamma, dgamma, dbeta, self.eps
            )
        _, x, mean, invstd = self._cache
        return batch_norm_train_backward(dy, x, mean, invstd, gamma, dgamma, dbeta)


# Registry of normalization layers accepted by `norm=` in smoothnorm.models; keep in sync with smoothnorm.NORMS.
NORM_LAYERS: dict[str, type[Layer]] = {"batch": BatchNorm}


def make_norm(norm: str, num_features: int, **options) -> Layer:
    """Build the normalization layer called `norm` (a name from smoothnorm.NORMS) for `num_features` channels."""
    choice("norm", norm, tuple(NORM_LAYERS))
    return NORM_LAYERS[norm](num_features, **options)
