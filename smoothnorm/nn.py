"""Layers and Network: one flat parameter vector, every layer's weights and gradients are views into it.

A `Network` owns `params` and `grads` (1-D, C-contiguous); each layer's `params[name]` / `grads[name]` are
reshaped views of slices of them, laid out in execution order (so "the layers before layer i" is a prefix).
Names and layouts follow PyTorch (`features.0.weight` of shape (out, in, kh, kw)), so `state_dict()` moves to and
from torch with `torch.from_numpy`.

Modes: "train" (batch statistics, running statistics updated), "probe" (batch statistics, nothing updated: every
measurement uses it), "eval" (running statistics).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from smoothnorm._rop import maxpool_gather
from smoothnorm._validate import as_float_dtype, choice, float_array, label_array
from smoothnorm.activation_layers import Identity, Sigmoid, Tanh
from smoothnorm.kernels.activation import relu_backward, relu_forward
from smoothnorm.kernels.conv import ALGORITHMS, conv2d_backward, conv2d_forward
from smoothnorm.kernels.linear import (
    linear_backward,
    linear_chain_backward,
    linear_chain_forward,
    linear_chain_plan,
    linear_forward,
)
from smoothnorm.kernels.loss import (
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
    squared_error_backward,
    squared_error_forward,
)
from smoothnorm.kernels.pool import maxpool2d_backward, maxpool2d_forward
from smoothnorm.layer import Layer
from smoothnorm.norm_layers import NORM_LAYERS, BatchNorm, make_norm

__all__ = [
    "MODES", "INITS", "Layer", "Linear", "Conv2d", "ReLU", "Sigmoid", "Tanh", "Identity", "MaxPool2d", "Flatten",
    "BatchNorm", "NORM_LAYERS", "make_norm", "SoftmaxCrossEntropy", "SquaredError", "OneHotSquaredError", "LOSSES",
    "Network",
]

MODES = ("train", "probe", "eval")
INITS = ("glorot", "pytorch")


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------
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


def _bilinear_backward_r(backward, layer, dy, rdy, rgrads, need_dx, geometry):
    """R-pass backward of y = B(x, W) + b with B bilinear (Linear, Conv2d), given `backward(dy, x, W, dW, db,
    *geometry, need_dx)` of B: dx = B_x^T(dy, W); rdx = B_x^T(rdy, W) + B_x^T(dy, rW);
    r dW = B_W^T(rdy, x) + B_W^T(dy, rx); r db = sum(rdy)."""
    w, rw, x, rx = layer.params["weight"], layer._rparams["weight"], layer._x, layer._rx
    scratch = np.empty_like(w)
    dx = backward(dy, x, w, scratch, None, *geometry, need_dx=need_dx)
    rdx = backward(rdy, x, w, rgrads["weight"], rgrads.get("bias"), *geometry, need_dx=need_dx)
    if rx is not None:
        t = backward(dy, rx, rw, scratch, None, *geometry, need_dx=need_dx)
        rgrads["weight"] += scratch
    elif need_dx:
        t = backward(dy, x, rw, scratch, None, *geometry, need_dx=True)
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
        return conv2d_forward(
            x, self.params["weight"], self.params.get("bias"), self.stride, self.padding, algorithm=self.algorithm
        )

    def backward(self, dy, need_dx=True):
        return conv2d_backward(
            dy, self._x, self.params["weight"], self.grads["weight"], self.grads.get("bias"),
            self.stride, self.padding, need_dx=need_dx, algorithm=self.algorithm,
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
        return _bilinear_backward_r(backward, self, dy, rdy, rgrads, need_dx, (self.stride, self.padding))

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.use_bias}, algorithm={self.algorithm!r}"
        )


class ReLU(Layer):
    """Rectified linear unit; keeps its output for the backward mask."""

    def __init__(self) -> None:
        super().__init__()
        self._y: np.ndarray | None = None

    def forward(self, x, mode):
        self._y = relu_forward(x)
        return self._y

    def backward(self, dy, need_dx=True):
        return relu_backward(dy, self._y) if need_dx else None

    def forward_r(self, rx, rparams):
        """R-pass: rx masked by the base point's pattern (relu' = 1 where the output is positive; relu'' = 0)."""
        return None if rx is None else relu_backward(rx, self._y)

    def backward_r(self, dy, rdy, rgrads, need_dx=True):
        if not need_dx:
            return None, None
        return relu_backward(dy, self._y), relu_backward(rdy, self._y)


class MaxPool2d(Layer):
    """2x2 max-pooling with stride 2 (floor for odd sizes, as PyTorch)."""

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
        y, self._argmax = maxpool2d_forward(x)
        return y

    def backward(self, dy, need_dx=True):
        return maxpool2d_backward(dy, self._argmax, self._shape) if need_dx else None

    def forward_r(self, rx, rparams):
        """R-pass: rx at the base point's arg-max of each window (the winners are held fixed)."""
        return None if rx is None else maxpool_gather(rx, self._argmax)

    def backward_r(self, dy, rdy, rgrads, need_dx=True):
        if not need_dx:
            return None, None
        return (maxpool2d_backward(dy, self._argmax, self._shape),
                maxpool2d_backward(rdy, self._argmax, self._shape))

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


