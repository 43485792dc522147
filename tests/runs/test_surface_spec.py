"""experiments/examples/loss_surfaces.toml: the surface probe's options in a spec (named errors, steps counted from
the end), its panels drawn from a tiny run, and its claim quantities."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from smoothnorm import plots
from smoothnorm.claims.evaluate import evaluate_spec, quantity_series
from smoothnorm.cli import main
from smoothnorm.runs import spec as spec_module
from smoothnorm.runs.schema import SpecError
from smoothnorm.runs.setup import build_network, build_probes
from smoothnorm.runs.store import RunResult, load_run
from tests.helpers import ROOT

SPEC = ROOT / "experiments" / "examples" / "loss_surfaces.toml"


def _edited(tmp_path, old, new):
    text = SPEC.read_text()
    assert old in text, old
    path = tmp_path / "loss_surfaces.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_profiles_resolve_and_negative_steps_count_from_the_end():
    quick = spec_module.load_spec(SPEC, "quick")
    probe = quick.runs[0].probes[0]
    assert (probe.kind, probe.options["steps"], probe.options["grid"], probe.options["points"]) == (
        "surface", [0, -1], 11, 21)
    s = quick.runs[0].settings
    assert (s["arch"], s["width"], s["batch_size"], s["steps"]) == ("vgg11", 0.125, 128, 1000)
    tiny = spec_module.load_spec(SPEC, "tiny").runs[1]
    (built,) = build_probes(build_network(tiny.settings), tiny)
    assert list(built.steps) == [0, tiny.settings["steps"] - 1]
    paper = spec_module.load_spec(SPEC, "paper").runs[0].probes[0]
    assert (paper.options["grid"], paper.options["points"]) == (51, 51)


@pytest.mark.parametrize("old, new, message", [
    ("points = 51 ", "points = 50 ", r"key 'points' expects 0 \(none\) or an odd integer >= 3"),
    ("grid = 51 ", "grid = 1 ", r"key 'grid' expects 0 \(none\) or an odd integer >= 3"),
    ("span = 1.0 ", "span = 0 ", "key 'span' expects a positive number"),
    ("span = 1.0 ", "span = \"wide\" ", "key 'span' expects float"),
    ("seed = 0                # the directions", "seed = -2 #", "key 'seed' expects a non-negative integer"),
    ('norm_params = "zero"', 'norm_params = "biasbn"', "key 'norm_params' expects one of \\['zero', 'parameter'"),
    ("steps = [0, -1] ", "steps = [0, 1.5] ", r"key 'steps' expects integers .*count from the end"),
    ("steps = [0, -1] ", "steps = [0, 4] ", r"key 'steps' expects training steps in 0..3 or -4..-1"),
    ("steps = [0, -1] ", "steps = [-5] ", r"key 'steps' expects training steps in 0..3 or -4..-1"),
    ("steps = [0, -1] ", "steps = [3, -1] ", "key 'steps' names one training step twice"),
    ("points = 5\ngrid = 5", "points = 0\ngrid = 0", "keys 'points' and 'grid' are both 0"),
    ("points = 5\ngrid = 5", "points = 5\ngrid = 4",
     r"\[profile.tiny.probes\].surface: key 'grid' expects 0 \(none\) or an odd"),
    ("seed = 0                # the directions", "sed = 0 #",
     "unknown key 'sed'; expected keys: .*span, points, grid, norm_params, seed"),
])
def test_bad_options_name_the_key_and_what_was_expected(tmp_path, old, new, message):
    path = _edited(tmp_path, old, new)
    with pytest.raises(SpecError, match=message) as err:
        spec_module.load_spec(path, "tiny")
    assert str(path) in str(err.value) or "loss_surfaces" in str(err.value)


def test_a_surface_claim_needs_the_surface_probe(tmp_path):
    text = SPEC.read_text()
    start = text.index("[[probes]]")
    path = tmp_path / "no_probe.toml"
    path.write_text(text[:start] + text[text.index("[figure]"):].replace("[profile.quick.probes.surface]\n"
                    "points = 21             # 21 + 11 x 11 forward passes of one batch of 128 per probed step\n"
                    "grid = 11\n", "").replace("[profile.tiny.probes.surface]\npoints = 5\ngrid = 5\n", ""))
    with pytest.raises(SpecError, match="key 'quantity' 'surface_range' needs a .* of kind 'surface'"):
        spec_module.load_spec(path, "tiny")


# ---- panels and claims from a tiny run ----

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("surfaces")
    assert main(["run", str(SPEC), "--profile", "tiny", "--runs", str(root / "runs"),
                 "--figures", str(root / "figures"), "--workers", "1"]) == 0
    spec = spec_module.load_spec(SPEC, "tiny")
    runs = [load_run(root / "runs" / "tiny" / r.run_id, label=r.label) for r in spec.runs]
    return spec, root, runs


def _ax(projection=None):
    fig = Figure(layout="constrained")
    FigureCanvasAgg(fig)
    return fig.add_subplot(projection=projection)


def test_tiny_run_records_both_steps_and_draws_png_and_pdf(tiny_run):
    spec, root, runs = tiny_run
    for r in runs:
        assert r.probes["surface/steps"].tolist() == [0, 3]
        assert r.probes["surface/losses_2d"].shape == (2, 5, 5)
        assert r.probes["surface/losses_1d"].shape == (2, 5)
        assert r.probe_meta["surface"]["seed"] == 0 and r.probe_meta["surface"]["steps"] == [0, 3]
    for ext in ("png", "pdf"):
        assert (root / "figures" / f"loss_surfaces.{ext}").stat().st_size > 1000


def test_1d_panel_draws_a_labelled_curve_per_run(tiny_run):
    _, _, runs = tiny_run
    ax = _ax()
    plots.PANELS["surface_1d"](ax, runs, step=0)
    lines = [line for line in ax.get_lines() if line.get_label() in {r.label for r in runs}]
    assert len(lines) == 2
    for line, r in zip(lines, runs):
        np.testing.assert_array_equal(line.get_xdata(), r.probe_meta["surface"]["alphas"])
        np.testing.assert_array_equal(line.get_ydata(), r.probes["surface/losses_1d"][0])
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_yscale() == "log"
    assert ax.get_legend().get_title().get_text() == "step 0"


def test_2d_panels_share_one_colour_scale_and_have_a_colour_bar(tiny_run):
    _, _, runs = tiny_run
    scales = []
    for label in ("Standard", "Standard + BatchNorm"):
        for step in (0, -1):
            ax = _ax()
            plots.PANELS["surface_2d"](ax, runs, run=label, step=step)
            filled = ax.collections[0]  # the filled contours (then the contour lines)
            scales.append((filled.norm.vmin, filled.norm.vmax))
            assert ax.get_xlabel().startswith("alpha") and ax.get_ylabel().startswith("beta")
            assert len(ax.figure.axes) == 2  # the colour bar
            assert ax.figure.axes[1].get_ylabel().startswith("training-batch loss")
    every = np.concatenate([r.probes["surface/losses_2d"].ravel() for r in runs])
    assert scales == [(every.min(), every.max())] * 4


def test_3d_panel_needs_and_draws_a_3d_axes(tiny_run):
    _, _, runs = tiny_run
    with pytest.raises(ValueError, match="3-D axes"):
        plots.PANELS["surface_3d"](_ax(), runs)
    ax = _ax("3d")
    plots.PANELS["surface_3d"](ax, runs, run="Standard + BatchNorm")
    assert ax.get_zlabel() == "log10 loss" and ax.collections


@pytest.mark.parametrize("kind, options, match", [
    ("surface_1d", {"step": 2}, "step: expected an index into the 2 probed steps"),
    ("surface_1d", {"quantity": "gradient"}, "quantity: expected one of"),
    ("surface_2d", {"run": "Nope"}, "run: expected a label"),
    ("surface_2d", {"vmax": 0.0}, "vmax: expected a number above the smallest loss"),
    ("surface_2d", {"levels": 0}, "levels: expected a positive integer"),
])
def test_bad_panel_options_are_named(tiny_run, kind, options, match):
    _, _, runs = tiny_run
    with pytest.raises(ValueError, match=match):
        plots.PANELS[kind](_ax(), runs, **options)


def test_claim_quantities_read_the_2d_grid(tiny_run):
    spec, root, runs = tiny_run
    r = runs[0]
    steps, ranges = quantity_series(r, "surface_range")
    grids = r.probes["surface/losses_2d"]
    assert steps.tolist() == [0, 3]
    np.testing.assert_array_equal(ranges, grids.max(axis=(1, 2)) - grids.min(axis=(1, 2)))
    _, curvature = quantity_series(r, "surface_curvature")
    np.testing.assert_array_equal(curvature, r.probes["surface/curvature"][:, -1])
    results = {c.claim.id: c for c in evaluate_spec(spec, root / "runs" / "tiny")}
    init = results["bn-surface-range-smaller-init"].outcomes[0]
    assert init.values["Standard"] == ranges[0]  # the window [0, 0.001] picks step 0
    trained = results["bn-surface-range-smaller-trained"].outcomes[0]
    assert trained.values["Standard"] == ranges[1]
    assert all(o.holds is not None for c in results.values() for o in c.outcomes)


def test_a_diverged_grid_point_makes_the_range_infinite():
    grids = np.ones((1, 3, 3))
    grids[0, 0, 0] = np.nan
    run = RunResult(path=Path("/nonexistent"), run_id="x", label="x", config={"run": {"steps": 10}},
                    status="finished", metrics={}, probes={"surface/steps": np.array([9]), "surface/losses_2d": grids},
                    probe_meta={})
    assert quantity_series(run, "surface_range")[1].tolist() == [np.inf]
