"""The layers of VGG and MLP besides normalizations and smooth activations: Linear, Conv2d, ReLU, MaxPool2d, Flatten.

Each is a thin object around kernels; its `params` / `grads` are views into a Network's flat vectors (smoothnorm.nn),
with PyTorch's names and layouts. Each has Pearlmutter's R-pass (`forward_r`, `backward_r`) for exact
Hessian-vector products (smoothnorm.measure.hessian).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from smoothnorm._validate import choice
from smoothnorm.kernels.activation import relu_backward, relu_forward
from smoothnorm.kernels.conv.conv2d import ALGORITHMS, conv2d_backward, conv2d_backward_input, conv2d_forward
from smoothnorm.kernels.linear import linear_backward, linear_forward
from smoothnorm.kernels.pool import maxpool2d_backward, maxpool2d_forward, maxpool2d_gather
from smoothnorm.nn.layer import Layer

__all__ = ["Linear", "Conv2d", "ReLU", "MaxPool2d", "Flatten"]


def _fan_in_out(shape: tuple[int, ...]) -> tuple[int, int]:
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _init_weight_bias(layer: Layer, rng: np.random.Generator, init: str) -> None:
    w = layer.params["weight"]
    fan_in, fan_out = _fan_in_out(w.shape)
    if init == "glorot":
        # Glorot & Bengio (2010) uniform, zero biases: the paper's initialization (App. A.1).
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w[...] = rng.uniform(-bound, bound, size=w.shape)
        if "bias" in layer.params:
            layer.params["bias"][...] = 0
    else:
        # PyTorch's default: kaiming_uniform_(a=sqrt(5)) for weights, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) biases.
        bound = 1.0 / math.sqrt(fan_in)
        w[...] = rng.uniform(-bound, bound, size=w.shape)
        if "bias" in layer.params:
            layer.params["bias"][...] = rng.uniform(-bound, bound, size=layer.params["bias"].shape)


def _bilinear_backward_r(backward, layer, dy, rdy, rgrads, need_dx, geometry, input_grad=None):
    """R-pass backward of y = B(x, W) + b with B bilinear (Linear, Conv2d), given `backward(dy, x, W, dW, db,
    *geometry, need_dx)` of B: dx = B_x^T(dy, W); rdx = B_x^T(rdy, W) + B_x^T(dy, rW);
    r dW = B_W^T(rdy, x) + B_W^T(dy, rx); r db = sum(rdy). input_grad(dy, W): B_x^T(dy, W) alone, where that is
    cheaper than `backward` (Winograd convolutions); None: `backward` with its weight gradient dropped."""
    w, rw, x, rx = layer.params["weight"], layer._rparams["weight"], layer._x, layer._rx
    scratch = np.empty_like(w)

    def input_only(d, weight):
        return input_grad(d, weight) if input_grad else backward(d, x, weight, scratch, None, *geometry, need_dx=True)

    dx = input_only(dy, w) if need_dx else None
    rdx = backward(rdy, x, w, rgrads["weight"], rgrads.get("bias"), *geometry, need_dx=need_dx)
    if rx is not None:
        t = backward(dy, rx, rw, scratch, None, *geometry, need_dx=need_dx)
        rgrads["weight"] += scratch
    elif need_dx:
        t = input_only(dy, rw)
    if need_dx:
        rdx = rdx + t
    return dx, rdx


class Linear(Layer):
    """Fully connected layer y = x W^T + b, weight (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.use_bias = int(in_features), int(out_features), bool(bias)
        self._x: np.ndarray | None = None

    def param_shapes(self):
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.use_bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, rng, init):
        _init_weight_bias(self, rng, init)

    def output_shape(self, input_shape):
        if input_shape != (self.in_features,):
            raise ValueError(f"{self.name}: expected input features ({self.in_features},), got {input_shape}")
        return (self.out_features,)

    def forward(self, x, mode):
        self._x = x
        return linear_forward(x, self.params["weight"], self.params.get("bias"))

    def backward(self, dy, need_dx=True):
        return linear_backward(
            dy, self._x, self.params["weight"], self.grads["weight"], self.grads.get("bias"), need_dx=need_dx
        )

    def forward_r(self, rx, rparams):
        """R-pass (Pearlmutter's R-operator, smoothnorm.measure.hessian): the output's directional derivative for
        input direction rx (None: zero) and parameter directions rparams (views like `params`)."""
        self._rx, self._rparams = rx, rparams
        ry = linear_forward(self._x, rparams["weight"], rparams.get("bias"))
        return ry if rx is None else ry + linear_forward(rx, self.params["weight"])

    def backward_r(self, dy, rdy, rgrads, need_dx=True):
        """R-pass backward: (dx, rdx) for the output gradient dy and its directional derivative rdy; writes the
        directional derivatives of the parameter gradients into rgrads (views like `grads`)."""
        return _bilinear_backward_r(linear_backward, self, dy, rdy, rgrads, need_dx, ())

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.use_bias}"


