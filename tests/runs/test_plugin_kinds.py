"""Plug-in probes, figure panels and claim quantities: named from a spec by file, they record, draw and evaluate like
the built-ins; a probe's source enters its runs' identity, a panel's or quantity's does not; loading and listing
specs never imports them; a bad one fails naming the spec, the key and the cause."""

from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
import pytest

from smoothnorm.claims.evaluate import evaluate_spec
from smoothnorm.runs.executors import run_specs
from smoothnorm.runs.plugins import PluginError, load
from smoothnorm.runs.schema import SpecError
from smoothnorm.runs.setup import build_trainer
from smoothnorm.runs.spec import RunSpec, load_spec
from smoothnorm.runs.store import load_run, read_config, read_jsonl

PROBES = '''
from dataclasses import dataclass

import numpy as np

from smoothnorm.train.probes.base import Probe


@dataclass
class WeightNorm(Probe):
    """The norm of all weights times `scale`, and the step's loss, at w_t (before the step's update)."""

    scale: float = 1.0

    def measure(self, trainer, x, y, grad, loss):
        norm = np.linalg.norm(trainer.net.params.astype(np.float64))
        return {"norm": np.float64(self.scale * norm), "loss": np.float64(loss)}

    def meta(self):
        return {"scale": self.scale}


class NotAProbe:
    def measure(self, trainer, x, y, grad, loss):
        return {}


@dataclass
class NoMeasure(Probe):
    pass
'''

VIEWS = '''
def draw_norm(ax, runs, *, colors, scale=1.0):
    for run in runs:
        ax.plot(run.probe("WeightNorm", "steps"), scale * run.probe("WeightNorm", "norm"), color=colors[run.label],
                label=run.label)


def scaled_norm(run, layer):
    return run.probe("WeightNorm", "steps"), run.probe("WeightNorm", "norm") * (1 if layer is None else layer)


def unrecorded(run, layer):
    return run.probe("NoSuchProbe", "steps"), run.probe("NoSuchProbe", "values")


NOT_CALLABLE = 3


def one_argument(run):
    return run
'''

SPEC = '''
[base]
model = "dln"
depth = 3
hidden = 4
dim = 4
data = "gaussian_regression"
n_train = 24
batch_size = 0
dtype = "float64"
lr = 1e-3
steps = 6
probe_every = 2
checkpoint_every = 3
eval_every = 0

[[runs]]
label = "plain"

[[runs]]
label = "BatchNorm"
norm = "batch"

[[probes]]
kind = "./probes.py:WeightNorm"
scale = 2.0

[[probes]]
kind = "grad_norms"

[[figure.panels]]
kind = "./views.py:draw_norm"
scale = 3.0

[[claims]]
id = "norm"
text = "the largest weight norm (times the layer given) of the plain network exceeds BatchNorm's"
quantity = "./views.py:scaled_norm"
layer = 2
stat = "max"
run = "plain"
relation = "greater"
than = "BatchNorm"
'''
PROBE = "./probes.py:WeightNorm"


def _write(folder, spec: str = SPEC):
    (folder / "probes.py").write_text(PROBES)
    (folder / "views.py").write_text(VIEWS)
    (folder / "spec.toml").write_text(spec)
    return folder


