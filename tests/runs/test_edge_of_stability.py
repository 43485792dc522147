"""Edge of stability (issue 15 item 4, Cohen et al. 2021): the `loss` and `train_subset` spec keys, full-batch
gradient descent, the hessian probe as sharpness against a dense finite-difference Hessian, the claim quantities
and the sharpness panel on hand-built runs."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from smoothnorm import nn, optim, plots
from smoothnorm.claims import evaluate as claims_eval
from smoothnorm.claims import parse as claims_parse
from smoothnorm.nn import models
from smoothnorm.runs import runner, store
from smoothnorm.runs import setup as run_setup
from smoothnorm.runs import spec as spec_module
from smoothnorm.runs.schema import BASE_KEYS, SpecError
from smoothnorm.runs.spec import load_spec, run_id_for
from smoothnorm.runs.store import RunResult, load_run
from smoothnorm.train.loop import Trainer
from smoothnorm.train.probes.paper import HessianProbe
from tests.helpers import ROOT
from tests.reference import dense_hessian_reference

SPEC = """
title = "eos"
[base]
model = "mlp"
depth = 2
hidden = 4
data = "synthetic_images"
n_train = 16
n_test = 8
steps = 3
{extra}
[[runs]]
label = "a"
{probes}
[figure]
[[figure.panels]]
kind = "accuracy"
"""


def _spec(tmp_path: Path, extra: str = "", overrides=(), probes: str = ""):
    path = tmp_path / "eos.toml"
    path.write_text(SPEC.format(extra=extra if "batch_size" in extra else extra + "\nbatch_size = 0", probes=probes))
    return load_spec(path, "quick", list(overrides))


def _defaults() -> dict:
    return {k: v[1] for k, v in BASE_KEYS.items()}


# -- the loss key -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss, expected", [("default", "cross_entropy"), ("cross_entropy", "cross_entropy"),
                                            ("mse_onehot", "onehot_squared_error")])
def test_loss_key_selects_the_training_loss(tmp_path, loss, expected):
    settings = _spec(tmp_path, f'loss = "{loss}"').runs[0].settings
    assert settings["loss"] == loss
    net = run_setup.build_network(settings, (3, 32, 32))
    assert net.loss_fn.name == expected
    x = np.random.default_rng(0).standard_normal((5, 3 * 32 * 32))
    y = np.array([0, 3, 9, 1, 1])
    out = net.forward(x, "probe").astype(np.float64)
    if expected == "onehot_squared_error":  # 0.5 ||out - onehot||^2, mean over the batch
        reference = 0.5 * np.sum((out - np.eye(10)[y]) ** 2) / 5
    else:
        shifted = out - out.max(axis=1, keepdims=True)
        reference = float(np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(5), y]))
    assert net.loss(x, y, mode="probe") == pytest.approx(reference, rel=1e-5)


def test_bad_loss_values_are_named(tmp_path):
    with pytest.raises(SpecError, match=r"key 'loss' expects one of \['default', 'cross_entropy', 'mse_onehot'\]"):
        _spec(tmp_path, 'loss = "hinge"')
    with pytest.raises(SpecError, match="key 'loss' expects 'default' for model 'dln'"):
        _spec(tmp_path, overrides=["model=\"dln\"", "data=\"gaussian_regression\"", "loss=\"mse_onehot\""])
    settings = dict(_defaults(), model="dln", data="gaussian_regression", loss="cross_entropy")
    with pytest.raises(SpecError, match="key 'loss' expects 'default' for model 'dln'"):
        run_setup.build_network(settings)


def test_new_keys_leave_existing_run_identities_unchanged():
    """Run folders stored before `loss` and `train_subset` existed keep their ids; setting them makes new runs."""
    before = {k: v for k, v in _defaults().items() if k not in ("loss", "train_subset")}
    now = _defaults()
    assert run_id_for(now) == run_id_for(before)
    assert run_id_for(dict(now, loss="mse_onehot")) != run_id_for(before)
    assert run_id_for(dict(now, loss="cross_entropy")) != run_id_for(dict(now, loss="mse_onehot"))
    assert run_id_for(dict(now, train_subset=100)) != run_id_for(before)
    # A spec of the paper keeps its run ids (these are the ids of runs stored before the keys existed).
    spec = load_spec(ROOT / "experiments" / "fig1_vgg_accuracy.toml", "quick")
    for run in spec.runs:
        old = {k: v for k, v in run.settings.items() if k not in ("loss", "train_subset")}
        assert run.run_id == run_id_for(old)


def test_hessian_probe_tol_is_recorded_only_away_from_its_default(tmp_path):
    probe = '[[probes]]\nkind = "hessian"\nevery = 1\nk = 2\n'
    default = _spec(tmp_path, probes=probe).runs[0].probes[0]
    assert "tol" not in default.identity() and default.options["tol"] == 1e-6
    loose = _spec(tmp_path, probes=probe + "tol = 1e-3\n").runs[0].probes[0]
    assert loose.identity()["tol"] == 1e-3
    # An identity stored without tol reads back with the default.
    back = spec_module.ProbeSpec(**spec_module._probe_from_identity(default.identity()))
    assert back.options["tol"] == 1e-6 and back.identity() == default.identity()


# -- full batch ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [0, 12])
def test_full_batch_is_the_whole_subset_in_the_same_order_every_step(tmp_path, batch_size):
    settings = _spec(tmp_path, f"batch_size = {batch_size}\ntrain_subset = 12\naugment = false").runs[0].settings
    xtr, ytr, _, _ = run_setup._run_dataset(settings)
    full_x, full_y, _, _ = run_setup._dataset(settings["data"], settings["n_train"], settings["n_test"],
                                               settings["dim"], settings["data_seed"], settings["data_root"])
    assert xtr.shape[0] == 12
    np.testing.assert_array_equal(xtr, full_x[:12])  # the first train_subset examples
    np.testing.assert_array_equal(ytr, full_y[:12])
    batch = run_setup._batch_fn(settings, xtr, ytr)
    for step in (0, 1, 7, 1000):
        xb, yb = batch(step)
        np.testing.assert_array_equal(xb, xtr)
        np.testing.assert_array_equal(yb, ytr)


def test_train_subset_is_validated(tmp_path):
    with pytest.raises(SpecError, match=r"key 'train_subset' \(20\) exceeds n_train \(16\)"):
        _spec(tmp_path, "train_subset = 20")
    with pytest.raises(SpecError, match=r"key 'batch_size' \(8\) exceeds train_subset \(4\)"):
        _spec(tmp_path, "train_subset = 4\nbatch_size = 8")
    with pytest.raises(SpecError, match="key 'train_subset' expects a non-negative integer"):
        _spec(tmp_path, "train_subset = -1")


# -- sharpness ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", [None, "batch"])
def test_sharpness_probe_on_the_full_batch_matches_a_dense_hessian(rng, norm):
    """A tanh MLP (BatchNorm after the activation, as Cohen et al.'s BN networks) with the one-hot squared error: the
    hessian probe's top two eigenvalues at each step equal those of a dense Hessian by central differences of the
    gradient (the network is smooth, so differences are accurate), with BatchNorm's full-batch statistics."""
    net = models.mlp(5, [4], 3, activation="tanh", norm=norm, norm_position="after_activation", dtype=np.float64,
                     seed=int(rng.integers(1000)))
    net.loss_fn = nn.OneHotSquaredError()
    x, y = rng.standard_normal((12, 5)), rng.integers(0, 3, 12)
    probe = HessianProbe(name="hessian", every=2, k=2, tol=1e-10)
    trainer = Trainer(net, optim.SGD(0.5), lambda step: (x, y), [probe])
    expected = {}
    for step in range(4):
        if step % 2 == 0:
            dense = dense_hessian_reference(net, x, y)
            expected[step] = np.sort(np.linalg.eigvalsh(dense))[::-1][:2]
        trainer.train_step()
    record = trainer.records["hessian"]
    assert record.steps == [0, 2]
    for step, row in zip(record.steps, record.rows["top_eigenvalues"]):
        np.testing.assert_allclose(row, expected[step], rtol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("model", ["mlp", "vgg"])
def test_sharpness_matches_pytorch_double_backprop(rng, model):
    """The probe's top two eigenvalues on the full batch equal those of PyTorch's double-backward Hessian of the
    same network and loss (BatchNorm with batch statistics), by ARPACK on both operators."""
    pytest.importorskip("torch")
    from scipy.sparse.linalg import LinearOperator, eigsh

    from tests.torch_twin import TorchHessian

    if model == "mlp":
        net = models.mlp(6, [5, 5], 3, activation="tanh", norm="batch", norm_position="after_activation",
                         dtype=np.float64, seed=int(rng.integers(1000)), init="pytorch")
        x = rng.standard_normal((10, 6))
    else:
        net = models.vgg("vgg11", width=0.0625, norm="batch", dtype=np.float64, seed=int(rng.integers(1000)))
        x = rng.standard_normal((6, 3, 32, 32))
    net.loss_fn = nn.OneHotSquaredError()
    y = rng.integers(0, net.output_shape[0], x.shape[0])
    probe = HessianProbe(name="hessian", every=1, k=2, tol=1e-10)
    trainer = Trainer(net, optim.SGD(0.01), lambda step: (x, y), [probe])
    hvp = TorchHessian(net, x, y)
    op = LinearOperator((net.num_params, net.num_params), matvec=hvp, dtype=np.float64)
    expected = np.sort(eigsh(op, k=2, which="LA", tol=1e-10, v0=rng.standard_normal(net.num_params),
                             return_eigenvectors=False))[::-1]
    trainer.train_step()
    np.testing.assert_allclose(trainer.records["hessian"].rows["top_eigenvalues"][0], expected, rtol=1e-6)


# -- claims and the panel on hand-built runs ---------------------------------------------------------------------
def _run(label: str, lr: float, sharpness: np.ndarray, loss: np.ndarray, every: int = 10) -> RunResult:
    steps = np.arange(len(sharpness)) * every
    probes = {"hessian/steps": steps, "hessian/top_eigenvalues": np.column_stack([sharpness, 0.5 * sharpness])}
    return RunResult(path=Path("/nonexistent") / label, run_id=label, label=label,
                     config={"run": {"label": label, "lr": lr, "steps": len(loss)}}, status="finished",
                     metrics={"step": np.arange(len(loss)), "loss": loss}, probes=probes, probe_meta={})


def _claim(quantity: str, stat: str, window=(0.0, 1.0)) -> claims_parse.Claim:
    return claims_parse.Claim(id="c", text="t", quantity=quantity, stat=stat, run="a", relation="greater",
                               level=0.0, window=window)


def test_claim_quantities_of_the_edge_of_stability(rng):
    sharpness = np.concatenate([np.linspace(10, 100, 5), 100 + rng.uniform(-5, 5, 5)])
    loss = np.array([2.0, 1.0, 1.5, 0.8, 0.9, 0.5, np.nan, 0.4, 0.45, 0.3])
    run = _run("a", 0.02, sharpness, loss, every=1)
    steps, ratio = claims_eval.quantity_series(run, "sharpness_ratio")
    np.testing.assert_allclose(ratio, sharpness * 0.02 / 2)
    np.testing.assert_array_equal(steps, np.arange(10))
    assert claims_eval.statistic(run, _claim("sharpness", "max")) == pytest.approx(sharpness.max())
    _, ratio_loss = claims_eval.quantity_series(run, "loss_ratio")
    np.testing.assert_allclose(ratio_loss, (loss / 2.0)[np.isfinite(loss)])
    steps, rises = claims_eval.quantity_series(run, "loss_rise")
    # rises at steps 2, 4, 8; steps 6 and 7 touch the NaN and are left out
    np.testing.assert_array_equal(steps, [1, 2, 3, 4, 5, 8, 9])
    np.testing.assert_array_equal(rises, [0, 1, 0, 1, 0, 1, 0])
    assert claims_eval.statistic(run, _claim("loss_rise", "mean")) == pytest.approx(3 / 7)
    # the window is a fraction of the run's steps (10 here): steps 5..10
    assert claims_eval.statistic(run, _claim("loss_rise", "mean", (0.5, 1.0))) == pytest.approx(1 / 3)
    no_start = _run("a", 0.02, sharpness, np.concatenate([[0.0], loss[1:]]), every=1)
    with pytest.raises(claims_eval.Unavailable, match="first training loss"):
        claims_eval.quantity_series(no_start, "loss_ratio")


def _ax():
    fig = Figure()
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def test_sharpness_panel_draws_each_run_against_its_threshold(rng):
    runs = [_run("lr 0.02", 0.02, rng.uniform(10, 100, 6), np.ones(60)),
            _run("lr 0.04", 0.04, rng.uniform(10, 50, 6), np.ones(60))]
    ax = _ax()
    plots.PANELS["sharpness"](ax, runs)
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["lr 0.02"].get_ydata(), runs[0].probes["hessian/top_eigenvalues"][:, 0])
    np.testing.assert_allclose(lines["2 / lr = 100"].get_ydata(), [100, 100])
    np.testing.assert_allclose(lines["2 / lr = 50"].get_ydata(), [50, 50])
    assert lines["2 / lr = 100"].get_color() == lines["lr 0.02"].get_color()
    assert "sharpness" in ax.get_ylabel() and ax.get_xlabel() == "training step"
    ax = _ax()
    plots.PANELS["sharpness"](ax, runs, normalized=True)
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["lr 0.04"].get_ydata(), runs[1].probes["hessian/top_eigenvalues"][:, 0] * 0.02)
    np.testing.assert_allclose(lines["2 / lr"].get_ydata(), [1, 1])
    with pytest.raises(ValueError, match="normalized"):
        plots.PANELS["sharpness"](_ax(), runs, normalized="yes")
    no_lr = _run("x", 0.02, np.ones(3), np.ones(3))
    no_lr.config["run"].pop("lr")
    with pytest.raises(ValueError, match="run 'x': config has no positive learning rate"):
        plots.PANELS["sharpness"](_ax(), [no_lr])


