"""Internal covariate shift, Definition 2.1 (Fig 3): how much a layer's gradient changes when the layers before it
take their training step first.

G_i is the gradient for layer i's parameters at W^t; G'_i the same gradient after every parameter before layer i's
slice in the flat vector (weights, biases, norm gamma/beta of all earlier layers) has been moved to its t+1 value
by the training optimizer's real update (`optimizer.peek`, so momentum, weight decay and Adam's scaling count and
the optimizer's state does not advance). Same batch, probe mode (batch statistics, nothing updated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from smoothnorm.measure._common import _base_loss_and_grad, _check_batch, _preserved, _sums

__all__ = ["weight_layer_names", "internal_covariate_shift", "gradient_change"]


def weight_layer_names(net) -> list[str]:
    """Names of the Conv2d and Linear layers in execution order ("Layer #k" is entry k - 1 under a weight-layer
    count); the default layers of `internal_covariate_shift`. The network says which they are
    (`net.weight_layer_names()`: a Network's Conv2d and Linear layers, a TorchNetwork's torch Conv and Linear
    modules)."""
    return net.weight_layer_names()


def gradient_change(g: np.ndarray, g_prime: np.ndarray) -> tuple[float, float]:
    """(||g - g'||_2, cos(g, g')) in float64; the cosine is NaN when either vector is zero (the angle is undefined)
    and exactly 1 when the vectors are equal.

    NaN/Inf in either vector propagate to both numbers.
    """
    gg, pp, gp, dd = _sums(g, g_prime)
    l2, norm_g, norm_gp = math.sqrt(dd), math.sqrt(gg), math.sqrt(pp)
    if norm_g == 0.0 or norm_gp == 0.0:
        return l2, math.nan
    if dd == 0.0:
        # Identical vectors: exactly parallel (the rounded formula can give 1 - 2e-16).
        return l2, 1.0
    with np.errstate(all="ignore"):
        cosine = gp / (norm_g * norm_gp)
    # Rounding can push |cos| a hair past 1 for (anti)parallel vectors.
    return l2, float(min(1.0, max(-1.0, cosine))) if math.isfinite(cosine) else cosine


def _select_layers(net, layers: Sequence[str] | None) -> list[str]:
    slices = net.layer_slices()
    if layers is None:
        return weight_layer_names(net)
    if isinstance(layers, str):
        layers = [layers]
    names = list(layers)
    unknown = [name for name in names if name not in slices]
    if unknown:
        raise ValueError(f"layers: unknown layer names {unknown}; expected names from {list(slices)}")
    if len(set(names)) != len(names):
        raise ValueError(f"layers: expected distinct names, got {names}")
    # Network order, so the updated prefix only grows.
    order = {name: i for i, name in enumerate(slices)}
    return sorted(names, key=order.__getitem__)


def internal_covariate_shift(
    net,
    x,
    y,
    optimizer,
    layers: Sequence[str] | None = None,
    *,
    grad: np.ndarray | None = None,
) -> dict[str, tuple[float, float]]:
    """ICS of Definition 2.1 for each chosen layer: {layer_name: (||G - G'||_2, cos(G, G'))}.

    net: the network at W^t (unchanged on return, bit for bit). x, y: the training batch of step t.
    optimizer: the training optimizer (its `peek` gives W^{t+1}; its state is not advanced).
    layers: names from `net.layer_slices()` (state_dict prefixes, e.g. "features.3"); default: the Conv2d and
        Linear layers. BatchNorm layers may be named too (their gamma, beta are then "layer i").
    grad: the gradient at W^t on this batch (batch statistics), if the caller has it; saves one pass.
    The cosine is NaN when G or G' is zero (no angle). The first parameterized layer has no preceding parameters, so
    its G' is G: (0.0, 1.0) (cosine NaN if G is zero).
    Cost: one forward+backward for G (none when `grad` is given) plus, per measured layer after the first, one
    forward and a backward that stops at that layer; no network copy.
    """
    x, y = _check_batch(net, x, y)
    names = _select_layers(net, layers)
    slices = net.layer_slices()
    result: dict[str, tuple[float, float]] = {}
    with _preserved(net) as w0:
        # loss=0.0: the base loss is not reported, so skip the forward pass that would compute it.
        _, g = _base_loss_and_grad(net, x, y, grad, loss=0.0)
        with np.errstate(all="ignore"):
            w1 = optimizer.peek(w0, g)
        done = 0  # params[:done] hold their t+1 values
        for name in names:
            s = slices[name]
            g_layer = g[s]
            if s.start == 0:
                result[name] = gradient_change(g_layer, g_layer)
                continue
            net.params[done : s.start] = w1[done : s.start]
            done = s.start
            with np.errstate(all="ignore"):
                # Forward (probe) and a backward that stops at the layer: the grads below it are not needed.
                net.loss_and_grad_from(x, y, name, mode="probe")
                result[name] = gradient_change(g_layer, net.grads[s])
    return result
