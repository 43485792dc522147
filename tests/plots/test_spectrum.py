"""The Hessian-outlier panels (smoothnorm.plots.spectrum) drawn from hand-built RunResults."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from smoothnorm import plots
from smoothnorm.measure.linalg import SpectralDensity
from smoothnorm.runs.store import RunResult


def _run(rng, label):
    steps = np.array([0, 50, 200])
    nodes = np.sort(rng.normal(0, 1, (3, 1, 6)), axis=2) * np.array([1, 5, 20])[:, None, None]
    weights = rng.uniform(0.1, 1, (3, 1, 6))
    weights /= weights.sum(axis=2, keepdims=True)
    probes = {"spectrum/steps": steps, "spectrum/nodes": nodes, "spectrum/weights": weights,
              "spectrum/outlier_ratio": rng.uniform(1, 10, 3), "spectrum/gradient_share": np.array([0.1, np.nan, 0.8]),
              "spectrum/top_eigenvalues": np.sort(rng.uniform(1, 5, (3, 4)))[:, ::-1],
              "spectrum/grad_norm": rng.uniform(1, 2, 3)}
    return RunResult(path=Path("/nonexistent") / label, run_id=label, label=label, config={"run": {"label": label}},
                     status="finished", metrics={"step": np.arange(3)}, probes=probes, probe_meta={})


def _ax():
    fig = Figure()
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def test_density_panel_draws_the_smoothed_density_per_step(rng):
    runs = [_run(rng, "Standard"), _run(rng, "BN")]
    ax = _ax()
    plots.PANELS["spectrum_density"](ax, runs, run="BN", sigma=0.02)
    lines = ax.get_lines()
    assert len(lines) == 3 and ax.get_yscale() == "log"
    nodes, weights = runs[1].probes["spectrum/nodes"], runs[1].probes["spectrum/weights"]
    width = nodes.max() - nodes.min()
    for i, line in enumerate(lines):
        expected = SpectralDensity(nodes[i], weights[i]).density(line.get_xdata(), 0.02 * width)
        np.testing.assert_allclose(line.get_ydata(), np.maximum(expected, 1e-12), rtol=1e-12)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["step 0", "step 50", "step 200"]


def test_series_panel_draws_finite_values_per_run(rng):
    runs = [_run(rng, "Standard"), _run(rng, "BN")]
    ax = _ax()
    plots.PANELS["spectrum_series"](ax, runs, quantity="gradient_share")
    lines = ax.get_lines()
    assert len(lines) == 2
    np.testing.assert_array_equal(lines[0].get_xdata(), [0, 200])
    np.testing.assert_array_equal(lines[0].get_ydata(), [0.1, 0.8])


@pytest.mark.parametrize("kind, options, match", [
    ("spectrum_series", {"quantity": "trace"}, "quantity"),
    ("spectrum_density", {"sigma": 0}, "sigma"),
    ("spectrum_density", {"run": "nope"}, "run"),
])
def test_bad_options_are_named(rng, kind, options, match):
    with pytest.raises(ValueError, match=match):
        plots.PANELS[kind](_ax(), [_run(rng, "Standard")], **options)
