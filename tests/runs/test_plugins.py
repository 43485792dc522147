"""Plug-in norms: a normalization in the user's own file, named from a spec, trains, is probed and enters the
run's identity; bad plug-ins fail with the spec, the key and the cause; loading a spec never imports one."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from smoothnorm import measure
from smoothnorm.nn import models
from smoothnorm.runs import runner
from smoothnorm.runs.executors import run_specs
from smoothnorm.runs.plugins import load, resolve
from smoothnorm.runs.schema import SpecError
from smoothnorm.runs.spec import load_spec
from smoothnorm.runs.store import load_run, read_config
from tests.helpers import ROOT, check_gradient

EXAMPLE = ROOT / "experiments" / "examples"
REF = "./scale_only_norm.py:ScaleOnlyBatchNorm"


@pytest.fixture
def folder(tmp_path):
    """A spec folder with the example's plug-in file and a tiny DLN spec whose second run uses it."""
    shutil.copy(EXAMPLE / "scale_only_norm.py", tmp_path)
    (tmp_path / "spec.toml").write_text(
        '[base]\nmodel = "dln"\ndepth = 4\nhidden = 5\ndim = 5\ndata = "gaussian_regression"\nn_train = 40\n'
        'batch_size = 0\ndtype = "float64"\nlr = 1e-3\nsteps = 6\nprobe_every = 2\ncheckpoint_every = 3\n'
        'eval_every = 0\n\n[[runs]]\nlabel = "BatchNorm"\nnorm = "batch"\n\n'
        f'[[runs]]\nlabel = "scale-only"\nnorm = "{REF}"\n\n[[probes]]\nkind = "landscape"\npreset = "dln"\n'
        '\n[[probes]]\nkind = "hessian"\nk = 1\n')
    return tmp_path


def _plugin_class():
    plugin = resolve("norm", REF, EXAMPLE, "test")
    return load("norm", plugin, "test")


def test_the_example_norm_has_right_gradients_and_exact_hessian_products(rng):
    """Backward against central differences, and the R-pass's Hessian-vector products against central
    differences of the gradient (tanh: no kinks), float64."""
    norm = _plugin_class()
    net = models.mlp(6, [8, 8], 3, norm=norm, activation="tanh", dtype=np.float64, seed=1)
    x, y = rng.standard_normal((10, 6)), rng.integers(0, 3, size=10)
    assert check_gradient(net, x, y, rng) < 1e-6
    net.loss_and_grad(x, y, mode="train")  # running statistics away from their start
    v = rng.standard_normal(net.num_params)
    exact = measure.hessian_vector_product(net, x, y, v)
    central = measure.hessian_vector_product(net, x, y, v, scheme="central")
    assert np.linalg.norm(exact - central) <= 1e-5 * np.linalg.norm(exact)


def test_a_plugin_norm_trains_is_probed_and_its_source_is_part_of_the_run(folder, capsys):
    spec = load_spec(folder / "spec.toml", "quick")
    plain, plugin = spec.runs
    assert plugin.settings["plugins"]["norm"]["ref"] == REF and "scaleonlybatchnorm" in plugin.run_id
    run_specs([spec], folder / "runs")
    assert f"loaded from {folder / 'scale_only_norm.py'}" in capsys.readouterr().err
    result = load_run(folder / "runs" / plugin.run_id)
    assert result.status == "finished" and np.isfinite(result.probes["hessian/top_eigenvalues"]).all()
    assert np.isfinite(result.probes["landscape/losses"]).all()
    config = read_config(folder / "runs" / plugin.run_id / "config.json")
    assert config["run"]["plugins"]["norm"]["sha256"] == plugin.settings["plugins"]["norm"]["sha256"]
    # Editing the plug-in's file makes another run (it trains again); the other run keeps its identity.
    with open(folder / "scale_only_norm.py", "a") as f:
        f.write("\n# edited\n")
    edited = load_spec(folder / "spec.toml", "quick").runs
    assert edited[1].run_id != plugin.run_id and edited[0].run_id == plain.run_id


