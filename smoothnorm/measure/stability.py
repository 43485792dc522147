"""Measurements behind the largest stable learning rate (Bjorck, Gomes, Selman, Weinberger, NeurIPS 2018): the
gradient's distribution per weight layer (norm, kurtosis, a standardized histogram) and the one-step relative loss
L(w - lr g) / L(w) over a grid of learning rates.

Bjorck et al.: without BatchNorm, gradients at initialization are large and heavy-tailed, and the loss after one
step explodes beyond a learning rate that BatchNorm's network tolerates. Both functions use one batch; the one-step
loss runs in "probe" mode and leaves the network bit-identical (smoothnorm.measure._common's helpers, as
the landscape probes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smoothnorm.measure._common import (
    _base_loss_and_grad,
    _check_batch,
    _check_direction,
    _check_etas,
    _move_to,
    _preserved,
)
from smoothnorm.measure.ics import weight_layer_names

__all__ = ["GradientStatistics", "OneStepLoss", "excess_kurtosis", "gradient_statistics", "one_step_relative_loss",
           "DEFAULT_LRS"]

# The one-step probe's default grid: 1e-4 .. 10 in steps of about half a decade (1, 3, 10, ...).
DEFAULT_LRS: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)


def excess_kurtosis(values: np.ndarray) -> float:
    """Fisher's (excess) kurtosis m4 / m2^2 - 3 with biased central moments, in float64: 0 for a Gaussian,
    scipy.stats.kurtosis(values, fisher=True, bias=True). NaN when the values are constant or not finite."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0 or not np.isfinite(v).all():
        return math.nan
    d = v - v.mean()
    m2 = float(np.mean(d * d))
    if not m2 > 0:
        return math.nan
    return float(np.mean((d * d) ** 2) / (m2 * m2) - 3.0)


@dataclass(frozen=True)
class GradientStatistics:
    """Per weight layer (Conv2d, Linear; the weight tensor's entries, biases left out): the gradient's norm, its
    excess kurtosis, and a histogram of its entries standardized by their mean and standard deviation.

    layers: names; norms, kurtosis: (layers,); edges: (bins + 1,) in standard deviations, symmetric about 0;
    histograms: (layers, bins), fractions of the layer's entries (summing to 1; entries beyond the edges are
    counted in the outer bins); NaN rows where the gradient is constant or not finite.
    """

    layers: list[str]
    norms: np.ndarray
    kurtosis: np.ndarray
    edges: np.ndarray
    histograms: np.ndarray


def standardized_edges(bins: int = 41, limit: float = 8.0) -> np.ndarray:
    """Histogram edges from -limit to +limit standard deviations (an odd `bins` centres a bin on 0)."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins: expected an integer >= 2, got {bins!r}")
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not (math.isfinite(limit) and limit > 0):
        raise ValueError(f"limit: expected a positive number of standard deviations, got {limit!r}")
    return np.linspace(-float(limit), float(limit), int(bins) + 1)


def gradient_statistics(net, grad: np.ndarray, layers: Sequence[str] | None = None, *, bins: int = 41,
                        limit: float = 8.0) -> GradientStatistics:
    """Norm, excess kurtosis and standardized histogram of the gradient of each weight layer's weight.

    grad: (n,) like net.params (e.g. a training step's gradient). layers: weight layer names (default: every Conv2d
    and Linear, input to output). bins, limit: the histogram's bins over [-limit, limit] standard deviations.
    """
    g = _check_direction(net, grad, "grad", finite=False)
    edges = standardized_edges(bins, limit)
    names = list(layers) if layers is not None else weight_layer_names(net)
    slices = net.param_slices()
    missing = [name for name in names if f"{name}.weight" not in slices]
    if missing:
        raise ValueError(f"layers: {missing[0]!r} has no weight; weight layers: {weight_layer_names(net)}")
    norms = np.empty(len(names))
    kurtosis = np.empty(len(names))
    histograms = np.full((len(names), edges.size - 1), np.nan)
    for i, name in enumerate(names):
        v = g[slices[f"{name}.weight"]].astype(np.float64)
        with np.errstate(all="ignore"):
            norms[i] = math.sqrt(float(np.dot(v, v)))
        kurtosis[i] = excess_kurtosis(v)
        std = float(v.std()) if np.isfinite(v).all() else math.nan
        if std > 0:
            z = np.clip((v - v.mean()) / std, edges[0], edges[-1])
            histograms[i] = np.histogram(z, bins=edges)[0] / v.size
    return GradientStatistics(names, norms, kurtosis, edges, histograms)


@dataclass(frozen=True)
class OneStepLoss:
    """L(w - lr g) on the batch for each lr, and the ratio to L(w): lrs, losses, ratios (lrs,); base_loss: L(w);
    grad_norm: ||g||. Non-finite losses (a step that overflows) are recorded, never raised."""

    lrs: np.ndarray
    losses: np.ndarray
    ratios: np.ndarray
    base_loss: float
    grad_norm: float


def one_step_relative_loss(net, x, y, lrs: Sequence[float] | np.ndarray = DEFAULT_LRS, *,
                           grad: np.ndarray | None = None, loss: float | None = None) -> OneStepLoss:
    """Relative loss after one plain gradient step (Bjorck et al. 2018, Fig 2): L(w - lr g) / L(w) for each lr, on
    the same batch in probe mode (batch statistics), g the batch gradient at w, the step computed in the network's
    dtype as SGD computes it. grad, loss: the gradient and loss at w on this batch if known (a training step has
    them); else one forward+backward. Cost: one forward pass per lr. The network is unchanged on return.
    """
    lrs = _check_etas(lrs, "lrs")
    if not (lrs > 0).all():
        raise ValueError(f"lrs: expected positive learning rates, got {lrs.tolist()}")
    x, y = _check_batch(net, x, y)
    losses = np.empty(lrs.size)
    with _preserved(net) as w0:
        base_loss, g = _base_loss_and_grad(net, x, y, grad, loss)
        for i, lr in enumerate(lrs):
            _move_to(net, w0, lr, g)
            with np.errstate(all="ignore"):
                try:
                    losses[i] = net.loss(x, y, mode="probe")
                except FloatingPointError:
                    losses[i] = math.nan
    with np.errstate(all="ignore"):
        ratios = losses / base_loss
        grad_norm = math.sqrt(float(np.dot(g.astype(np.float64), g.astype(np.float64))))
    return OneStepLoss(lrs.copy(), losses, ratios, float(base_loss), grad_norm)
