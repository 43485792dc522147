"""Model builders: CIFAR VGG variants, deep linear networks (the paper's DLN) and MLPs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from smoothnorm._validate import choice
from smoothnorm.nn import (
    NORM_LAYERS,
    Conv2d,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    Network,
    ReLU,
    SoftmaxCrossEntropy,
    SquaredError,
    make_norm,
)

# Channels per conv layer, "M" for a 2x2 max-pool (Simonyan & Zisserman 2015, configurations A, B, D, E).
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def _check_norm(norm: str | None) -> None:
    if norm is not None:
        choice("norm", norm, tuple(NORM_LAYERS))


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


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
    algorithm: str = "auto",
) -> Network:
    """CIFAR VGG: 3x3 convs (padding 1, bias), each followed by `norm` if any, then ReLU; 2x2 max-pool after each
    stage; classifier Linear(round(512 * width), num_classes). Inputs (N, in_channels, 32, 32).

    Layer names follow torchvision's `features.{i}` Sequential indexing and `classifier`.
    algorithm: every conv's algorithm, "auto", "im2col" or "winograd" (see nn.Conv2d).
    """
    choice("name", name, tuple(VGG_CONFIGS))
    _check_norm(norm)
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
        if norm is not None:
            layers.append((f"features.{len(layers)}", make_norm(norm, out, **(norm_options or {}))))
        layers.append((f"features.{len(layers)}", ReLU()))
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
) -> Network:
    """Deep linear network: `depth` bias-free Linear layers (`layers.{i}`), `norm` (`norms.{i}`) after every layer
    but the last; summed squared error by default (the paper's ||W_1...W_k x - A x||^2, App. A.1)."""
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
) -> Network:
    """Multi-layer perceptron: Linear, `norm` if any, ReLU per hidden layer (Sequential `layers.{i}` names), then
    Linear to `num_classes`; softmax cross-entropy, mean over the batch. Inputs (N, in_dim)."""
    in_dim = _positive_int("in_dim", in_dim)
    num_classes = _positive_int("num_classes", num_classes)
    _check_norm(norm)
    layers: list[tuple[str, Layer]] = []
    fan_in = in_dim
    for h in hidden:
        h = _positive_int("hidden", h)
        layers.append((f"layers.{len(layers)}", Linear(fan_in, h)))
        if norm is not None:
            layers.append((f"layers.{len(layers)}", make_norm(norm, h, **(norm_options or {}))))
        layers.append((f"layers.{len(layers)}", ReLU()))
        fan_in = h
    layers.append((f"layers.{len(layers)}", Linear(fan_in, num_classes)))
    return Network(
        layers, input_shape=(in_dim,), loss=SoftmaxCrossEntropy(), dtype=dtype, seed=seed, init=init
    )
