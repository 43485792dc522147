"""Experiment runner: every spec end to end on the tiny profile, resume after SIGKILL, spec validation."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from smoothnorm.cli import main
from smoothnorm.runs import schema, store
from smoothnorm.runs import setup as run_setup
from smoothnorm.runs import spec as spec_module
from smoothnorm.runs.store import load_run
from tests.helpers import ROOT

SPECS = sorted((ROOT / "experiments").glob("*.toml"))


def test_there_is_a_spec_per_paper_figure():
    figures = {p.stem.split("_")[0].rstrip("ab") for p in SPECS}
    assert figures == {f"fig{i}" for i in (1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13)}


def test_every_spec_resolves_in_every_profile():
    for path in SPECS:
        for profile in schema.PROFILES:
            spec = spec_module.load_spec(path, profile)
            assert spec.runs and spec.figure["panels"], path
    paper = spec_module.load_spec(ROOT / "experiments" / "fig4_vgg_landscape.toml", "paper")
    s = paper.runs[0].settings
    assert (s["arch"], s["data"], s["lr"], s["batch_size"], s["steps"], s["probe_every"]) == (
        "vgg16", "cifar10", 0.1, 128, 15000, 1)
    dln = spec_module.load_spec(ROOT / "experiments" / "fig10_dln_landscape.toml", "quick").runs[0].settings
    assert (dln["depth"], dln["hidden"], dln["n_train"], dln["batch_size"], dln["lr"], dln["steps"]) == (
        25, 10, 1000, 0, 1e-6, 10000)


EXAMPLES = sorted((ROOT / "experiments" / "examples").glob("*.toml")) + sorted(
    (ROOT / "experiments" / "beyond").glob("*.toml"))
# Examples of PyTorch models (`model = "torch:..."`) need torch.
TORCH_EXAMPLES = {p for p in EXAMPLES if 'model = "torch:' in p.read_text()}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.torch) if p in TORCH_EXAMPLES else p
                                  for p in EXAMPLES], ids=lambda p: p.stem)
def test_example_specs_run_end_to_end_in_the_tiny_profile(tmp_path, path):
    """Specs beyond the paper live in experiments/examples/ (reproduce leaves them out); `run PATH` takes them."""
    if path in TORCH_EXAMPLES:
        pytest.importorskip("torch")
    for profile in schema.PROFILES:
        assert spec_module.load_spec(path, profile).runs
    figures = tmp_path / "figures"
    assert main(["run", str(path), "--profile", "tiny", "--runs", str(tmp_path / "runs"),
                 "--figures", str(figures)]) == 0
    for ext in ("png", "pdf"):
        assert (figures / f"{path.stem}.{ext}").stat().st_size > 1000


def test_tiny_profile_runs_every_spec_end_to_end(tmp_path, capsys):
    runs, figures = tmp_path / "runs", tmp_path / "figures"
    assert main(["reproduce", "--profile", "tiny", "--runs", str(runs), "--figures", str(figures),
                 "--specs", str(ROOT / "experiments")]) == 0
    for path in SPECS:
        for ext in ("png", "pdf"):
            out = figures / f"{path.stem}.{ext}"
            assert out.exists() and out.stat().st_size > 1000, out
        spec = spec_module.load_spec(path, "tiny")
        for run in spec.runs:
            result = load_run(runs / "tiny" / run.run_id)
            assert result.status in ("finished", "diverged")
            s = run.settings
            assert list(result.metrics["step"]) == list(range(s["steps"]))
            assert np.isfinite(result.metrics["loss"][0])
            config = json.loads((result.path / "config.json").read_text())
            assert config["environment"]["numpy"] == np.__version__ and "git_commit" in config["environment"]
            for probe in run.probes:
                steps = result.probe(probe.kind, "steps")
                assert list(steps) == list(range(0, s["steps"], probe.every))
                if probe.kind == "landscape":
                    etas = result.probe_meta["landscape"]["etas"]
                    assert result.probe("landscape", "losses").shape == (len(steps), len(etas))
                    assert np.isfinite(result.probe("landscape", "base_loss")).all()
                if probe.kind == "ics":
                    assert result.probe("ics", "cosine").shape == (len(steps), 2)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]
    assert not leftovers
    # A second invocation finds every run finished and only redraws.
    capsys.readouterr()
    assert main(["reproduce", "--profile", "tiny", "--runs", str(runs), "--figures", str(figures),
                 "--specs", str(ROOT / "experiments"), "--only", "fig4"]) == 0
    assert "skipped" in capsys.readouterr().err


def _run_cli(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "smoothnorm.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_resume_after_sigkill_gives_identical_results(tmp_path):
    spec = str(ROOT / "experiments" / "fig10_dln_landscape.toml")
    # --figures: `run` writes CLAIMS.md and claims.json even with --no-plot (else into the repository's figures/).
    common = ["--profile", "tiny", "--set", "steps=1500", "--set", "checkpoint_every=50", "--set", "probe_every=10",
              "--no-plot", "--figures", str(tmp_path / "figures")]
    clean = _run_cli(["run", spec, *common, "--runs", str(tmp_path / "clean")])
    killed_root = tmp_path / "killed"
    proc = _run_cli(["run", spec, *common, "--runs", str(killed_root)])
    # Kill the run without warning once it has checkpointed at least twice, mid-run.
    deadline = time.time() + 300
    victim = None
    while time.time() < deadline and victim is None and proc.poll() is None:
        for status_file in killed_root.glob("tiny/*/status.json"):
            try:
                status = json.loads(status_file.read_text())
            except (OSError, ValueError):
                continue
            if status.get("status") == "running" and status.get("step", 0) >= 100:
                os.kill(proc.pid, signal.SIGKILL)
                victim = status_file.parent
                break
        time.sleep(0.01)
    proc.wait()
    assert victim is not None, "the run finished before it could be killed"
    assert clean.wait(timeout=600) == 0, clean.stderr.read().decode()
    resumed = _run_cli(["run", spec, *common, "--runs", str(killed_root)])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()
    assert b"resuming at step" in resumed.stderr.read()
    for run_dir in (tmp_path / "clean" / "tiny").iterdir():
        a = load_run(run_dir)
        b = load_run(killed_root / "tiny" / run_dir.name)
        assert a.status == b.status == "finished"
        assert list(a.metrics) == list(b.metrics)
        for key in a.metrics:
            if key != "time":
                np.testing.assert_array_equal(a.metrics[key], b.metrics[key], err_msg=key)
        assert a.probes.keys() == b.probes.keys()
        for key in a.probes:
            np.testing.assert_array_equal(a.probes[key], b.probes[key], err_msg=key)
        np.testing.assert_array_equal(
            store.read_npz(run_dir / "checkpoint.npz")["net/layers.0.weight"],
            store.read_npz(killed_root / "tiny" / run_dir.name / "checkpoint.npz")["net/layers.0.weight"],
        )
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"base": {"stepz": 3}}, r"\[base\]: unknown key 'stepz'"),
        ({"base": {"steps": "ten"}}, r"\[base\]: key 'steps' expects int, got str"),
        ({"base": {"arch": "vgg12"}}, r"\[base\]: key 'arch' expects one of"),
        ({"base": {"norm": "batchnorm"}}, r"\[base\]: key 'norm' expects one of"),
        ({"runs": [{"label": "x", "lr": -1.0}]}, r"\[\[runs\]\] #1: key 'lr' expects a positive number"),
        ({"runs": [{"norm": "batch"}]}, r"\[\[runs\]\] #1: missing key 'label'"),
        ({"probes": [{"kind": "landscap"}]}, r"\[\[probes\]\] #1: key 'kind' expects one of"),
        ({"probes": [{"kind": "ics", "layer": [1]}]}, r"\[\[probes\]\] #1: unknown key 'layer'"),
        ({"figure": {"panels": [{"kind": "bands"}]}}, r"\[\[figure.panels\]\] #1: key 'kind' expects one of"),
        ({"profile": {"fast": {"steps": 3}}}, r"unknown profile 'fast'"),
        ({"extra": 1}, r"unknown key 'extra'"),
    ],
)
def test_bad_spec_fails_before_any_work_naming_key_and_file(tmp_path, edit, message):
    import tomllib

    raw = tomllib.loads((ROOT / "experiments" / "fig4_vgg_landscape.toml").read_text())
    for key, value in edit.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    path = tmp_path / "bad.toml"
    path.write_text(_to_toml(raw))
    with pytest.raises(schema.SpecError, match=message) as info:
        spec_module.load_spec(path, "tiny")
    assert str(path) in str(info.value)
    assert main(["run", str(path), "--profile", "tiny", "--runs", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()


def test_set_overrides_are_validated(tmp_path):
    path = ROOT / "experiments" / "fig4_vgg_landscape.toml"
    spec = spec_module.load_spec(path, "tiny", ["steps=9", "lr=0.05"])
    assert spec.runs[0].settings["steps"] == 9 and spec.runs[0].settings["lr"] == 0.05
    with pytest.raises(schema.SpecError, match="unknown key 'stepz'"):
        spec_module.load_spec(path, "tiny", ["stepz=9"])
    with pytest.raises(schema.SpecError, match="key 'steps' expects int"):
        spec_module.load_spec(path, "tiny", ["steps=fast"])


def test_runs_shared_by_specs_run_once_with_union_of_probes():
    fig5 = spec_module.load_spec(ROOT / "experiments" / "fig5a_vgg_lp.toml", "tiny")
    fig12 = spec_module.load_spec(ROOT / "experiments" / "fig12_vgg_lp_landscape.toml", "tiny")
    fig4 = spec_module.load_spec(ROOT / "experiments" / "fig4_vgg_landscape.toml", "tiny")
    merged = spec_module.merge_runs([fig5, fig12, fig4])
    assert len(merged) == 5
    assert all([p.kind for p in run.probes] == ["landscape"] for run in merged)


def _to_toml(obj, prefix=""):
    """Tiny TOML writer for the test's edited specs (tables, arrays of tables, scalars, lists)."""
    lines, tables = [], []
    for key, value in obj.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            tables.append((key, value))
        else:
            lines.append(f"{json.dumps(key)} = {json.dumps(value)}")
    out = "\n".join(lines) + "\n"
    for key, value in tables:
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += f"\n[{name}]\n" + _to_toml(value, name + ".")
        else:
            for item in value:
                out += f"\n[[{name}]]\n" + _to_toml(item, name + ".")
    return out


