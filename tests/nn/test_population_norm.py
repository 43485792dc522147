"""BatchNorm with population statistics (issue 15 item 1): forward and backward against a NumPy reference with the
statistics as constants, the refresh pass, running statistics, exact Hessian products against finite differences."""

import numpy as np
import pytest

from smoothnorm import measure, nn
from smoothnorm.nn import models
from smoothnorm.nn.norms import make_norm
from smoothnorm.nn.norms.batch import BatchNorm, refresh_population_statistics
from tests.reference import (
    batch_norm_reference,
    batch_norm_stats_reference,
    batch_norm_train_reference,
    central_difference,
    relative_error,
)


def _population_net(shape, rng, dtype=np.float64):
    layer = make_norm("batch", shape[0], statistics="population")
    net = nn.Network([("norm", layer)], input_shape=shape, loss=nn.SquaredError(), dtype=dtype, seed=0)
    net.params[:] = rng.uniform(0.5, 1.5, net.num_params)
    mean, var = rng.standard_normal(shape[0]), rng.uniform(0.2, 2.0, shape[0])
    layer.set_population_statistics(mean, var)
    return net, layer, mean, var


@pytest.mark.parametrize("shape", [(5,), (3, 4, 4)])
@pytest.mark.parametrize("mode", ["train", "probe"])
def test_forward_and_backward_match_reference_with_constant_statistics(rng, shape, mode):
    net, layer, mean, var = _population_net(shape, rng)
    x = rng.standard_normal((6, *shape)) * 2 + 1
    gamma, beta = layer.params["weight"].copy(), layer.params["bias"].copy()
    out = net.forward(x, mode)
    np.testing.assert_allclose(out, batch_norm_reference(x, mean, var, gamma, beta), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(out.shape)
    dx = net.backward(dy, need_input_grad=True)
    # The statistics are constants: y is affine in x per channel, so dx = dy * gamma / sqrt(var + eps).
    axes = (0,) if len(shape) == 1 else (0, 2, 3)
    bshape = (1, -1) + (1,) * (len(shape) - 1)
    inv = 1 / np.sqrt(var + layer.eps)
    np.testing.assert_allclose(dx, dy * (gamma * inv).reshape(bshape), rtol=1e-12)
    xhat = (x - mean.reshape(bshape)) * inv.reshape(bshape)
    np.testing.assert_allclose(layer.grads["weight"], (dy * xhat).sum(axis=axes), rtol=1e-10)
    np.testing.assert_allclose(layer.grads["bias"], dy.sum(axis=axes), rtol=1e-10)
    # And the input gradient is the derivative of the loss with the statistics held: central differences.
    y = rng.standard_normal(out.shape)
    _, g = net.loss_and_grad(x, y, mode="probe")
    dx = net.backward(net.loss_fn.backward(), need_input_grad=True)
    i = tuple(rng.integers(0, s) for s in x.shape)
    e = np.zeros_like(x)
    e[i] = 1.0
    numeric = central_difference(lambda t: net.loss(x + t[0] * e, y, mode="probe"), np.zeros(1))[0]
    assert relative_error(dx[i], numeric) < 1e-6


def test_refresh_gives_batch_statistics_of_the_subset_layer_by_layer(rng):
    """After a refresh on x, a population-BN network computes on x what the batch-statistics one does."""
    kwargs = dict(in_dim=4, out_dim=3, dtype=np.float64, seed=3)
    pop = models.dln(3, 5, norm="batch", norm_options={"statistics": "population"}, **kwargs)
    batch = models.dln(3, 5, norm="batch", **kwargs)
    x = rng.standard_normal((16, 4))
    assert refresh_population_statistics(pop, x) == 2
    np.testing.assert_allclose(pop.forward(x, "probe"), batch.forward(x, "probe"), rtol=1e-10, atol=1e-12)
    first = pop.layers[1]
    mean, var = batch_norm_stats_reference(pop.layers[0].forward(x, "probe"))
    np.testing.assert_allclose(first.population_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(first.population_var, var, rtol=1e-12)
    # On another batch the statistics stay those of the subset (no batch statistics).
    x2 = rng.standard_normal((8, 4)) + 3
    assert not np.allclose(pop.forward(x2, "probe"), batch.forward(x2, "probe"))
    assert refresh_population_statistics(batch, x) == 0


def test_train_mode_updates_running_statistics_from_population_statistics(rng):
    net, layer, _, _ = _population_net((3, 2, 2), rng)
    x = rng.standard_normal((10, 3, 2, 2))
    refresh_population_statistics(net, x)
    mean, var = batch_norm_stats_reference(x)
    net.forward(rng.standard_normal((4, 3, 2, 2)), "train")  # another batch: the update uses the subset's stats
    np.testing.assert_allclose(layer.running_mean, 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, 0.9 + 0.1 * var * 40 / 39, rtol=1e-12)
    assert int(layer.num_batches_tracked) == 1
    before = layer.running_mean.copy()
    net.forward(x, "probe")
    np.testing.assert_array_equal(layer.running_mean, before)
    # Eval mode keeps using the running statistics.
    ev = net.forward(x, "eval")
    gamma, beta = layer.params["weight"], layer.params["bias"]
    np.testing.assert_allclose(ev, batch_norm_reference(x, layer.running_mean, layer.running_var, gamma, beta))


def test_float32_layer_tracks_float64(rng):
    x = rng.standard_normal((6, 3, 4, 4))
    net64, layer, mean, var = _population_net((3, 4, 4), rng)
    net32 = net64.astype(np.float32)
    assert net32.layers[0].population_mean is not None
    out = net32.forward(x.astype(np.float32), "train")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, net64.forward(x, "probe"), rtol=1e-5, atol=1e-5)
    assert relative_error(out, batch_norm_train_reference(x)) > 1e-3  # really not batch statistics


def test_errors_name_what_is_wrong():
    layer = BatchNorm(3, statistics="population")
    net = nn.Network([("norm", layer)], input_shape=(3,), loss=nn.SquaredError(), dtype=np.float64)
    with pytest.raises(ValueError, match="no population statistics"):
        net.forward(np.ones((2, 3)), "train")
    with pytest.raises(ValueError, match="mean: expected 3"):
        layer.set_population_statistics(np.zeros(2), np.ones(3))
    with pytest.raises(ValueError, match="var: expected non-negative"):
        layer.set_population_statistics(np.zeros(3), -np.ones(3))
    with pytest.raises(ValueError, match="statistics"):
        BatchNorm(3, statistics="running")
    with pytest.raises(ValueError, match="statistics='population'"):
        BatchNorm(3).set_population_statistics(np.zeros(3), np.ones(3))


@pytest.mark.parametrize("model", ["dln", "conv"])
def test_exact_hessian_products_match_central_differences(rng, model):
    """Smooth networks (no ReLU): the R-pass through FixedStandardization equals finite differences of the
    gradient with the population statistics held."""
    if model == "dln":
        net = models.dln(3, 4, in_dim=3, out_dim=2, norm="batch", norm_options={"statistics": "population"},
                         dtype=np.float64, seed=1)
        x, y = rng.standard_normal((12, 3)), rng.standard_normal((12, 2))
    else:
        net = nn.Network([("features.0", nn.Conv2d(2, 3, 3, padding=1)),
                          ("features.1", BatchNorm(3, statistics="population")),
                          ("flatten", nn.Flatten()), ("classifier", nn.Linear(3 * 4 * 4, 3))],
                         input_shape=(2, 4, 4), loss=nn.SoftmaxCrossEntropy(), dtype=np.float64,
                         seed=2)
        x, y = rng.standard_normal((6, 2, 4, 4)), rng.integers(0, 3, 6)
    refresh_population_statistics(net, rng.standard_normal(x.shape) * 1.5 + 0.3)
    net.params[:] += 0.3 * rng.standard_normal(net.num_params)  # gamma, beta away from 1, 0
    exact = measure.hessian_operator(net, x, y, scheme="exact")
    central = measure.hessian_operator(net, x, y, scheme="central")
    for _ in range(3):
        v = rng.standard_normal(net.num_params)
        assert relative_error(exact.matvec(v), central.matvec(v)) < 1e-6
