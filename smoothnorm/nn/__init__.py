"""Networks as one flat parameter vector plus a list of layers.

`layer` is the Layer base; `layers` the layers of VGG and MLP (Linear, Conv2d, ReLU, MaxPool2d, Flatten);
`activations` the smooth activations (Sigmoid, Tanh, Identity); `norms/` the normalization family; `losses` the
losses; `network` the `Network` whose layers' weights and gradients are views into `params` and `grads`; `models`
the builders (`vgg`, `dln`, `mlp`). Every layer has Pearlmutter's R-pass for exact Hessian-vector products.
Modules here import from smoothnorm.kernels and smoothnorm._validate only; this package hands on their public names.
"""

from smoothnorm.nn.activations import Identity, Sigmoid, Tanh
from smoothnorm.nn.layer import Layer
from smoothnorm.nn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
from smoothnorm.nn.losses import LOSSES, OneHotSquaredError, SoftmaxCrossEntropy, SquaredError
from smoothnorm.nn.network import INITS, MODES, Network
from smoothnorm.nn.norms import (
    NORM_LAYERS,
    BatchNorm,
    GroupNorm,
    InstanceNorm,
    L1BatchNorm,
    L2BatchNorm,
    LayerNorm,
    LinfBatchNorm,
    LpBatchNorm,
    NoisyBatchNorm,
    make_norm,
)

__all__ = [
    "MODES", "INITS", "Layer", "Linear", "Conv2d", "ReLU", "Sigmoid", "Tanh", "Identity", "MaxPool2d", "Flatten",
    "BatchNorm", "NoisyBatchNorm", "LpBatchNorm", "L1BatchNorm", "L2BatchNorm", "LinfBatchNorm", "GroupNorm",
    "LayerNorm", "InstanceNorm", "NORM_LAYERS", "make_norm", "SoftmaxCrossEntropy", "SquaredError",
    "OneHotSquaredError", "LOSSES", "Network",
]

