"""`check_layer`: a layer's shapes, gradients, R-pass, modes and dtypes against what Network and the measurements
rely on, each a named check in a LayerReport.

The layer is checked inside a Network of its own (a deep copy of it, so the caller's object is untouched): its
parameters and gradients are views into flat vectors, its buffers allocated, as in any model. Parameters start
from the layer's init, moved off it (so an identity affine cannot hide a gradient that is right only there), and two
train-mode passes give the running statistics values that are not their initial ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

from smoothnorm._validate import as_float_dtype
from smoothnorm.nn.layer import Layer
from smoothnorm.nn.losses import SquaredError
from smoothnorm.nn.network import Network
from smoothnorm.testing.compare import Comparison, Differences, central_differences, check_from
from smoothnorm.testing.report import Check, LayerReport, identical, raised, relative_change

__all__ = ["check_layer", "BATCH_SIZE", "DIFFERENCE_RTOL", "FLOAT32_RTOL"]

BATCH_SIZE = 6
# Central differences in float64 with the step cbrt(eps) (1 + max |value|): truncation ~h^2 and rounding ~eps / h
# both near 1e-10 of the gradient's scale, so 1e-6 passes every correct layer with a wide margin and catches a
# derivative that is wrong by anything more than rounding.
DIFFERENCE_STEP = float(np.finfo(np.float64).eps ** (1 / 3))
DIFFERENCE_RTOL = 1e-6
# float32 against float64 at the same (float32-representable) point: about 800 float32 epsilons. One layer's
# reductions over a few hundred values round well inside it; float32 code that computes something else (a dropped
# term, a wrong constant) misses it by orders of magnitude.
FLOAT32_RTOL = 1e-4
POINTS = 2  # random points for the backward check
COORDINATES = 8  # coordinates per quantity and point
DIRECTIONS = 2  # random unit directions per quantity and point
CHECKS = ("shapes", "backward", "r_pass", "probe_mode", "eval_mode", "dtypes")


def check_layer(layer: Layer, input_shape: tuple[int, ...], *, dtype=np.float64, seed: int = 0,
                rtol: float | None = None) -> LayerReport:
    """Check a layer against the Layer protocol; raise AssertionError naming the first failed check.

    layer: a smoothnorm.nn.Layer (not modified: the checks run on copies).
    input_shape: the per-sample input shape, e.g. (C,) or (C, H, W); batches of BATCH_SIZE samples are drawn.
    dtype: the network dtype of the shapes and mode checks (the difference checks run in float64, the dtypes
        check in both).
    seed: seeds the parameters' perturbation, inputs, output weights and directions.
    rtol: tolerance of the finite-difference checks (backward, r_pass); default DIFFERENCE_RTOL.
    Returns the LayerReport when every check passes.
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"layer: expected a smoothnorm.nn.Layer, got {type(layer).__name__}")
    shape = _input_shape(input_shape)
    dtype = as_float_dtype(dtype)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    tolerance = DIFFERENCE_RTOL if rtol is None else float(rtol)
    if not 0 < tolerance < 1:
        raise ValueError(f"rtol: expected a relative tolerance in (0, 1), got {rtol!r}")
    template = copy.deepcopy(layer)
    try:
        copy.deepcopy(template).output_shape(shape)
    except ValueError as exc:
        raise ValueError(f"input_shape: {type(layer).__name__} rejects {shape}: {exc}") from exc
    setup = _Setup(template, shape, dtype, int(seed), tolerance)
    functions = {"shapes": _shapes, "backward": _backward, "r_pass": _r_pass, "probe_mode": _probe_mode,
                 "eval_mode": _eval_mode, "dtypes": _dtypes}
    report = LayerReport(f"check_layer({layer!r}, input {shape}, {dtype})",
                         [_run(name, functions[name], setup) for name in CHECKS])
    report.raise_if_failed()
    return report


