"""Gradient-direction probes, random-direction probes, step grids and Li et al. loss surfaces."""

import math

import numpy as np
import pytest

import smoothnorm
from smoothnorm import measure, nn, optim
from smoothnorm.nn import models
from tests.helpers import linear_model, regression_batch, stepped
from tests.reference import assert_unchanged, linear_regression_hessian, relative_error, snapshot


def quadratic_setup(rng, in_dim=5, out_dim=3):
    net = linear_model(in_dim, out_dim, seed=int(rng.integers(1000)))
    x, t = regression_batch(rng, in_dim=in_dim, out_dim=out_dim)
    h = linear_regression_hessian(x, out_dim)
    _, g = net.loss_and_grad(x, t, mode="probe")
    return net, x, t, h, g.copy()


def test_quadratic_gradient_distances_and_beta_closed_form(rng):
    net, x, t, h, g = quadratic_setup(rng)
    etas = np.array([1e-4, 1e-3, 1e-2, 0.05])
    base = net.loss(x, t)
    probe = measure.probe_gradient_direction(net, x, t, etas)
    hg = h @ g
    np.testing.assert_allclose(probe.grad_distances, etas * np.linalg.norm(hg), rtol=1e-10)
    # On a quadratic every eta gives the same ratio ||H g|| / ||g||.
    np.testing.assert_allclose(probe.betas, np.linalg.norm(hg) / np.linalg.norm(g), rtol=1e-10)
    assert probe.effective_beta == pytest.approx(np.linalg.norm(hg) / np.linalg.norm(g), rel=1e-10)
    expected_losses = base - etas * (g @ g) + 0.5 * etas**2 * (g @ hg)
    np.testing.assert_allclose(probe.losses, expected_losses, rtol=1e-10)
    assert probe.base_loss == pytest.approx(base, rel=1e-14)
    assert probe.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-14)
    assert probe.num_diverged == 0 and probe.direction == "gradient"
    by_eta = measure.probe_gradient_direction(net, x, t, etas, beta_normalization="eta")
    np.testing.assert_allclose(by_eta.betas, np.linalg.norm(hg), rtol=1e-10)
    assert probe.loss_band == (probe.losses.min(), probe.losses.max())


def test_probe_leaves_network_bit_identical(tiny_vgg_batch):
    net, x, y = tiny_vgg_batch
    net32 = models.vgg("vgg11", norm="batch", width=1 / 16, dtype=np.float32, seed=4)
    stepped(net32, x, y)
    for model in (net, net32):
        snap = snapshot(model)
        lr = 0.1
        measure.probe_gradient_direction(model, x, y, measure.step_grid(lr, "vgg"))
        measure.probe_random_direction(model, x, y, [0.1], np.random.default_rng(0))
        measure.loss_surface_1d(model, x, y, measure.filter_normalized_direction(model, np.random.default_rng(1)),
                                [-0.5, 0.5])
        assert_unchanged(model, snap)


