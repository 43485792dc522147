"""The gradient-explosion follow-up end to end: the probe inside init-only runs (steps = 1, keep_checkpoint =
false), its claim quantity, spec validation, and the panels drawn from hand-built runs."""

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from smoothnorm import plots
from smoothnorm.claims.evaluate import evaluate_spec
from smoothnorm.cli import main
from smoothnorm.measure.gradient_explosion import fit_log_growth, large_batch_rate, weight_gradient_norms
from smoothnorm.runs import schema
from smoothnorm.runs import setup as run_setup
from smoothnorm.runs import spec as spec_module
from smoothnorm.runs.spec import run_id_for
from smoothnorm.runs.store import CHECKPOINT, RunResult, load_run
from tests.helpers import ROOT

SPEC = """
title = "init-only gradient norms"
[base]
model = "mlp"
depth = 5
hidden = 8
data = "synthetic_images"
n_train = 64
n_test = 16
dtype = "float64"
eval_every = 0
probe_every = 0
checkpoint_every = 0

[[runs]]
label = "BN"
norm = "batch"
batch_size = 16
steps = 1
keep_checkpoint = false

[[runs]]
label = "plain"
norm = "none"
batch_size = 16
steps = 2

[[probes]]
kind = "gradient_explosion"
steps = [0]
{probe_extra}

[[claims]]
id = "positive"
text = "a rate is positive"
quantity = "explosion_rate"
stat = "final"
run = "BN"
relation = "greater"
level = 0.0
"""


def _write(tmp_path, probe_extra=""):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(probe_extra=probe_extra))
    return path


def test_init_only_runs_record_the_gradient_at_initialization_and_drop_their_checkpoint(tmp_path, capsys):
    path = _write(tmp_path)
    root = tmp_path / "runs"
    assert main(["run", str(path), "--profile", "tiny", "--runs", str(root), "--no-plot",
                 "--figures", str(tmp_path / "figures")]) == 0
    spec = spec_module.load_spec(path, "tiny")
    bn, plain = spec.runs
    bn_dir, plain_dir = root / "tiny" / bn.run_id, root / "tiny" / plain.run_id
    assert not (bn_dir / CHECKPOINT).exists() and (plain_dir / CHECKPOINT).exists()
    for run, folder in ((bn, bn_dir), (plain, plain_dir)):
        result = load_run(folder)
        assert result.status == "finished"
        assert list(result.probe("gradient_explosion", "steps")) == [0]
        # The stored norms are those of a fresh network of the run's seed on the run's first batch.
        s = run.settings
        xtr, ytr, _, _ = run_setup._run_dataset(s)
        net = run_setup.build_network(s, xtr.shape[1:])
        x, y = run_setup._batch_fn(s, xtr.reshape(len(xtr), -1), ytr)(0)
        names, expected = weight_gradient_norms(net, x, y)
        np.testing.assert_allclose(result.probe("gradient_explosion", "sq_norms")[0], expected, rtol=1e-12)
        assert result.probe_meta["gradient_explosion"]["layers"] == names
        fit = fit_log_growth(expected)
        assert float(result.probe("gradient_explosion", "rate")[0]) == pytest.approx(fit.rate, rel=1e-12)
        assert float(result.probe("gradient_explosion", "slope_se")[0]) == pytest.approx(fit.slope_se, rel=1e-9)
    # The claim reads the stored rate.
    (outcome,) = evaluate_spec(spec, root / "tiny")[0].outcomes
    assert outcome.holds is True
    assert outcome.values["BN"] == pytest.approx(float(load_run(bn_dir).probe("gradient_explosion", "rate")[0]))
    # A finished run without its checkpoint is not trained again.
    capsys.readouterr()
    assert main(["run", str(path), "--profile", "tiny", "--runs", str(root), "--no-plot",
                 "--figures", str(tmp_path / "figures")]) == 0
    assert "skipped" in capsys.readouterr().err


