"""Probes along the optimizer's own update, and the Hessian condition number of small models."""

import numpy as np
import pytest

from smoothnorm import measure, optim
from smoothnorm.data import gaussian_regression, normalize_inputs
from smoothnorm.measure import conditioning
from tests.helpers import linear_model, regression_batch
from tests.reference import assert_unchanged, linear_regression_hessian, snapshot


def _optimizer_with_state(kind, net, x, t, steps=3):
    opt = {"sgd": optim.SGD(lr=0.01), "momentum": optim.SGD(lr=0.01, momentum=0.9),
           "rmsprop": optim.RMSprop(lr=0.003), "adam": optim.Adam(lr=0.01)}[kind]
    for _ in range(steps):
        net.loss_and_grad(x, t, mode="train")
        opt.step(net.params, net.grads)
    return opt


@pytest.mark.parametrize("kind", ["sgd", "momentum", "rmsprop", "adam"])
def test_update_probe_on_a_quadratic(rng, kind):
    """On least squares the probe losses follow the quadratic along d, and eta = lr lands where step() goes."""
    net = linear_model(seed=int(rng.integers(1000)))
    x, t = regression_batch(rng)
    opt = _optimizer_with_state(kind, net, x, t)
    h = linear_regression_hessian(x, 3)
    base, g = net.loss_and_grad(x, t, mode="probe")
    g = g.copy()
    d = (net.params - opt.peek(net.params, g)) / opt.lr
    etas = np.array([0.5, 1.0, 2.0, 4.0]) * opt.lr
    snap, state = snapshot(net), opt.state_dict()
    probe = measure.probe_update_direction(net, x, t, etas, opt)
    assert_unchanged(net, snap)
    after = opt.state_dict()
    assert after.keys() == state.keys() and all(np.array_equal(after[k], state[k]) for k in state)
    assert probe.direction == "update"
    np.testing.assert_allclose(probe.losses, base - etas * (g @ d) + 0.5 * etas**2 * (d @ h @ d), rtol=1e-9)
    np.testing.assert_allclose(probe.grad_distances, etas * np.linalg.norm(h @ d), rtol=1e-9)
    np.testing.assert_allclose(probe.betas, np.linalg.norm(h @ d) / np.linalg.norm(d), rtol=1e-9)
    assert probe.direction_norm == pytest.approx(np.linalg.norm(d), rel=1e-12)
    stepped = net.copy()
    opt.step(stepped.params, g)
    assert probe.losses[1] == pytest.approx(stepped.loss(x, t), rel=1e-12)
    if kind != "sgd":
        # Momentum and adaptive methods do not move along -g: the probe differs from the gradient probe.
        along_g = measure.probe_gradient_direction(net, x, t, etas)
        assert not np.allclose(probe.losses, along_g.losses, rtol=1e-6)


def test_plain_sgd_update_probe_is_the_gradient_probe(tiny_vgg_batch):
    net, x, y = tiny_vgg_batch
    opt = optim.SGD(lr=0.05)
    etas = measure.step_grid(0.05, "vgg")
    along_update = measure.probe_update_direction(net, x, y, etas, opt)
    along_g = measure.probe_gradient_direction(net, x, y, etas)
    np.testing.assert_allclose(along_update.losses, along_g.losses, rtol=1e-9)
    np.testing.assert_allclose(along_update.betas, along_g.betas, rtol=1e-6)


def test_update_direction_needs_an_optimizer(rng):
    net = linear_model()
    x, t = regression_batch(rng)
    with pytest.raises(ValueError, match=r"optimizer: expected an optimizer with a peek\(params, grads\) method"):
        measure.probe_update_direction(net, x, t, [0.1], object())
    opt = optim.SGD(lr=0.1)
    opt.lr = 0.0
    with pytest.raises(ValueError, match=r"optimizer: expected a positive finite learning rate"):
        measure.update_direction(net, opt, np.zeros(net.num_params))


@pytest.mark.parametrize("force_lanczos", [False, True])
def test_condition_number_of_least_squares(rng, monkeypatch, force_lanczos):
    if force_lanczos:
        monkeypatch.setattr(conditioning, "DENSE_MAX_PARAMS", 0)
    net = linear_model(in_dim=6, out_dim=3, seed=2)
    x, t = regression_batch(rng, n=40, in_dim=6, out_dim=3)
    x = x * np.logspace(-1, 1, 6)
    exact = np.linalg.eigvalsh(linear_regression_hessian(x, 3))
    result = measure.hessian_condition_number(net, x, t)
    assert result.method == ("lanczos" if force_lanczos else "dense") and result.num_params == 18
    assert result.top == pytest.approx(exact[-1], rel=1e-6)
    assert result.bottom == pytest.approx(exact[0], rel=1e-5)
    assert result.condition_number == pytest.approx(exact[-1] / exact[0], rel=1e-5)


def test_standardizing_badly_scaled_features_shrinks_the_condition_number():
    x, y = gaussian_regression(200, 5, seed=3, feature_scale_range=100.0)
    (xs,) = normalize_inputs("standardize", x)
    net = linear_model(in_dim=5, out_dim=5)
    raw = measure.hessian_condition_number(net, x, y).condition_number
    standardized = measure.hessian_condition_number(net, xs, y).condition_number
    assert raw > 1000 * standardized and standardized < 10


def test_condition_number_refuses_large_models(rng):
    net = linear_model(in_dim=6, out_dim=3)
    x, t = regression_batch(rng, in_dim=6, out_dim=3)
    with pytest.raises(ValueError, match=r"max_params: the Hessian has 18 parameters, more than max_params=10"):
        measure.hessian_condition_number(net, x, t, max_params=10)