@pytest.fixture
def folder(tmp_path):
    """A spec folder: a tiny DLN spec naming a plug-in probe, panel and quantity from the files beside it."""
    return _write(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The spec's two runs trained once: (folder, spec, what run_specs said on stderr)."""
    folder = _write(tmp_path_factory.mktemp("trained"))
    spec = load_spec(folder / "spec.toml", "quick")
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        run_specs([spec], folder / "runs")
    return folder, spec, said.getvalue()


def test_a_plugin_probe_records_what_a_direct_computation_gives(trained):
    folder, spec, said = trained
    assert f"plug-in probe {PROBE!r}: loaded from {folder / 'probes.py'}" in said
    for run in spec.runs:
        result = load_run(folder / "runs" / run.run_id)
        assert result.status == "finished"
        steps = result.probes["WeightNorm/steps"]
        assert steps.tolist() == [0, 2, 4] and result.probe_meta["WeightNorm"]["scale"] == 2.0
        assert result.probes["grad_norms/norms"].shape[0] == 3  # the built-in probe beside it
        # The same training without probes, measured by hand before each probed step's update.
        trainer = build_trainer(RunSpec(run.label, run.settings, []))
        expected = []
        for step in range(run.settings["steps"]):
            if step in steps:
                expected.append(2.0 * np.linalg.norm(trainer.net.params.astype(np.float64)))
            trainer.train_step()
        np.testing.assert_array_equal(result.probes["WeightNorm/norm"], expected)
        losses = {row["step"]: row["loss"] for row in read_jsonl(folder / "runs" / run.run_id / "metrics.jsonl")}
        np.testing.assert_array_equal(result.probes["WeightNorm/loss"], [losses[t] for t in steps])
        config = read_config(folder / "runs" / run.run_id / "config.json")
        recorded = config["run"]["plugins"]["probes"]["WeightNorm"]
        assert recorded == run.settings["plugins"]["probes"]["WeightNorm"] and recorded["ref"] == PROBE
        assert config["run"]["plugin_files"]["probes"]["WeightNorm"]["file"] == str(folder / "probes.py")
        assert {"kind": PROBE, "every": 2, "start": 0, "scale": 2.0} in config["probes"]


def test_a_plugin_panel_draws_its_data_into_the_figure(trained, monkeypatch, capsys):
    from smoothnorm import plots

    folder, spec, _ = trained
    drawn = {}
    save = plots._save_atomically

    def capture(fig, base, dpi):
        drawn.update({line.get_label(): line.get_ydata() for ax in fig.axes for line in ax.lines})
        return save(fig, base, dpi)

    monkeypatch.setattr(plots, "_save_atomically", capture)
    paths = plots.draw_spec(spec, folder / "runs", folder / "figures")
    assert all(path.stat().st_size > 1000 for path in paths)
    assert f"plug-in panel './views.py:draw_norm': loaded from {folder / 'views.py'}" in capsys.readouterr().err
    for run in spec.runs:
        norms = load_run(folder / "runs" / run.run_id).probes["WeightNorm/norm"]
        np.testing.assert_array_equal(drawn[run.label], 3.0 * norms)


def test_a_plugin_quantity_s_claim_has_the_value_it_computes(trained, capsys):
    folder, spec, _ = trained
    (result,) = evaluate_spec(spec, folder / "runs")
    assert "plug-in quantity './views.py:scaled_norm': loaded from" in capsys.readouterr().err
    values = {run.label: 2 * load_run(folder / "runs" / run.run_id).probes["WeightNorm/norm"].max()
              for run in spec.runs}
    (outcome,) = result.outcomes
    assert outcome.values == pytest.approx(values)
    assert outcome.holds is bool(values["plain"] > values["BatchNorm"])
    assert "./views.py:scaled_norm" in result.claim.describe()


def test_a_plugin_quantity_a_run_does_not_record_is_null(trained):
    folder, _, _ = trained
    text = (folder / "spec.toml").read_text().replace("./views.py:scaled_norm", "./views.py:unrecorded")
    (folder / "other.toml").write_text(text)
    (result,) = evaluate_spec(load_spec(folder / "other.toml", "quick"), folder / "runs")
    (outcome,) = result.outcomes
    assert outcome.holds is None and "NoSuchProbe" in outcome.note


def test_a_plugin_probe_s_source_is_part_of_its_runs_identity_a_panel_s_is_not(folder):
    ids = [run.run_id for run in load_spec(folder / "spec.toml", "quick").runs]
    with open(folder / "views.py", "a") as f:
        f.write("\n# edited\n")
    assert [run.run_id for run in load_spec(folder / "spec.toml", "quick").runs] == ids
    with open(folder / "probes.py", "a") as f:
        f.write("\n# edited\n")
    edited = [run.run_id for run in load_spec(folder / "spec.toml", "quick").runs]
    assert all(a != b for a, b in zip(edited, ids))
    # Without the plug-in probe, the runs are the plain runs (the built-in probe enters no identity).
    bare_spec = SPEC.replace(f'[[probes]]\nkind = "{PROBE}"\nscale = 2.0\n\n', "").split("[[figure.panels]]")[0]
    (folder / "bare.toml").write_text(bare_spec)
    bare = load_spec(folder / "bare.toml", "quick").runs
    assert "plugins" not in bare[0].settings and all(b.run_id not in ids + edited for b in bare)


def test_loading_and_listing_specs_never_import_a_plugin(folder, capsys):
    from smoothnorm import cli

    for name in ("probes.py", "views.py"):
        (folder / name).write_text("raise RuntimeError('imported!')\n")
    spec = load_spec(folder / "spec.toml", "quick")
    assert cli.main(["list", "--specs", str(folder)]) == 0
    assert "spec" in capsys.readouterr().out
    files = {str(folder / "probes.py"), str(folder / "views.py")}
    assert not [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) in files]
    with pytest.raises(SpecError, match=r"spec.toml \[\[probes\]\] #1: key 'kind' = './probes.py:WeightNorm': "
                                        r"plug-in .*importing .*probes.py failed: RuntimeError: imported!"):
        run_specs([spec], folder / "runs")
    assert not (folder / "runs").exists() or not any((folder / "runs").iterdir())