# ----------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------
class SoftmaxCrossEntropy:
    """Softmax cross-entropy on logits (N, C) with int64 labels, mean over the batch."""

    name = "cross_entropy"

    def __init__(self) -> None:
        self._cache: tuple | None = None

    def check_targets(self, y, output_shape: tuple[int, ...], n: int, dtype) -> np.ndarray:
        return label_array("y", y, num_classes=output_shape[0], n=n)

    def forward(self, out: np.ndarray, y: np.ndarray) -> float:
        loss, probs = softmax_cross_entropy_forward(out, y)
        self._cache = (probs, y)
        return loss

    def backward(self) -> np.ndarray:
        return softmax_cross_entropy_backward(*self._cache)

    def backward_r(self, r_out: np.ndarray) -> np.ndarray:
        """Directional derivative of the logits' gradient (p - onehot) / N for a logit direction r_out:
        (p * (r_out - sum_k p_k r_out_k)) / N."""
        probs = self._cache[0].astype(np.float64)
        r = np.asarray(r_out, dtype=np.float64)
        return probs * (r - np.sum(probs * r, axis=1, keepdims=True)) / probs.shape[0]


class SquaredError:
    """Squared error, summed (the paper's DLN objective ||W x - A x||^2) or averaged over all elements."""

    name = "squared_error"

    def __init__(self, reduction: str = "sum") -> None:
        self.reduction = choice("reduction", reduction, ("sum", "mean"))
        self._diff: np.ndarray | None = None

    def check_targets(self, y, output_shape: tuple[int, ...], n: int, dtype) -> np.ndarray:
        return float_array("y", y, dtype, shape=(n, *output_shape))

    def forward(self, out, y):
        loss, self._diff = squared_error_forward(out, y, self.reduction)
        return loss

    def backward(self):
        return squared_error_backward(self._diff, self.reduction)

    def backward_r(self, r_out: np.ndarray) -> np.ndarray:
        """Directional derivative of the prediction's gradient: 2 r_out (divided by the size for "mean")."""
        return squared_error_backward(np.asarray(r_out, dtype=self._diff.dtype), self.reduction)


class OneHotSquaredError:
    """Mean squared error against one-hot targets as a classification loss (Cohen et al. 2021, edge of stability):
    loss = sum_n ||out_n - onehot(y_n)||^2 / (2 N) on outputs (N, C) with int64 labels."""

    name = "onehot_squared_error"

    def __init__(self) -> None:
        self._diff: np.ndarray | None = None

    def check_targets(self, y, output_shape: tuple[int, ...], n: int, dtype) -> np.ndarray:
        return label_array("y", y, num_classes=output_shape[0], n=n)

    def forward(self, out: np.ndarray, y: np.ndarray) -> float:
        out = np.asarray(out)
        target = np.zeros_like(out)
        target[np.arange(out.shape[0]), y] = 1
        loss, self._diff = squared_error_forward(out, target, "sum")
        return loss / (2 * out.shape[0])

    def backward(self) -> np.ndarray:
        """(out - onehot) / N."""
        return squared_error_backward(self._diff, "sum") * self._diff.dtype.type(0.5 / self._diff.shape[0])

    def backward_r(self, r_out: np.ndarray) -> np.ndarray:
        """Directional derivative of the output's gradient for an output direction r_out: r_out / N."""
        return np.asarray(r_out, dtype=np.float64) / self._diff.shape[0]


LOSSES = {"cross_entropy": SoftmaxCrossEntropy, "squared_error": SquaredError,
          "onehot_squared_error": OneHotSquaredError}


