"""Internal covariate shift (Definition 2.1) against a brute-force computation."""

import math

import numpy as np
import pytest

from smoothnorm import measure, optim
from smoothnorm.nn import models
from tests.helpers import regression_batch, stepped
from tests.reference import assert_unchanged, ics_brute_force, snapshot


def dln_batch(rng, norm):
    net = models.dln(4, 5, in_dim=3, out_dim=2, norm=norm, seed=int(rng.integers(1000)))
    x, t = regression_batch(rng, n=12, in_dim=3, out_dim=2)
    return net, x, t


@pytest.mark.parametrize("norm", [None, "batch"])
def test_ics_matches_brute_force_on_dln(rng, norm):
    net, x, t = dln_batch(rng, norm)
    lr = 0.01
    _, g = net.loss_and_grad(x, t, mode="probe")
    new = net.params - lr * g
    result = measure.internal_covariate_shift(net, x, t, optim.SGD(lr=lr))
    assert list(result) == measure.weight_layer_names(net)
    for layer in result:
        expected = ics_brute_force(net, x, t, layer, new)
        assert result[layer][0] == pytest.approx(expected[0], rel=1e-10, abs=1e-12)
        assert result[layer][1] == pytest.approx(expected[1], rel=1e-10)
    assert result["layers.3"][0] > 0


def test_ics_matches_brute_force_on_tiny_vgg(tiny_vgg_batch):
    net, x, y = tiny_vgg_batch
    lr = 0.1
    _, g = net.loss_and_grad(x, y, mode="probe")
    new = net.params - lr * g
    layers = ["features.4", "features.11", "classifier"]
    result = measure.internal_covariate_shift(net, x, y, optim.SGD(lr=lr), layers=layers)
    assert list(result) == layers
    for layer in layers:
        expected = ics_brute_force(net, x, y, layer, new)
        assert result[layer][0] == pytest.approx(expected[0], rel=1e-9)
        assert result[layer][1] == pytest.approx(expected[1], rel=1e-9)
        assert result[layer][0] > 0


def test_ics_uses_the_optimizers_real_update_without_advancing_it(rng):
    net, x, t = dln_batch(rng, "batch")
    lr, momentum, decay = 0.01, 0.9, 0.1
    opt = optim.SGD(lr=lr, momentum=momentum, weight_decay=decay)
    stepped(net, x, t, steps=0)
    net.loss_and_grad(x, t, mode="train")
    opt.step(net.params, net.grads)  # the optimizer now has a momentum buffer
    state = opt.state_dict()
    _, g = net.loss_and_grad(x, t, mode="probe")
    buffer = momentum * state["momentum_buffer"] + g + decay * net.params
    new = net.params - lr * buffer
    snap = snapshot(net)
    result = measure.internal_covariate_shift(net, x, t, opt)
    assert_unchanged(net, snap)
    after = opt.state_dict()
    assert after.keys() == state.keys() and after["step"] == state["step"]
    np.testing.assert_array_equal(after["momentum_buffer"], state["momentum_buffer"])
    for layer in result:
        expected = ics_brute_force(net, x, t, layer, new)
        assert result[layer][0] == pytest.approx(expected[0], rel=1e-9, abs=1e-12)
        assert result[layer][1] == pytest.approx(expected[1], rel=1e-9)


def test_ics_is_zero_at_learning_rate_zero_and_for_the_first_layer(rng, tiny_vgg_batch):
    net, x, t = dln_batch(rng, "batch")
    for name, (l2, cosine) in measure.internal_covariate_shift(net, x, t, optim.SGD(lr=0.0)).items():
        assert l2 == 0.0 and cosine == pytest.approx(1.0, abs=1e-15), name
    result = measure.internal_covariate_shift(net, x, t, optim.SGD(lr=0.5), layers=["layers.0", "norms.0"])
    assert result["layers.0"] == (0.0, 1.0)
    assert result["norms.0"][0] > 0
    vgg, xv, yv = tiny_vgg_batch
    first = measure.internal_covariate_shift(vgg, xv, yv, optim.SGD(lr=0.1), layers=["features.0"])
    assert first == {"features.0": (0.0, 1.0)}


def test_ics_leaves_network_bit_identical(tiny_vgg_batch):
    net, x, y = tiny_vgg_batch
    snap = snapshot(net)
    measure.internal_covariate_shift(net, x, y, optim.SGD(lr=0.1), layers=["features.1", "features.8"])
    assert_unchanged(net, snap)


def test_ics_layer_names_and_errors(rng):
    net, x, t = dln_batch(rng, "batch")
    # Any layer_slices() key, in any order given; results come back in network order.
    result = measure.internal_covariate_shift(net, x, t, optim.SGD(lr=0.01), layers=["layers.2", "norms.1"])
    assert list(result) == ["norms.1", "layers.2"]
    with pytest.raises(ValueError, match=r"unknown layer names \['features.3'\].*layers.0"):
        measure.internal_covariate_shift(net, x, t, optim.SGD(lr=0.01), layers=["features.3"])
    with pytest.raises(ValueError, match="distinct"):
        measure.internal_covariate_shift(net, x, t, optim.SGD(lr=0.01), layers=["layers.1", "layers.1"])


def test_given_gradient_gives_the_same_result(rng):
    net, x, t = dln_batch(rng, None)
    _, g = net.loss_and_grad(x, t, mode="probe")
    a = measure.internal_covariate_shift(net, x, t, optim.SGD(lr=0.01))
    b = measure.internal_covariate_shift(net, x, t, optim.SGD(lr=0.01), grad=g.copy())
    assert a == b


def test_gradient_change():
    g = np.array([1.0, 0.0])
    assert measure.gradient_change(g, g) == (0.0, 1.0)
    l2, cos = measure.gradient_change(g, -g)
    assert l2 == 2.0 and cos == -1.0
    l2, cos = measure.gradient_change(g, np.array([0.0, 3.0]))
    assert l2 == pytest.approx(math.sqrt(10)) and cos == 0.0
    l2, cos = measure.gradient_change(np.zeros(2), g)
    assert l2 == 1.0 and math.isnan(cos)