def test_loading_a_spec_never_imports_the_plugin(folder):
    (folder / "scale_only_norm.py").write_text("raise RuntimeError('imported!')\n")
    spec = load_spec(folder / "spec.toml", "quick")  # no error: nothing imported
    plugin_file = str(folder / "scale_only_norm.py")
    assert not [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == plugin_file]
    with pytest.raises(SpecError, match=r"key 'norm'.*importing .*scale_only_norm.py failed: RuntimeError: imported!"):
        run_specs([spec], folder / "runs")


@pytest.mark.parametrize("ref,content,message", [
    ("./nope.py:Norm", None, r"spec.toml \[\[runs\]\] #2: key 'norm': plug-in './nope.py:Norm': no file .*nope.py"),
    ("no_such_module_xyz:Norm", None, r"key 'norm': plug-in 'no_such_module_xyz:Norm': no module"),
    ("./bad.py:1Norm", None, r"key 'norm': plug-in './bad.py:1Norm': expected 'package.module:Name'"),
], ids=["missing-file", "missing-module", "bad-name"])
def test_a_plugin_that_cannot_be_found_fails_at_load(folder, ref, content, message):
    text = (folder / "spec.toml").read_text().replace(REF, ref)
    (folder / "spec.toml").write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(folder / "spec.toml", "quick")


@pytest.mark.parametrize("content,message", [
    ("class Other:\n    pass\n", r"has no attribute 'ScaleOnlyBatchNorm'"),
    ("class ScaleOnlyBatchNorm:\n    pass\n", r"ScaleOnlyBatchNorm'>, not a subclass of smoothnorm.nn.layer.Layer"),
    ("from smoothnorm.nn.layer import Layer\nclass ScaleOnlyBatchNorm(Layer):\n    def forward(self, x, mode):\n"
     "        return x\n", r"does not define backward"),
    ("import not_a_module_xyz\n", r"importing .* failed: ModuleNotFoundError"),
], ids=["missing-attribute", "wrong-base-class", "no-backward", "import-error"])
def test_a_plugin_that_is_not_a_norm_fails_before_any_run_trains(folder, content, message):
    (folder / "scale_only_norm.py").write_text(content)
    spec = load_spec(folder / "spec.toml", "quick")
    with pytest.raises(SpecError, match=r"key 'norm' = './scale_only_norm.py:ScaleOnlyBatchNorm': .*" + message):
        run_specs([spec], folder / "runs")
    assert not (folder / "runs").exists() or not any((folder / "runs").iterdir())


def test_the_example_spec_loads_and_names_its_plugin():
    spec = load_spec(EXAMPLE / "scale_only_batchnorm.toml", "quick")
    refs = [run.settings.get("plugins", {}).get("norm", {}).get("ref") for run in spec.runs]
    assert refs == [None, None, REF]
    assert runner.results_root(None, "quick").name == "quick"


def test_without_an_r_pass_the_hessian_probe_says_so_and_the_others_run(folder, capsys):
    """A plug-in norm with forward and backward only: the exact Hessian probe records NaN and names the layers
    (in its metadata and on stderr); the landscape probe and training are unaffected."""
    text = (folder / "scale_only_norm.py").read_text()
    (folder / "scale_only_norm.py").write_text(text + '''

class NoRPass(ScaleOnlyBatchNorm):
    forward_r = Layer.forward_r
    backward_r = Layer.backward_r
''')
    (folder / "spec.toml").write_text((folder / "spec.toml").read_text().replace(REF, "./scale_only_norm.py:NoRPass"))
    spec = load_spec(folder / "spec.toml", "quick")
    run_specs([spec], folder / "runs")
    result = load_run(folder / "runs" / spec.runs[1].run_id)
    assert result.status == "finished"
    assert np.isnan(result.probes["hessian/top_eigenvalues"]).all()
    assert np.isfinite(result.probes["landscape/losses"]).all()
    assert result.probe_meta["hessian"]["no_r_pass"] == ["norms.0", "norms.1", "norms.2"]
    assert "probe 'hessian' records NaN" in capsys.readouterr().err
    other = load_run(folder / "runs" / spec.runs[0].run_id)
    assert np.isfinite(other.probes["hessian/top_eigenvalues"]).all() and "no_r_pass" not in other.probe_meta["hessian"]


