"""Normalization layers: the registry behind `norm=` in smoothnorm.nn.models, and the layers it names.

`base` holds what every normalization shares (per-channel affine parameters with the R-pass, running buffers);
`batch` BatchNorm (batch or population statistics) and the paper's noisy BatchNorm; `lp` the Lp batch norms
(section 3.3); `sample` the per-sample norms (GroupNorm, LayerNorm, InstanceNorm); `rop` Pearlmutter's
R-operator for the whole family (exact Hessian-vector products). Modules here import from smoothnorm.nn.layer,
smoothnorm.kernels and smoothnorm._validate only.
"""

from __future__ import annotations

from smoothnorm._validate import choice
from smoothnorm.nn.layer import Layer
from smoothnorm.nn.norms.batch import BatchNorm, NoisyBatchNorm
from smoothnorm.nn.norms.lp import L1BatchNorm, L2BatchNorm, LinfBatchNorm, LpBatchNorm
from smoothnorm.nn.norms.sample import GroupNorm, InstanceNorm, LayerNorm

__all__ = [
    "NORM_LAYERS", "make_norm", "BatchNorm", "NoisyBatchNorm", "LpBatchNorm", "L1BatchNorm", "L2BatchNorm",
    "LinfBatchNorm", "GroupNorm", "LayerNorm", "InstanceNorm",
]

# The layers `norm=` accepts in smoothnorm.nn.models, by name; smoothnorm.NORMS (a plain tuple, so that specs load
# without Numba) lists the same names, and a test holds them equal.
NORM_LAYERS: dict[str, type[Layer]] = {
    "batch": BatchNorm,
    "noisy_batch": NoisyBatchNorm,
    "l1": L1BatchNorm,
    "l2": L2BatchNorm,
    "linf": LinfBatchNorm,
    "layer": LayerNorm,
    "instance": InstanceNorm,
    "group": GroupNorm,
}


def make_norm(norm: str | type[Layer], num_features: int, **options) -> Layer:
    """Build the normalization layer `norm` (a name from smoothnorm.NORMS, or a Layer subclass such as a plug-in
    taking (num_features, **options)) for `num_features` channels."""
    if isinstance(norm, type) and issubclass(norm, Layer):
        return norm(num_features, **options)
    choice("norm", norm, tuple(NORM_LAYERS))
    return NORM_LAYERS[norm](num_features, **options)