# -- the spec -----------------------------------------------------------------------------------------------------
EOS_SPEC = ROOT / "experiments" / "beyond" / "edge_of_stability.toml"


def test_spec_is_full_batch_gradient_descent_with_the_onehot_squared_error_in_every_profile():
    for profile in ("tiny", "quick", "paper"):
        spec = load_spec(EOS_SPEC, profile)
        assert len(spec.runs) == 8
        for run in spec.runs:
            s = run.settings
            assert (s["batch_size"], s["loss"], s["optimizer"], s["optimizer_options"]) == (0, "mse_onehot", "sgd", {})
            (probe,) = run.probes
            assert (probe.kind, probe.options["k"], probe.options["mode"]) == ("hessian", 2, "probe")
        assert {r.settings["model"] for r in spec.runs} == {"mlp", "vgg"}
        assert {r.settings["norm"] for r in spec.runs} == {"none", "batch"}
    paper = load_spec(EOS_SPEC, "paper").runs[0].settings
    assert (paper["data"], paper["train_subset"]) == ("cifar10", 5000)


def test_one_tiny_run_records_the_loss_and_the_sharpness(tmp_path):
    spec = load_spec(EOS_SPEC, "tiny")
    run = next(r for r in spec.runs if r.settings["model"] == "mlp" and r.settings["norm"] == "batch")
    path = runner.execute_run(run, tmp_path)
    config = store.read_config(path / "config.json")
    assert config["run"]["loss"] == "mse_onehot" and config["identity"]["loss"] == "mse_onehot"
    result = load_run(path)
    assert result.status == "finished"
    steps = result.probe("hessian", "steps")
    assert list(steps) == [0, 2]
    top = result.probe("hessian", "top_eigenvalues")
    assert top.shape == (2, 2) and np.all(np.isfinite(top)) and np.all(top[:, 0] >= top[:, 1])
    # The recorded loss is the one-hot squared error of the whole subset at step 0.
    xtr, ytr, _, _ = run_setup._run_dataset(run.settings)
    net = run_setup.build_network(run.settings, xtr.shape[1:])
    x = xtr.reshape(len(xtr), -1)
    assert result.metrics["loss"][0] == pytest.approx(net.loss(x, ytr, mode="probe"), rel=1e-5)
