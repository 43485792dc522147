"""Model builders: CIFAR VGG variants, deep linear networks (the paper's DLN) and MLPs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from smoothnorm._validate import choice
from smoothnorm.nn.activations import Identity, Sigmoid, Tanh
from smoothnorm.nn.layer import Layer
from smoothnorm.nn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
from smoothnorm.nn.losses import SoftmaxCrossEntropy, SquaredError
from smoothnorm.nn.network import Network
from smoothnorm.nn.norms import NORM_LAYERS, make_norm

# The `activation=` choices; each call builds a fresh layer (layers hold per-forward state).
ACTIVATION_LAYERS: dict[str, type[Layer]] = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "identity": Identity}
# Where the norm sits relative to the activation: normalizing the pre-activations z (the paper's, BatchNorm's
# original placement) or the activations a.
NORM_POSITIONS = ("before_activation", "after_activation")

# Channels per conv layer, "M" for a 2x2 max-pool (Simonyan & Zisserman 2015, configurations A, B, D, E).
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def _check_norm(norm: str | type[Layer] | None) -> None:
    """norm: None, a name from smoothnorm.NORMS, or a Layer subclass taking (num_features, **norm_options)."""
    if isinstance(norm, type) and issubclass(norm, Layer):
        return
    if norm is not None:
        choice("norm", norm, tuple(NORM_LAYERS))


def _block(
    norm: str | None, features: int, activation: str, norm_position: str, norm_options: dict | None
) -> list[Layer]:
    """The layers that follow a Linear or Conv2d: activation and, if any, the norm on the chosen side of it."""
    act = ACTIVATION_LAYERS[activation]()
    if norm is None:
        return [act]
    norm_layer = make_norm(norm, features, **(norm_options or {}))
    return [norm_layer, act] if norm_position == "before_activation" else [act, norm_layer]


def _check_activation(activation: str, norm_position: str) -> None:
    choice("activation", activation, tuple(ACTIVATION_LAYERS))
    choice("norm_position", norm_position, NORM_POSITIONS)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def conv_shapes(name: str, width: float = 1.0, in_channels: int = 3) -> list[tuple[int, int, int]]:
    """(c_in, c_out, map size) of every 3x3 convolution of the CIFAR VGG `name` at `width`, in order (32x32 inputs,
    each max-pool halving the map): the shapes `vgg(name, width=width)` builds."""
    choice("name", name, tuple(VGG_CONFIGS))
    shapes, channels, size = [], in_channels, 32
    for item in VGG_CONFIGS[name]:
        if item == "M":
            size //= 2
            continue
        out = round(item * width)
        shapes.append((channels, out, size))
        channels = out
    return shapes


def vgg(
    name: str,
    *,
    norm: str | None = None,
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    dtype=np.float32,
    seed: int = 0,
    init: str = "glorot",
    norm_options: dict | None = None,
    activation: str = "relu",
    norm_position: str = "before_activation",
    algorithm: str = "auto",
) -> Network:
    """CIFAR VGG: 3x3 convs (padding 1, bias), each followed by `norm` if any, then the activation (or the
    activation, then the norm, with norm_position="after_activation"); 2x2 max-pool after each stage; classifier
    Linear(round(512 * width), num_classes). Inputs (N, in_channels, 32, 32).

    Layer names follow torchvision's `features.{i}` Sequential indexing and `classifier`.
    activation: "relu" (the paper's), "sigmoid", "tanh" or "identity".
    algorithm: every conv's algorithm, "auto", "im2col" or "winograd" (see nn.Conv2d).
    """
    choice("name", name, tuple(VGG_CONFIGS))
    _check_norm(norm)
    _check_activation(activation, norm_position)
    num_classes = _positive_int("num_classes", num_classes)
    in_channels = _positive_int("in_channels", in_channels)
    if not (isinstance(width, (int, float)) and width > 0):
        raise ValueError(f"width: expected a positive number, got {width!r}")
    layers: list[tuple[str, Layer]] = []
    channels = in_channels
    for item in VGG_CONFIGS[name]:
        if item == "M":
            layers.append((f"features.{len(layers)}", MaxPool2d()))
            continue
        out = round(item * width)
        if out < 1:
            raise ValueError(f"width: {width} gives {out} channels for a {item}-channel layer; expected >= 1")
        layers.append((f"features.{len(layers)}", Conv2d(channels, out, 3, padding=1, algorithm=algorithm)))
        for layer in _block(norm, out, activation, norm_position, norm_options):
            layers.append((f"features.{len(layers)}", layer))
        channels = out
    layers.append(("flatten", Flatten()))
    layers.append(("classifier", Linear(round(512 * width), num_classes)))
    return Network(
        layers, input_shape=(in_channels, 32, 32), loss=SoftmaxCrossEntropy(), dtype=dtype, seed=seed, init=init
    )


def dln(
    depth: int,
    width: int,
    *,
    in_dim: int,
    out_dim: int,
    norm: str | None = None,
    dtype=np.float64,
    seed: int = 0,
    init: str = "glorot",
    reduction: str = "sum",
    norm_options: dict | None = None,
    activation: str = "identity",
) -> Network:
    """Deep linear network: `depth` bias-free Linear layers (`layers.{i}`), `norm` (`norms.{i}`) after every layer
    but the last; summed squared error by default (the paper's ||W_1...W_k x - A x||^2, App. A.1).

    activation: "identity" (the paper's linear network: no activation layers at all) or "relu", "sigmoid", "tanh"
    (`activations.{i}`, after the norm of every layer but the last), which makes it a bias-free MLP.
    """
    choice("activation", activation, tuple(ACTIVATION_LAYERS))
    depth = _positive_int("depth", depth)
    width = _positive_int("width", width)
    in_dim = _positive_int("in_dim", in_dim)
    out_dim = _positive_int("out_dim", out_dim)
    _check_norm(norm)
    layers: list[tuple[str, Layer]] = []
    for i in range(depth):
        fan_in = in_dim if i == 0 else width
        fan_out = out_dim if i == depth - 1 else width
        layers.append((f"layers.{i}", Linear(fan_in, fan_out, bias=False)))
        if norm is not None and i < depth - 1:
            layers.append((f"norms.{i}", make_norm(norm, fan_out, **(norm_options or {}))))
        if activation != "identity" and i < depth - 1:
            layers.append((f"activations.{i}", ACTIVATION_LAYERS[activation]()))
    return Network(
        layers, input_shape=(in_dim,), loss=SquaredError(reduction), dtype=dtype, seed=seed, init=init
    )


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    num_classes: int,
    *,
    norm: str | None = None,
    dtype=np.float32,
    seed: int = 0,
    init: str = "glorot",
    norm_options: dict | None = None,
    activation: str = "relu",
    norm_position: str = "before_activation",
) -> Network:
    """Multi-layer perceptron: Linear, `norm` if any, activation per hidden layer (norm and activation swapped with
    norm_position="after_activation"; Sequential `layers.{i}` names), then Linear to `num_classes`; softmax
    cross-entropy, mean over the batch. Inputs (N, in_dim). activation: "relu", "sigmoid", "tanh" or "identity"."""
    in_dim = _positive_int("in_dim", in_dim)
    num_classes = _positive_int("num_classes", num_classes)
    _check_norm(norm)
    _check_activation(activation, norm_position)
    layers: list[tuple[str, Layer]] = []
    fan_in = in_dim
    for h in hidden:
        h = _positive_int("hidden", h)
        layers.append((f"layers.{len(layers)}", Linear(fan_in, h)))
        for layer in _block(norm, h, activation, norm_position, norm_options):
            layers.append((f"layers.{len(layers)}", layer))
        fan_in = h
    layers.append((f"layers.{len(layers)}", Linear(fan_in, num_classes)))
    return Network(
        layers, input_shape=(in_dim,), loss=SoftmaxCrossEntropy(), dtype=dtype, seed=seed, init=init
    )