@pytest.mark.parametrize("kind,content,message", [
    ("NoSuchName", None, r"probes.py has no attribute 'NoSuchName'"),
    ("NotAProbe", None, r"NotAProbe'>, not a subclass of smoothnorm.train.probes.base.Probe"),
    ("NoMeasure", None, r"does not define measure"),
    ("WeightNorm", "import not_a_module_xyz\n", r"importing .*probes.py failed: ModuleNotFoundError"),
], ids=["missing-attribute", "wrong-base-class", "no-measure", "import-error"])
def test_a_plugin_probe_that_is_not_one_fails_before_any_run_trains(folder, kind, content, message):
    if content is not None:
        (folder / "probes.py").write_text(content)
    (folder / "spec.toml").write_text(SPEC.replace(PROBE, f"./probes.py:{kind}"))
    spec = load_spec(folder / "spec.toml", "quick")
    with pytest.raises(SpecError, match=rf"spec.toml \[\[probes\]\] #1: key 'kind' = './probes.py:{kind}': .*"
                                        + message):
        run_specs([spec], folder / "runs")
    assert not (folder / "runs").exists() or not any((folder / "runs").iterdir())


def test_a_plugin_probe_option_its_class_does_not_take_is_named(folder):
    (folder / "spec.toml").write_text(SPEC.replace("scale = 2.0", "scale = 2.0\nscael = 3.0"))
    spec = load_spec(folder / "spec.toml", "quick")
    with pytest.raises(SpecError, match=r"\[\[probes\]\] #1: key 'kind' = './probes.py:WeightNorm': WeightNorm\(name, "
                                        r"every, start, \*\*options\) does not take the table's options \(scale = 2.0, "
                                        r"scael = 3.0\): TypeError: .*'scael'"):
        run_specs([spec], folder / "runs")


@pytest.mark.parametrize("old,new,message", [
    (PROBE, "./nope.py:WeightNorm", r"spec.toml \[\[probes\]\] #1: key 'kind': plug-in './nope.py:WeightNorm': "
                                    r"no file .*nope.py"),
    ("./views.py:draw_norm", "./nope.py:draw", r"spec.toml \[\[figure.panels\]\] #1: key 'kind': plug-in "
                                               r"'./nope.py:draw': no file .*nope.py"),
    ("./views.py:scaled_norm", "./nope.py:q", r"spec.toml \[\[claims\]\] #1: key 'quantity': plug-in './nope.py:q': "
                                              r"no file .*nope.py"),
    ("./views.py:scaled_norm", "no_such_module_xyz:q", r"\[\[claims\]\] #1: key 'quantity': plug-in "
                                                       r"'no_such_module_xyz:q': no module"),
    (PROBE, "landscap", r"\[\[probes\]\] #1: key 'kind' expects one of \[.*\] or a plug-in probe"),
    ("./views.py:draw_norm", "bands", r"\[\[figure.panels\]\] #1: key 'kind' expects one of \[.*\] or a plug-in"),
    ("./views.py:scaled_norm", "los", r"\[\[claims\]\] 'norm': key 'quantity' expects one of \[.*\] or a plug-in"),
], ids=["probe-file", "panel-file", "quantity-file", "quantity-module", "probe-name", "panel-name", "quantity-name"])
def test_a_plugin_that_cannot_be_found_fails_when_the_spec_loads(folder, old, new, message):
    (folder / "spec.toml").write_text(SPEC.replace(old, new))
    with pytest.raises(SpecError, match=message):
        load_spec(folder / "spec.toml", "quick")


