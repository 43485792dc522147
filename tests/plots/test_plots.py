"""Figure panels drawn from hand-built RunResults: drawn content, options, errors and atomic files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure

from smoothnorm import plots
from smoothnorm.measure.distributions import moment_series
from smoothnorm.runs.store import RunResult

ETAS = [0.05, 0.1, 0.2, 0.4]
ICS_LAYERS = ["features.0", "features.3", "classifier"]
DIST_LAYERS = ["features.3", "features.7"]


def make_run(rng, label="Standard", status="finished", steps=40, probe_every=5, lr=0.1, nonfinite_step=None):
    """A RunResult with every metric and probe array, shaped as the trainer writes them."""
    step = np.arange(steps, dtype=np.int64)
    train_acc = np.clip(0.1 + 0.02 * step + rng.normal(0, 0.05, steps), 0, 1)
    test_acc = np.full(steps, np.nan)
    test_acc[9::10] = rng.uniform(0.2, 0.8, len(test_acc[9::10]))
    loss = np.exp(-0.05 * step) * 2 + rng.uniform(0, 0.1, steps)
    pst = np.arange(0, steps, probe_every, dtype=np.int64)
    s, e = len(pst), len(ETAS)
    losses = rng.uniform(0.5, 5.0, (s, e))
    dists = rng.uniform(1.0, 100.0, (s, e))
    if nonfinite_step is not None:
        losses[nonfinite_step, -1] = np.inf
        losses[nonfinite_step, -2] = np.nan
        dists[nonfinite_step, -1] = np.nan
    probes = {
        "landscape/steps": pst,
        "landscape/losses": losses,
        "landscape/grad_distances": dists,
        "landscape/betas": dists / np.asarray(ETAS),
        "landscape/effective_beta": rng.uniform(5, 45, s),
        "landscape/base_loss": losses[:, 0],
        "landscape/grad_norm": rng.uniform(1, 2, s),
        "landscape/num_diverged": (~np.isfinite(losses)).sum(axis=1),
        "ics/steps": pst,
        "ics/l2": rng.uniform(0.01, 10, (s, len(ICS_LAYERS))),
        "ics/cosine": rng.uniform(-1, 1, (s, len(ICS_LAYERS))),
        "distributions/steps": pst,
        "hessian/steps": pst,
        "hessian/top_eigenvalues": np.sort(rng.uniform(1, 50, (s, 2)), axis=1)[:, ::-1],
    }
    k, bins, q = 3, 10, 7
    units = {}
    for layer in DIST_LAYERS:
        edges = np.sort(rng.normal(0, 1 + np.arange(s)[:, None, None] * 0.1, (s, k, bins + 1)), axis=2)
        probes[f"distributions/{layer}/mean"] = rng.normal(0, 1, (s, k))
        probes[f"distributions/{layer}/var"] = rng.uniform(0.5, 2, (s, k))
        probes[f"distributions/{layer}/quantiles"] = np.sort(rng.normal(0, 1, (s, k, q)), axis=2)
        probes[f"distributions/{layer}/quantile_levels"] = np.tile(np.linspace(0.01, 0.99, q), (s, 1))
        probes[f"distributions/{layer}/counts"] = rng.integers(0, 50, (s, k, bins))
        probes[f"distributions/{layer}/edges"] = edges
        probes[f"distributions/{layer}/units"] = np.tile(np.array([1, 4, 6]), (s, 1))
        probes[f"distributions/{layer}/nonfinite"] = np.zeros((s, k), dtype=np.int64)
        units[layer] = [1, 4, 6]
    return RunResult(
        path=Path("/nonexistent") / label,
        run_id=label.lower().replace(" ", "_"),
        label=label,
        config={"run": {"label": label, "lr": lr, "norm": "none", "model": "vgg", "arch": "vgg16"}},
        status=status,
        metrics={"step": step, "loss": loss, "train_acc": train_acc, "test_acc": test_acc},
        probes=probes,
        probe_meta={
            "landscape": {"etas": ETAS, "beta_normalization": "distance", "direction": "gradient"},
            "ics": {"layers": ICS_LAYERS},
            "distributions": {"layers": DIST_LAYERS, "units": units},
        },
    )


def new_ax():
    fig = Figure()
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def legend_texts(ax):
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def naive_moving_average(v, w):
    left, right = (w - 1) // 2, w - 1 - (w - 1) // 2
    return np.array([np.mean(v[max(0, i - left) : i + right + 1]) for i in range(len(v))])


@pytest.fixture
def runs(rng):
    return [make_run(rng, "Standard"), make_run(rng, "Standard + BatchNorm", nonfinite_step=2)]


# ----------------------------------------------------------------------------------------------------------------
def test_moving_average_matches_naive(rng):
    v = rng.normal(size=23)
    for w in (1, 2, 3, 4, 7, 50):
        np.testing.assert_allclose(plots.moving_average(v, w), naive_moving_average(v, w), rtol=1e-12)
    with pytest.raises(ValueError, match="smooth"):
        plots.moving_average(v, 0)


def test_run_colors_paper_and_cycle():
    colors = plots.run_colors(["Standard + L1", "Standard", "Standard + BatchNorm", "Standard + L2"])
    assert colors["Standard"] == plots.KNOWN_COLORS["standard"]
    assert colors["Standard + BatchNorm"] == plots.KNOWN_COLORS["standard + batchnorm"]
    assert len(set(colors.values())) == 4


@pytest.mark.parametrize("smooth", [1, 5])
def test_accuracy_line_is_smoothed_metric(runs, smooth):
    ax = new_ax()
    plots.draw_accuracy(ax, runs, metric="train_acc", smooth=smooth)
    lines = [ln for ln in ax.lines if ln.get_label() in [r.label for r in runs]]
    for line, run in zip(lines, runs):
        np.testing.assert_array_equal(line.get_xdata(), run.metrics["step"])
        expected = naive_moving_average(run.metrics["train_acc"] * 100, smooth)
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
    assert legend_texts(ax) == [r.label for r in runs]
    assert ax.get_xlabel() == "training step" and "accuracy (%)" in ax.get_ylabel()
    assert ax.get_yscale() == "linear"


def test_accuracy_test_metric_connects_eval_points_and_logy(rng):
    run = make_run(rng)
    ax = new_ax()
    plots.draw_accuracy(ax, [run], metric="test_acc", logy=True)
    keep = np.isfinite(run.metrics["test_acc"])
    (line,) = ax.lines
    np.testing.assert_array_equal(line.get_xdata(), run.metrics["step"][keep])
    np.testing.assert_allclose(line.get_ydata(), run.metrics["test_acc"][keep] * 100)
    assert not np.isnan(line.get_ydata()).any()
    assert ax.get_yscale() == "log"


def test_accuracy_diverged_run(rng):
    run = make_run(rng, "Standard", status="diverged")
    run.metrics["loss"][30:] = np.inf
    run.metrics["loss"][35:] = np.nan
    ax = new_ax()
    plots.draw_accuracy(ax, [run], metric="loss")
    assert legend_texts(ax) == ["Standard (diverged)"]
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), np.arange(30))
    # the divergence marker sits at the last finite point
    assert ax.lines[1].get_xdata()[0] == 29 and ax.lines[1].get_marker() == "x"


def band_vertices(ax):
    polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
    return [np.concatenate([p.vertices for p in poly.get_paths()]) for poly in polys]


@pytest.mark.parametrize("quantity", ["losses", "grad_distances"])
def test_band_spans_min_max_of_finite_values(runs, quantity):
    ax = new_ax()
    plots.draw_band(ax, runs, quantity=quantity)
    verts = band_vertices(ax)
    assert len(verts) == len(runs)
    for v, run in zip(verts, runs):
        steps = run.probes["landscape/steps"]
        values = run.probes[f"landscape/{quantity}"]
        for i, step in enumerate(steps):
            finite = values[i][np.isfinite(values[i])]
            ys = v[v[:, 0] == step, 1]
            assert ys.min() == finite.min() and ys.max() == finite.max()
        assert np.isfinite(v).all()
    assert ax.get_yscale() == ("log" if quantity == "losses" else "linear")
    # the run with non-finite points gets a marker at that step and a legend entry explaining it
    markers = [ln for ln in ax.lines if ln.get_marker() == "v"]
    assert len(markers) == 1
    np.testing.assert_array_equal(markers[0].get_xdata(), [runs[1].probes["landscape/steps"][2]])
    assert legend_texts(ax) == [r.label for r in runs] + ["non-finite at some eta"]


def test_band_center_median_and_lr(rng):
    run = make_run(rng, lr=0.1)
    ax = new_ax()
    plots.draw_band(ax, [run], quantity="grad_distances", center="median", logy=True)
    np.testing.assert_allclose(
        ax.lines[0].get_ydata(), np.median(run.probes["landscape/grad_distances"], axis=1)
    )
    assert ax.get_yscale() == "log"
    ax = new_ax()
    plots.draw_band(ax, [run], quantity="grad_distances", center="lr")
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), run.probes["landscape/grad_distances"][:, 1])


def test_band_step_with_no_finite_value_is_a_gap(rng):
    run = make_run(rng, status="diverged")
    run.probes["landscape/losses"][-1] = np.nan
    ax = new_ax()
    plots.draw_band(ax, [run])
    (v,) = band_vertices(ax)
    assert np.isfinite(v).all()
    assert run.probes["landscape/steps"][-1] not in v[:, 0]
    assert legend_texts(ax)[0] == "Standard (diverged)"


def test_beta_lines(runs):
    ax = new_ax()
    plots.draw_beta(ax, runs, logy=True)
    for line, run in zip(ax.lines, runs):
        np.testing.assert_array_equal(line.get_ydata(), run.probes["landscape/effective_beta"])
    assert ax.get_yscale() == "log"
    assert legend_texts(ax) == [r.label for r in runs]


@pytest.mark.parametrize("layer", ["features.3", 1, -2])
def test_ics_layer_by_name_or_index(runs, layer):
    ax = new_ax()
    plots.draw_ics(ax, runs, layer=layer, quantity="l2")
    for line, run in zip(ax.lines, runs):
        np.testing.assert_array_equal(line.get_ydata(), run.probes["ics/l2"][:, 1])
    assert ax.get_yscale() == "log"
    assert ax.get_ylabel() == "l2 difference"


def test_ics_cosine_has_ideal_line(runs):
    ax = new_ax()
    plots.draw_ics(ax, runs, layer=2, quantity="cosine")
    assert ax.get_ylim() == (-1.05, 1.05)
    ideal = [ln for ln in ax.lines if ln.get_label() == "ideal"]
    assert len(ideal) == 1 and ideal[0].get_linestyle() == "--"
    np.testing.assert_array_equal(ideal[0].get_ydata(), [1, 1])
    assert legend_texts(ax) == [r.label for r in runs] + ["ideal"]


def test_grad_vs_eta_curves_and_colorbar(rng):
    run = make_run(rng, nonfinite_step=3)
    ax = new_ax()
    plots.draw_grad_vs_eta(ax, [make_run(rng, "other"), run], run="Standard", logx=True)
    (lc,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    segments = lc.get_segments()
    steps = run.probes["landscape/steps"]
    assert len(segments) == len(steps)
    np.testing.assert_array_equal(lc.get_array(), steps)
    dists = run.probes["landscape/grad_distances"]
    np.testing.assert_array_equal(segments[0][:, 1], dists[0])
    np.testing.assert_array_equal(segments[0][:, 0], ETAS)
    assert len(segments[3]) == len(ETAS) - 1  # the NaN point is left out
    assert ax.get_xscale() == "log"
    colorbars = [a for a in ax.figure.axes if a is not ax]
    assert len(colorbars) == 1 and colorbars[0].get_ylabel() == "training step"
    # blue early, red late (colours are mapped at draw time)
    ax.figure.canvas.draw()
    first, last = lc.get_colors()[0], lc.get_colors()[-1]
    assert first[2] > first[0] and last[0] > last[2]
    assert legend_texts(ax) == ["Standard"]


def test_grad_vs_eta_max_curves(rng):
    run = make_run(rng, steps=100, probe_every=1)
    ax = new_ax()
    plots.draw_grad_vs_eta(ax, [run], max_curves=5)
    np.testing.assert_array_equal(ax.collections[0].get_array(), [0, 25, 50, 74, 99])


def test_ridge_draws_one_histogram_per_picked_step(rng):
    run = make_run(rng, status="diverged")
    ax = new_ax()
    plots.draw_ridge(ax, [run], layer="features.7", unit=1, max_curves=4)
    steps = run.probes["distributions/steps"]
    picked = [0, 2, 5, 7]  # round(linspace(0, 7, 4))
    ticks = dict(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()]))
    assert ticks == {
        3: str(steps[0]),
        2: str(steps[2]),
        1: str(steps[5]),
        0: str(steps[7]),
    }  # earliest on top
    polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(polys) == 4
    # each ridge spans exactly that step's histogram edges for the unit
    edges = run.probes["distributions/features.7/edges"]
    for poly, i in zip(polys, picked):
        xs = poly.get_paths()[0].vertices[:, 0]
        assert xs.min() == edges[i, 1].min() and xs.max() == edges[i, 1].max()
    # the tallest bin of each ridge reaches the same height above its offset (scale="each")
    tops = [poly.get_paths()[0].vertices[:, 1].max() - off for poly, off in zip(polys, [3, 2, 1, 0])]
    np.testing.assert_allclose(tops, tops[0])
    assert ax.get_title() == "features.7, unit 4"
    assert legend_texts(ax) == ["Standard (diverged)"]


def test_moments_change_and_drift(runs):
    for which, stat, key in [("change", "mean", "abs_mean_change"), ("drift", "var", "var_drift")]:
        ax = new_ax()
        plots.draw_moments(ax, runs, layer="features.3", which=which, stat=stat)
        for line, run in zip(ax.lines, runs):
            p = "distributions/features.3"
            expected = moment_series(run.probes[f"{p}/mean"], run.probes[f"{p}/var"])[key].mean(axis=1)
            np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
            steps = run.probes["distributions/steps"]
            np.testing.assert_array_equal(line.get_xdata(), steps[1:] if which == "change" else steps)
        assert legend_texts(ax) == [r.label for r in runs]


def test_hessian_line(runs):
    ax = new_ax()
    plots.draw_hessian(ax, runs, index=1)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), runs[0].probes["hessian/top_eigenvalues"][:, 1])


@pytest.mark.parametrize(
    "kind, options, match",
    [
        ("accuracy", {"metric": "val_acc"}, "metric"),
        ("accuracy", {"smooth": 0}, "smooth"),
        ("band", {"quantity": "betaz"}, "quantity"),
        ("band", {"center": "mean"}, "center"),
        ("ics", {"layer": "features.99"}, "layer"),
        ("ics", {"layer": 3}, "layer"),
        ("ics", {"quantity": "cosine", "logy": True}, "logy"),
        ("grad_vs_eta", {"run": "nope"}, "run"),
        ("grad_vs_eta", {"run": 5}, "run"),
        ("ridge", {"unit": 3}, "unit"),
        ("ridge", {"layer": "features.0"}, "layer"),
        ("ridge", {"max_curves": 0}, "max_curves"),
        ("moments", {"which": "drifts"}, "which"),
        ("moments", {"stat": "std"}, "stat"),
        ("hessian", {"index": 2}, "index"),
    ],
)
def test_bad_options_raise(runs, kind, options, match):
    with pytest.raises(ValueError, match=match):
        plots.PANELS[kind](new_ax(), runs, **options)


def test_missing_probe_raises_naming_probe(rng):
    run = make_run(rng)
    run.probes = {k: v for k, v in run.probes.items() if not k.startswith("ics/")}
    with pytest.raises(ValueError, match="ics/l2"):
        plots.draw_ics(new_ax(), [run])


# ----------------------------------------------------------------------------------------------------------------
FIGURE = {
    "title": "Synthetic: every panel",
    "panels": [
        {"kind": "accuracy", "title": "training accuracy", "smooth": 3},
        {"kind": "accuracy", "metric": "test_acc", "runs": ["Standard + BatchNorm"]},
        {"kind": "band", "quantity": "losses"},
        {"kind": "band", "quantity": "grad_distances", "center": "lr"},
        {"kind": "beta"},
        {"kind": "ics", "layer": 1, "quantity": "l2"},
        {"kind": "ics", "layer": 1, "quantity": "cosine"},
        {"kind": "grad_vs_eta", "run": "Standard + BatchNorm", "logx": True},
        {"kind": "ridge", "run": 0, "layer": 1},
        {"kind": "moments", "which": "change", "stat": "var"},
        {"kind": "hessian"},
    ],
}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".part")


def test_draw_figure_writes_png_and_pdf(runs, tmp_path):
    runs.append(make_run(np.random.default_rng(1), "Standard + L1", status="diverged"))
    paths = plots.draw_figure(FIGURE, runs, tmp_path / "sub" / "fig_all")
    assert paths == [tmp_path / "sub" / "fig_all.png", tmp_path / "sub" / "fig_all.pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert pdf.startswith(b"%PDF") and len(pdf) > 5_000
    assert leftovers(tmp_path / "sub") == []


def test_redraw_gives_same_bytes(runs, tmp_path):
    figure = {"title": "t", "panels": [{"kind": "beta"}]}
    first = [p.read_bytes() for p in plots.draw_figure(figure, runs, tmp_path / "f")]
    # a suffix on out_base is dropped, so this overwrites the same two files
    paths = plots.draw_figure(figure, runs, tmp_path / "f.png")
    assert paths == [tmp_path / "f.png", tmp_path / "f.pdf"]
    assert [p.read_bytes() for p in paths] == first  # no timestamps: clean diffs for committed figures


def test_draw_figure_colours_consistent_across_panels(runs, tmp_path, monkeypatch):
    seen = []
    real = plots.PANELS["beta"]

    def spy(ax, panel_runs, **options):
        seen.append(options["colors"])
        real(ax, panel_runs, **options)
        seen.append({ln.get_label(): ln.get_color() for ln in ax.lines})

    monkeypatch.setitem(plots.PANELS, "beta", spy)
    figure = {"panels": [{"kind": "beta"}, {"kind": "beta", "runs": ["Standard + BatchNorm"]}]}
    plots.draw_figure(figure, runs, tmp_path / "f")
    assert seen[1]["Standard + BatchNorm"] == seen[3]["Standard + BatchNorm"] == "#d62728"
    assert seen[1]["Standard"] == "#1f77b4"


@pytest.mark.parametrize(
    "figure, match",
    [
        ({"panels": [{"kind": "scatter"}]}, "accuracy"),
        ({"panels": [{"kind": "beta", "runs": ["Nope"]}]}, "Nope"),
        ({"panels": [{"kind": "beta", "smooth": 3}]}, "smooth"),
        ({"panels": []}, "panels"),
        ({"panels": [{"kind": "beta"}], "columns": 0}, "columns"),
        ({"panels": [{"kind": "beta"}], "colour": "red"}, "colour"),
    ],
)
def test_draw_figure_bad_spec_raises_and_writes_nothing(runs, tmp_path, figure, match):
    with pytest.raises(ValueError, match=match):
        plots.draw_figure(figure, runs, tmp_path / "f")
    assert list(tmp_path.iterdir()) == []


def test_failing_draw_leaves_old_files_and_no_temporaries(runs, tmp_path):
    paths = plots.draw_figure({"panels": [{"kind": "beta"}]}, runs, tmp_path / "f")
    before = [p.read_bytes() for p in paths]
    with pytest.raises(ValueError, match="layer"):
        plots.draw_figure({"panels": [{"kind": "beta"}, {"kind": "ics", "layer": 9}]}, runs, tmp_path / "f")
    assert [p.read_bytes() for p in paths] == before
    assert leftovers(tmp_path) == []


def test_failing_save_removes_temporaries(runs, tmp_path, monkeypatch):
    def broken_savefig(self, f, format=None, **kwargs):
        if format == "pdf":
            f.write(b"partial")
            raise OSError("disk full")
        return real(self, f, format=format, **kwargs)

    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plots.draw_figure({"panels": [{"kind": "beta"}]}, runs, tmp_path / "f")
    assert os.listdir(tmp_path) == []


def test_import_does_not_touch_pyplot():
    import subprocess
    import sys

    code = "import sys, smoothnorm.plots; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("count, inside", [(2, True), (3, True), (4, False), (9, False)])
def test_crowded_legends_go_below_the_axes(count, inside):
    """A legend of a few short entries stays in the axes; a longer one is drawn wholly below them (under the x
    label), where it covers no curve and stays within the panel's width."""
    from smoothnorm.plots.style import _legend

    fig = Figure(figsize=(4.4, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i in range(count):
        ax.plot([0, 1], [i, i + 1], label=f"run {i}, lr 0.0{i}")
    ax.set_xlabel("training step")
    _legend(ax)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box, axes_box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    label_box = ax.xaxis.label.get_window_extent(renderer)
    if inside:
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1
    else:
        assert box.y1 <= label_box.y0  # below the x label, so below the data and the tick labels
        assert box.x0 >= 0 and box.x1 <= fig.bbox.x1  # within the figure (constrained layout made room)


def test_long_legend_labels_go_below_the_axes():
    from smoothnorm.plots.style import _legend

    ax = new_ax()
    ax.plot([0, 1], [0, 1], label="a label much longer than any panel of a grid of four is wide, really")
    _legend(ax)
    assert ax.get_legend()._loc == 9  # "upper center", anchored at the bottom of the axes (not "best")
