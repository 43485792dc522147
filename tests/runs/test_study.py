"""The optimization study (experiments/study): spec keys, study probes and panels, the specs themselves."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from smoothnorm import optim, plots, train
from smoothnorm.cli import main
from smoothnorm.nn import models
from smoothnorm.runs import schema
from smoothnorm.runs import spec as spec_module
from smoothnorm.runs.runner import execute_run
from smoothnorm.runs.setup import _eval_fn, build_network
from smoothnorm.runs.store import RunResult, load_run
from smoothnorm.train.probes import paper as paper_probes
from tests.helpers import ROOT

STUDY = ROOT / "experiments" / "study"
STUDY_SPECS = ("optimizers", "input_normalization", "activations", "batchnorm_train_vs_test")


def test_spec_files_are_what_make_specs_writes():
    spec = importlib.util.spec_from_file_location("make_specs", STUDY / "make_specs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.SPECS) == set(STUDY_SPECS)
    for name, make in module.SPECS.items():
        assert (STUDY / f"{name}.toml").read_text() == make(), f"run python experiments/study/make_specs.py ({name})"


@pytest.mark.parametrize("name", STUDY_SPECS)
def test_study_specs_resolve_in_every_profile(name):
    for profile in schema.PROFILES:
        spec = spec_module.load_spec(STUDY / f"{name}.toml", profile)
        assert spec.runs and spec.figure["panels"]
        assert len({run.run_id for run in spec.runs}) == len(spec.runs)  # no two labels train the same run


def test_new_keys_leave_earlier_run_ids_alone():
    settings = {k: v[1] for k, v in schema.BASE_KEYS.items()}
    before = {k: v for k, v in settings.items() if k not in schema._LATER_KEYS}
    assert spec_module.run_id_for(settings) == spec_module.run_id_for(before)
    for key, value in (("activation", "tanh"), ("norm_position", "after_activation"), ("input_norm", "standardize"),
                       ("scale", "raw"), ("feature_scale_range", 10.0), ("eval_batch_stats", True),
                       ("conv_algorithm", "im2col"), ("class_colour", 0.13)):
        assert spec_module.run_id_for({**settings, key: value}) != spec_module.run_id_for(settings), key


@pytest.mark.parametrize(("item", "message"), [
    ("activation=gelu", r"key 'activation' expects one of \['default', 'relu', 'sigmoid', 'tanh', 'identity'\]"),
    ("norm_position=after", r"key 'norm_position' expects one of"),
    ("input_norm=zscore", r"key 'input_norm' expects one of \['none', 'standardize', 'per_channel'\]"),
    ("scale=bytes", r"key 'scale' expects one of \['normalized', 'unit', 'raw'\]"),
])
def test_bad_study_values_are_named(item, message):
    with pytest.raises(schema.SpecError, match=message):
        spec_module.load_spec(STUDY / "activations.toml", "tiny", [item])


def test_class_colour_is_checked_and_only_for_synthetic_images():
    with pytest.raises(schema.SpecError, match=r"key 'class_colour' expects a number >= 0"):
        spec_module.load_spec(STUDY / "activations.toml", "tiny", ["class_colour=-0.5"])
    with pytest.raises(schema.SpecError, match=r"key 'class_colour' applies only to data 'synthetic_images'"):
        spec_module.load_spec(STUDY / "input_normalization.toml", "tiny", ["class_colour=0.1"])


def test_feature_scale_range_below_one_is_rejected():
    with pytest.raises(schema.SpecError, match=r"key 'feature_scale_range' expects a number >= 1"):
        spec_module.load_spec(STUDY / "input_normalization.toml", "tiny", ["feature_scale_range=0.5"])


def test_list_groups_specs_and_reproduce_leaves_the_study_out(capsys):
    assert main(["list", "--specs", str(ROOT / "experiments")]) == 0
    out = capsys.readouterr().out
    paper, study, examples = (out.index(h) for h in ("Paper figures", "Optimization study", "Examples"))
    assert paper < study < examples
    assert out.index("  optimizers ") > study and out.index("  fig4_vgg_landscape ") < study
    assert [p.stem for p in spec_module.list_specs(ROOT / "experiments", ("study",))] == sorted(STUDY_SPECS)
    assert not any(p.parent.name == "study" for p in spec_module.list_specs(ROOT / "experiments"))


def test_mlp_runs_take_flattened_images_and_the_activation_keys():
    s = spec_module.load_spec(STUDY / "activations.toml", "tiny").runs[0].settings
    net = build_network({**s, "norm": "batch", "norm_position": "after_activation"}, (3, 32, 32))
    assert net.input_shape == (3 * 32 * 32,)
    assert [type(la).__name__ for la in net.layers[:3]] == ["Linear", "Sigmoid", "BatchNorm"]
    dln = build_network({**s, "model": "dln", "depth": 3, "hidden": 4, "dim": 5, "activation": "default"})
    assert not any(type(la).__name__ == "ReLU" for la in dln.layers)


# ----------------------------------------------------------------------------------------------------------------
# Probes
# ----------------------------------------------------------------------------------------------------------------
def _trainer(net, probes, x, y):
    return train.Trainer(net, optim.SGD(lr=0.05), lambda step: (x, y), probes)


def test_saturation_probe_counts_activation_inputs(rng):
    net = models.mlp(6, [5, 4], 3, norm="batch", activation="sigmoid", dtype=np.float64, seed=1)
    x, y = 3 * rng.standard_normal((16, 6)), rng.integers(0, 3, 16)
    probe = paper_probes.SaturationProbe(name="saturation", every=1, threshold=1.0)
    trainer = _trainer(net, [probe], x, y)
    trainer.train_step()
    row = {k: v[0] for k, v in trainer.records["saturation"].rows.items()}
    net_before = models.mlp(6, [5, 4], 3, norm="batch", activation="sigmoid", dtype=np.float64, seed=1)
    net_before.forward(x, "probe", capture=["layers.1", "layers.4"])  # the BatchNorm outputs feed the sigmoids
    z = [net_before.captured[name] for name in ("layers.1", "layers.4")]
    expected = [np.mean(np.abs(a) > 1.0) for a in z]
    np.testing.assert_allclose(row["fractions"], expected)
    assert row["mean"] == pytest.approx(sum(np.sum(np.abs(a) > 1.0) for a in z) / sum(a.size for a in z))
    assert probe.meta()["layers"] == ["layers.2", "layers.5"]


def test_grad_norm_probe_is_per_weight_layer(rng):
    net = models.mlp(6, [5], 3, norm="batch", dtype=np.float64, seed=2)
    x, y = rng.standard_normal((8, 6)), rng.integers(0, 3, 8)
    trainer = _trainer(net, [paper_probes.GradNormProbe(name="grad_norms", every=1000)], x, y)
    _, g = net.copy().loss_and_grad(x, y, mode="train")
    trainer.train_step()
    trainer.train_step()  # not due: still one record
    norms = trainer.records["grad_norms"].rows["norms"]
    slices = net.layer_slices()
    assert len(norms) == 1
    np.testing.assert_allclose(norms[0], [np.linalg.norm(g[slices[n]]) for n in ("layers.0", "layers.3")])


def test_batch_statistics_gap_probe(rng):
    net = models.mlp(4, [3], 2, norm="batch", dtype=np.float64, seed=3)
    x, y = 2 + rng.standard_normal((10, 4)), rng.integers(0, 2, 10)
    trainer = _trainer(net, [paper_probes.BatchStatsGapProbe(name="bn_gap", every=1)], x, y)
    z = x @ net["layers.0"].params["weight"].T + net["layers.0"].params["bias"]
    trainer.train_step()  # probes see the running statistics after the step's own update from (0, 1)
    row = {k: v[0] for k, v in trainer.records["bn_gap"].rows.items()}
    eps = 1e-5
    run_mean, run_var = 0.1 * z.mean(0), 0.9 + 0.1 * z.var(0, ddof=1)
    np.testing.assert_allclose(row["mean_gap"], [np.mean(np.abs(z.mean(0) - run_mean) / np.sqrt(run_var + eps))])
    np.testing.assert_allclose(row["var_gap"], [np.mean(np.abs(np.log((z.var(0) + eps) / (run_var + eps))))])


def test_eval_with_batch_statistics(rng):
    net = models.mlp(4, [6], 3, norm="batch", dtype=np.float64, seed=4)
    xte, yte = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    row = _eval_fn({"eval_samples": 0, "eval_batch_stats": True, "batch_size": 8}, xte, yte)(net)
    correct = sum(np.sum(np.argmax(net.forward(xte[i:i + 8], "probe"), 1) == yte[i:i + 8]) for i in (0, 8))
    assert row["test_acc_batch_stats"] == pytest.approx(correct / 16)  # full batches of 8 only
    assert row["test_acc"] == pytest.approx(np.mean(np.argmax(net.forward(xte, "eval"), 1) == yte))


def test_eval_with_population_statistics(rng):
    """Population-statistics BatchNorm also gets test metrics with the population statistics of the current weights
    (the running averages of eval mode trail them), computed here by hand from the subset; nothing else changes."""
    from smoothnorm.nn.norms.batch import refresh_population_statistics

    net = models.mlp(4, [6], 3, norm="batch", norm_options={"statistics": "population"}, dtype=np.float64, seed=4)
    subset = 1.5 + 2 * rng.standard_normal((12, 4))
    xte, yte = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    refresh_population_statistics(net, rng.standard_normal((12, 4)))  # statistics of another subset: stale
    net.forward(subset, "train")  # running averages move a tenth of the way
    state = net.state_dict()
    settings = {"eval_samples": 0, "eval_batch_stats": False, "batch_size": 8}
    row = _eval_fn(settings, xte, yte, subset)(net)
    p = {layer.name: layer.params for layer in net.layers}
    h_sub = subset @ p["layers.0"]["weight"].T + p["layers.0"]["bias"]
    h = xte @ p["layers.0"]["weight"].T + p["layers.0"]["bias"]
    z = (h - h_sub.mean(0)) / np.sqrt(h_sub.var(0) + 1e-5) * p["layers.1"]["weight"] + p["layers.1"]["bias"]
    logits = np.maximum(z, 0) @ p["layers.3"]["weight"].T + p["layers.3"]["bias"]
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    assert row["test_acc_population"] == pytest.approx(np.mean(np.argmax(logits, 1) == yte))
    assert row["test_loss_population"] == pytest.approx(-np.mean(log_probs[np.arange(20), yte]), rel=1e-12)
    assert row["test_loss"] != pytest.approx(row["test_loss_population"])  # eval mode: the running averages
    for key, value in net.state_dict().items():  # params and running statistics untouched
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    batch_net = models.mlp(4, [6], 3, norm="batch", dtype=np.float64, seed=4)
    assert "test_acc_population" not in _eval_fn(settings, xte, yte)(batch_net)


# ----------------------------------------------------------------------------------------------------------------
# Panels
# ----------------------------------------------------------------------------------------------------------------
def _run(label, lr, losses, status="finished", batch_size=32):
    steps = np.arange(len(losses))
    return RunResult(path=Path("."), run_id=label, label=label, config={"run": {"lr": lr, "batch_size": batch_size}},
                     status=status, metrics={"step": steps, "loss": np.asarray(losses, dtype=float)})


def test_select_best_keeps_the_lowest_final_loss_per_group():
    runs = [_run("Adam @ lr=0.1", 0.1, [3, 2, 1.5]), _run("Adam @ lr=0.01", 0.01, [3, 1, 0.5]),
            _run("SGD @ lr=1", 1.0, [3, np.nan], status="diverged"), _run("SGD @ lr=0.1", 0.1, [3, 2.5, 2.0])]
    best = plots.select_best(runs)
    assert [r.label for r in best] == ["Adam (lr 0.01)", "SGD (lr 0.1)"]
    assert [r.run_id for r in best] == ["Adam @ lr=0.01", "SGD @ lr=0.1"]


def test_sweep_draws_final_values_and_marks_divergence():
    runs = [_run("SGD @ lr=0.1", 0.1, [3, 2, 1]), _run("SGD @ lr=0.01", 0.01, [3, 2.5, 2]),
            _run("SGD @ lr=1", 1.0, [3, np.nan], status="diverged")]
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    plots.draw_sweep(ax, runs, last=2)
    line, crosses = ax.lines
    np.testing.assert_allclose(line.get_xdata(), [0.01, 0.1])
    np.testing.assert_allclose(line.get_ydata(), [2.25, 1.5])
    np.testing.assert_allclose(crosses.get_xdata(), [1.0])


def _seeded(label, lr, losses, seed, status="finished"):
    run = _run(label, lr, losses, status)
    return RunResult(path=run.path, run_id=f"{label} s{seed}", label=label, config={"run": {"lr": lr, "seed": seed}},
                     status=status, metrics=run.metrics)


def test_select_best_over_seeds_takes_the_lowest_median_and_keeps_every_seed():
    # lr 0.1 has the single best run (seed 1: 0.1), lr 0.01 the lower median (0.6 against 2.0).
    runs = [_seeded("Adam @ lr=0.1", 0.1, [3, l], s) for s, l in enumerate([2.0, 0.1, 2.5])]
    runs += [_seeded("Adam @ lr=0.01", 0.01, [3, l], s) for s, l in enumerate([0.6, 0.5, 0.7])]
    # Two of three seeds diverged at lr 1: its median counts as not trained.
    runs += [_seeded("SGD @ lr=1", 1.0, [3, 0.01], 0), _seeded("SGD @ lr=1", 1.0, [3, np.nan], 1, "diverged"),
             _seeded("SGD @ lr=1", 1.0, [3, np.nan], 2, "diverged")]
    runs += [_seeded("SGD @ lr=0.1", 0.1, [3, l], s) for s, l in enumerate([1.0, 1.2, 0.9])]
    best = plots.select_best(runs, last=1)
    assert [(r.label, r.run_id) for r in best] == [
        ("Adam (lr 0.01)", "Adam @ lr=0.01 s0"), ("Adam (lr 0.01)", "Adam @ lr=0.01 s1"),
        ("Adam (lr 0.01)", "Adam @ lr=0.01 s2"), ("SGD (lr 0.1)", "SGD @ lr=0.1 s0"),
        ("SGD (lr 0.1)", "SGD @ lr=0.1 s1"), ("SGD (lr 0.1)", "SGD @ lr=0.1 s2")]


def test_sweep_over_seeds_draws_the_median_and_a_band():
    runs = [_seeded("SGD @ lr=0.1", 0.1, [3, l], s) for s, l in enumerate([1.0, 2.0, 2.8])]
    runs += [_seeded("SGD @ lr=0.01", 0.01, [3, l], s) for s, l in enumerate([2.5, 2.0, 1.5])]
    runs += [_seeded("SGD @ lr=1", 1.0, [3, 0.5], 0), _seeded("SGD @ lr=1", 1.0, [3, np.nan], 1, "diverged"),
             _seeded("SGD @ lr=1", 1.0, [3, np.nan], 2, "diverged")]
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    plots.draw_sweep(ax, runs, last=1)
    line, crosses = ax.lines[:2]
    np.testing.assert_allclose(line.get_xdata(), [0.01, 0.1])  # one point per rate, not one per run
    np.testing.assert_allclose(line.get_ydata(), [2.0, 2.0])
    np.testing.assert_allclose(crosses.get_xdata(), [1.0])  # most seeds diverged
    (band,) = ax.collections
    np.testing.assert_allclose(band.get_paths()[0].vertices[:, 1].min(), 1.0)
    np.testing.assert_allclose(band.get_paths()[0].vertices[:, 1].max(), 2.8)
    assert any("median of 3 seeds" in text for text in ax.get_legend_handles_labels()[1])


def test_series_over_seeds_draws_one_median_line_per_label():
    runs = [_seeded("SGD", 0.1, losses, s) for s, losses in enumerate([[3, 2, 1], [3, 1, 0.5], [3, 2.5, 2]])]
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    plots.draw_series(ax, runs, probe="metrics", key="loss")
    curves = [line for line in ax.lines if line.get_label() == "SGD"]
    assert len(curves) == 1
    np.testing.assert_allclose(curves[0].get_ydata(), [3, 2, 1])
    assert len(ax.collections) == 1


# ----------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    pytest.param("optimizers", marks=pytest.mark.slow),  # 96 runs: see the one-run-per-kind test below
    pytest.param("input_normalization", marks=pytest.mark.slow),  # 40 runs
    "activations",
    "batchnorm_train_vs_test",
])
def test_study_spec_runs_in_the_tiny_profile(tmp_path, name):
    figures = tmp_path / "figures"
    assert main(["run", name, "--profile", "tiny", "--runs", str(tmp_path / "runs"), "--figures", str(figures),
                 "--specs", str(ROOT / "experiments")]) == 0
    for ext in ("png", "pdf"):
        assert (figures / f"{name}.{ext}").stat().st_size > 1000


@pytest.mark.parametrize("name", ["optimizers", "input_normalization"])
def test_one_run_of_each_kind_trains_in_the_tiny_profile(tmp_path, name):
    """The large study specs in CI: one run per (model, optimizer, data) kind, with the spec's probes."""
    spec = spec_module.load_spec(STUDY / f"{name}.toml", "tiny")
    kinds = {}
    for run in spec.runs:
        s = run.settings
        kinds.setdefault((s["model"], s["depth"], s["optimizer"], s["batch_size"], s["data"]), run)
    for run in kinds.values():
        result = load_run(execute_run(run, tmp_path))
        assert result.status in ("finished", "diverged") and len(result.metrics["step"]) == run.settings["steps"]
        assert all(f"{p.kind}/steps" in result.probes for p in run.probes)


def test_update_probe_in_a_run_follows_the_optimizer(tmp_path):
    """A momentum run's landscape probe along the update differs from one along the gradient from step 1 on."""
    spec = spec_module.load_spec(STUDY / "optimizers.toml", "tiny", ["steps=3"])
    tiny = next(r for r in spec.runs if r.label.startswith("MLP Momentum, no norm"))
    options = tiny.probes[0].options
    assert options["direction"] == "update"
    run = spec_module.RunSpec(tiny.label, tiny.settings, [spec_module.ProbeSpec("landscape", 1, 0, options)])
    along_update = load_run(execute_run(run, tmp_path)).probe("landscape", "losses")
    gradient_run = spec_module.RunSpec(run.label, run.settings, [spec_module.ProbeSpec(
        "landscape", 1, 0, {**options, "direction": "gradient"})])
    along_g = load_run(execute_run(gradient_run, tmp_path / "g")).probe("landscape", "losses")
    np.testing.assert_allclose(along_update[0], along_g[0], rtol=1e-5)  # step 0: the momentum buffer is g itself
    assert not np.allclose(along_update[1:], along_g[1:], rtol=1e-4)