@pytest.mark.parametrize("name,content,message", [
    ("absent", None, r"views.py has no attribute 'absent'"),
    ("NOT_CALLABLE", None, r"is 3, not a callable draw\(ax, runs, \*, colors, \*\*options\)"),
    ("one_argument", None, r"cannot be called as draw\(ax, runs, \*, colors, \*\*options\).*: "),
    ("draw_norm", "import not_a_module_xyz\n", r"importing .*views.py failed: ModuleNotFoundError"),
], ids=["missing-attribute", "not-callable", "wrong-signature", "import-error"])
def test_a_plugin_panel_that_is_not_one_fails_naming_the_spec_and_key(folder, name, content, message):
    from smoothnorm import plots

    if content is not None:
        (folder / "views.py").write_text(content)
    (folder / "spec.toml").write_text(SPEC.replace("./views.py:draw_norm", f"./views.py:{name}"))
    spec = load_spec(folder / "spec.toml", "quick")
    with pytest.raises(PluginError, match=rf"spec.toml \[\[figure.panels\]\] #1: key 'kind' = './views.py:{name}': "
                                          r".*" + message):
        plots.draw_spec(spec, folder / "runs", folder / "figures")  # before any run is read
    assert not (folder / "figures").exists()


@pytest.mark.parametrize("name,content,message", [
    ("absent", None, r"views.py has no attribute 'absent'"),
    ("NOT_CALLABLE", None, r"is 3, not a callable quantity\(run, layer\)"),
    ("one_argument", None, r"cannot be called as quantity\(run, layer\).*: "),
    ("scaled_norm", "import not_a_module_xyz\n", r"importing .*views.py failed: ModuleNotFoundError"),
], ids=["missing-attribute", "not-callable", "wrong-signature", "import-error"])
def test_a_plugin_quantity_that_is_not_one_fails_naming_the_spec_and_key(folder, name, content, message):
    if content is not None:
        (folder / "views.py").write_text(content)
    (folder / "spec.toml").write_text(SPEC.replace("./views.py:scaled_norm", f"./views.py:{name}"))
    spec = load_spec(folder / "spec.toml", "quick")
    with pytest.raises(PluginError, match=rf"spec.toml \[\[claims\]\] #1: key 'quantity' = './views.py:{name}': "
                                          r".*" + message):
        evaluate_spec(spec, folder / "runs")  # before any run is read


def test_the_kit_passes_a_plugin_probe_and_names_one_that_moves_the_weights(folder):
    from smoothnorm.runs.plugins import resolve
    from smoothnorm.testing import CheckFailed, check_probe

    probe = load("probe", resolve("probe", PROBE, folder, "test"), "test")
    report = check_probe(probe(name="norm", every=1, scale=2.0))
    assert report.passed

    class Meddling(probe):
        def measure(self, trainer, x, y, grad, loss):
            trainer.net.params[0] += 1.0  # a probe must leave the weights as it found them
            return super().measure(trainer, x, y, grad, loss)

    with pytest.raises(CheckFailed, match=r"^params: measure changed net.params"):
        check_probe(Meddling(name="meddling", every=1))


ENTRY_POINTS = '''[smoothnorm.probes]
weight_norm = plugged_probes:WeightNorm

[smoothnorm.quantities]
scaled_norm = plugged_views:scaled_norm
'''


def test_an_installed_package_s_entry_points_name_plugins(folder, monkeypatch):
    """A package registering a probe and a quantity under the entry-point groups: a spec names them by name."""
    dist = folder / "site" / "plugged-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugged\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    (folder / "site" / "plugged_probes.py").write_text(PROBES)
    (folder / "site" / "plugged_views.py").write_text(VIEWS.replace('"WeightNorm"', '"weight_norm"'))
    monkeypatch.syspath_prepend(str(folder / "site"))
    (folder / "spec.toml").write_text(SPEC.replace(PROBE, "weight_norm").replace("./views.py:scaled_norm",
                                                                                  "scaled_norm"))
    spec = load_spec(folder / "spec.toml", "quick")
    probe = next(p for p in spec.runs[0].probes if p.plugin)
    assert probe.name == "weight_norm" and probe.plugin["file"] == str(folder / "site" / "plugged_probes.py")
    assert spec.runs[0].settings["plugins"]["probes"]["weight_norm"]["ref"] == "weight_norm"
    assert spec.plugins["quantity"]["scaled_norm"]["file"] == str(folder / "site" / "plugged_views.py")
    try:
        run_specs([spec], folder / "runs")
    finally:
        for module in ("plugged_probes", "plugged_views"):
            sys.modules.pop(module, None)
    result = load_run(folder / "runs" / spec.runs[0].run_id)
    assert result.probes["weight_norm/norm"].shape == (3,)


