"""Gradient explosion at initialization (Yang, Pennington, Rao, Sohl-Dickstein, Schoenholz, ICLR 2019): in a deep
fully connected network with BatchNorm before every activation, the weight gradient's squared norm grows by a
roughly constant factor per layer from the output toward the input (for ReLU at large batch about pi / (pi - 1)).

`weight_gradient_norms` measures ||dL/dW_l||^2 of every weight layer of one network on one batch (float64, probe
mode: batch statistics); `fit_log_growth` fits log ||dL/dW_l||^2 = a + b * l by least squares over the layers l
(1 = the layer nearest the input) and reports the per-layer rate exp(-b), Yang et al.'s lambda_G: the factor by
which the squared norm grows per layer toward the input (1: no explosion). `init_gradient_norms` repeats the
measurement over freshly initialized networks of several seeds; `large_batch_rate` is the mean-field prediction
E[phi'(z)^2] / Var[phi(z)] (z standard normal) for BatchNorm before the activation phi at large batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GrowthFit", "weight_gradient_norms", "fit_log_growth", "init_gradient_norms", "large_batch_rate",
           "ACTIVATION_DERIVATIVES"]


@dataclass(frozen=True)
class GrowthFit:
    """Least-squares fit of log ||dL/dW_l||^2 = intercept + slope * l over the layers `layers` (1-based).

    rate: exp(-slope), the factor per layer by which the squared norm grows toward the input (Yang et al.'s
    lambda_G); rate_se: its standard error by the delta method (rate * slope_se); slope_se: the ordinary
    least-squares standard error of the slope (residual variance over n - 2 degrees of freedom; NaN for n = 2).
    """

    slope: float
    slope_se: float
    intercept: float
    rate: float
    rate_se: float
    num_points: int
    layers: tuple[int, ...]


def _weight_slices(net) -> tuple[list[str], list[slice]]:
    """(names, slices into net.params) of the weight (not bias) of every Conv2d and Linear layer, input first."""
    from smoothnorm.measure.ics import weight_layer_names

    names = weight_layer_names(net)
    slices = net.param_slices()
    return names, [slices[f"{name}.weight"] for name in names]


def weight_gradient_norms(net, x, y, *, grad: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
    """Squared Euclidean norm of the loss gradient w.r.t. each weight layer's weight matrix (biases excluded), in
    float64, with batch statistics ("probe" mode). Returns (layer names, input first; squared norms (L,)).

    grad: the gradient at the current parameters on (x, y) if already computed (the training step's; with batch
    statistics it equals the probe-mode one; its squares are summed in float64, its entries stay in the network's
    dtype), else one forward and backward pass on a float64 copy of `net` (the network itself is not touched).
    """
    names, slices = _weight_slices(net)
    if not names:
        raise ValueError("net: expected at least one Linear or Conv2d layer")
    if grad is None:
        copy = net.astype(np.float64)
        xb = copy.check_input(np.asarray(x, dtype=np.float64))
        if xb.shape[0] < 1:
            raise ValueError("x: expected at least one sample, got an empty batch")
        _, g = copy.loss_and_grad(xb, copy.check_targets(y, xb.shape[0]), mode="probe")
    else:
        g = np.asarray(grad)
        if g.shape != net.params.shape:
            raise ValueError(f"grad: expected shape {net.params.shape} (the shape of net.params), got {g.shape}")
    g = g.astype(np.float64, copy=False)
    return names, np.array([float(np.dot(g[s], g[s])) for s in slices])


def _fit_points(sq_norms, skip_first: int, skip_last: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    values = np.asarray(sq_norms, dtype=np.float64)
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2 or values.shape[1] < 1:
        raise ValueError(f"sq_norms: expected shape (layers,) or (seeds, layers), got {np.shape(sq_norms)}")
    for name, value in (("skip_first", skip_first), ("skip_last", skip_last)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    depth = values.shape[1]
    layers = np.arange(1, depth + 1)[skip_first:depth - skip_last]
    if layers.size < 2:
        raise ValueError(f"skip_first, skip_last: {skip_first} and {skip_last} leave {layers.size} of {depth} "
                         "layers; the fit needs at least 2")
    return layers, values[:, skip_first:depth - skip_last], tuple(int(v) for v in layers)


def fit_log_growth(sq_norms, *, skip_first: int = 1, skip_last: int = 1) -> GrowthFit:
    """Fit log ||dL/dW_l||^2 against the layer index l by ordinary least squares.

    sq_norms: (layers,) squared gradient norms of one network, input layer first, or (seeds, layers) of several
        networks (their points pooled into one fit).
    skip_first, skip_last: layers left out at the input and output ends (default 1 each: the first layer sees the
        data rather than a normalized activation and has another fan-in, the last one is the classifier).
    A zero, negative or non-finite norm gives a NaN fit (its logarithm is not a number).
    """
    layers, values, used = _fit_points(sq_norms, skip_first, skip_last)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(values)
    if not np.isfinite(logs).all():
        nan = math.nan
        return GrowthFit(nan, nan, nan, nan, nan, int(logs.size), used)
    xs = np.broadcast_to(layers.astype(np.float64), logs.shape).ravel()
    ys = logs.ravel()
    n = ys.size
    x_mean, y_mean = xs.mean(), ys.mean()
    sxx = float(np.sum((xs - x_mean) ** 2))
    slope = float(np.sum((xs - x_mean) * (ys - y_mean)) / sxx)
    intercept = float(y_mean - slope * x_mean)
    residuals = ys - (intercept + slope * xs)
    slope_se = math.sqrt(float(np.sum(residuals**2)) / (n - 2) / sxx) if n > 2 else math.nan
    rate = math.exp(-slope)
    return GrowthFit(slope, slope_se, intercept, rate, rate * slope_se, int(n), used)


def init_gradient_norms(build: Callable[[int], object], x, y, seeds: Sequence[int]) -> tuple[list[str], np.ndarray]:
    """Weight-gradient squared norms of freshly initialized networks `build(seed)` on one batch, one row per seed:
    (layer names, array (seeds, layers)). Fit them with `fit_log_growth` (pooled) or row by row."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    rows, names = [], None
    for seed in seeds:
        net = build(seed)
        layer_names, row = weight_gradient_norms(net, x, y)
        if names is not None and layer_names != names:
            raise ValueError(f"build: seed {seed} gives layers {layer_names}, seed {seeds[0]} gave {names}")
        names = layer_names
        rows.append(row)
    return names, np.stack(rows)