def test_keep_checkpoint_is_not_part_of_a_runs_identity(tmp_path):
    spec = spec_module.load_spec(_write(tmp_path), "tiny")
    settings = dict(spec.runs[0].settings)
    assert settings["keep_checkpoint"] is False
    assert run_id_for(settings) == run_id_for(dict(settings, keep_checkpoint=True))
    assert run_id_for(settings) != run_id_for(dict(settings, batch_size=8))


@pytest.mark.parametrize("extra, message", [
    ("skip_first = -1", "key 'skip_first' expects a non-negative integer"),
    ("skip_last = 1.5", "key 'skip_last' expects int"),
    ("skipfirst = 1", "unknown key 'skipfirst'"),
])
def test_bad_probe_options_are_named(tmp_path, extra, message):
    with pytest.raises(schema.SpecError, match=message):
        spec_module.load_spec(_write(tmp_path, extra), "tiny")


def test_skips_that_leave_too_few_layers_fail_before_training(tmp_path, capsys):
    assert main(["run", str(_write(tmp_path, "skip_first = 3")), "--profile", "tiny", "--runs", str(tmp_path / "r"),
                 "--no-plot", "--figures", str(tmp_path / "figures")]) != 0
    assert "skip_first, skip_last: 3 and 1 leave 1 of 5 layers" in capsys.readouterr().err
    assert not list((tmp_path / "r").rglob("metrics.jsonl"))


def test_the_spec_measures_init_runs_at_step_0_with_one_step_and_trains_the_depth_runs():
    path = ROOT / "experiments" / "beyond" / "yang_gradient_explosion.toml"
    spec = spec_module.load_spec(path, "quick")
    init = [r for r in spec.runs if r.settings["steps"] == 1]
    depth = [r for r in spec.runs if r.settings["steps"] > 1]
    assert len(init) == 3 * 2 * 8 * 5 and len(depth) == 2 * 7 * 5
    assert {r.settings["batch_size"] for r in init} == {4, 8, 16, 32, 64, 128, 256, 512}
    assert all(r.settings["dtype"] == "float64" and not r.settings["keep_checkpoint"] for r in init)
    assert {r.settings["depth"] for r in init} == {50}
    assert {r.settings["depth"] for r in depth} == {10, 20, 30, 40, 50, 60, 70}
    assert all(p.kind == "gradient_explosion" and p.options["steps"] == [0] for r in spec.runs for p in r.probes)
    assert spec_module.load_spec(path, "paper").runs[0].settings["hidden"] == 1000


# ----------------------------------------------------------------------------------------------------------------
# Panels
# ----------------------------------------------------------------------------------------------------------------
def _run(label, *, norm="batch", activation="relu", batch_size=4, depth=5, seed=0, sq_norms=None, rate=1.0,
         train_acc=None, status="finished"):
    probes = {"gradient_explosion/steps": np.array([0]),
              "gradient_explosion/sq_norms": np.asarray(sq_norms if sq_norms is not None else np.ones(depth))[None],
              "gradient_explosion/rate": np.array([rate])}
    acc = np.asarray(train_acc if train_acc is not None else [0.1, 0.1])
    config = {"run": {"label": label, "norm": norm, "activation": activation, "batch_size": batch_size,
                      "depth": depth, "seed": seed}}
    return RunResult(path=Path("/nonexistent") / label, run_id=f"{label}-{seed}", label=label, config=config,
                     status=status, metrics={"step": np.arange(acc.size), "train_acc": acc,
                                             "loss": np.full(acc.size, 2.0)},
                     probes=probes, probe_meta={})