def test_the_example_spec_names_its_plugins():
    from tests.helpers import ROOT

    examples = ROOT / "experiments" / "examples"
    spec = load_spec(examples / "dead_relu_batchnorm.toml", "quick")
    assert sorted(spec.plugins) == ["panel", "quantity"]
    assert list(spec.plugins["panel"]) == ["./dead_relu.py:draw_dead_units"]
    assert list(spec.plugins["quantity"]) == ["./dead_relu.py:dead_fraction"]
    for run in spec.runs:
        (probe,) = run.probes
        assert probe.name == "DeadReLUProbe" and probe.options == {"threshold": 0.0}
        assert probe.plugin["file"] == str(examples / "dead_relu.py")


@pytest.mark.parametrize("old,new", [("./views.py:draw_norm", "./views.py:absent"),
                                     ("./views.py:scaled_norm", "./views.py:NOT_CALLABLE")],
                         ids=["panel", "quantity"])
def test_a_broken_panel_or_quantity_stops_run_before_any_run_trains(folder, old, new):
    """A panel or quantity is used only after training: `run` checks it first, so the error comes at once."""
    (folder / "spec.toml").write_text(SPEC.replace(old, new))
    spec = load_spec(folder / "spec.toml", "quick")
    with pytest.raises(PluginError, match=rf"key '(kind|quantity)' = '{new}'"):
        run_specs([spec], folder / "runs")
    assert not (folder / "runs").exists()


def test_a_run_asked_for_more_probes_retrains_with_the_plugin_probe_and_the_stored_ones(folder):
    """A stored run with a plug-in probe, asked again with another built-in probe, retrains with the union: the
    plug-in probe keeps its file and records as before."""
    from smoothnorm.runs.runner import execute_run

    first = load_spec(folder / "spec.toml", "quick").runs[0]
    path = execute_run(first, folder / "runs")
    before = load_run(path).probes["WeightNorm/norm"]
    (folder / "spec.toml").write_text(SPEC.replace('kind = "grad_norms"', 'kind = "hessian"'))
    again = load_spec(folder / "spec.toml", "quick").runs[0]
    assert again.run_id == first.run_id
    assert execute_run(again, folder / "runs") == path
    result = load_run(path)
    assert {"WeightNorm/norm", "grad_norms/norms", "hessian/top_eigenvalues"} <= set(result.probes)
    np.testing.assert_array_equal(result.probes["WeightNorm/norm"], before)


@pytest.mark.parametrize("old,new,message", [
    (PROBE, "./probes.py:grad_norms", r"\[\[probes\]\] #1: key 'kind' './probes.py:grad_norms' records under "
                                      r"'grad_norms', as another probe of the spec does"),
    ("scale = 2.0", "name = 'mine'", r"\[\[probes\]\] #1: key 'name' is not a probe option: a plug-in probe records "
                                     r"under the name after the colon of its kind \('WeightNorm'\)"),
    ("scale = 2.0", "every = -1", r"\[\[probes\]\] #1: key 'every' expects a non-negative integer"),
], ids=["record-name-taken", "name-option", "negative-every"])
def test_a_plugin_probe_table_is_checked_when_the_spec_loads(folder, old, new, message):
    (folder / "spec.toml").write_text(SPEC.replace(old, new))
    with pytest.raises(SpecError, match=message):
        load_spec(folder / "spec.toml", "quick")


def test_a_profile_overrides_a_plugin_probe_s_options(folder):
    text = SPEC + '\n[profile.tiny.probes."./probes.py:WeightNorm"]\nscale = 5.0\n'
    (folder / "spec.toml").write_text(text)
    options = {profile: next(p for p in load_spec(folder / "spec.toml", profile).runs[0].probes if p.plugin).options
               for profile in ("tiny", "quick")}
    assert options == {"tiny": {"scale": 5.0}, "quick": {"scale": 2.0}}
    (folder / "spec.toml").write_text(text.replace("scale = 5.0", "every = 1"))
    with pytest.raises(SpecError, match=r"\[profile.tiny.probes\].'./probes.py:WeightNorm': key 'every' is not an "
                                        r"option a profile may override"):
        load_spec(folder / "spec.toml", "tiny")