# phi(z) and phi'(z) of the activations the models offer (smoothnorm.nn.models.ACTIVATION_LAYERS).
ACTIVATION_DERIVATIVES: dict[str, tuple[Callable[[float], float], Callable[[float], float]]] = {
    "relu": (lambda z: max(z, 0.0), lambda z: 1.0 if z > 0 else 0.0),
    "tanh": (math.tanh, lambda z: 1.0 - math.tanh(z) ** 2),
    "sigmoid": (lambda z: 0.5 * (1.0 + math.tanh(0.5 * z)), lambda z: 0.25 * (1.0 - math.tanh(0.5 * z) ** 2)),
    "identity": (lambda z: z, lambda z: 1.0),
}


def large_batch_rate(activation: str) -> float:
    """Mean-field per-layer growth of the squared gradient norm for Linear -> BatchNorm -> phi at large batch and
    width: E[phi'(z)^2] / Var[phi(z)], z ~ N(0, 1) (pi / (pi - 1) for ReLU, 1 for the identity).

    Backward through one layer the squared norm is multiplied by fan_out * Var(W) (the next Linear), E[phi'(z)^2]
    (the activation) and 1 / sigma^2 (BatchNorm's division by the batch standard deviation of its input, whose
    square is fan_in * Var(W) * Var[phi(z)] on average); the weight variance cancels, so no initialization scale
    changes the rate. Ignores BatchNorm's mean and variance terms in the backward pass (exact only as the batch
    grows), as Yang et al.'s large-batch limit does. Computed by adaptive quadrature (scipy.integrate.quad).
    """
    from scipy.integrate import quad

    if activation not in ACTIVATION_DERIVATIVES:
        raise ValueError(f"activation: expected one of {list(ACTIVATION_DERIVATIVES)}, got {activation!r}")
    phi, dphi = ACTIVATION_DERIVATIVES[activation]

    def expect(f: Callable[[float], float]) -> float:
        density = 1.0 / math.sqrt(2.0 * math.pi)
        # Split at 0, where ReLU's kink is, so each half is smooth.
        return sum(quad(lambda z: f(z) * density * math.exp(-0.5 * z * z), a, b, epsabs=1e-13, epsrel=1e-12)[0]
                   for a, b in ((-math.inf, 0.0), (0.0, math.inf)))

    mean = expect(phi)
    variance = expect(lambda z: phi(z) ** 2) - mean**2
    return expect(lambda z: dphi(z) ** 2) / variance
