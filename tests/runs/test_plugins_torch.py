"""PyTorch models named from a spec (`model = "torch:./file.py:build"`): they train, are probed (landscape, ICS,
exact Hessian) and enter the run's identity; bad ones fail with the spec, the key and the cause; a missing torch
names the extra. Loading specs never imports torch (tests/runs/test_light_specs.py checks every spec for that)."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import numpy as np
import pytest

from smoothnorm.runs.executors import run_specs
from smoothnorm.runs.schema import SpecError
from smoothnorm.runs.spec import load_spec
from smoothnorm.runs.store import load_run, read_checkpoint, read_config
from tests.helpers import ROOT

EXAMPLE = ROOT / "experiments" / "examples"

MODEL = '''
import torch


class Net(torch.nn.Module):
    def __init__(self, channels, batch_norm):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4) if batch_norm else torch.nn.Identity()
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def build(settings, input_shape):
    return Net(input_shape[0], settings["norm"] == "batch")


def not_a_module(settings, input_shape):
    return "a string"


def fails(settings, input_shape):
    raise RuntimeError("no such width")
'''


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "tiny_torch.py").write_text(MODEL)
    (tmp_path / "spec.toml").write_text(
        '[base]\nmodel = "torch:./tiny_torch.py:build"\ndata = "synthetic_images"\nn_train = 32\nn_test = 16\n'
        'batch_size = 8\nlr = 0.05\nsteps = 4\nprobe_every = 2\ncheckpoint_every = 2\neval_every = 2\n'
        'dtype = "float64"\n\n[[runs]]\nlabel = "plain"\nnorm = "none"\n\n[[runs]]\nlabel = "BatchNorm"\n'
        'norm = "batch"\n\n[[probes]]\nkind = "landscape"\npreset = "vgg"\n\n[[probes]]\nkind = "ics"\n\n'
        '[[probes]]\nkind = "hessian"\nk = 1\n')
    return tmp_path


@pytest.mark.torch
def test_a_torch_model_trains_is_probed_and_its_source_is_part_of_the_run(folder, capsys):
    torch = pytest.importorskip("torch")
    spec = load_spec(folder / "spec.toml", "quick")
    assert [run.run_id.split("-")[:2] for run in spec.runs] == [["build", "none"], ["build", "batch"]]
    run_specs([spec], folder / "runs")
    assert f"loaded from {folder / 'tiny_torch.py'}" in capsys.readouterr().err
    for run in spec.runs:
        result = load_run(folder / "runs" / run.run_id)
        assert result.status == "finished"
        for key in ("landscape/losses", "ics/l2", "ics/cosine", "hessian/top_eigenvalues"):
            assert np.isfinite(result.probes[key]).all(), key
        assert result.probe_meta["ics"]["layers"] == ["conv", "fc"]
        config = read_config(folder / "runs" / run.run_id / "config.json")
        assert config["run"]["plugins"]["model"]["ref"] == "torch:./tiny_torch.py:build"
        assert config["environment"]["torch"] == torch.__version__
    # The BatchNorm run's checkpoint holds the module's running statistics, updated by training only.
    arrays, _ = read_checkpoint(folder / "runs" / spec.runs[1].run_id)
    assert int(arrays["net/bn.num_batches_tracked"]) == 4
    # Editing the model's file makes other runs.
    with open(folder / "tiny_torch.py", "a") as f:
        f.write("\n# edited\n")
    assert {r.run_id for r in load_spec(folder / "spec.toml", "quick").runs}.isdisjoint(r.run_id for r in spec.runs)


@pytest.mark.torch
def test_the_run_s_module_is_seeded_and_leaves_torch_s_generator_alone():
    torch = pytest.importorskip("torch")
    from smoothnorm.torch import network_from_build

    build = lambda settings, shape: torch.nn.Linear(shape[0], 3)  # noqa: E731
    settings = {"seed": 0, "dtype": "float64"}
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b = (network_from_build(build, settings, (5,), "test") for _ in range(2))
    c = network_from_build(build, {**settings, "seed": 1}, (5,), "test")
    assert np.array_equal(a.params, b.params) and not np.array_equal(a.params, c.params)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.torch
@pytest.mark.parametrize("name,message", [
    ("not_a_module", r"key 'model' = 'torch:./tiny_torch.py:not_a_module': build\(settings, input_shape\) returned "
                     r"str, not a torch.nn.Module"),
    ("fails", r"key 'model' = 'torch:./tiny_torch.py:fails': build\(settings, input_shape\) failed: RuntimeError: "
              r"no such width"),
    ("absent", r"has no attribute 'absent'"),
])
def test_a_torch_model_that_is_not_one_fails_naming_the_key(folder, name, message):
    pytest.importorskip("torch")
    text = (folder / "spec.toml").read_text().replace("tiny_torch.py:build", f"tiny_torch.py:{name}")
    (folder / "spec.toml").write_text(text)
    spec = load_spec(folder / "spec.toml", "quick")
    with pytest.raises(SpecError, match=message):
        run_specs([spec], folder / "runs")


@pytest.mark.parametrize("key,value,message", [
    ("model", "torch:./nope.py:build", r"spec.toml \[\[runs\]\] #1: key 'model': plug-in .*nope.py:build.*no file"),
    ("norm", "torch:./tiny_torch.py:build", r"key 'norm': plug-in 'torch:./tiny_torch.py:build': 'torch:' names a "
                                            r"model"),
])
def test_bad_torch_references_fail_at_load(folder, key, value, message):
    text = (folder / "spec.toml").read_text()
    if key == "model":
        text = text.replace("torch:./tiny_torch.py:build", value)
    else:
        text = text.replace('norm = "none"', f'norm = "{value}"')
    (folder / "spec.toml").write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(folder / "spec.toml", "quick")


def test_without_torch_the_run_names_the_extra(folder, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find_spec(name, *a))
    spec = load_spec(folder / "spec.toml", "quick")  # loading needs no torch
    with pytest.raises(SpecError, match=r"key 'model' = 'torch:./tiny_torch.py:build': plug-in .* builds a PyTorch "
                                        r"module, and PyTorch is not installed: pip install 'smoothnorm\[torch\]'"):
        run_specs([spec], folder / "runs")


def test_importing_smoothnorm_torch_without_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    monkeypatch.delitem(sys.modules, "smoothnorm.torch", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'smoothnorm\[torch\]'"):
        importlib.import_module("smoothnorm.torch")


def test_the_example_spec_names_its_torch_model():
    spec = load_spec(EXAMPLE / "torch_resnet_batchnorm.toml", "quick")
    refs = [run.settings["plugins"]["model"]["ref"] for run in spec.runs]
    assert refs == ["torch:./torch_resnet.py:small_resnet"] * 2
    assert [run.settings["norm"] for run in spec.runs] == ["none", "batch"]
