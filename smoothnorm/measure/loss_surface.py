"""Li et al.'s (2018) filter-normalized directions and 1-D / 2-D loss surfaces (forward passes only).

Like every probe, these run in "probe" mode on one batch and leave the network bit-identical (smoothnorm.measure.
_common); diverging points (NaN or Inf loss) are recorded and counted, never raised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smoothnorm._validate import choice
from smoothnorm.measure._common import _check_batch, _check_direction, _check_etas, _move_to, _preserved

__all__ = [
    "NORM_PARAM_POLICIES",
    "LossSurface1D",
    "LossSurface2D",
    "filter_normalized_direction",
    "grid_curvature",
    "loss_surface_1d",
    "loss_surface_2d",
    "surface_directions",
]

# What Li et al.'s filter normalization does with 1-D parameters (biases, norm gamma/beta): "zero" them in the
# direction (Li et al.'s `ignore="biasbn"`), use the "parameter" itself (their code's default otherwise), or
# "filter"-normalize the whole vector as one filter.
NORM_PARAM_POLICIES = ("zero", "parameter", "filter")


def _parameters(net):
    """(full name, slice, shape) for every parameter, in flat-vector order."""
    slices = net.param_slices()
    for layer in net.layers:
        for pname, value in layer.params.items():
            name = f"{layer.name}.{pname}"
            yield name, slices[name], value.shape


def filter_normalized_direction(net, rng: np.random.Generator, *, norm_params: str = "zero") -> np.ndarray:
    """Li et al.'s filter-normalized random direction (Visualizing the Loss Landscape of Neural Nets, 2018).

    Each filter of a weight with ndim >= 2 (a conv output channel, a row of a Linear weight) is a Gaussian direction
    rescaled to the norm of the same filter of the current weights. 1-D parameters (biases, norm gamma/beta) follow
    `norm_params`: "zero" (Li et al.'s ignore="biasbn", the default), "parameter" (the direction equals the
    parameter, their code's other choice) or "filter" (the whole vector normalized as one filter).
    Returns an (n,) array in the network's dtype.
    """
    choice("norm_params", norm_params, NORM_PARAM_POLICIES)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    d = rng.standard_normal(net.num_params)
    w = net.params.astype(np.float64)
    for _, s, shape in _parameters(net):
        if len(shape) >= 2:
            dv = d[s].reshape(shape[0], -1)
            wv = w[s].reshape(shape[0], -1)
            # Li et al. add 1e-10 to the direction's filter norm; a Gaussian filter is never exactly zero anyway.
            dv *= (np.linalg.norm(wv, axis=1) / (np.linalg.norm(dv, axis=1) + 1e-10))[:, None]
        elif norm_params == "zero":
            d[s] = 0.0
        elif norm_params == "parameter":
            d[s] = w[s]
        else:
            d[s] *= np.linalg.norm(w[s]) / (np.linalg.norm(d[s]) + 1e-10)
    return d.astype(net.dtype)


def surface_directions(net, seed: int, *, norm_params: str = "zero") -> tuple[np.ndarray, np.ndarray]:
    """The two filter-normalized directions (d1, d2) of a loss surface at the network's current weights.

    Both Gaussian draws come from np.random.default_rng(seed), d1 first: the same seed gives the same draws at any
    weights of the same architecture, each filter rescaled to the current weights' (`filter_normalized_direction`).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    d1 = filter_normalized_direction(net, rng, norm_params=norm_params)
    d2 = filter_normalized_direction(net, rng, norm_params=norm_params)
    return d1, d2


def grid_curvature(losses: np.ndarray, steps1: np.ndarray, steps2: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of the 2x2 Hessian of a 2-D loss surface at its centre, from the grid itself.

    Central second differences at the centre point (steps1 and steps2 must have an odd length, be evenly spaced and
    have 0 in the middle): H11 = (L[+h, 0] - 2 L[0, 0] + L[-h, 0]) / h^2, likewise H22, and
    H12 = (L[+h, +k] - L[+h, -k] - L[-h, +k] + L[-h, -k]) / (4 h k). The curvature at the grid's own scale h, not
    the limit h -> 0. NaN when one of the nine points is not finite. losses: (len(steps1), len(steps2)).
    """
    losses = np.asarray(losses, dtype=np.float64)
    s1, s2 = np.asarray(steps1, dtype=np.float64), np.asarray(steps2, dtype=np.float64)
    if losses.shape != (s1.size, s2.size):
        raise ValueError(f"losses: expected shape {(s1.size, s2.size)} (steps1 x steps2), got {losses.shape}")
    for name, s in (("steps1", s1), ("steps2", s2)):
        if s.size < 3 or s.size % 2 == 0 or s[s.size // 2] != 0.0 or not np.allclose(np.diff(s), s[1] - s[0]):
            raise ValueError(f"{name}: expected an odd number (>= 3) of evenly spaced steps with 0 in the middle, "
                             f"got {s.tolist()}")
    i, j = s1.size // 2, s2.size // 2
    h, k = s1[i + 1] - s1[i], s2[j + 1] - s2[j]
    c = losses[i - 1:i + 2, j - 1:j + 2]
    if not np.isfinite(c).all():
        return np.full(2, np.nan)
    h11 = (c[2, 1] - 2.0 * c[1, 1] + c[0, 1]) / h**2
    h22 = (c[1, 2] - 2.0 * c[1, 1] + c[1, 0]) / k**2
    h12 = (c[2, 2] - c[2, 0] - c[0, 2] + c[0, 0]) / (4.0 * h * k)
    return np.linalg.eigvalsh(np.array([[h11, h12], [h12, h22]]))


@dataclass(frozen=True)
class LossSurface1D:
    """Loss (and accuracy for classifiers, else None) at w + alpha d for each alpha."""

    alphas: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray | None
    num_diverged: int


@dataclass(frozen=True)
class LossSurface2D:
    """Loss (and accuracy for classifiers, else None) at w + a d1 + b d2 on the grid steps1 x steps2.

    losses, accuracies: (len(steps1), len(steps2)).
    """

    steps1: np.ndarray
    steps2: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray | None
    num_diverged: int


def _loss_and_accuracy(net, x, y) -> tuple[float, float]:
    with np.errstate(all="ignore"):
        try:
            out = net.forward(x, mode="probe")
            loss = float(net.loss_fn.forward(out, y))
        except FloatingPointError:
            return math.nan, math.nan
        accuracy = float(np.mean(np.argmax(out, axis=1) == y)) if y.ndim == 1 and y.dtype.kind == "i" else math.nan
    return loss, accuracy


def loss_surface_1d(net, x, y, direction: np.ndarray, alphas: Sequence[float] | np.ndarray) -> LossSurface1D:
    """Li et al.'s 1-D loss curve: the probe-mode loss at w + alpha d for each alpha (forward passes only).

    direction: (n,), e.g. from `filter_normalized_direction`. alphas: coordinates, e.g. np.linspace(-1, 1, 51).
    """
    alphas = _check_etas(alphas, "alphas")
    x, y = _check_batch(net, x, y)
    d = _check_direction(net, direction)
    losses = np.empty(alphas.size)
    accuracies = np.empty(alphas.size)
    with _preserved(net) as w0:
        for i, alpha in enumerate(alphas):
            _move_to(net, w0, -alpha, d)
            losses[i], accuracies[i] = _loss_and_accuracy(net, x, y)
    classifier = y.ndim == 1 and y.dtype.kind == "i"
    return LossSurface1D(alphas.copy(), losses, accuracies if classifier else None, int((~np.isfinite(losses)).sum()))


def loss_surface_2d(
    net,
    x,
    y,
    direction1: np.ndarray,
    direction2: np.ndarray,
    steps1: Sequence[float] | np.ndarray,
    steps2: Sequence[float] | np.ndarray,
) -> LossSurface2D:
    """Li et al.'s 2-D loss surface: the probe-mode loss at w + a d1 + b d2 for a in steps1, b in steps2.

    Cost: len(steps1) * len(steps2) forward passes.
    """
    steps1 = _check_etas(steps1, "steps1")
    steps2 = _check_etas(steps2, "steps2")
    x, y = _check_batch(net, x, y)
    d1 = _check_direction(net, direction1, "direction1")
    d2 = _check_direction(net, direction2, "direction2")
    losses = np.empty((steps1.size, steps2.size))
    accuracies = np.empty((steps1.size, steps2.size))
    with _preserved(net) as w0:
        for i, a in enumerate(steps1):
            _move_to(net, w0, -a, d1)
            wa = net.params.copy()
            for j, b in enumerate(steps2):
                _move_to(net, wa, -b, d2)
                losses[i, j], accuracies[i, j] = _loss_and_accuracy(net, x, y)
    classifier = y.ndim == 1 and y.dtype.kind == "i"
    return LossSurface2D(
        steps1.copy(), steps2.copy(), losses, accuracies if classifier else None, int((~np.isfinite(losses)).sum())
    )
