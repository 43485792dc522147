"""The surface probe (Li et al.'s filter-normalized loss surfaces in training): its values are the loss at the grid
points, it leaves the training bit for bit, its directions are filter-normalized and reproducible from the recorded
seed; and the grid's curvature estimate."""

import numpy as np
import pytest

from smoothnorm import optim, train
from smoothnorm.measure.loss_surface import grid_curvature, surface_directions
from smoothnorm.nn import models
from smoothnorm.testing import check_probe
from smoothnorm.train.probes import PROBES
from smoothnorm.train.probes.beyond import SurfaceProbe


def _trainer(probes, seed=3):
    """A width-1/16 VGG-11 with BatchNorm in float64, SGD with momentum (optimizer state), batches of 8 images."""
    net = models.vgg("vgg11", norm="batch", width=1 / 16, dtype=np.float64, seed=seed)

    def batch_fn(step):
        rng = np.random.default_rng([seed, step])
        return rng.standard_normal((8, 3, 32, 32)), rng.integers(0, 10, size=8)

    return train.Trainer(net, optim.SGD(lr=0.05, momentum=0.9), batch_fn, probes, seed=seed), batch_fn


def test_registered_as_surface():
    assert PROBES["surface"] is SurfaceProbe


def test_values_are_the_probe_mode_loss_at_the_grid_points_with_the_recorded_directions():
    probe = SurfaceProbe(name="surface", every=0, steps=[2], points=5, grid=5, span=0.5, seed=7)
    trainer, batch_fn = _trainer([probe])
    trainer.run(3)
    rec, meta = trainer.probe_arrays(), probe.meta()
    assert rec["surface/steps"].tolist() == [2]
    assert (meta["seed"], meta["norm_params"], meta["mode"], meta["grid"], meta["points"]) == (7, "zero", "probe", 5, 5)
    # A twin without the probe stopped at step 2 has the weights the probe saw (it changes no training).
    twin, _ = _trainer([])
    twin.run(2)
    net, (x, y) = twin.net, batch_fn(2)
    d1, d2 = surface_directions(net, meta["seed"], norm_params=meta["norm_params"])
    w = net.params.copy()
    coords, alphas = np.asarray(meta["coords"]), np.asarray(meta["alphas"])
    assert coords.tolist() == alphas.tolist() == [-0.5, -0.25, 0.0, 0.25, 0.5]
    expected = np.empty((5, 5))
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            net.params[...] = (w + a * d1) + b * d2  # w + a d1 + b d2, as the surface moves: along d1, then d2
            expected[i, j] = net.loss(x, y, mode="probe")
    curve = np.empty(5)
    for i, a in enumerate(alphas):
        net.params[...] = w + a * d1
        curve[i] = net.loss(x, y, mode="probe")
    net.params[...] = w
    np.testing.assert_allclose(rec["surface/losses_2d"][0], expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(rec["surface/losses_1d"][0], curve, rtol=1e-12, atol=0)
    assert rec["surface/base_loss"][0] == net.loss(x, y, mode="probe") == rec["surface/losses_2d"][0][2, 2]
    np.testing.assert_array_equal(rec["surface/losses_2d"][0][:, 2], rec["surface/losses_1d"][0])
    np.testing.assert_array_equal(rec["surface/curvature"][0], grid_curvature(expected, coords, coords))
    np.testing.assert_allclose(rec["surface/direction_norms"][0], [np.linalg.norm(d1), np.linalg.norm(d2)],
                               rtol=1e-12)
    acc = rec["surface/accuracies_2d"][0]
    assert acc.shape == (5, 5) and np.all((acc >= 0) & (acc <= 1))
    assert rec["surface/num_diverged"][0] == 0


def test_leaves_network_buffers_and_optimizer_bit_for_bit():
    """check_probe: params, grads, running statistics and optimizer state unchanged at every step, and the training
    with the probe ends where the training without it ends."""
    report = check_probe(SurfaceProbe(name="surface", every=1, points=3, grid=3), steps=3)
    assert all(c.passed for c in report.checks)
    net = models.vgg("vgg11", norm="batch", width=1 / 16, dtype=np.float32, seed=0)
    check_probe(SurfaceProbe(name="surface", every=1, points=3, grid=3, seed=1), net=net, steps=2)


def test_directions_are_filter_normalized_and_reproducible_from_the_seed():
    net = models.vgg("vgg11", norm="batch", width=1 / 16, dtype=np.float32, seed=1)
    d1, d2 = surface_directions(net, 5)
    again = surface_directions(net, 5)
    np.testing.assert_array_equal(d1, again[0])
    np.testing.assert_array_equal(d2, again[1])
    assert not np.array_equal(d1, d2)
    assert not np.array_equal(d1, surface_directions(net, 6)[0])
    w = net.params.astype(np.float64)
    slices = net.param_slices()
    for layer in net.layers:
        for pname, value in layer.params.items():
            s = slices[f"{layer.name}.{pname}"]
            for d in (d1, d2):
                if value.ndim >= 2:
                    dn = np.linalg.norm(d[s].astype(np.float64).reshape(value.shape[0], -1), axis=1)
                    wn = np.linalg.norm(w[s].reshape(value.shape[0], -1), axis=1)
                    np.testing.assert_allclose(dn, wn, rtol=1e-5)
                else:
                    assert not d[s].any(), f"{layer.name}.{pname}: 1-D parameters are left out (norm_params='zero')"
    # Another policy for 1-D parameters: the direction equals the parameter there.
    p1, _ = surface_directions(net, 5, norm_params="parameter")
    gamma = slices["features.1.weight"]  # the first BatchNorm's gamma
    assert net.layers[1].params["weight"].ndim == 1
    np.testing.assert_array_equal(p1[gamma], net.params[gamma])
    with pytest.raises(ValueError, match="seed: expected a non-negative integer"):
        surface_directions(net, -1)


def test_grid_curvature_is_exact_on_a_quadratic():
    h = np.array([[3.0, -1.2], [-1.2, 0.5]])
    coords = np.linspace(-1.0, 1.0, 7)
    a, b = np.meshgrid(coords, coords, indexing="ij")
    losses = 2.0 + 0.5 * (h[0, 0] * a**2 + 2 * h[0, 1] * a * b + h[1, 1] * b**2) + 0.3 * a - 0.1 * b
    np.testing.assert_allclose(grid_curvature(losses, coords, coords), np.linalg.eigvalsh(h), rtol=1e-10)
    losses[3, 4] = np.inf
    assert np.isnan(grid_curvature(losses, coords, coords)).all()
    with pytest.raises(ValueError, match="steps1: expected an odd number"):
        grid_curvature(np.zeros((4, 7)), np.linspace(-1, 1, 4), coords)


@pytest.mark.parametrize("options, match", [
    ({"points": 4}, "points: expected 0 or an odd integer >= 3"),
    ({"grid": 1}, "grid: expected 0 or an odd integer >= 3"),
    ({"points": 0, "grid": 0}, "at least one of them above 0"),
    ({"span": 0.0}, "span: expected a positive finite number"),
])
def test_bad_options_are_named_at_setup(options, match):
    with pytest.raises(ValueError, match=match):
        _trainer([SurfaceProbe(name="surface", every=1, **options)])
