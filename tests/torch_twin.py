"""PyTorch twins of smoothnorm networks (optional: torch is imported by the caller's importorskip).

`torch_twin(net)` builds the same computation from torch modules whose names match our state_dict keys, so weights
move with `load_state_dict`. Normalizations PyTorch lacks (noisy and Lp batch norms) are written here from their
formulas (docs/PROTOCOL.md), so autograd differentiates an independent implementation.
"""

import numpy as np
import torch
import torch.nn.functional as F

from smoothnorm import nn
from smoothnorm.nn.norms import base as norm_base
from smoothnorm.nn.norms import batch as batch_norms
from smoothnorm.nn.norms import lp as lp_norms
from smoothnorm.nn.norms import sample as sample_norms


class TorchNorm(torch.nn.Module):
    """Any smoothnorm normalization layer as a torch module; `mode` is "probe" (batch statistics, nothing updated)
    or "eval" (running statistics), set on the module before calling it."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.mode = layer, "probe"
        c = layer.num_features
        if layer.affine:
            self.weight = torch.nn.Parameter(torch.ones(c, dtype=torch.float64))
            self.bias = torch.nn.Parameter(torch.zeros(c, dtype=torch.float64))
        else:
            self.weight = self.bias = None
        for name, value in layer.buffers().items():
            self.register_buffer(name, torch.from_numpy(np.array(value, copy=True)))

    def _per_channel(self, a, x):
        return a.reshape(1, -1, *([1] * (x.dim() - 2)))

    def _affine(self, z, x):
        if self.weight is None:
            return z
        return self._per_channel(self.weight, x) * z + self._per_channel(self.bias, x)

    def forward(self, x):
        layer = self.layer
        dims = [0] + list(range(2, x.dim()))
        if isinstance(layer, sample_norms.GroupNorm):
            return F.group_norm(x, layer.groups, self.weight, self.bias, layer.eps)
        if isinstance(layer, lp_norms.LpBatchNorm):
            if self.mode == "eval":
                z = (x - self._per_channel(self.running_mean, x)) / (self._per_channel(self.running_norm, x)
                                                                   + layer.eps)
                return self._affine(z, x)
            mean = x.mean(dim=dims, keepdim=True)
            if layer.p == 1:
                norm = x.abs().mean(dim=dims, keepdim=True)
            elif layer.p == 2:
                norm = (x * x).mean(dim=dims, keepdim=True).sqrt()
            else:
                norm = x.abs().amax(dim=dims, keepdim=True)
            return self._affine((x - mean) / (norm + layer.eps), x)
        if self.mode == "eval":
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                layer.eps)
        z = F.batch_norm(x, None, None, None, None, True, 0.0, layer.eps)
        if isinstance(layer, batch_norms.NoisyBatchNorm):
            scale, shift = (torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in layer.noise(tuple(x.shape)))
            if layer.placement == "before_affine":
                return self._affine(scale * z + shift, x)
            return scale * self._affine(z, x) + shift
        return self._affine(z, x)


def torch_module(layer, in_shape):
    if isinstance(layer, nn.Conv2d):
        return torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                               layer.padding, bias=layer.use_bias)
    if isinstance(layer, nn.Linear):
        return torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.use_bias)
    if type(layer) is batch_norms.BatchNorm and layer.affine:
        cls = torch.nn.BatchNorm2d if len(in_shape) == 3 else torch.nn.BatchNorm1d
        return cls(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
    if isinstance(layer, (norm_base._PerChannelAffine,)):
        return TorchNorm(layer)
    if isinstance(layer, nn.ReLU):
        return torch.nn.ReLU()
    if isinstance(layer, (nn.Sigmoid, nn.Tanh, nn.Identity)):
        return getattr(torch.nn, type(layer).__name__)()
    if isinstance(layer, nn.MaxPool2d):
        return torch.nn.MaxPool2d(2, 2)
    if isinstance(layer, nn.Flatten):
        return torch.nn.Flatten()
    raise TypeError(f"no torch twin for {type(layer).__name__}")


def torch_twin(net):
    """The same architecture in torch, with module names that match our state_dict keys; returns (root, order)
    with `order` the modules in execution order."""
    root = torch.nn.Module()
    groups: dict[str, list] = {}
    singles = {}
    shape = net.input_shape
    for layer in net.layers:
        in_shape, shape = shape, layer.output_shape(shape)
        mod = torch_module(layer, in_shape)
        if "." in layer.name:
            group, index = layer.name.split(".")
            groups.setdefault(group, []).append((int(index), mod))
        else:
            singles[layer.name] = mod
    for group, items in groups.items():
        seq = torch.nn.Module()
        for index, mod in items:
            seq.add_module(str(index), mod)
        root.add_module(group, seq)
    for name, mod in singles.items():
        root.add_module(name, mod)
    order = []
    for layer in net.layers:
        group, _, index = layer.name.partition(".")
        order.append(getattr(getattr(root, group), index) if index else getattr(root, group))
    return root, order


def run_torch(order, x):
    out = x
    for mod in order:
        out = mod(out)
    return out


def loaded_twin(net):
    """A float64 torch twin holding `net`'s weights and buffers."""
    root, order = torch_twin(net)
    root.double()
    root.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in net.state_dict().items()})
    return root, order


def set_mode(root, order, mode):
    """probe: batch statistics without updating running ones; eval: running statistics."""
    for mod in order:
        if isinstance(mod, TorchNorm):
            mod.mode = mode
        elif isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.train(mode != "eval")
            mod.momentum = 0.0  # batch statistics in probe mode, running statistics left as they are
    return root


class TorchHessian:
    """Double-backprop Hessian-vector products of the twin's loss, in our flat parameter order."""

    def __init__(self, net, x, y, mode="probe"):
        self.root, self.order = loaded_twin(net)
        set_mode(self.root, self.order, mode)
        named = dict(self.root.named_parameters())
        self.slices = net.param_slices()
        self.params = [named[name] for name in self.slices]
        out = run_torch(self.order, torch.from_numpy(np.asarray(x, dtype=np.float64)))
        if net.loss_fn.name == "cross_entropy":
            loss = F.cross_entropy(out, torch.from_numpy(np.asarray(y)))
        elif net.loss_fn.name == "onehot_squared_error":  # Cohen et al.'s 0.5 ||out - onehot||^2, mean over N
            target = F.one_hot(torch.from_numpy(np.asarray(y)), out.shape[1]).double()
            loss = 0.5 * ((out - target) ** 2).sum() / out.shape[0]
        else:
            diff = out - torch.from_numpy(np.asarray(y, dtype=np.float64))
            loss = (diff * diff).sum() if net.loss_fn.reduction == "sum" else (diff * diff).mean()
        self.loss = loss
        self.grads = torch.autograd.grad(loss, self.params, create_graph=True)
        self.n = net.num_params
        self.count = 0

    def __call__(self, v):
        v = np.asarray(v, dtype=np.float64)
        pieces = [torch.from_numpy(v[s].reshape(p.shape)) for s, p in zip(self.slices.values(), self.params)]
        dot = sum((g * p).sum() for g, p in zip(self.grads, pieces))
        hv = torch.autograd.grad(dot, self.params, retain_graph=True)
        self.count += 1
        return np.concatenate([h.detach().numpy().ravel() for h in hv])

