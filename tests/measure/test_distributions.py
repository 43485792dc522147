"""Sampled activation distributions (Figs 1c, 2, 6, 9) and Fig 8's moment series."""

import numpy as np
import pytest

from smoothnorm import measure
from smoothnorm.nn import models
from tests.reference import assert_unchanged, snapshot


def test_units_are_drawn_once_and_reproducibly(tiny_vgg_batch):
    net, x, _ = tiny_vgg_batch
    layers = ["features.0", "features.1", "classifier"]
    a = measure.ActivationSampler(net, layers, 3, np.random.default_rng(7))
    b = measure.ActivationSampler(net, layers, 3, np.random.default_rng(7))
    for name in layers:
        np.testing.assert_array_equal(a.units[name], b.units[name])
        assert a.units[name].size == 3 and len(set(a.units[name])) == 3
    first, second = a.record(x), a.record(x[::-1])
    for name in layers:
        np.testing.assert_array_equal(first[name]["units"], second[name]["units"])
    # A layer narrower than the request gives all of its units.
    all_units = measure.sample_units(net, ["features.0"], 100, np.random.default_rng(0))
    np.testing.assert_array_equal(all_units["features.0"], np.arange(4))


def test_record_summaries_match_direct_computation(tiny_vgg_batch):
    net, x, _ = tiny_vgg_batch
    sampler = measure.ActivationSampler(net, ["features.4", "classifier"], 2, np.random.default_rng(1), bins=7,
                                        keep_values=True)
    snap = snapshot(net)
    record = sampler.record(x)
    assert_unchanged(net, snap)
    net.forward(x, mode="probe", capture=["features.4", "classifier"])
    conv = net.captured["features.4"]  # (N, C, H, W): values over N, H, W
    fc = net.captured["classifier"]  # (N, C): values over N
    for name, out in (("features.4", conv), ("classifier", fc)):
        r = record[name]
        for k, unit in enumerate(r["units"]):
            values = out[:, unit].reshape(-1)
            assert r["mean"][k] == pytest.approx(values.mean(), rel=1e-12)
            assert r["var"][k] == pytest.approx(values.var(), rel=1e-12)
            np.testing.assert_allclose(r["quantiles"][k], np.quantile(values, r["quantile_levels"]), rtol=1e-12)
            assert r["counts"][k].sum() == values.size and r["counts"].shape == (2, 7)
            assert r["edges"][k][0] == values.min() and r["edges"][k][-1] == values.max()
            np.testing.assert_allclose(np.sort(r["values"][k]), np.sort(values.astype(np.float32)))
        assert not r["nonfinite"].any()
    assert record["features.4"]["values"].shape[1] == x.shape[0] * conv.shape[2] * conv.shape[3]


def test_fixed_bin_range_and_nonfinite_values(rng):
    net = models.dln(2, 4, in_dim=3, out_dim=2, seed=1)
    sampler = measure.ActivationSampler(net, ["layers.0"], 4, np.random.default_rng(0), bins=4, bin_range=(-1, 1))
    x = rng.standard_normal((50, 3))
    r = sampler.record(x)["layers.0"]
    np.testing.assert_allclose(r["edges"], np.tile(np.linspace(-1, 1, 5), (4, 1)))
    net.params[0] = 1e308  # overflow in the first layer's output: recorded, not raised
    with np.errstate(all="raise"):
        bad = sampler.record(np.full((5, 3), 1e10))["layers.0"]
    assert bad["nonfinite"].sum() > 0


def test_stack_records_and_moment_series():
    means = np.array([[0.0, 1.0], [0.5, 1.0], [0.25, 3.0]])
    variances = np.array([[1.0, 2.0], [2.0, 2.0], [1.5, 0.0]])
    series = measure.moment_series(means, variances)
    np.testing.assert_array_equal(series["abs_mean_change"], [[0.5, 0.0], [0.25, 2.0]])
    np.testing.assert_array_equal(series["abs_var_change"], [[1.0, 0.0], [0.5, 2.0]])
    np.testing.assert_array_equal(series["mean_drift"], [[0, 0], [0.5, 0], [0.25, 2.0]])
    np.testing.assert_array_equal(series["var_drift"], [[0, 0], [1.0, 0], [0.5, -2.0]])
    records = [{"a": {"units": np.array([1, 4]), "mean": m, "var": v}} for m, v in zip(means, variances)]
    stacked = measure.stack_records(records)
    np.testing.assert_array_equal(stacked["a"]["mean"], means)
    np.testing.assert_array_equal(stacked["a"]["units"], [1, 4])
    with pytest.raises(ValueError, match="means"):
        measure.moment_series(means, variances[:2])


def test_sampler_errors(tiny_vgg_batch):
    net, _, _ = tiny_vgg_batch
    with pytest.raises(ValueError, match=r"unknown layer names \['features.99'\]"):
        measure.ActivationSampler(net, ["features.99"], 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="units_per_layer"):
        measure.ActivationSampler(net, ["features.0"], 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        measure.ActivationSampler(net, ["features.0"], 2, 0)
    with pytest.raises(ValueError, match="quantiles"):
        measure.ActivationSampler(net, ["features.0"], 2, np.random.default_rng(0), quantiles=[1.5])