class Conv2d(Layer):
    """2-D convolution (cross-correlation, zero padding), weight (out, in, k, k), PyTorch semantics.

    algorithm: "auto" (default: per pass, a fixed rule by layer shape, kernels/winograd.winograd_pays), "im2col",
    or "winograd" (3x3 kernels with stride 1 and padding 1 only).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
        bias: bool = True, algorithm: str = "auto",
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        self.use_bias = bool(bias)
        self.algorithm = choice("algorithm", algorithm, ALGORITHMS)
        if self.algorithm == "winograd" and (self.kernel_size, self.stride, self.padding) != (3, 1, 1):
            raise ValueError(
                f"algorithm: 'winograd' needs kernel_size 3, stride 1 and padding 1, got {self.kernel_size}, "
                f"{self.stride} and {self.padding}"
            )
        self._x: np.ndarray | None = None

    def param_shapes(self):
        k = self.kernel_size
        shapes = {"weight": (self.out_channels, self.in_channels, k, k)}
        if self.use_bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def init_params(self, rng, init):
        _init_weight_bias(self, rng, init)

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"{self.name}: expected input ({self.in_channels}, H, W), got {input_shape}")
        h, w = ((s + 2 * self.padding - self.kernel_size) // self.stride + 1 for s in input_shape[1:])
        if h < 1 or w < 1:
            raise ValueError(f"{self.name}: input {input_shape} is too small for kernel {self.kernel_size}")
        return (self.out_channels, h, w)

    def forward(self, x, mode):
        self._x = x
        out = self._buffer("y", (x.shape[0], *self.output_shape(x.shape[1:])), x.dtype) if x.ndim == 4 else None
        return conv2d_forward(
            x, self.params["weight"], self.params.get("bias"), self.stride, self.padding, algorithm=self.algorithm,
            out=out,
        )

    def backward(self, dy, need_dx=True):
        out = self._reused("dx", self._x) if need_dx else None
        return conv2d_backward(
            dy, self._x, self.params["weight"], self.grads["weight"], self.grads.get("bias"),
            self.stride, self.padding, need_dx=need_dx, algorithm=self.algorithm, out=out,
        )

    def forward_r(self, rx, rparams):
        """R-pass: as Linear.forward_r (a convolution is bilinear in input and weight)."""
        self._rx, self._rparams = rx, rparams
        conv = partial(conv2d_forward, stride=self.stride, padding=self.padding, algorithm=self.algorithm)
        ry = conv(self._x, rparams["weight"], rparams.get("bias"))
        if rx is not None:
            ry += conv(rx, self.params["weight"], None)
        return ry

    def backward_r(self, dy, rdy, rgrads, need_dx=True):
        """R-pass backward: as Linear.backward_r."""
        backward = partial(conv2d_backward, algorithm=self.algorithm)
        return _bilinear_backward_r(
            backward, self, dy, rdy, rgrads, need_dx, (self.stride, self.padding),
            lambda d, weight: conv2d_backward_input(d, self._x, weight, self.stride, self.padding, self.algorithm),
        )

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.use_bias}, algorithm={self.algorithm!r}"
        )


class ReLU(Layer):
    """Rectified linear unit; keeps its output for the backward mask. Its output and input gradient live in buffers
    kept between calls (valid until the next call, as BatchNorm's)."""

    def __init__(self) -> None:
        super().__init__()
        self._y: np.ndarray | None = None

    def forward(self, x, mode):
        self._y = relu_forward(x, out=self._reused("y", x))
        return self._y

    def backward(self, dy, need_dx=True):
        return relu_backward(dy, self._y, out=self._reused("dx", dy)) if need_dx else None

    def forward_r(self, rx, rparams):
        """R-pass: rx masked by the base point's pattern (relu' = 1 where the output is positive; relu'' = 0)."""
        return None if rx is None else relu_backward(rx, self._y, out=self._reused("ry", rx))

    def backward_r(self, dy, rdy, rgrads, need_dx=True):
        """R-pass backward (dx, rdx): both masked like dy. R-pass outputs, like forward outputs, live in buffers
        valid until the layer's next R-pass."""
        if not need_dx:
            return None, None
        return (relu_backward(dy, self._y, out=self._reused("dx_r", dy)),
                relu_backward(rdy, self._y, out=self._reused("rdx_r", rdy)))


class MaxPool2d(Layer):
    """2x2 max-pooling with stride 2 (floor for odd sizes, as PyTorch). Output, arg-max and input gradient live in
    buffers kept between calls (valid until the next call, as ReLU's and BatchNorm's)."""

    def __init__(self) -> None:
        super().__init__()
        self._argmax: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] < 2 or input_shape[2] < 2:
            raise ValueError(f"{self.name}: expected input (C, H>=2, W>=2), got {input_shape}")
        return (input_shape[0], input_shape[1] // 2, input_shape[2] // 2)

    def forward(self, x, mode):
        self._shape = x.shape
        out = None
        if np.ndim(x) == 4:  # anything else is the kernel's to reject, by name
            shape = (*x.shape[:2], x.shape[2] // 2, x.shape[3] // 2)
            out = (self._buffer("y", shape, x.dtype), self._buffer("argmax", shape, np.int8))
        y, self._argmax = maxpool2d_forward(x, out=out)
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        return maxpool2d_backward(dy, self._argmax, self._shape, out=self._buffer("dx", self._shape, dy.dtype))

    def forward_r(self, rx, rparams):
        """R-pass: rx at the base point's arg-max of each window (the winners are held fixed)."""
        if rx is None:
            return None
        return maxpool2d_gather(rx, self._argmax, out=self._buffer("ry", self._argmax.shape, rx.dtype))

    def backward_r(self, dy, rdy, rgrads, need_dx=True):
        """R-pass backward (dx, rdx), routed like dy; outputs in buffers valid until the layer's next R-pass."""
        if not need_dx:
            return None, None
        return (maxpool2d_backward(dy, self._argmax, self._shape, out=self._buffer("dx_r", self._shape, dy.dtype)),
                maxpool2d_backward(rdy, self._argmax, self._shape, out=self._buffer("rdx_r", self._shape, rdy.dtype)))

    def extra_repr(self):
        return "kernel_size=2, stride=2"


class Flatten(Layer):
    """Reshape (N, ...) to (N, prod(...)): a view, no copy."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, mode):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self._shape) if need_dx else None

    def forward_r(self, rx, rparams):
        return None if rx is None else rx.reshape(rx.shape[0], -1)

    def backward_r(self, dy, rdy, rgrads, need_dx=True):
        if not need_dx:
            return None, None
        return dy.reshape(self._shape), rdy.reshape(self._shape)
