"""Gradient explosion at initialization (smoothnorm.measure.gradient_explosion): per-layer weight gradients against a
hand-written NumPy MLP, the log-linear fit against numpy.polyfit, and the rates theory predicts."""

import math

import numpy as np
import pytest

from smoothnorm.measure.gradient_explosion import (
    fit_log_growth,
    init_gradient_norms,
    large_batch_rate,
    weight_gradient_norms,
)
from smoothnorm.nn import models
from tests.reference import (
    assert_unchanged,
    central_difference,
    mlp_loss_ref,
    mlp_weight_gradients_ref,
    relative_error,
    snapshot,
)


def _reference_layers(net):
    """The network's parameters as mlp_loss_ref's list of ("linear", W, b) / ("batch", gamma, beta)."""
    state = net.state_dict()
    layers = []
    for layer in net.layers:
        kind = type(layer).__name__
        if kind == "Linear":
            layers.append(("linear", state[f"{layer.name}.weight"], state[f"{layer.name}.bias"]))
        elif kind == "BatchNorm":
            layers.append(("batch", state[f"{layer.name}.weight"], state[f"{layer.name}.bias"]))
    return layers


@pytest.mark.parametrize("activation", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("norm", [None, "batch"])
def test_weight_gradient_norms_equal_hand_backprop_of_a_numpy_mlp(rng, activation, norm):
    net = models.mlp(7, [6, 5, 6], 4, norm=norm, activation=activation, dtype=np.float64, seed=int(rng.integers(99)))
    if norm:  # gamma and beta away from their initial 1 and 0, so their handling is checked too
        for layer in net.layers:
            if type(layer).__name__ == "BatchNorm":
                layer.params["weight"][...] = rng.uniform(0.5, 1.5, layer.params["weight"].shape)
                layer.params["bias"][...] = rng.normal(0, 0.3, layer.params["bias"].shape)
    x = rng.standard_normal((9, 7))
    y = rng.integers(0, 4, size=9)
    layers = _reference_layers(net)
    expected = mlp_weight_gradients_ref(layers, x, y, activation)
    # The hand-written backprop itself against central differences of the reference loss.
    for k in (0, len(expected) - 1):
        linear = [i for i, la in enumerate(layers) if la[0] == "linear"][k]

        def loss_of(w, linear=linear):
            changed = list(layers)
            changed[linear] = ("linear", w, layers[linear][2])
            return mlp_loss_ref(changed, x, y, activation)

        numeric = central_difference(loss_of, layers[linear][1])
        assert relative_error(expected[k], numeric) < 1e-6
    before = snapshot(net)
    names, sq = weight_gradient_norms(net, x, y)
    assert_unchanged(net, before)
    assert names == ["layers.0", "layers.3", "layers.6", "layers.9"] if norm else len(names) == 4
    np.testing.assert_allclose(sq, [float(np.sum(g * g)) for g in expected], rtol=1e-10)
    # A given gradient (the training step's) is used as is.
    _, g = net.copy().loss_and_grad(x, y, mode="probe")
    np.testing.assert_allclose(weight_gradient_norms(net, x, y, grad=g)[1], sq, rtol=1e-12)


def test_weight_gradient_norms_of_a_float32_network_are_measured_in_float64(rng):
    net = models.mlp(5, [8, 8], 3, norm="batch", dtype=np.float32, seed=1)
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, size=6)
    _, sq32 = weight_gradient_norms(net, x, y)
    _, sq64 = weight_gradient_norms(net.astype(np.float64), x, y)
    np.testing.assert_array_equal(sq32, sq64)
    with pytest.raises(ValueError, match=r"grad: expected shape"):
        weight_gradient_norms(net, x, y, grad=np.zeros(3))


@pytest.mark.parametrize("shape", [(12,), (3, 9)])
def test_fit_equals_numpy_polyfit_with_its_standard_error(rng, shape):
    depth = shape[-1]
    true_slope = rng.uniform(-0.5, 0.5)
    sq = np.exp(1.3 + true_slope * np.arange(1, depth + 1) + rng.normal(0, 0.2, shape))
    fit = fit_log_growth(sq, skip_first=2, skip_last=1)
    layers = np.arange(1, depth + 1)[2:depth - 1]
    xs = np.tile(layers, sq.reshape(-1, depth).shape[0]).astype(float)
    ys = np.log(sq.reshape(-1, depth)[:, 2:depth - 1]).ravel()
    (slope, intercept), cov = np.polyfit(xs, ys, 1, cov=True)
    assert fit.layers == tuple(layers)
    assert fit.num_points == xs.size
    assert fit.slope == pytest.approx(slope, rel=1e-10)
    assert fit.intercept == pytest.approx(intercept, rel=1e-10)
    assert fit.slope_se == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-8)
    assert fit.rate == pytest.approx(math.exp(-slope), rel=1e-10)
    assert fit.rate_se == pytest.approx(fit.rate * fit.slope_se, rel=1e-12)