def _ax():
    fig = Figure()
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def test_gradient_layers_panel_draws_normalized_geometric_means_per_batch_size(rng):
    a, b = rng.uniform(0.5, 5, 5), rng.uniform(0.5, 5, 5)
    runs = [_run("BN 4", sq_norms=a, rate=2.0), _run("BN 4", sq_norms=b, rate=3.0, seed=1),
            _run("BN 64", batch_size=64, sq_norms=b, rate=1.5),
            _run("plain 4", norm="none", sq_norms=a), _run("plain 64", norm="none", batch_size=64, sq_norms=b),
            _run("tanh", activation="tanh", sq_norms=a)]
    ax = _ax()
    plots.PANELS["gradient_layers"](ax, runs, activation="relu")
    lines = ax.get_lines()
    assert len(lines) == 3  # BN at 4 and 64, no norm at the largest batch only
    mean = 0.5 * (np.log(a) + np.log(b))
    np.testing.assert_allclose(lines[0].get_ydata(), np.exp(mean - mean[-2]), rtol=1e-12)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["BatchNorm, B=4: rate 2.5", "BatchNorm, B=64: rate 1.5", "no norm, B=64: rate 1"]
    assert ax.get_yscale() == "log" and "layer" in ax.get_xlabel()
    with pytest.raises(ValueError, match="activation"):
        plots.PANELS["gradient_layers"](_ax(), runs, activation="gelu")


def test_explosion_rate_panel_draws_mean_rates_against_batch_size_and_the_theory():
    runs = [_run("r4", batch_size=4, rate=2.0), _run("r4", batch_size=4, rate=4.0, seed=1),
            _run("r64", batch_size=64, rate=1.5), _run("p4", norm="none", batch_size=4, rate=1.0)]
    ax = _ax()
    plots.PANELS["explosion_rate"](ax, runs)
    by_label = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(by_label["relu, BatchNorm"].get_xdata(), [4, 64])
    np.testing.assert_array_equal(by_label["relu, BatchNorm"].get_ydata(), [3.0, 1.5])
    np.testing.assert_array_equal(by_label["relu, no norm"].get_ydata(), [1.0])
    levels = {float(line.get_ydata()[0]) for line in ax.get_lines() if line.get_linestyle() == ":"
              and len(line.get_ydata()) == 2}
    assert any(math.isclose(v, large_batch_rate("relu")) for v in levels)
    assert ax.get_xscale() == "log"


def test_depth_training_panel_averages_the_end_of_training_and_counts_divergence_as_chance():
    runs = [_run("d10", depth=10, train_acc=[0.1, 0.2, 0.5, 0.7]), _run("d10", depth=10, seed=1,
                                                                        train_acc=[0.1, 0.2, 0.3, 0.5]),
            _run("d70", depth=70, train_acc=[0.1, np.nan], status="diverged")]
    ax = _ax()
    plots.PANELS["depth_training"](ax, runs, window=0.5)
    line = ax.get_lines()[0]
    np.testing.assert_array_equal(line.get_xdata(), [10, 70])
    np.testing.assert_allclose(line.get_ydata(), [100 * (0.6 + 0.4) / 2, 10.0])
    assert ax.get_ylabel() == "final training accuracy (%)"
    with pytest.raises(ValueError, match="window"):
        plots.PANELS["depth_training"](_ax(), runs, window=0)


def test_the_explosion_rate_claim_needs_the_probe():
    from smoothnorm.claims.parse import ClaimError, parse_claims

    table = {"id": "r", "text": "t", "quantity": "explosion_rate", "stat": "final", "run": "A", "relation": "greater",
             "level": 1.0}
    with pytest.raises(ClaimError, match="needs a \\[\\[probes\\]\\] table of kind 'gradient_explosion'"):
        parse_claims("spec.toml", [table], {"A"}, {"landscape"})
    with pytest.raises(ClaimError, match="key 'layer' applies only to"):
        parse_claims("spec.toml", [dict(table, layer=0)], {"A"}, {"gradient_explosion"})
    (claim,) = parse_claims("spec.toml", [table], {"A"}, {"gradient_explosion"})
    assert claim.describe() == "final explosion_rate of 'A' greater than 1"