# ----------------------------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------------------------
class Network:
    """A sequence of named layers whose parameters and gradients live in one flat vector each.

    Parameters
    ----------
    layers: sequence of (name, Layer); names are PyTorch state_dict prefixes (`features.0`, `classifier`).
    input_shape: per-sample input shape, e.g. (3, 32, 32) or (10,).
    loss: a loss object (SoftmaxCrossEntropy or SquaredError).
    dtype: float32 (speed) or float64 (precise measurements).
    seed: initialization seed (and the first draw of any layer noise).
    init: "glorot" (the paper's Glorot uniform, zero biases) or "pytorch" (PyTorch's defaults).
    """

    def __init__(
        self,
        layers: Sequence[tuple[str, Layer]],
        *,
        input_shape: tuple[int, ...],
        loss,
        dtype=np.float32,
        seed: int = 0,
        init: str = "glorot",
    ) -> None:
        self.dtype = as_float_dtype(dtype)
        choice("init", init, INITS)
        self.init, self.seed = init, int(seed)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.loss_fn = loss
        self.layers: list[Layer] = []
        names = set()
        shape = self.input_shape
        for name, layer in layers:
            if name in names:
                raise ValueError(f"layers: duplicate layer name {name!r}")
            names.add(name)
            layer.name = name
            shape = layer.output_shape(shape)
            layer.allocate(self.dtype)
            self.layers.append(layer)
        self.output_shape = shape
        self._slices: dict[str, slice] = {}
        self._param_slices: dict[str, slice] = {}
        offset = 0
        for layer in self.layers:
            start = offset
            for pname, pshape in layer.param_shapes().items():
                size = int(np.prod(pshape))
                self._param_slices[f"{layer.name}.{pname}"] = slice(offset, offset + size)
                offset += size
            if offset > start:
                self._slices[layer.name] = slice(start, offset)
        self.params = np.zeros(offset, dtype=self.dtype)
        self.grads = np.zeros(offset, dtype=self.dtype)
        self._chains = self._linear_chains()
        self._fused: dict[int, tuple] = {}
        self._bind()
        rng = np.random.default_rng(self.seed)
        for layer in self.layers:
            layer.init_params(rng, init)
        self.output: np.ndarray | None = None
        self.captured: dict[str, np.ndarray] = {}
        self.resample_noise(np.random.default_rng([self.seed, 1]))

    def _linear_chains(self) -> list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
        """Runs of two or more consecutive Linear layers (a deep linear network): (start, stop, weight offsets,
        bias offsets or -1, feature dims). forward/backward run such a run in one kernel when its products are
        small (kernels.linear.linear_chain_plan), with results equal to running its layers one by one."""
        chains, i = [], 0
        while i < len(self.layers):
            j = i
            while j < len(self.layers) and type(self.layers[j]) is Linear:
                j += 1
            if j - i >= 2:
                run = self.layers[i:j]
                w_off = np.array([self._param_slices[f"{la.name}.weight"].start for la in run], dtype=np.int64)
                b_off = np.array([self._param_slices[f"{la.name}.bias"].start if la.use_bias else -1 for la in run],
                                 dtype=np.int64)
                dims = np.array([run[0].in_features] + [la.out_features for la in run], dtype=np.int64)
                chains.append((i, j, w_off, b_off, dims))
            i = max(j, i + 1)
        return chains

    def _bind(self) -> None:
        """(Re)create every layer's parameter and gradient views into the flat vectors."""
        for layer in self.layers:
            layer.params, layer.grads = {}, {}
            for pname, pshape in layer.param_shapes().items():
                s = self._param_slices[f"{layer.name}.{pname}"]
                layer.params[pname] = self.params[s].reshape(pshape)
                layer.grads[pname] = self.grads[s].reshape(pshape)

    # -- structure -------------------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return int(self.params.size)

    def layer_slices(self) -> dict[str, slice]:
        """Layer name (state_dict prefix) -> slice of `params` holding all of that layer's parameters."""
        return dict(self._slices)

    def param_slices(self) -> dict[str, slice]:
        """Parameter name (`features.0.weight`) -> slice of `params`."""
        return dict(self._param_slices)

    def __getitem__(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r}; layers: {[la.name for la in self.layers]}")

    def __repr__(self) -> str:
        body = "\n".join(f"  ({layer.name}): {layer!r}" for layer in self.layers)
        return f"Network(dtype={self.dtype}, params={self.num_params}, loss={self.loss_fn.name}\n{body}\n)"

    # -- computation -----------------------------------------------------------------------------------------
    def check_input(self, x) -> np.ndarray:
        """Validate and coerce a batch of inputs (N, *input_shape) to the network's dtype."""
        return float_array("x", x, self.dtype, shape=(None, *self.input_shape))

    def check_targets(self, y, n: int) -> np.ndarray:
        """Validate targets for the network's loss: int64 labels or float regression targets."""
        return self.loss_fn.check_targets(y, self.output_shape, n, self.dtype)

    def forward(self, x, mode: str = "train", capture=None) -> np.ndarray:
        """Run the layers on a batch; returns the output (logits or predictions). Caches what backward needs.

        capture: names of layers whose outputs are kept in `self.captured` ({name: array}; treat as read-only).
        Layer outputs (and `captured`) are valid until the next forward: some layers reuse their output buffers.
        """
        choice("mode", mode, MODES)
        out = self.check_input(x)
        if out.shape[0] < 1:
            raise ValueError("x: expected at least one sample, got an empty batch")
        wanted = set(capture or ())
        unknown = wanted - {layer.name for layer in self.layers}
        if unknown:
            raise ValueError(f"capture: unknown layer names {sorted(unknown)}")
        self.captured = {}
        self._fused = {}
        chains = {c[0]: c for c in self._chains}
        i = 0
        while i < len(self.layers):
            chain = chains.get(i)
            parts = linear_chain_plan(out.shape[0], chain[4]) if chain else 0
            if parts:
                start, stop, w_off, b_off, dims = chain
                outputs = linear_chain_forward(out, self.params, w_off, b_off, dims, parts)
                for layer, inp in zip(self.layers[start:stop], [out, *outputs[:-1]]):
                    layer._x = inp  # what Linear.backward needs, so a layer-by-layer backward still works
                self._fused[stop - 1] = (chain, out, outputs, parts)
                for layer, y in zip(self.layers[start:stop], outputs):
                    if layer.name in wanted:
                        self.captured[layer.name] = y
                out = outputs[-1]
                i = stop
                continue
            layer = self.layers[i]
            out = layer.forward(out, mode)
            if layer.name in wanted:
                self.captured[layer.name] = out
            i += 1
        self.output = out
        return out

    def backward(self, dout, need_input_grad: bool = False) -> np.ndarray | None:
        """Backpropagate d(loss)/d(output); overwrites `grads`. Returns d(loss)/d(input) if asked."""
        d = dout
        i = len(self.layers) - 1
        while i >= 0:
            fused = self._fused.get(i)
            if fused is not None:
                (start, _, w_off, b_off, dims), x, outputs, parts = fused
                need = start > 0 or need_input_grad
                d = linear_chain_backward(d, x, outputs, self.params, self.grads, w_off, b_off, dims, parts, need)
                i = start - 1
                continue
            need = i > 0 or need_input_grad
            d = self.layers[i].backward(d, need_dx=need)
            if d is None and need:
                raise RuntimeError(f"{self.layers[i].name}: backward returned no input gradient")
            i -= 1
        # Layers without parameters write no gradients; parameterised ones overwrite theirs every call.
        return d

    def loss(self, x, y, mode: str = "probe") -> float:
        """Loss on (x, y) without a backward pass."""
        out = self.forward(x, mode)
        return self.loss_fn.forward(out, self.check_targets(y, out.shape[0]))

    def loss_and_grad(self, x, y, mode: str = "train") -> tuple[float, np.ndarray]:
        """Loss on (x, y) and its gradient, written into `grads` (returned; copy it to keep it)."""
        out = self.forward(x, mode)
        loss = self.loss_fn.forward(out, self.check_targets(y, out.shape[0]))
        self.backward(self.loss_fn.backward())
        return loss, self.grads

    def accuracy(self, x, y, mode: str = "eval") -> float:
        """Fraction of samples whose arg-max output equals the label (classification networks)."""
        out = self.forward(x, mode)
        labels = self.check_targets(y, out.shape[0])
        return float(np.mean(np.argmax(out, axis=1) == labels))

    def resample_noise(self, rng: np.random.Generator) -> None:
        """Draw fresh noise for every noisy layer (a no-op where there is none)."""
        for layer in self.layers:
            resample = getattr(layer, "resample_noise", None)
            if resample is not None:
                resample(rng)

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of parameters and buffers under PyTorch's names and layouts."""
        state: dict[str, np.ndarray] = {}
        for layer in self.layers:
            for pname, value in layer.params.items():
                state[f"{layer.name}.{pname}"] = value.copy()
            for bname, value in layer.buffers().items():
                state[f"{layer.name}.{bname}"] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Copy values from a state_dict (NumPy arrays or anything np.asarray accepts) into this network.

        Every value is checked before anything is copied (a refused state leaves the network unchanged): the
        shape must match; parameters and float buffers take finite real numbers (float, integer); integer buffers
        (`num_batches_tracked`) take integers, or floats with integral values. strict=False allows missing and
        unexpected keys. Raises ValueError naming the key and what was expected.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"state: expected a mapping from names to arrays, got {type(state).__name__}")
        expected = {}
        for layer in self.layers:
            for pname, value in layer.params.items():
                expected[f"{layer.name}.{pname}"] = value
            for bname, value in layer.buffers().items():
                expected[f"{layer.name}.{bname}"] = value
        bad_keys = [k for k in state if not isinstance(k, str)]
        if bad_keys:
            raise ValueError(f"state: keys should be strings, found {bad_keys[:3]!r}")
        if strict:
            missing = sorted(set(expected) - set(state))
            unexpected = sorted(set(state) - set(expected))
            if missing or unexpected:
                raise ValueError(f"state: missing keys {missing}, unexpected keys {unexpected}")
        checked = {}
        for key, target in expected.items():
            if key in state:
                checked[key] = _checked_state_value(key, state[key], target)
        for key, value in checked.items():
            expected[key][...] = value

    def copy(self) -> Network:
        """An independent deep copy (own flat vectors, views rebound)."""
        return copy.deepcopy(self)

    def astype(self, dtype) -> Network:
        """An independent copy computing in `dtype` (float32 or float64): parameters, gradients, buffers and any
        floating layer state (such as drawn noise) converted. Measurements take float64 copies of float32 networks."""
        dtype = as_float_dtype(dtype)
        new = self.copy()
        if new.dtype == dtype:
            return new
        old = new.dtype
        for layer in new.layers:
            for key, value in list(vars(layer).items()):
                if isinstance(value, np.ndarray) and value.dtype == old:
                    setattr(layer, key, value.astype(dtype))
                elif isinstance(value, np.dtype) and value == old:
                    setattr(layer, key, dtype)  # a layer's own record of the network dtype
        new.params = new.params.astype(dtype)
        new.grads = new.grads.astype(dtype)
        new.dtype = dtype
        new.output = None
        new.captured = {}
        new._fused = {}
        new._bind()  # every layer's parameter and gradient views onto the new flat vectors
        return new

    def __deepcopy__(self, memo):
        new = object.__new__(Network)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            setattr(new, key, copy.deepcopy(value, memo))
        new._bind()
        return new