def test_short_spec_names_select_their_specs():
    import argparse

    from smoothnorm.cli import _specs

    args = argparse.Namespace(specs=str(ROOT / "experiments"), profile="tiny", set=[])
    names = [s.name for s in _specs(args, ["fig3", "fig1", "fig11b"])]
    assert names == ["fig3a_vgg_ics", "fig3b_dln_ics", "fig1_vgg_accuracy", "fig11b_dln_grad_vs_eta"]
    with pytest.raises(schema.SpecError, match="no such spec"):
        _specs(args, ["fig7"])


def test_conv_algorithm_reaches_every_conv_and_bad_values_are_named():
    spec = spec_module.load_spec(ROOT / "experiments" / "fig4_vgg_landscape.toml", "tiny", ["conv_algorithm=winograd"])
    net = run_setup.build_network(spec.runs[0].settings)
    assert {layer.algorithm for layer in net.layers if hasattr(layer, "algorithm")} == {"winograd"}
    with pytest.raises(schema.SpecError, match=r"key 'conv_algorithm' expects one of \['auto', 'im2col'"):
        spec_module.load_spec(ROOT / "experiments" / "fig4_vgg_landscape.toml", "tiny", ["conv_algorithm=fft"])


def test_profile_probe_overrides_apply_to_their_profile_only_and_are_validated(tmp_path):
    path = ROOT / "experiments" / "beyond" / "ghorbani_outliers.toml"
    tiny = spec_module.load_spec(path, "tiny").runs[0].probes[0]
    quick = spec_module.load_spec(path, "quick").runs[0].probes[0]
    assert (tiny.options["lanczos_steps"], tiny.options["steps"]) == (8, [3])
    assert (quick.options["lanczos_steps"], quick.options["steps"]) == (90, [0, 50, 200, 1000])
    text = path.read_text()
    for bad, message in [("lanczos_steps = 8", "unknown key 'lanczos'"), ("k = 3", "expects int")]:
        edited = tmp_path / "bad.toml"
        edited.write_text(text.replace(bad, "lanczos = 8" if "lanczos" in bad else 'k = "three"'))
        with pytest.raises(schema.SpecError, match=message):
            spec_module.load_spec(edited, "tiny")