def test_the_kit_passes_the_example_norm_and_names_a_broken_backward():
    from smoothnorm.testing import CheckFailed, check_layer

    norm = _plugin_class()
    report = check_layer(norm(4), (4, 5, 5))
    assert "r_pass" in str(report)

    class Broken(norm):
        def backward(self, dy, need_dx=True):
            dx = super().backward(dy, need_dx)
            return None if dx is None else 1.05 * dx

    with pytest.raises(CheckFailed, match=r"^backward: "):
        check_layer(Broken(4), (4, 5, 5))


MODEL = '''
import numpy as np

from smoothnorm.nn import Conv2d, Flatten, Linear, MaxPool2d, Network, ReLU, SoftmaxCrossEntropy


def build(settings, input_shape):
    """A two-conv network the package does not ship, with the spec's norm after each conv."""
    from smoothnorm.nn.norms import make_norm

    c = input_shape[0]
    layers = [("conv1", Conv2d(c, 4)), ("relu1", ReLU()), ("pool1", MaxPool2d()), ("conv2", Conv2d(4, 8))]
    if settings["norm"] != "none":
        layers.append(("norm2", make_norm(settings["norm"], 8)))
    layers += [("relu2", ReLU()), ("pool2", MaxPool2d()), ("flatten", Flatten()),
               ("fc", Linear(8 * (input_shape[1] // 4) * (input_shape[2] // 4), 10))]
    return Network(layers, input_shape=tuple(input_shape), loss=SoftmaxCrossEntropy(),
                   dtype=np.dtype(settings["dtype"]), seed=settings["seed"])


def not_a_network(settings, input_shape):
    return "a string"


NOT_CALLABLE = 3
'''


@pytest.fixture
def model_folder(tmp_path):
    (tmp_path / "tiny_model.py").write_text(MODEL)
    (tmp_path / "spec.toml").write_text(
        '[base]\nmodel = "./tiny_model.py:build"\ndata = "synthetic_images"\nn_train = 32\nn_test = 16\n'
        'batch_size = 8\nlr = 0.05\nsteps = 4\nprobe_every = 2\ncheckpoint_every = 2\neval_every = 2\n\n'
        '[[runs]]\nlabel = "plain"\nnorm = "none"\n\n[[runs]]\nlabel = "BatchNorm"\nnorm = "batch"\n\n'
        '[[probes]]\nkind = "landscape"\npreset = "vgg"\n')
    return tmp_path


def test_a_plugin_model_trains_with_the_spec_s_norm_and_probes(model_folder):
    spec = load_spec(model_folder / "spec.toml", "quick")
    assert [run.run_id.split("-")[:2] for run in spec.runs] == [["build", "none"], ["build", "batch"]]
    run_specs([spec], model_folder / "runs")
    for run in spec.runs:
        result = load_run(model_folder / "runs" / run.run_id)
        assert result.status == "finished" and np.isfinite(result.probes["landscape/losses"]).all()
        assert np.isfinite(result.metrics["test_acc"][~np.isnan(result.metrics["test_acc"])]).all()


@pytest.mark.parametrize("name,message", [
    ("not_a_network", r"returned str, not a smoothnorm.nn.network.Network"),
    ("NOT_CALLABLE", r"is 3, not a callable build\(settings, input_shape\)"),
    ("absent", r"has no attribute 'absent'"),
])
def test_a_plugin_model_that_is_not_one_fails_before_training(model_folder, name, message):
    text = (model_folder / "spec.toml").read_text().replace("tiny_model.py:build", f"tiny_model.py:{name}")
    (model_folder / "spec.toml").write_text(text)
    spec = load_spec(model_folder / "spec.toml", "quick")
    with pytest.raises(SpecError, match=message):
        run_specs([spec], model_folder / "runs")
