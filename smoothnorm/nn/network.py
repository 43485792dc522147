"""Network: one flat parameter vector, every layer's weights and gradients are views into it.

A `Network` owns `params` and `grads` (1-D, C-contiguous); each layer's `params[name]` / `grads[name]` are
reshaped views of slices of them, laid out in execution order (so "the layers before layer i" is a prefix).
Names and layouts follow PyTorch (`features.0.weight` of shape (out, in, kh, kw)), so `state_dict()` moves to and
from torch with `torch.from_numpy`.

Modes: "train" (batch statistics, running statistics updated), "probe" (batch statistics, nothing updated: every
measurement uses it), "eval" (running statistics).

The layers (smoothnorm.nn.layers, activations, norms) and losses (smoothnorm.nn.losses) live in their own modules;
the package smoothnorm.nn hands on their public names.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from smoothnorm._validate import as_float_dtype, choice, float_array
from smoothnorm.kernels.linear import linear_chain_backward, linear_chain_forward, linear_chain_plan
from smoothnorm.nn.layer import Layer
from smoothnorm.nn.layers import Conv2d, Linear, ReLU
from smoothnorm.nn.norms.batch import BatchNorm, NoisyBatchNorm

__all__ = [
    "MODES",
    "INITS",
    "Network",
]

MODES = ("train", "probe", "eval")
INITS = ("glorot", "pytorch")


class FlatParameters:
    """What a network whose parameters are views of one flat vector `params` says about its structure: shared by
    Network and smoothnorm.torch.TorchNetwork, which set `params`, `layers` (each with a `name`), `_slices` (layer
    name -> slice) and `_param_slices` (parameter name -> slice)."""

    @property
    def num_params(self) -> int:
        return int(self.params.size)

    def layer_slices(self) -> dict[str, slice]:
        """Layer name (state_dict prefix) -> slice of `params` holding all of that layer's parameters."""
        return dict(self._slices)

    def param_slices(self) -> dict[str, slice]:
        """Parameter name (`features.0.weight`) -> slice of `params`."""
        return dict(self._param_slices)

    def __getitem__(self, name: str):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r}; layers: {[la.name for la in self.layers]}")


class Network(FlatParameters):
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
        # BatchNorm or noisy BatchNorm followed by ReLU (VGG's every norm) runs as one kernel each way where the
        # norm's fuses_relu(mode) says (train and probe modes; kernels/norm/batch_relu.py: the same bits as the two
        # layers, fewer passes over memory). False runs the layers one by one.
        self.fuse_norm_relu = True
        self._norm_relu = {i for i in range(len(self.layers) - 1)
                           if type(self.layers[i]) in (BatchNorm, NoisyBatchNorm) and type(self.layers[i + 1]) is ReLU}
        self._paired: set[int] = set()
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

    # -- structure (FlatParameters) ---------------------------------------------------------------------------
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
        self._paired = set()
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
            if (i in self._norm_relu and self.fuse_norm_relu and layer.fuses_relu(mode)
                    and layer.name not in wanted):  # a captured norm output needs the layers one by one
                relu = self.layers[i + 1]
                out = layer.forward_relu(out, mode, relu)
                self._paired.add(i + 1)
                if relu.name in wanted:
                    self.captured[relu.name] = out
                i += 2
                continue
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
            if i in self._paired:
                d = self.layers[i - 1].backward_relu(d, self.layers[i])
                i -= 2
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

    # -- what the measurements ask of a network (smoothnorm.measure; smoothnorm.torch.TorchNetwork has the same) --
    def weight_layer_names(self) -> list[str]:
        """Names of the Conv2d and Linear layers in execution order: the weight layers of ICS (Definition 2.1) and
        of the paper's "Layer #k"."""
        return [layer.name for layer in self.layers if isinstance(layer, (Conv2d, Linear))]

    def loss_and_grad_from(self, x, y, layer: str, mode: str = "probe") -> float:
        """Loss on (x, y) and the gradient of the parameters of `layer` and every layer after it, written into
        their slices of `grads` (the slices before `layer`'s keep their values): a backward pass that stops at
        `layer`. `x`, `y` are taken as checked."""
        stop = [la.name for la in self.layers].index(layer)
        out = self.forward(x, mode)
        loss = self.loss_fn.forward(out, y)
        d = self.loss_fn.backward()
        for i in range(len(self.layers) - 1, stop - 1, -1):
            d = self.layers[i].backward(d, need_dx=i > stop)
        return loss

    def hessian_product(self, x, y, mode: str = "probe") -> tuple[float, Callable[[np.ndarray], np.ndarray]]:
        """(loss, product): one forward pass on (x, y) in `mode`, then product(d) = H d, the exact Hessian of the
        loss times a full-length parameter direction d, by Pearlmutter's R-operator (each layer's `forward_r`,
        then `backward_r`: forward-over-reverse). Products are valid until the network's next forward pass;
        compute in float64 (smoothnorm.measure.hessian works on a float64 copy). `x`, `y` are taken as checked."""
        out = self.forward(x, mode)
        loss = self.loss_fn.forward(out, y)
        dout = self.loss_fn.backward()
        views = {layer.name: {pname: (self._param_slices[f"{layer.name}.{pname}"], pshape)
                              for pname, pshape in layer.param_shapes().items()} for layer in self.layers}

        def product(direction: np.ndarray) -> np.ndarray:
            rx = None
            hv = np.zeros(self.num_params)
            with np.errstate(all="ignore"):
                for layer in self.layers:
                    rx = layer.forward_r(rx, {p: direction[s].reshape(shape)
                                              for p, (s, shape) in views[layer.name].items()})
                rd = self.loss_fn.backward_r(np.zeros_like(dout) if rx is None else rx)
                d = dout
                for i in range(len(self.layers) - 1, -1, -1):
                    layer = self.layers[i]
                    d, rd = layer.backward_r(d, rd, {p: hv[s].reshape(shape) for p, (s, shape) in
                                                     views[layer.name].items()}, need_dx=i > 0)
            return hv

        return loss, product

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
        load_checked_state(expected, state, strict)

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
        new._paired = set()
        new._bind()  # every layer's parameter and gradient views onto the new flat vectors
        return new

    def __deepcopy__(self, memo):
        new = object.__new__(Network)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            setattr(new, key, copy.deepcopy(value, memo))
        new._bind()
        return new


def load_checked_state(expected: dict[str, np.ndarray], state: Mapping[str, Any], strict: bool,
                       as_array: Callable[[Any], Any] = lambda value: value) -> None:
    """Copy state[key] into expected[key] (arrays written in place) for every key both have, after checking them
    all (a refused state changes nothing); strict: the keys must be the same. `as_array` converts a value first."""
    if strict:
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"state: missing keys {missing}, unexpected keys {unexpected}")
    checked = {key: _checked_state_value(key, as_array(state[key]), target)
               for key, target in expected.items() if key in state}
    for key, value in checked.items():
        expected[key][...] = value


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
