"""Per-sample normalization layers: GroupNorm, LayerNorm, InstanceNorm (every mode uses the sample's statistics)."""

from __future__ import annotations

import numpy as np

from smoothnorm.kernels.norm.group import group_norm_backward, group_norm_forward
from smoothnorm.nn.norms.base import _PerChannelAffine
from smoothnorm.nn.norms.rop import Standardization, as_ncs

__all__ = ["GroupNorm", "LayerNorm", "InstanceNorm"]


class GroupNorm(_PerChannelAffine):
    """GroupNorm with PyTorch's semantics: per sample, statistics over each group of C / groups channels (and H, W),
    per-channel affine `weight`, `bias`; no running statistics (every mode uses the sample's own statistics).

    groups: default 32, capped at the channel count; must divide it.
    """

    def __init__(self, num_features: int, groups: int = 32, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"num_features: expected a positive integer, got {num_features!r}")
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
            raise ValueError(f"groups: expected a positive integer, got {groups!r}")
        if not eps > 0:
            raise ValueError(f"eps: expected a positive value, got {eps}")
        self.num_features, self.eps, self.affine = int(num_features), float(eps), bool(affine)
        self.groups = min(int(groups), self.num_features)
        if self.num_features % self.groups:
            raise ValueError(
                f"groups: expected a divisor of num_features {self.num_features}, got {self.groups}; "
                f"pass norm_options={{'groups': k}} with k dividing {self.num_features}"
            )
        self._cache: tuple | None = None

    def output_shape(self, input_shape):
        shape = super().output_shape(input_shape)
        self._check_group_size(input_shape)
        return shape

    def _check_group_size(self, input_shape):
        # One value per group normalizes to 0 whatever the input: the output is beta and no gradient flows back.
        size = self.num_features // self.groups * int(np.prod(input_shape[1:], dtype=np.int64))
        if size < 2:
            raise ValueError(
                f"{self.name}: {type(self).__name__} with {self.groups} groups on input {input_shape} normalizes "
                f"groups of 1 value (the output would be constant); use fewer groups"
            )

    def forward(self, x, mode):
        y, mean, invstd = group_norm_forward(x, self.groups, self.params.get("weight"), self.params.get("bias"),
                                             self.eps, out=self._reused("y", x))
        self._cache = (x, mean, invstd)
        return y

    def backward(self, dy, need_dx=True):
        x, mean, invstd = self._cache
        return group_norm_backward(dy, x, self.groups, mean, invstd, self.params.get("weight"),
                                   self.grads.get("weight"), self.grads.get("bias"), out=self._reused("dx", x))

    def _standardization(self):
        x = self._cache[0]
        self._remember_input_shape(x)
        return Standardization(as_ncs(x), self.groups, "var", self.eps)

    def extra_repr(self):
        return f"{self.groups}, {self.num_features}, eps={self.eps}, affine={self.affine}"


class LayerNorm(GroupNorm):
    """Layer normalization: per sample over all of (C, H, W), per-channel affine (= GroupNorm(1, C); for (N, C)
    inputs identical to torch's LayerNorm(C))."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, 1, eps, affine)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


class InstanceNorm(GroupNorm):
    """Instance normalization: per sample and channel over (H, W), per-channel affine (= GroupNorm(C, C) =
    torch's InstanceNorm2d(C, affine=True)); needs (C, H, W) inputs."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, num_features, eps, affine)

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.num_features:
            raise ValueError(
                f"{self.name}: instance norm needs feature maps: expected input ({self.num_features}, H, W), got "
                f"{input_shape} (for flat features use 'layer' or 'batch')"
            )
        self._check_group_size(input_shape)
        return input_shape

    def forward(self, x, mode):
        if np.ndim(x) != 4:
            raise ValueError(f"x: instance norm expected a 4D array (N, C, H, W), got shape {np.shape(x)}")
        return super().forward(x, mode)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"
