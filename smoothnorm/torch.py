"""Any PyTorch module as a smoothnorm network: `TorchNetwork(module, loss="cross_entropy", dtype=np.float32)`.

The module's parameters become views of one flat NumPy vector: each parameter's data is `torch.from_numpy` of a
slice of `params`, so the package's optimizers, stepping `params` in place, step the module. Gradients are copied
into `grads` after every backward. `layers` are the modules that own parameters or buffers (a `TorchLayer` each,
named by its state_dict prefix), in the order the forward pass first calls them when `input_shape` is given (then
"the layers before layer i" is a prefix of `params`, as Definition 2.1's ICS needs), else in registration order.

Modes, as `Network`'s: "train" (module.train(): batch statistics, running statistics updated), "probe" (batch
statistics; every module in train mode but dropout, which is off; every buffer restored bit for bit after the
forward pass), "eval" (module.eval(): running statistics). The module's train/eval flags follow the last mode used.

The measurements (smoothnorm.measure) ask a network for three things beyond `params`, `grads`, `forward` and
`loss_and_grad`, and a TorchNetwork answers them with autograd: `weight_layer_names()` (the torch Conv and Linear
modules, forward order), `loss_and_grad_from(x, y, layer)` (the gradient of `layer` and the layers after it) and
`hessian_product(x, y, mode)` (exact Hessian-vector products by double backward, equal to the R-operator's).

This module needs PyTorch (`pip install 'smoothnorm[torch]'`); the package imports it only where a spec names a
`torch:` model (smoothnorm.runs.setup), inside the function that builds it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

try:
    import torch
except ImportError as _err:  # pragma: no cover - exercised only without torch
    raise ImportError("smoothnorm.torch needs PyTorch, an optional dependency: pip install 'smoothnorm[torch]'"
                      ) from _err

from smoothnorm._validate import as_float_dtype, choice, float_array
from smoothnorm.nn.losses import LOSSES
from smoothnorm.nn.network import MODES, FlatParameters, load_checked_state

__all__ = ["TorchNetwork", "TorchLayer", "network_from_build"]

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
# The weight layers of ICS and of the paper's "Layer #k".
_WEIGHT_MODULES = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
_DROPOUT = (torch.nn.modules.dropout._DropoutNd,)


class TorchLayer:
    """One module of a TorchNetwork that owns parameters or buffers, seen as a layer: `name` (its state_dict
    prefix), `module`, `params` / `grads` ({name: view into the network's flat vectors}) and `buffers()`
    ({name: NumPy view of the module's buffer}). It has no R-pass of its own: the network's `hessian_product`
    differentiates the whole module twice."""

    def __init__(self, name: str, module, params: dict[str, np.ndarray], grads: dict[str, np.ndarray],
                 output_shape: tuple[int, ...] | None) -> None:
        self.name, self.module, self.params, self.grads = name, module, params, grads
        self._output_shape = output_shape

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {pname: value.shape for pname, value in self.params.items()}

    def buffers(self) -> dict[str, np.ndarray]:
        return {bname: b.detach().numpy() for bname, b in self.module.named_buffers(recurse=False)
                if b is not None}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The module's per-sample output shape, as the network's first forward pass on its input shape saw it."""
        if self._output_shape is None:
            raise ValueError(f"{self.name}: output shape unknown (give TorchNetwork an input_shape)")
        return self._output_shape

    def forward_r(self, rx, rparams):
        raise NotImplementedError(f"{self.name}: a TorchNetwork's layers have no R-pass; "
                                  "TorchNetwork.hessian_product computes exact Hessian-vector products")

    def backward_r(self, dy, rdy, rgrads, need_dx=True):
        raise NotImplementedError(f"{self.name}: a TorchNetwork's layers have no R-pass; "
                                  "TorchNetwork.hessian_product computes exact Hessian-vector products")

    def __repr__(self) -> str:
        return f"TorchLayer({self.module!r})"


def _torch_loss(loss_fn, out, y):
    """The package loss `loss_fn` (by its name) on torch outputs and targets, as smoothnorm.nn.losses defines it."""
    if loss_fn.name == "cross_entropy":
        return torch.nn.functional.cross_entropy(out, y)
    if loss_fn.name == "onehot_squared_error":
        diff = out - torch.nn.functional.one_hot(y, out.shape[1]).to(out.dtype)
        return (diff * diff).sum() / (2 * out.shape[0])
    diff = out - y
    return (diff * diff).sum() if loss_fn.reduction == "sum" else (diff * diff).mean()


class TorchNetwork(FlatParameters):
    """A torch.nn.Module and a loss as a network with `Network`'s interface.

    Parameters
    ----------
    module: the torch.nn.Module (converted to `dtype` in place; its parameters then live in `params`).
    loss: a name from smoothnorm.nn.LOSSES ("cross_entropy", the default: softmax cross-entropy on logits, mean
        over the batch; "squared_error" summed; "onehot_squared_error") or such a loss object.
    dtype: float32 or float64.
    input_shape: one sample's shape, e.g. (3, 32, 32). Given, one forward pass on zeros (eval mode, buffers
        restored) orders the parameters as the forward pass uses them and records every module's output shape;
        without it the parameters follow registration order (module.named_parameters()) and the first batch fixes
        the input shape.
    """

    def __init__(self, module, loss="cross_entropy", *, dtype=np.float32,
                 input_shape: Sequence[int] | None = None) -> None:
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        self.dtype = as_float_dtype(dtype)
        self.loss_fn = _loss_object(loss)
        named = dict(module.named_parameters())
        if not named:
            raise ValueError(f"module: expected a torch.nn.Module with parameters, got {type(module).__name__} "
                             "with none")
        frozen = [name for name, p in named.items() if not p.requires_grad]
        if frozen:
            raise ValueError(f"module: expected every parameter to require gradients (the flat vector is trained "
                             f"whole), got frozen {frozen[:3]}")
        self.module = module.to(_TORCH_DTYPES[self.dtype])
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        order = None
        if input_shape is not None:
            self.input_shape = tuple(int(s) for s in input_shape)
            order = self._trace()
        owners = _owners(self.module, order)
        self._layer_names = [name for name, _ in owners]
        self._param_slices: dict[str, slice] = {}
        self._slices: dict[str, slice] = {}
        offset = 0
        for prefix, pnames in owners:
            start = offset
            for pname in pnames:
                size = named[_join(prefix, pname)].numel()
                self._param_slices[_join(prefix, pname)] = slice(offset, offset + size)
                offset += size
            if offset > start:
                self._slices[prefix] = slice(start, offset)
        self.params = np.empty(offset, dtype=self.dtype)
        for name, s in self._param_slices.items():
            self.params[s] = named[name].detach().numpy().reshape(-1)
        self.grads = np.zeros(offset, dtype=self.dtype)
        self.output: np.ndarray | None = None
        self.captured: dict[str, np.ndarray] = {}
        self._graph = None
        self._bind()

    # -- structure -------------------------------------------------------------------------------------------
    def _bind(self) -> None:
        """Make every parameter's data a view of `params` and (re)build the layers' views."""
        named = dict(self.module.named_parameters())
        self._tensors = []
        for name, s in self._param_slices.items():
            p = named[name]
            p.data = torch.from_numpy(self.params[s].reshape(p.shape))
            self._tensors.append(p)
        self._slice_of = {id(p): s for p, s in zip(self._tensors, self._param_slices.values())}
        modules = dict(self.module.named_modules())
        self.layers = []
        for prefix in self._layer_names:
            params, grads = {}, {}
            for name, s in self._param_slices.items():
                owner, _, pname = name.rpartition(".")
                if owner == prefix:
                    shape = tuple(named[name].shape)
                    params[pname], grads[pname] = self.params[s].reshape(shape), self.grads[s].reshape(shape)
            self.layers.append(TorchLayer(prefix, modules[prefix], params, grads, self._shapes.get(prefix)))
        self._dropout = [m for m in self.module.modules() if isinstance(m, _DROPOUT)]

    def _trace(self) -> list[str]:
        """One forward pass on zeros in eval mode (buffers restored): the order in which modules owning parameters
        or buffers are first called, and every module's per-sample output shape."""
        order: list[str] = []
        handles = []

        def record(name):
            def hook(mod, args, out):
                if isinstance(out, torch.Tensor):
                    self._shapes.setdefault(name, tuple(out.shape[1:]))
            return hook

        def first_call(name):
            def hook(mod, args):
                if name not in order:
                    order.append(name)
            return hook

        for name, mod in self.module.named_modules():
            handles.append(mod.register_forward_hook(record(name)))
            if _owns_state(mod):
                handles.append(mod.register_forward_pre_hook(first_call(name)))
        training = {mod: mod.training for mod in self.module.modules()}
        try:
            with self._buffers_restored(), torch.no_grad():
                self.module.eval()
                x = torch.zeros((2, *self.input_shape), dtype=_TORCH_DTYPES[self.dtype])
                out = self.module(x)
        except Exception as err:
            raise ValueError(f"input_shape: the module's forward pass failed on a batch of shape "
                             f"{(2, *self.input_shape)}: {type(err).__name__}: {err}") from err
        finally:
            for handle in handles:
                handle.remove()
            for mod, flag in training.items():
                mod.training = flag
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"module: expected its forward pass to return a tensor, got {type(out).__name__}")
        self.output_shape = tuple(out.shape[1:])
        return order

    def __repr__(self) -> str:
        head = f"TorchNetwork(dtype={self.dtype}, params={self.num_params}, loss={self.loss_fn.name}"
        return f"{head}\n{self.module!r}\n)"

    # -- computation -----------------------------------------------------------------------------------------
    def check_input(self, x) -> np.ndarray:
        """Validate and coerce a batch of inputs (N, *input_shape) to the network's dtype; without an input_shape
        the first batch fixes it."""
        if self.input_shape is None:
            arr = float_array("x", x, self.dtype)
            if arr.ndim < 2:
                raise ValueError(f"x: expected a batch (N, ...) of at least 2 dimensions, got shape {arr.shape}")
            self.input_shape = tuple(arr.shape[1:])
            self._trace()  # output shapes only: the parameters keep their layout
            for layer in self.layers:
                layer._output_shape = self._shapes.get(layer.name)
            return arr
        return float_array("x", x, self.dtype, shape=(None, *self.input_shape))

    def check_targets(self, y, n: int) -> np.ndarray:
        """Validate targets for the network's loss: int64 labels or float regression targets."""
        if self.output_shape is None:
            raise ValueError("y: the network's output shape is unknown before its first batch (give TorchNetwork "
                             "an input_shape)")
        return self.loss_fn.check_targets(y, self.output_shape, n, self.dtype)

    def _set_mode(self, mode: str) -> None:
        self.module.train(mode != "eval")
        if mode == "probe":
            for mod in self._dropout:
                mod.eval()

    @contextlib.contextmanager
    def _buffers_restored(self):
        """Restore every buffer of the module on exit, bit for bit."""
        saved = [(b.detach().numpy(), b.detach().numpy().copy()) for b in self.module.buffers()]
        try:
            yield
        finally:
            # Through NumPy: torch's version counters stay as the forward pass left them, so the graph's backward
            # (which saved the buffers it passed to batch_norm) still runs.
            for view, value in saved:
                view[...] = value

    def _run(self, x: np.ndarray, mode: str, capture=None, input_grad: bool = False):
        """The module on x (a checked array) in `mode`: (input tensor, output tensor)."""
        choice("mode", mode, MODES)
        if x.shape[0] < 1:
            raise ValueError("x: expected at least one sample, got an empty batch")
        if not x.flags.writeable:
            x = x.copy()
        xt = torch.from_numpy(x)
        if input_grad:
            xt.requires_grad_(True)
        wanted = list(capture or ())
        modules = dict(self.module.named_modules())
        unknown = [name for name in wanted if name not in modules]
        if unknown:
            raise ValueError(f"capture: unknown module names {sorted(unknown)}")
        self.captured = {}
        handles = []
        for name in wanted:
            def hook(mod, args, out, name=name):
                self.captured.setdefault(name, out.detach().numpy())
            handles.append(modules[name].register_forward_hook(hook))
        self._set_mode(mode)
        try:
            with self._buffers_restored() if mode == "probe" else contextlib.nullcontext():
                out = self.module(xt)
        finally:
            for handle in handles:
                handle.remove()
        if self.output_shape is None:
            self.output_shape = tuple(out.shape[1:])
        self.output = out.detach().numpy()
        return xt, out

    def forward(self, x, mode: str = "train", capture=None) -> np.ndarray:
        """Run the module on a batch; returns the output. Keeps the graph for `backward`.

        capture: names of submodules (any, from module.named_modules()) whose outputs are kept in `self.captured`.
        """
        x = self.check_input(x)
        with torch.enable_grad():
            self._graph = self._run(x, mode, capture, input_grad=True)
        return self.output

    def backward(self, dout, need_input_grad: bool = False) -> np.ndarray | None:
        """Backpropagate d(loss)/d(output) through the last forward pass; overwrites `grads`. Returns d(loss)/d(input)
        if asked."""
        if self._graph is None:
            raise RuntimeError("backward: expected a forward pass first (forward(x, mode))")
        xt, out = self._graph
        dout = torch.from_numpy(np.ascontiguousarray(dout, dtype=self.dtype).reshape(out.shape))
        inputs = [*self._tensors, xt] if need_input_grad else self._tensors
        grads = torch.autograd.grad(out, inputs, dout, allow_unused=True)
        self._store(grads[:len(self._tensors)], self._tensors)
        if need_input_grad:
            return np.zeros_like(xt.detach().numpy()) if grads[-1] is None else grads[-1].numpy()
        return None

    def _store(self, grads, tensors) -> None:
        for g, p in zip(grads, tensors):
            view = self.grads[self._slice_of[id(p)]]
            if g is None:
                view[...] = 0
            else:
                view[...] = g.detach().numpy().reshape(-1)

    def _targets(self, y, n: int):
        y = self.check_targets(y, n)
        return torch.from_numpy(np.ascontiguousarray(y))

    def loss(self, x, y, mode: str = "probe") -> float:
        """Loss on (x, y) without a backward pass."""
        x = self.check_input(x)
        with torch.no_grad():
            _, out = self._run(x, mode)
            self._graph = None
            return float(_torch_loss(self.loss_fn, out, self._targets(y, out.shape[0])))

    def loss_and_grad(self, x, y, mode: str = "train") -> tuple[float, np.ndarray]:
        """Loss on (x, y) and its gradient, written into `grads` (returned; copy it to keep it)."""
        x = self.check_input(x)
        with torch.enable_grad():
            _, out = self._run(x, mode)
            self._graph = None
            loss = _torch_loss(self.loss_fn, out, self._targets(y, out.shape[0]))
            self._store(torch.autograd.grad(loss, self._tensors, allow_unused=True), self._tensors)
        return float(loss.detach()), self.grads

    def accuracy(self, x, y, mode: str = "eval") -> float:
        """Fraction of samples whose arg-max output equals the label (classification networks)."""
        x = self.check_input(x)
        with torch.no_grad():
            _, out = self._run(x, mode)
        self._graph = None
        labels = self.check_targets(y, out.shape[0])
        return float(np.mean(np.argmax(self.output, axis=1) == labels))

    def resample_noise(self, rng: np.random.Generator) -> None:
        """A no-op: torch modules draw their own randomness (a TorchNetwork has no package noise layers)."""

    # -- what the measurements ask of a network (smoothnorm.measure; Network has the same) ------------------
    def weight_layer_names(self) -> list[str]:
        """Names of the torch Conv and Linear modules, in layer order (forward order given an input_shape)."""
        modules = dict(self.module.named_modules())
        return [name for name in self._layer_names if isinstance(modules[name], _WEIGHT_MODULES)
                and name in self._slices]

    def loss_and_grad_from(self, x, y, layer: str, mode: str = "probe") -> float:
        """Loss on (x, y) and the gradient of the parameters of `layer` and every layer after it in `params`,
        written into their slices of `grads` (earlier slices keep their values)."""
        start = self._slices[layer].start
        chosen = [p for p, s in zip(self._tensors, self._param_slices.values()) if s.start >= start]
        x = self.check_input(x)
        with torch.enable_grad():
            _, out = self._run(x, mode)
            self._graph = None
            loss = _torch_loss(self.loss_fn, out, self._targets(y, out.shape[0]))
            self._store(torch.autograd.grad(loss, chosen, allow_unused=True), chosen)
        return float(loss.detach())

    def hessian_product(self, x, y, mode: str = "probe") -> tuple[float, Callable[[np.ndarray], np.ndarray]]:
        """(loss, product): one forward pass on (x, y) in `mode` and the gradient with its graph, then
        product(d) = H d for a full-length parameter direction d by double backward (reverse-over-reverse: the
        Hessian at the base point's activation pattern, as the R-operator gives). Products are float64 arrays."""
        x = self.check_input(x)
        with torch.enable_grad():
            _, out = self._run(x, mode)
            self._graph = None
            loss = _torch_loss(self.loss_fn, out, self._targets(y, out.shape[0]))
            grads = torch.autograd.grad(loss, self._tensors, create_graph=True, allow_unused=True)
        slices = list(self._param_slices.values())
        pairs = [(g, s, p.shape) for g, s, p in zip(grads, slices, self._tensors) if g is not None and g.requires_grad]

        def product(direction: np.ndarray) -> np.ndarray:
            d = np.ascontiguousarray(direction, dtype=self.dtype)
            hv = np.zeros(self.num_params)
            if not pairs:
                return hv
            with torch.enable_grad():
                dot = sum((g * torch.from_numpy(d[s]).reshape(shape)).sum() for g, s, shape in pairs)
                products = torch.autograd.grad(dot, self._tensors, retain_graph=True, allow_unused=True)
            for h, s in zip(products, slices):
                if h is not None:
                    hv[s] = h.detach().numpy().reshape(-1)
            return hv

        return float(loss.detach()), product

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the module's parameters and buffers under its state_dict names."""
        return {k: v.detach().numpy().copy() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Copy values from a state_dict (NumPy arrays, torch tensors or anything np.asarray accepts) into the
        module, checked first as `Network.load_state_dict` checks them (a refused state changes nothing)."""
        if not isinstance(state, Mapping):
            raise ValueError(f"state: expected a mapping from names to arrays, got {type(state).__name__}")
        # Views of the parameters (hence of `params`) and buffers, written in place.
        expected = {k: v.detach().numpy() for k, v in self.module.state_dict(keep_vars=True).items()}
        load_checked_state(expected, state, strict, lambda value: value.detach().cpu().numpy()
                           if isinstance(value, torch.Tensor) else value)

    def copy(self) -> TorchNetwork:
        """An independent deep copy (own module and flat vectors)."""
        return copy.deepcopy(self)

    def astype(self, dtype) -> TorchNetwork:
        """An independent copy computing in `dtype` (float32 or float64)."""
        dtype = as_float_dtype(dtype)
        new = self.copy()
        if dtype == new.dtype:
            return new
        new.module.to(_TORCH_DTYPES[dtype])
        new.params, new.grads, new.dtype = new.params.astype(dtype), new.grads.astype(dtype), dtype
        new.output, new.captured, new._graph = None, {}, None
        new._bind()
        return new

    def __deepcopy__(self, memo):
        new = object.__new__(TorchNetwork)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key in ("_graph", "_tensors", "_slice_of", "layers", "_dropout", "output", "captured"):
                continue
            setattr(new, key, copy.deepcopy(value, memo))
        new.output, new.captured, new._graph = None, {}, None
        new._bind()
        return new


def _loss_object(loss):
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {sorted(LOSSES)} or such a loss object, got {loss!r}")
        return LOSSES[loss]()
    if getattr(loss, "name", None) not in LOSSES:
        raise ValueError(f"loss: expected one of {sorted(LOSSES)} or such a loss object, got {loss!r}")
    return loss


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _owns_state(mod) -> bool:
    return any(True for _ in mod.parameters(recurse=False)) or any(
        b is not None for b in mod.buffers(recurse=False))


def _owners(module, order: list[str] | None) -> list[tuple[str, list[str]]]:
    """(module name, names of the parameters it owns) for every module owning parameters or buffers: those the
    traced forward pass called in call order, then the rest in registration order. A parameter shared by several
    modules belongs to the first."""
    named = list(module.named_modules())
    owning = [name for name, mod in named if _owns_state(mod)]
    ranked = [name for name in (order or []) if name in owning]
    ranked += [name for name in owning if name not in ranked]
    modules = dict(named)
    seen: set[int] = set()
    owners = []
    for name in ranked:
        pnames = []
        for pname, p in modules[name].named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                pnames.append(pname)
        owners.append((name, pnames))
    return owners


def network_from_build(build: Callable, settings: dict, input_shape: tuple[int, ...], where: str) -> TorchNetwork:
    """A run's TorchNetwork: build(settings, input_shape) -> torch.nn.Module, called with torch's random generator
    seeded from the run's seed (and the caller's generator state restored), wrapped in the run's dtype."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(settings["seed"]))
        try:
            module = build(dict(settings), tuple(input_shape))
        except Exception as err:
            raise ValueError(f"{where}: build(settings, input_shape) failed: {type(err).__name__}: {err}") from err
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"{where}: build(settings, input_shape) returned {type(module).__name__}, not a "
                         "torch.nn.Module")
    return TorchNetwork(module, dtype=np.dtype(settings["dtype"]), input_shape=input_shape)
