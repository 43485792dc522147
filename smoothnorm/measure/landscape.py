"""Loss-landscape probes along the gradient (Figs 4, 10, 11, 12b-d, 13b-d) and Li et al.'s loss surfaces.

Every probe uses one batch in "probe" mode (batch statistics; running statistics, optimizer state and layer noise
untouched) and leaves the network bit-identical (params, grads, buffers): points are visited by writing
`w - eta * d` into `net.params` in place and restoring it afterwards, so no copy of the network is made.

Diverging points (NaN or Inf loss or gradient) are recorded as they come and counted; they never raise.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numba import njit

from smoothnorm._validate import choice

__all__ = [
    "PAPER_STEP_RANGES",
    "INFERRED_STEP_MULTIPLIERS",
    "BETA_NORMALIZATIONS",
    "NORM_PARAM_POLICIES",
    "DirectionProbe",
    "LossSurface1D",
    "LossSurface2D",
    "step_grid",
    "probe_gradient_direction",
    "probe_direction",
    "probe_random_direction",
    "probe_update_direction",
    "random_direction",
    "update_direction",
    "filter_normalized_direction",
    "loss_surface_1d",
    "loss_surface_2d",
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
# What Li et al.'s filter normalization does with 1-D parameters (biases, norm gamma/beta): "zero" them in the
# direction (Li et al.'s `ignore="biasbn"`), use the "parameter" itself (their code's default otherwise), or
# "filter"-normalize the whole vector as one filter.
NORM_PARAM_POLICIES = ("zero", "parameter", "filter")


# ----------------------------------------------------------------------------------------------------------------
# Shared by every measurement module
# ----------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _preserved(net) -> Iterator[np.ndarray]:
    """Restore params, grads and every layer buffer (running statistics, counters) on exit, bit for bit.

    Yields the saved copy of the params (read-only by convention: it is what gets restored).
    """
    params = net.params.copy()
    grads = net.grads.copy()
    buffers = [
        {name: np.array(value, copy=True) for name, value in layer.buffers().items()} for layer in net.layers
    ]
    try:
        yield params
    finally:
        net.params[...] = params
        net.grads[...] = grads
        for layer, saved in zip(net.layers, buffers):
            current = layer.buffers()
            for name, value in saved.items():
                current[name][...] = value


@njit(cache=True, nogil=True, error_model="numpy")
def _pair_sums(a, b):
    """(sum a^2, sum b^2, sum a b, sum (a - b)^2) over 1-D arrays, each element widened to float64 first.

    One pass and no temporaries: on VGG-11's 9.2M parameters a float64 copy costs 50-70 ms, this ~10 ms.
    """
    aa = bb = ab = dd = 0.0
    for i in range(a.size):
        x = np.float64(a[i])
        y = np.float64(b[i])
        aa += x * x
        bb += y * y
        ab += x * y
        d = x - y
        dd += d * d
    return aa, bb, ab, dd


def _flat(v) -> np.ndarray:
    v = np.asarray(v)
    if v.dtype not in (np.float32, np.float64):
        v = v.astype(np.float64)
    return np.ascontiguousarray(v.reshape(-1))


def _sums(a, b) -> tuple[float, float, float, float]:
    a, b = _flat(a), _flat(b)
    if a.size != b.size:
        raise ValueError(f"expected vectors of one size, got {a.size} and {b.size}")
    return _pair_sums(a, b)


def _norm64(v: np.ndarray) -> float:
    """Euclidean norm accumulated in float64 (NaN/Inf propagate, no warnings)."""
    v = _flat(v)
    return math.sqrt(_pair_sums(v, v)[0])


def _distance64(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b||_2 with the difference and the sum in float64."""
    return math.sqrt(_sums(a, b)[3])


def _check_batch(net, x, y) -> tuple[np.ndarray, np.ndarray]:
    x = net.check_input(x)
    if x.shape[0] < 1:
        raise ValueError("x: expected at least one sample, got an empty batch")
    return x, net.check_targets(y, x.shape[0])


def _check_etas(etas, name: str = "etas") -> np.ndarray:
    etas = np.asarray(etas, dtype=np.float64)
    if etas.ndim == 0:
        etas = etas.reshape(1)
    if etas.ndim != 1 or etas.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of step sizes, got shape {etas.shape}")
    if not np.isfinite(etas).all():
        raise ValueError(f"{name}: expected finite step sizes, got {etas.tolist()}")
    return etas


def _check_direction(net, direction, name: str = "direction", finite: bool = True) -> np.ndarray:
    d = np.asarray(direction)
    if d.shape != net.params.shape:
        raise ValueError(f"{name}: expected shape {net.params.shape} (the shape of net.params), got {d.shape}")
    if d.dtype.kind != "f":
        raise ValueError(f"{name}: expected a float array, got dtype {d.dtype}")
    if finite and not np.isfinite(d).all():
        raise ValueError(f"{name}: expected finite values")
    return np.ascontiguousarray(d, dtype=net.dtype)


def _base_loss_and_grad(net, x, y, grad, loss) -> tuple[float, np.ndarray]:
    """The loss and gradient at the current params: given ones are trusted (and copied), else one pass."""
    if grad is None:
        base_loss, g = net.loss_and_grad(x, y, mode="probe")
        return float(base_loss), g.copy()
    # A non-finite gradient (a diverged run) is measured like any other point, not rejected.
    g = _check_direction(net, grad, "grad", finite=False)
    if np.shares_memory(g, net.grads):
        g = g.copy()  # net.grads is overwritten by every probe point
    if loss is None:
        loss = net.loss(x, y, mode="probe")
    return float(loss), g


def _move_to(net, w0: np.ndarray, eta: float, direction: np.ndarray) -> None:
    """net.params = w0 - eta * direction, in the network's dtype (as a training step would compute it)."""
    with np.errstate(all="ignore"):
        np.multiply(direction, net.dtype.type(eta), out=net.params)
        np.subtract(w0, net.params, out=net.params)


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
        grad_norm=_norm64(g),
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


# ----------------------------------------------------------------------------------------------------------------
# Li et al. (2018) filter-normalized loss surfaces
# ----------------------------------------------------------------------------------------------------------------
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