def _input_shape(input_shape) -> tuple[int, ...]:
    if not isinstance(input_shape, (tuple, list)):
        raise TypeError(f"input_shape: expected a tuple of positive ints such as (4, 5, 5), got "
                        f"{type(input_shape).__name__}")
    if not input_shape or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                              for s in input_shape):
        raise ValueError(f"input_shape: expected a non-empty tuple of positive ints, got {input_shape!r}")
    return tuple(int(s) for s in input_shape)


class _Setup:
    """What every check needs: the layer to copy, the input shape, dtype, seed and tolerance."""

    def __init__(self, template: Layer, shape: tuple[int, ...], dtype: np.dtype, seed: int, tolerance: float):
        self.template, self.shape, self.dtype, self.seed, self.tolerance = template, shape, dtype, seed, tolerance

    def rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def network(self, dtype) -> Network:
        """A Network around a fresh copy of the layer: parameters moved off their init, two train-mode passes."""
        net = Network([("layer", copy.deepcopy(self.template))], input_shape=self.shape, loss=SquaredError(),
                      dtype=dtype, seed=self.seed)
        rng = self.rng(0)
        net.params[:] = _moved(net.params, rng)
        for _ in range(2):
            net.forward(self.inputs(rng), "train")
        return net

    def inputs(self, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((BATCH_SIZE, *self.shape))


def _moved(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each value scaled by a factor in [0.5, 1.5] (signs kept, so positive parameters stay positive); zeros
    replaced by N(0, 0.5^2)."""
    out = values * rng.uniform(0.5, 1.5, values.shape)
    zero = values == 0
    out[zero] = 0.5 * rng.standard_normal(int(zero.sum()))
    return out


def _run(name: str, function: Callable[[_Setup], Check], setup: _Setup) -> Check:
    """Run one check; an exception fails it, with where it was raised."""
    try:
        return function(setup)
    except Exception as exc:  # a check reports what the layer raised rather than stopping the others
        return Check(name, "failed", detail=raised(exc))


def _param_slices(net: Network) -> dict[str, slice]:
    """Parameter name (`weight`) -> slice of the flat vectors."""
    return {key.split(".", 1)[1]: s for key, s in net.param_slices().items()}


def _views(net: Network, flat: np.ndarray) -> dict[str, np.ndarray]:
    """Views of a flat (num_params,) vector shaped like the layer's parameters (R-pass directions, R-gradients)."""
    shapes = net.layers[0].param_shapes()
    return {name: flat[s].reshape(shapes[name]) for name, s in _param_slices(net).items()}


def _gradients(net: Network, x: np.ndarray, dy: np.ndarray, need_dx: bool = True):
    """(output, dx, grads) in probe mode, copied (layers reuse their buffers)."""
    y = net.forward(x, "probe").copy()
    dx = net.backward(dy.astype(net.dtype), need_input_grad=need_dx)
    return y, None if dx is None else np.array(dx), net.grads.copy()


# ----------------------------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------------------------
def _shapes(setup: _Setup) -> Check:
    net = setup.network(setup.dtype)
    layer, rng = net.layers[0], setup.rng(1)
    problems = []
    x = setup.inputs(rng).astype(net.dtype)
    y = net.forward(x, "probe")
    if not isinstance(y, np.ndarray) or y.shape != (BATCH_SIZE, *net.output_shape):
        got = y.shape if isinstance(y, np.ndarray) else type(y).__name__
        problems.append(f"forward returned {got} for input {x.shape}; output_shape says "
                        f"{(BATCH_SIZE, *net.output_shape)}")
    shapes = layer.param_shapes()
    for kind, flat in (("params", net.params), ("grads", net.grads)):
        views = getattr(layer, kind)
        if set(views) != set(shapes):
            problems.append(f"layer.{kind} has keys {sorted(views)}, param_shapes() says {sorted(shapes)}")
        for name, value in views.items():
            if name in shapes and (value.shape != tuple(shapes[name]) or not np.shares_memory(value, flat)):
                problems.append(f"{kind}[{name!r}] is not the network's view of shape {tuple(shapes[name])} "
                                f"(rebind values with [...] = instead of replacing the array)")
    if not problems:
        # NaN first: Network relies on every backward overwriting every gradient of its layer.
        net.grads[:] = np.nan
        dx = layer.backward(rng.standard_normal(y.shape).astype(net.dtype), need_dx=True)
        if not isinstance(dx, np.ndarray) or dx.shape != x.shape:
            got = dx.shape if isinstance(dx, np.ndarray) else type(dx).__name__
            problems.append(f"backward returned dx {got}, expected the input's shape {x.shape}")
        for name, value in layer.grads.items():
            if np.isnan(value).any():
                problems.append(f"backward left grads[{name!r}] unwritten (every backward must overwrite every "
                                f"gradient)")
    return Check("shapes", "failed" if problems else "passed", detail="; ".join(problems))


# ----------------------------------------------------------------------------------------------------------------
# backward: gradients against central differences of L = sum(w * forward(x)), probe mode
# ----------------------------------------------------------------------------------------------------------------
def _backward(setup: _Setup) -> Check:
    net = setup.network(np.float64)
    base = net.params.copy()
    comparisons = {"dx": Comparison("dx", setup.tolerance)}
    comparisons.update({name: Comparison(f"grads[{name!r}]", setup.tolerance) for name in _param_slices(net)})
    need_dx_false = Comparison("grads with need_dx=False", setup.tolerance)
    for point in range(POINTS):
        _backward_at_point(net, setup, _moved(base, setup.rng(2, point, 0)), setup.rng(2, point, 1), comparisons,
                           need_dx_false)
    return check_from("backward", [*comparisons.values(), need_dx_false], setup.tolerance)


def _backward_at_point(net: Network, setup: _Setup, params: np.ndarray, rng: np.random.Generator,
                       comparisons: dict[str, Comparison], need_dx_false: Comparison) -> None:
    """Compare dx and every parameter gradient at one random point (parameters, input, output weights w)."""
    slices, shapes = _param_slices(net), net.layers[0].param_shapes()
    net.params[:] = params
    x = setup.inputs(rng)
    w = rng.standard_normal((BATCH_SIZE, *net.output_shape))
    _, dx, grads = _gradients(net, x, w)
    if slices:
        need_dx_false.add(_gradients(net, x, w, need_dx=False)[2], grads)

    def loss(xx, at):
        net.params[:] = at
        return float(np.sum(w * net.forward(xx, "probe")))

    h = DIFFERENCE_STEP * (1 + float(np.abs(x).max()))
    _compare_along(comparisons["dx"], dx, rng, lambda d, t: loss(x + t * d, params), h)
    for name, s in slices.items():
        def along(d, t, s=s):
            full = np.zeros_like(params)
            full[s] = d.reshape(-1)
            return loss(x, params + t * full)

        h = DIFFERENCE_STEP * (1 + float(np.abs(params[s]).max()))
        _compare_along(comparisons[name], grads[s].reshape(shapes[name]), rng, along, h)
    net.params[:] = params


def _compare_along(comparison: Comparison, analytic: np.ndarray, rng: np.random.Generator,
                   loss_along: Callable[[np.ndarray, float], float], h: float) -> None:
    """Analytic gradient entries and projections on unit directions against central differences of the loss."""
    at_zero = (loss_along(np.zeros(analytic.shape), 0.0),)
    coordinates = rng.choice(analytic.size, size=min(COORDINATES, analytic.size), replace=False)
    directions = [d / np.linalg.norm(d) for d in rng.standard_normal((DIRECTIONS, *analytic.shape))]
    for kind, cases in (("coordinates", coordinates), ("directions", directions)):
        computed, differences, labels = [], [], []
        for k, case in enumerate(cases):
            if kind == "coordinates":
                d = np.zeros(analytic.shape)
                d.flat[case] = 1.0
                labels.append(f"at index {tuple(int(v) for v in np.unravel_index(case, analytic.shape))}")
            else:
                d = case
                labels.append(f"along random unit direction {k}")
            computed.append(float(np.sum(analytic * d)))
            differences.append(central_differences(lambda t, d=d: (loss_along(d, t),), h, at_zero)[0])
        stacked = Differences(*(np.array([getattr(fd, key) for fd in differences]) for key in
                                ("central", "gap", "central_small", "gap_small")))
        # Coordinates relative to the gradient's largest entry, unit directions to its norm (their largest value).
        size = float(np.abs(analytic).max()) if kind == "coordinates" else float(np.linalg.norm(analytic))
        scale = max(size, float(np.abs(stacked.central).max()))
        comparison.add(computed, stacked, scale=scale, labels=labels)


# ----------------------------------------------------------------------------------------------------------------
# r_pass: forward_r / backward_r against central differences of forward and backward along one direction
# ----------------------------------------------------------------------------------------------------------------
def _r_pass(setup: _Setup) -> Check:
    cls = type(setup.template)
    defined = [name for name in ("forward_r", "backward_r") if getattr(cls, name) is not getattr(Layer, name)]
    if not defined:
        return Check("r_pass", "skipped", detail="no forward_r / backward_r (exact Hessian-vector products of "
                                                 "networks with this layer are unavailable)")
    if len(defined) == 1:
        return Check("r_pass", "failed", detail=f"defines {defined[0]} but not the other R-pass method")
    net = setup.network(np.float64)
    rng = setup.rng(3)
    x, rx = setup.inputs(rng), setup.inputs(rng)
    dy, rdy = (rng.standard_normal((BATCH_SIZE, *net.output_shape)) for _ in range(2))
    rp = rng.standard_normal(net.num_params)
    comparisons = _r_pass_along(net, setup.tolerance, x, rx, rp, dy, rdy)
    if net.num_params:  # a parameterised first layer's case in a Hessian product: no input direction
        comparisons += _r_pass_along(net, setup.tolerance, x, None, rp, dy, rdy)
    return check_from("r_pass", comparisons, setup.tolerance)


def _r_pass_along(net: Network, tolerance: float, x: np.ndarray, rx: np.ndarray | None, rp: np.ndarray,
                  dy: np.ndarray, rdy: np.ndarray) -> list[Comparison]:
    """The R-pass for input direction rx (None: zero), parameter direction rp and output-gradient direction rdy
    against central differences of (forward, backward) at (x + t rx, params + t rp) with dy + t rdy."""
    layer, slices, shapes = net.layers[0], _param_slices(net), net.layers[0].param_shapes()
    suffix = "" if rx is not None else " (no input direction)"
    p0, h = net.params.copy(), DIFFERENCE_STEP

    def at(t):
        net.params[:] = p0 + t * rp
        return _gradients(net, x if rx is None else x + t * rx, dy + t * rdy)

    base = at(0.0)
    differences = central_differences(at, h, base)
    net.params[:] = p0
    net.forward(x, "probe")
    ry = layer.forward_r(rx, _views(net, rp))
    ry = np.zeros_like(base[0]) if ry is None else np.array(ry)
    rgrads = np.zeros(net.num_params)
    dx_r, rdx = layer.backward_r(dy, rdy, _views(net, rgrads), need_dx=rx is not None)
    forward = Comparison(f"forward_r{suffix}", tolerance)
    forward.add(ry, differences[0])
    comparisons = [forward]
    if rx is not None:
        for quantity, computed, reference in (("backward_r's dx", dx_r, base[1]),
                                              ("backward_r's rdx", rdx, differences[1])):
            comparison = Comparison(quantity, tolerance)
            if computed is None:
                comparison.add_problem(f"{quantity} is None with need_dx=True")
            else:
                comparison.add(np.array(computed), reference)
            comparisons.append(comparison)
    for name, s in slices.items():
        comparison = Comparison(f"rgrads[{name!r}]{suffix}", tolerance)
        comparison.add(rgrads[s].reshape(shapes[name]), _part(differences[2], s, shapes[name]))
        comparisons.append(comparison)
    return comparisons


def _part(differences: Differences, s: slice, shape: tuple[int, ...]) -> Differences:
    """One parameter's entries of differences of the flat gradient vector."""
    return Differences(*(getattr(differences, key)[s].reshape(shape) for key in
                         ("central", "gap", "central_small", "gap_small")))


# ----------------------------------------------------------------------------------------------------------------
# probe_mode, eval_mode: nothing changes, the same output twice
# ----------------------------------------------------------------------------------------------------------------
def _probe_mode(setup: _Setup) -> Check:
    return _mode_leaves_state("probe", setup, "running statistics and counters change only in 'train' mode")


def _eval_mode(setup: _Setup) -> Check:
    return _mode_leaves_state("eval", setup, "evaluation must not change the network")


def _mode_leaves_state(mode: str, setup: _Setup, why: str) -> Check:
    net = setup.network(setup.dtype)
    layer = net.layers[0]
    x = setup.inputs(setup.rng(4)).astype(net.dtype)
    params = net.params.copy()
    buffers = {name: np.array(value, copy=True) for name, value in layer.buffers().items()}
    first = net.forward(x, mode).copy()
    second = net.forward(x, mode).copy()
    problems, worst = [], 0.0
    after = layer.buffers()
    for name, before in buffers.items():
        value = np.asarray(after.get(name))
        if not identical(value, before):
            change = relative_change(value, before)
            worst = max(worst, change)
            problems.append(f"forward in {mode!r} mode changed buffer {name!r} (by {change:.1e} relative; {why})")
    if not identical(net.params, params):
        problems.append(f"forward in {mode!r} mode changed the parameters")
    if not identical(first, second):
        change = relative_change(second, first)
        worst = max(worst, change)
        problems.append(f"two forwards in {mode!r} mode on one batch gave different outputs (by {change:.1e} "
                        "relative)")
    name = f"{mode}_mode"
    return Check(name, "failed" if problems else "passed", worst, None,
                 "; ".join(problems) if problems else ("" if buffers else "no buffers"))


# ----------------------------------------------------------------------------------------------------------------
# dtypes: float32 against float64 at the same float32-representable point
# ----------------------------------------------------------------------------------------------------------------
def _dtypes(setup: _Setup) -> Check:
    net64 = setup.network(np.float64)
    net64.params[:] = net64.params.astype(np.float32)
    for value in net64.layers[0].buffers().values():
        if np.asarray(value).dtype.kind == "f":
            value[...] = value.astype(np.float32)
    net32 = setup.network(np.float32)
    net32.load_state_dict(net64.state_dict())
    rng = setup.rng(5)
    x32 = setup.inputs(rng).astype(np.float32)
    w = rng.standard_normal((BATCH_SIZE, *net64.output_shape)).astype(np.float32)
    comparisons = []
    for mode in ("probe", "eval"):
        comparison = Comparison(f"float32 output in {mode!r} mode", FLOAT32_RTOL)
        outputs = [np.array(net.forward(x32.astype(net.dtype), mode)) for net in (net32, net64)]
        _dtype_problems(comparison, "output", outputs)
        comparison.add(*outputs)
        comparisons.append(comparison)
    results = [_gradients(net, x32.astype(net.dtype), w) for net in (net32, net64)]
    dx = Comparison("float32 dx", FLOAT32_RTOL)
    _dtype_problems(dx, "dx", [r[1] for r in results])
    dx.add(results[0][1], results[1][1])
    comparisons.append(dx)
    for name, s in _param_slices(net64).items():
        comparison = Comparison(f"float32 grads[{name!r}]", FLOAT32_RTOL)
        comparison.add(results[0][2][s], results[1][2][s])
        comparisons.append(comparison)
    return check_from("dtypes", comparisons, FLOAT32_RTOL)


def _dtype_problems(comparison: Comparison, what: str, arrays: list[np.ndarray]) -> None:
    for array, dtype in zip(arrays, (np.dtype(np.float32), np.dtype(np.float64))):
        if array.dtype != dtype:
            why = (" (a float64 constant or array promoted the computation; write x.dtype.type(2), not 2.0)"
                   if (dtype, array.dtype) == (np.float32, np.float64) else "")
            comparison.add_problem(f"a {dtype} network's {what} is {array.dtype}{why}")
        elif not np.isfinite(array).all():
            comparison.add_problem(f"a {dtype} network's {what} has NaN or Inf")