def test_given_gradient_gives_the_same_probe(tiny_vgg_batch):
    net, x, y = tiny_vgg_batch
    loss, g = net.loss_and_grad(x, y, mode="probe")
    g = g.copy()
    etas = [0.05, 0.4]
    a = measure.probe_gradient_direction(net, x, y, etas)
    b = measure.probe_gradient_direction(net, x, y, etas, grad=g, loss=loss)
    for field in ("losses", "grad_distances", "betas"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.base_loss == b.base_loss and a.effective_beta == b.effective_beta


def test_divergent_points_are_counted_not_raised(rng):
    net = models.dln(3, 6, in_dim=4, out_dim=2, dtype=np.float32, seed=2)
    x, t = regression_batch(rng, n=10, in_dim=4, out_dim=2)
    etas = [1e-3, 1e12, 1e30]
    with np.errstate(all="raise"):  # a user's strict setting must not turn divergence into an exception
        probe = measure.probe_gradient_direction(net, x, t, etas)
    assert np.isfinite(probe.losses[0]) and np.isfinite(probe.grad_distances[0])
    assert not np.isfinite(probe.losses[2])
    diverged = ~(np.isfinite(probe.losses) & np.isfinite(probe.grad_distances))
    assert probe.num_diverged == int(diverged.sum()) >= 1
    assert math.isfinite(probe.effective_beta)
    assert probe.effective_beta == np.max(probe.betas[np.isfinite(probe.betas)])


def test_zero_step_and_zero_gradient_give_nan_beta(rng):
    net, x, t, _, g = quadratic_setup(rng)
    probe = measure.probe_gradient_direction(net, x, t, [0.0, 1e-3])
    assert math.isnan(probe.betas[0]) and probe.grad_distances[0] == 0.0
    assert probe.effective_beta == probe.betas[1]
    zero = measure.probe_direction(net, x, t, [1e-3], np.zeros_like(g))
    assert zero.grad_distances[0] == 0.0 and math.isnan(zero.effective_beta)


def test_probe_along_a_given_direction_on_quadratic(rng):
    net, x, t, h, g = quadratic_setup(rng)
    d = rng.standard_normal(g.size)
    etas = np.array([1e-3, 2e-2])
    probe = measure.probe_direction(net, x, t, etas, d)
    np.testing.assert_allclose(probe.grad_distances, etas * np.linalg.norm(h @ d), rtol=1e-10)
    np.testing.assert_allclose(probe.betas, np.linalg.norm(h @ d) / np.linalg.norm(d), rtol=1e-10)
    assert probe.direction == "given" and probe.direction_norm == pytest.approx(np.linalg.norm(d))


def test_random_direction_probe_has_gradient_length(rng):
    net, x, t, h, g = quadratic_setup(rng)
    probe = measure.probe_random_direction(net, x, t, [1e-3], np.random.default_rng(5))
    assert probe.direction == "random"
    assert probe.direction_norm == pytest.approx(np.linalg.norm(g), rel=1e-12)
    d = measure.random_direction(net, np.random.default_rng(5), norm=np.linalg.norm(g))
    np.testing.assert_allclose(probe.grad_distances, 1e-3 * np.linalg.norm(h @ d), rtol=1e-10)


def test_step_grid():
    np.testing.assert_allclose(measure.step_grid(0.1, "vgg"), [0.05, 0.1, 0.2, 0.4])
    np.testing.assert_allclose(measure.step_grid(1e-6, "dln"), [1e-8, 1e-7, 1e-6, 1e-5, 3e-5])
    lin = measure.step_grid(0.1, "vgg", "linear", num=8)
    np.testing.assert_allclose(lin, 0.1 * np.linspace(0.5, 4, 8))
    geo = measure.step_grid(1e-6, "dln", "geometric", num=5)
    np.testing.assert_allclose(geo[[0, -1]], [1e-8, 3e-5])
    np.testing.assert_allclose(geo[1:] / geo[:-1], geo[1] / geo[0])
    np.testing.assert_allclose(measure.step_grid(1.0, "vgg", "linear", num=3, multipliers=(1, 3)), [1, 2, 3])
    with pytest.raises(ValueError, match="preset"):
        measure.step_grid(0.1, "resnet")
    with pytest.raises(ValueError, match="lr"):
        measure.step_grid(-1.0)
    with pytest.raises(ValueError, match="num"):
        measure.step_grid(0.1, spacing="linear", num=1)


def test_bad_inputs(rng):
    net, x, t, _, g = quadratic_setup(rng)
    with pytest.raises(ValueError, match="etas"):
        measure.probe_gradient_direction(net, x, t, [])
    with pytest.raises(ValueError, match="etas"):
        measure.probe_gradient_direction(net, x, t, [np.nan])
    with pytest.raises(ValueError, match="beta_normalization"):
        measure.probe_gradient_direction(net, x, t, [0.1], beta_normalization="sqrt")
    with pytest.raises(ValueError, match="direction"):
        measure.probe_direction(net, x, t, [0.1], np.zeros(3))
    with pytest.raises(ValueError, match="grad"):
        measure.probe_gradient_direction(net, x, t, [0.1], grad=np.zeros(3))
    with pytest.raises(ValueError, match="x"):
        measure.probe_gradient_direction(net, x[:, :2], t, [0.1])


def test_filter_normalized_direction(tiny_vgg_batch):
    net, _, _ = tiny_vgg_batch
    d = measure.filter_normalized_direction(net, np.random.default_rng(0))
    slices = net.param_slices()
    w = net.params
    conv = slices["features.0.weight"]
    shape = net["features.0"].params["weight"].shape
    dn = np.linalg.norm(d[conv].reshape(shape[0], -1), axis=1)
    wn = np.linalg.norm(w[conv].reshape(shape[0], -1), axis=1)
    np.testing.assert_allclose(dn, wn, rtol=1e-8)
    fc = slices["classifier.weight"]
    rows = net["classifier"].params["weight"].shape
    np.testing.assert_allclose(np.linalg.norm(d[fc].reshape(rows), axis=1),
                               np.linalg.norm(w[fc].reshape(rows), axis=1), rtol=1e-8)
    for name in ("features.0.bias", "features.1.weight", "features.1.bias", "classifier.bias"):
        assert not d[slices[name]].any()
    same = measure.filter_normalized_direction(net, np.random.default_rng(0), norm_params="parameter")
    np.testing.assert_array_equal(same[slices["features.1.weight"]], w[slices["features.1.weight"]])
    np.testing.assert_array_equal(same[conv], d[conv])
    one = measure.filter_normalized_direction(net, np.random.default_rng(0), norm_params="filter")
    s = slices["features.1.weight"]
    assert np.linalg.norm(one[s]) == pytest.approx(np.linalg.norm(w[s]), rel=1e-8)
    with pytest.raises(ValueError, match="norm_params"):
        measure.filter_normalized_direction(net, np.random.default_rng(0), norm_params="drop")


def test_loss_surfaces_on_quadratic(rng):
    net, x, t, h, g = quadratic_setup(rng)
    base = net.loss(x, t)
    d1, d2 = rng.standard_normal(g.size), rng.standard_normal(g.size)
    alphas = np.linspace(-0.2, 0.2, 5)
    s1 = measure.loss_surface_1d(net, x, t, d1, alphas)
    expected = base + alphas * (g @ d1) + 0.5 * alphas**2 * (d1 @ h @ d1)
    assert relative_error(s1.losses, expected) < 1e-10
    assert s1.accuracies is None and s1.num_diverged == 0
    a, b = np.array([-0.1, 0.0, 0.3]), np.array([0.0, 0.2])
    s2 = measure.loss_surface_2d(net, x, t, d1, d2, a, b)
    assert s2.losses.shape == (3, 2)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            d = ai * d1 + bj * d2
            assert s2.losses[i, j] == pytest.approx(base + g @ d + 0.5 * d @ h @ d, rel=1e-10)


def test_loss_surface_reports_accuracy_for_classifiers(tiny_vgg_batch):
    net, x, y = tiny_vgg_batch
    d = measure.filter_normalized_direction(net, np.random.default_rng(2))
    s = measure.loss_surface_1d(net, x, y, d, [0.0])
    assert s.losses[0] == pytest.approx(net.loss(x, y, mode="probe"), rel=1e-12)
    assert s.accuracies[0] == net.accuracy(x, y, mode="probe")


@pytest.mark.parametrize("norm", sorted(smoothnorm.NORMS))
def test_every_norm_is_left_untouched_by_the_measurements(rng, norm):
    # A small conv net, so that norms needing feature maps (instance, group) fit too.
    layers = [("layers.0", nn.Conv2d(2, 4)), ("layers.1", nn.make_norm(norm, 4)), ("layers.2", nn.ReLU()),
              ("layers.3", nn.MaxPool2d()), ("flatten", nn.Flatten()), ("layers.4", nn.Linear(16, 3))]
    net = nn.Network(layers, input_shape=(2, 4, 4), loss=nn.SoftmaxCrossEntropy(), dtype=np.float32, seed=1)
    x = rng.standard_normal((10, 2, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=10)
    stepped(net, x, y)
    layer_state = [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(la).items()
                    if k.startswith("noise")} for la in net.layers]
    before = net.loss(x, y, mode="probe")
    snap = snapshot(net)
    probe = measure.probe_gradient_direction(net, x, y, [0.01, 0.1])
    measure.internal_covariate_shift(net, x, y, optim.SGD(lr=0.1, momentum=0.9))
    measure.ActivationSampler(net, ["layers.1"], 2, np.random.default_rng(0)).record(x)
    top = measure.hessian_top_eigenvalues(net, x, y)
    assert_unchanged(net, snap)
    for la, saved in zip(net.layers, layer_state):
        for k, v in saved.items():
            assert np.array_equal(getattr(la, k), v), (la.name, k)
    assert net.loss(x, y, mode="probe") == before
    assert probe.num_diverged == 0 and np.isfinite(top).all()
