"""Loss-landscape probes along the gradient (Figs 4, 10, 11, 12b-d, 13b-d) and Li et al.'s loss surfaces.

Every probe uses one batch in "probe" mode (batch statistics; running statistics, optimizer state and layer noise
untouched) and leaves the network bit-identical (params, grads, buffers): points are visited by writing
`w - eta * d` into `net.params` in place and restoring it afterwards, so no copy of the network is made.

Diverging points (NaN or Inf loss or gradient) are recorded as they come and counted; they never raise.

Li et al.'s filter-normalized loss surfaces live in smoothnorm.measure.loss_surface and the helpers every
measurement shares in smoothnorm.measure._common.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from smoothnorm._validate import choice
from smoothnorm.measure._common import (
    _base_loss_and_grad,
    _check_batch,
    _check_direction,
    _check_etas,
    _distance64,
    _move_to,
    _norm64,
    _preserved,
)
from smoothnorm.measure.loss_surface import (
    filter_normalized_direction,
)

__all__ = [
    "PAPER_STEP_RANGES",
    "INFERRED_STEP_MULTIPLIERS",
    "BETA_NORMALIZATIONS",
    "DirectionProbe",
    "step_grid",
    "probe_gradient_direction",
    "probe_direction",
    "probe_random_direction",
    "probe_update_direction",
    "random_direction",
    "update_direction",
]

# App. A.2.2: step lengths are multiples of the training learning rate over these ranges.
PAPER_STEP_RANGES: dict[str, tuple[float, float]] = {"vgg": (0.5, 4.0), "dln": (0.01, 30.0)}
# The grids read off Fig 11's kinks (INFERRED; docs/PROTOCOL.md): the defaults of `step_grid`.
INFERRED_STEP_MULTIPLIERS: dict[str, tuple[float, ...]] = {
    "vgg": (0.5, 1.0, 2.0, 4.0),
    "dln": (0.01, 0.1, 1.0, 10.0, 30.0),
}
# "distance": beta = ||grad(w - eta d) - grad(w)|| / ||eta d|| (gradient change per distance moved, the default);
# "eta": the same divided by eta only (pitfall viii: state the choice).
BETA_NORMALIZATIONS = ("distance", "eta")


# ----------------------------------------------------------------------------------------------------------------
# Step grids
# ----------------------------------------------------------------------------------------------------------------
def step_grid(
    lr: float,
    preset: str = "vgg",
    spacing: str = "inferred",
    num: int = 8,
    multipliers: tuple[float, float] | None = None,
) -> np.ndarray:
    """Step sizes eta for a landscape probe at training learning rate `lr` (App. A.2.2).

    preset: "vgg" (lr x [1/2, 4]) or "dln" (lr x [1/100, 30]), the paper's ranges.
    spacing: "inferred" (lr x {0.5, 1, 2, 4} for VGG, lr x {0.01, 0.1, 1, 10, 30} for the DLN: the grids read off
        Fig 11), "linear" or "geometric" (`num` points spanning the range).
    multipliers: (low, high) overriding the preset's range for "linear" and "geometric".
    Returns a float64 array of step sizes, ascending.
    """
    choice("preset", preset, tuple(PAPER_STEP_RANGES))
    choice("spacing", spacing, ("inferred", "linear", "geometric"))
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a positive finite learning rate, got {lr!r}")
    if spacing == "inferred":
        if multipliers is not None:
            raise ValueError("multipliers: only used with spacing='linear' or 'geometric'")
        return lr * np.asarray(INFERRED_STEP_MULTIPLIERS[preset], dtype=np.float64)
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 2:
        raise ValueError(f"num: expected an integer >= 2, got {num!r}")
    low, high = PAPER_STEP_RANGES[preset] if multipliers is None else (float(m) for m in multipliers)
    if not (0 < low < high and math.isfinite(high)):
        raise ValueError(f"multipliers: expected 0 < low < high, got ({low}, {high})")
    grid = np.linspace(low, high, num) if spacing == "linear" else np.geomspace(low, high, num)
    return lr * grid


# ----------------------------------------------------------------------------------------------------------------
# Probes along a direction
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DirectionProbe:
    """The loss and gradient change at w - eta d for each eta (one training step's landscape probe).

    etas: (k,) step sizes; losses: (k,) L(w - eta d); grad_distances: (k,) ||grad L(w - eta d) - g||_2 with g the
    gradient at w; betas: (k,) grad_distances normalized per `beta_normalization` (NaN where eta = 0 or d = 0);
    effective_beta: the largest finite entry of `betas` (NaN if none); base_loss: L(w); grad_norm: ||g||;
    direction_norm: ||d|| (equal to grad_norm along the gradient); num_diverged: points whose loss or gradient
    distance is NaN or Inf; direction: "gradient", "random", "update" (the optimizer's step) or "given".
    """

    etas: np.ndarray
    losses: np.ndarray
    grad_distances: np.ndarray
    betas: np.ndarray
    effective_beta: float
    base_loss: float
    grad_norm: float
    direction_norm: float
    num_diverged: int
    beta_normalization: str
    direction: str

    @property
    def loss_band(self) -> tuple[float, float]:
        """(min, max) of the finite probe losses (Fig 4a's shaded band at one step); NaNs if none."""
        return _finite_range(self.losses)

    @property
    def grad_distance_band(self) -> tuple[float, float]:
        """(min, max) of the finite gradient distances (Fig 4b's band at one step); NaNs if none."""
        return _finite_range(self.grad_distances)

    def as_dict(self) -> dict:
        """Plain dict of arrays and scalars (for np.savez / JSON after .tolist())."""
        return asdict(self)


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (math.nan, math.nan)
    return (float(finite.min()), float(finite.max()))


def _probe(net, x, y, w0, etas, direction, g, base_loss, beta_normalization, kind) -> DirectionProbe:
    """Visit w0 - eta * direction for each eta (params restored by the caller's _preserved)."""
    losses = np.empty(etas.size)
    distances = np.empty(etas.size)
    for i, eta in enumerate(etas):
        _move_to(net, w0, eta, direction)
        with np.errstate(all="ignore"):
            try:
                loss, g_eta = net.loss_and_grad(x, y, mode="probe")
                losses[i] = loss
                distances[i] = _distance64(g_eta, g)
            except FloatingPointError:
                # Only reachable if a kernel were compiled to trap; the point diverged either way.
                losses[i] = distances[i] = math.nan
    direction_norm = _norm64(direction)
    grad_norm = direction_norm if direction is g else _norm64(g)  # the gradient probe: one pass, not two
    with np.errstate(all="ignore"):
        scale = np.abs(etas) * (direction_norm if beta_normalization == "distance" else 1.0)
        betas = np.where(scale > 0, distances / np.where(scale > 0, scale, 1.0), math.nan)
    finite_betas = betas[np.isfinite(betas)]
    diverged = ~(np.isfinite(losses) & np.isfinite(distances))
    return DirectionProbe(
        etas=etas.copy(),
        losses=losses,
        grad_distances=distances,
        betas=betas,
        effective_beta=float(finite_betas.max()) if finite_betas.size else math.nan,
        base_loss=float(base_loss),
        grad_norm=grad_norm,
        direction_norm=direction_norm,
        num_diverged=int(diverged.sum()),
        beta_normalization=beta_normalization,
        direction=kind,
    )


def probe_gradient_direction(
    net,
    x,
    y,
    etas: Sequence[float] | np.ndarray,
    *,
    beta_normalization: str = "distance",
    grad: np.ndarray | None = None,
    loss: float | None = None,
) -> DirectionProbe:
    """Loss, gradient distance and effective beta along the descent direction (Figs 4, 10, 11; §3.2).

    With g the gradient at w on (x, y): for each eta, L(w - eta g) and ||grad L(w - eta g) - g||_2, all on the same
    batch in probe mode. effective_beta = max over eta of the distance / ||eta g|| (beta_normalization="distance",
    the default) or / eta ("eta").

    net: the network (unchanged on return, bit for bit). x, y: one batch. etas: step sizes (see `step_grid`).
    grad, loss: the gradient (n,) and loss at the current params on this batch with batch statistics, if the caller
        already has them (a training step does); saves one forward+backward. Without `grad`, one extra pass.
    Cost: one forward+backward per eta (plus one for g when `grad` is not given).
    """
    choice("beta_normalization", beta_normalization, BETA_NORMALIZATIONS)
    etas = _check_etas(etas)
    x, y = _check_batch(net, x, y)
    with _preserved(net) as w0:
        base_loss, g = _base_loss_and_grad(net, x, y, grad, loss)
        return _probe(net, x, y, w0, etas, g, g, base_loss, beta_normalization, "gradient")


def probe_direction(
    net,
    x,
    y,
    etas: Sequence[float] | np.ndarray,
    direction: np.ndarray,
    *,
    beta_normalization: str = "distance",
    grad: np.ndarray | None = None,
    loss: float | None = None,
) -> DirectionProbe:
    """The gradient-direction probe along any direction d: L(w - eta d) and ||grad L(w - eta d) - g||_2.

    direction: (n,) like net.params. Other arguments as `probe_gradient_direction`; beta divides by ||eta d||.
    """
    choice("beta_normalization", beta_normalization, BETA_NORMALIZATIONS)
    etas = _check_etas(etas)
    x, y = _check_batch(net, x, y)
    d = _check_direction(net, direction)
    with _preserved(net) as w0:
        base_loss, g = _base_loss_and_grad(net, x, y, grad, loss)
        return _probe(net, x, y, w0, etas, d, g, base_loss, beta_normalization, "given")


def update_direction(net, optimizer, grad: np.ndarray) -> np.ndarray:
    """The optimizer's next update at the current params for gradient `grad`, per unit learning rate:
    (w - optimizer.peek(w, grad)) / lr, in the network's dtype. Changes neither the network nor the optimizer.

    For SGD without momentum or weight decay this is the gradient itself, so eta = lr lands on the step SGD would
    take; for momentum, RMSprop and Adam, eta = lr lands on the step they would take.
    """
    peek = getattr(optimizer, "peek", None)
    if peek is None:
        raise ValueError(f"optimizer: expected an optimizer with a peek(params, grads) method, got "
                         f"{type(optimizer).__name__}")
    lr = float(getattr(optimizer, "lr", math.nan))
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"optimizer: expected a positive finite learning rate `lr`, got {lr!r}")
    g = _check_direction(net, grad, "grad", finite=False)
    w = net.params
    with np.errstate(all="ignore"):
        step = w.astype(np.float64) - peek(w, g).astype(np.float64)
        return (step / lr).astype(net.dtype)


def probe_update_direction(
    net,
    x,
    y,
    etas: Sequence[float] | np.ndarray,
    optimizer,
    *,
    beta_normalization: str = "distance",
    grad: np.ndarray | None = None,
    loss: float | None = None,
) -> DirectionProbe:
    """The gradient-direction probe along the optimizer's own next update (momentum, RMSprop, Adam go elsewhere).

    The direction is `update_direction(net, optimizer, g)`: eta = lr is the step the optimizer would take, other
    etas scale it. grad_distances compare with g at w, as along the gradient; beta divides by ||eta d||, the
    distance moved. The optimizer is only peeked at: its state and step count stay as they were.
    Other arguments as `probe_gradient_direction`.
    """
    choice("beta_normalization", beta_normalization, BETA_NORMALIZATIONS)
    etas = _check_etas(etas)
    x, y = _check_batch(net, x, y)
    with _preserved(net) as w0:
        base_loss, g = _base_loss_and_grad(net, x, y, grad, loss)
        d = update_direction(net, optimizer, g)
        return _probe(net, x, y, w0, etas, d, g, base_loss, beta_normalization, "update")


def random_direction(net, rng: np.random.Generator, *, norm: float | None = None, kind: str = "gaussian") -> np.ndarray:
    """A random direction in parameter space, in the network's dtype.

    kind: "gaussian" (i.i.d. N(0, 1), rescaled to Euclidean norm `norm` when given) or "filter" (Li et al.'s
    filter-normalized direction, see `filter_normalized_direction`; `norm` rescales it as a whole when given).
    """
    choice("kind", kind, ("gaussian", "filter"))
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    if kind == "filter":
        d = filter_normalized_direction(net, rng).astype(np.float64)
    else:
        d = rng.standard_normal(net.num_params)
    if norm is not None:
        norm = float(norm)
        if not (math.isfinite(norm) and norm >= 0):
            raise ValueError(f"norm: expected a finite non-negative number, got {norm!r}")
        length = _norm64(d)
        d = d * (norm / length) if length > 0 else d
    return d.astype(net.dtype)


def probe_random_direction(
    net,
    x,
    y,
    etas: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    *,
    kind: str = "gaussian",
    beta_normalization: str = "distance",
    grad: np.ndarray | None = None,
    loss: float | None = None,
) -> DirectionProbe:
    """The gradient-direction probe along a random direction of the gradient's length (§3.2: "other (random)
    directions").

    The direction is drawn from `rng` (see `random_direction`, `kind`) and rescaled to ||g||, so that eta moves
    as far as a gradient step of the same eta would; grad_distances compare with g at w, as along the gradient.
    """
    choice("beta_normalization", beta_normalization, BETA_NORMALIZATIONS)
    etas = _check_etas(etas)
    x, y = _check_batch(net, x, y)
    with _preserved(net) as w0:
        base_loss, g = _base_loss_and_grad(net, x, y, grad, loss)
        d = random_direction(net, rng, norm=_norm64(g), kind=kind)
        return _probe(net, x, y, w0, etas, d, g, base_loss, beta_normalization, "random")