def _checked_state_value(key: str, value: Any, target: np.ndarray) -> np.ndarray:
    """`value` as an array that fits `target` exactly (shape, a dtype that converts without loss of meaning)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        found = type(value).__name__
        raise ValueError(f"state[{key!r}]: expected an array of shape {target.shape}, got {found}") from exc
    if array.shape != target.shape:
        raise ValueError(f"state[{key!r}]: expected shape {target.shape}, got {array.shape}")
    if target.dtype.kind == "f":
        if array.dtype.kind not in "fiu":
            raise ValueError(f"state[{key!r}]: expected real numbers (float or integer), got dtype {array.dtype}")
        with np.errstate(over="ignore"):
            if not (np.isfinite(array).all() and np.isfinite(array.astype(target.dtype)).all()):
                raise ValueError(f"state[{key!r}]: expected finite values that fit {target.dtype}")
        return array
    what = f"state[{key!r}]: expected integers that fit {target.dtype}, got {array.dtype}"
    if array.dtype.kind == "f":
        if not (np.isfinite(array).all() and (array == np.round(array)).all()):
            raise ValueError(f"{what} with non-integral values")
    elif array.dtype.kind not in "iu":
        raise ValueError(what)
    info = np.iinfo(target.dtype)
    # Python scalars compare exactly across int and float (NumPy would cast and overflow).
    if array.size and (array.min().item() < info.min or array.max().item() > info.max):
        raise ValueError(f"{what} out of range [{info.min}, {info.max}]")
    return array.astype(target.dtype)