def test_fit_of_an_exact_geometric_series_and_bad_input():
    sq = 5.0 * 1.5 ** -np.arange(1, 11)  # squared norm grows by 1.5 per layer toward the input
    fit = fit_log_growth(sq)
    assert fit.rate == pytest.approx(1.5, rel=1e-12)
    assert fit.slope_se == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(fit_log_growth(np.array([1.0, 0.0, 2.0, 3.0]), skip_first=0, skip_last=0).rate)
    with pytest.raises(ValueError, match="skip_first, skip_last: 2 and 1 leave 1 of 4 layers"):
        fit_log_growth(np.ones(4), skip_first=2)
    with pytest.raises(ValueError, match="skip_last: expected a non-negative integer"):
        fit_log_growth(np.ones(4), skip_last=-1)


def test_large_batch_rate_matches_closed_forms_and_monte_carlo(rng):
    assert large_batch_rate("relu") == pytest.approx(math.pi / (math.pi - 1), rel=1e-9)  # Yang et al.
    assert large_batch_rate("identity") == pytest.approx(1.0, rel=1e-12)
    z = rng.standard_normal(2_000_000)
    mc = np.mean((1 - np.tanh(z) ** 2) ** 2) / np.var(np.tanh(z))
    assert large_batch_rate("tanh") == pytest.approx(mc, rel=5e-3)
    with pytest.raises(ValueError, match="activation: expected one of"):
        large_batch_rate("gelu")


def _rate(norm, activation, batch, rng, *, width=128, depth=16, seeds=(0, 1, 2), init="glorot"):
    x = rng.standard_normal((batch, 32))
    y = rng.integers(0, 10, size=batch)
    _, sq = init_gradient_norms(lambda s: models.mlp(32, [width] * (depth - 1), 10, norm=norm, activation=activation,
                                                     dtype=np.float64, seed=s, init=init), x, y, seeds)
    return fit_log_growth(sq)


def test_rates_at_initialization_follow_theory(rng):
    """Statistical checks of what the theory says, independent of the initialization's scale:
    - without BatchNorm a linear network's weight gradients are the same size in every layer (rate 1): for one
      sample dL/dW_l = delta_l x_{l-1}^T, and scaling every weight by c multiplies ||x_{l-1}|| by c^(l-1) and
      ||delta_l|| by c^(L-l), so ||dL/dW_l|| ~ c^(L-1) whatever l;
    - with BatchNorm before ReLU at large batch the squared norm grows by about pi / (pi - 1) = 1.467 per layer
      toward the input (`large_batch_rate`), also for PyTorch's (three times smaller) weight variance.
    A measurement that dropped BatchNorm's division by the batch standard deviation, read the layers in the wrong
    order or took the wrong sign of the slope would fail these bounds."""
    linear = _rate(None, "identity", 64, rng)
    assert abs(linear.rate - 1.0) < 0.05, linear
    for init in ("glorot", "pytorch"):
        relu = _rate("batch", "relu", 128, rng, init=init)
        assert relu.rate == pytest.approx(large_batch_rate("relu"), rel=0.03), (init, relu)
    small_batch = _rate("batch", "relu", 8, rng)
    assert small_batch.rate > relu.rate + 5 * (small_batch.rate_se + relu.rate_se), (small_batch, relu)


@pytest.mark.torch
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_deep_exploding_gradients_equal_pytorch_autograd(rng, activation):
    """A 30-layer BatchNorm MLP at batch 6, where the squared norms span many orders of magnitude: every layer's
    ||dL/dW_l||^2 equals PyTorch's to rounding."""
    torch = pytest.importorskip("torch")
    from tests.torch_twin import run_torch, torch_twin

    net = models.mlp(12, [24] * 29, 10, norm="batch", activation=activation, dtype=np.float64, seed=5)
    x, y = rng.standard_normal((6, 12)), rng.integers(0, 10, size=6)
    names, sq = weight_gradient_norms(net, x, y)
    root, order = torch_twin(net)
    root.double()
    root.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    root.train()
    torch.nn.functional.cross_entropy(run_torch(order, torch.from_numpy(x)), torch.from_numpy(y)).backward()
    grads = dict(root.named_parameters())
    expected = np.array([float((grads[f"{name}.weight"].grad ** 2).sum()) for name in names])
    assert expected[0] / expected[-2] > 100  # the explosion is there to be measured
    np.testing.assert_allclose(sq, expected, rtol=1e-8)
