"""Gradient statistics per weight layer and the one-step relative loss (Bjorck et al. 2018) against direct NumPy."""

import warnings

import numpy as np
import pytest
import scipy.stats

from smoothnorm.measure.stability import (
    excess_kurtosis,
    gradient_statistics,
    one_step_relative_loss,
    standardized_edges,
)
from smoothnorm.nn import models
from tests.reference import (
    assert_unchanged,
    batch_norm_train_reference,
    linear_ref,
    relu_ref,
    snapshot,
    softmax_cross_entropy_ref,
)


@pytest.mark.parametrize("draw", ["normal", "laplace", "student", "uniform"])
def test_excess_kurtosis_is_scipys_fisher_biased_kurtosis(rng, draw):
    n = int(rng.integers(5, 400))
    values = {"normal": rng.standard_normal, "laplace": lambda k: rng.laplace(size=k),
              "student": lambda k: rng.standard_t(3, size=k), "uniform": lambda k: rng.uniform(-2, 5, size=k)}[draw](n)
    expected = scipy.stats.kurtosis(values, fisher=True, bias=True)
    assert excess_kurtosis(values) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert excess_kurtosis(values.astype(np.float32)) == pytest.approx(
        scipy.stats.kurtosis(values.astype(np.float32).astype(np.float64)), rel=1e-9, abs=1e-12)


def test_excess_kurtosis_is_nan_for_constant_or_non_finite_values():
    assert np.isnan(excess_kurtosis(np.full(7, 2.5)))
    assert np.isnan(excess_kurtosis(np.array([1.0, np.inf, 2.0])))
    assert np.isnan(excess_kurtosis(np.zeros(0)))


LINEARS = {None: ["layers.0", "layers.2", "layers.4"], "batch": ["layers.0", "layers.3", "layers.6"]}


def _tiny_mlp(norm, dtype=np.float64, seed=1):
    return models.mlp(6, [5, 4], 3, norm=norm, dtype=dtype, seed=seed)


@pytest.mark.parametrize("norm", [None, "batch"])
def test_gradient_statistics_per_weight_layer_match_direct_computation(rng, norm):
    net = _tiny_mlp(norm)
    x, y = rng.standard_normal((9, 6)), rng.integers(0, 3, size=9)
    _, grads = net.loss_and_grad(x, y)
    g = grads.copy()
    g[net.param_slices()["layers.0.weight"].start] = 50.0  # an outlier beyond the edges: counted in the last bin
    r = gradient_statistics(net, g, bins=9, limit=3.0)
    weights = [f"{layer}.weight" for layer in LINEARS[norm]]
    assert r.layers == LINEARS[norm]
    edges = np.linspace(-3.0, 3.0, 10)
    np.testing.assert_array_equal(r.edges, edges)
    for i, name in enumerate(weights):
        v = g[net.param_slices()[name]].astype(np.float64)
        assert r.norms[i] == pytest.approx(np.linalg.norm(v), rel=1e-12)
        assert r.kurtosis[i] == pytest.approx(scipy.stats.kurtosis(v, fisher=True, bias=True), rel=1e-9)
        z = (v - v.mean()) / v.std()
        counts = np.array([np.sum((z >= lo) & (z < hi)) for lo, hi in zip(edges[:-1], edges[1:])], dtype=float)
        counts[0] += np.sum(z < edges[0])
        counts[-1] += np.sum(z >= edges[-1])
        np.testing.assert_allclose(r.histograms[i], counts / v.size, atol=1e-12)
    assert r.histograms[0, -1] > 0  # the outlier
    np.testing.assert_allclose(r.histograms.sum(axis=1), 1.0)


def test_gradient_statistics_errors_and_degenerate_layers():
    net = _tiny_mlp(None)
    with pytest.raises(ValueError, match="layers: 'layers.1' has no weight"):
        gradient_statistics(net, np.zeros_like(net.params), ["layers.1"])
    with pytest.raises(ValueError, match="bins: expected an integer >= 2"):
        standardized_edges(1)
    with pytest.raises(ValueError, match="limit: expected a positive number"):
        standardized_edges(5, 0.0)
    r = gradient_statistics(net, np.zeros_like(net.params))
    assert np.all(r.norms == 0) and np.isnan(r.kurtosis).all() and np.isnan(r.histograms).all()


def _reference_loss(net, params, x, y, norm):
    """Softmax cross-entropy of the tiny MLP (Linear, [BN with batch statistics], ReLU, ..., Linear) in NumPy, at
    flat parameters `params`."""
    p = {name: params[sl].astype(np.float64) for name, sl in net.param_slices().items()}
    h = np.asarray(x, dtype=np.float64)
    for k, layer in enumerate(LINEARS[norm]):
        fan_in = h.shape[1]
        h = linear_ref(h, p[f"{layer}.weight"].reshape(-1, fan_in), p[f"{layer}.bias"])
        if k == len(LINEARS[norm]) - 1:
            break
        if norm == "batch":
            bn = f"layers.{int(layer.split('.')[1]) + 1}"
            h = batch_norm_train_reference(h, p[f"{bn}.weight"], p[f"{bn}.bias"])
        h = relu_ref(h)
    return softmax_cross_entropy_ref(h, y)[0]


@pytest.mark.parametrize("norm", [None, "batch"])
def test_one_step_relative_loss_is_the_loss_after_a_direct_numpy_step(rng, norm):
    net = _tiny_mlp(norm, seed=int(rng.integers(100)))
    x, y = rng.standard_normal((8, 6)), rng.integers(0, 3, size=8)
    before = snapshot(net)
    lrs = np.array([1e-3, 0.1, 1.0, 30.0])
    r = one_step_relative_loss(net, x, y, lrs)
    assert_unchanged(net, before)
    w = net.params.copy()
    loss0, g = net.loss_and_grad(x, y, mode="probe")
    g = g.copy()
    assert r.base_loss == pytest.approx(_reference_loss(net, w, x, y, norm), rel=1e-10)
    for lr, loss, ratio in zip(lrs, r.losses, r.ratios):
        expected = _reference_loss(net, w - lr * g, x, y, norm)
        assert loss == pytest.approx(expected, rel=1e-9)
        assert ratio == pytest.approx(expected / _reference_loss(net, w, x, y, norm), rel=1e-9)
    assert r.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-12)
    # A given gradient and loss (a training step's) give the same record without another pass.
    again = one_step_relative_loss(net, x, y, lrs, grad=g, loss=loss0)
    np.testing.assert_array_equal(again.losses, r.losses)


def test_one_step_relative_loss_records_overflow_and_rejects_bad_rates(rng):
    net = _tiny_mlp(None, dtype=np.float32)
    x, y = rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflowing step is a recorded divergence, not a warning
        r = one_step_relative_loss(net, x, y, [1e-2, 1e40])
    assert np.isfinite(r.ratios[0]) and not np.isfinite(r.losses[1])
    for bad, message in [([], "lrs: expected a non-empty"), ([0.1, -1.0], "lrs: expected positive"),
                         ([np.nan], "lrs: expected finite")]:
        with pytest.raises(ValueError, match=message):
            one_step_relative_loss(net, x, y, bad)
