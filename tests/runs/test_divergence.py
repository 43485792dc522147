"""Divergence is data: a run whose loss becomes Inf/NaN is recorded ("diverged", its rows and probes up to that
step) and drawn, inside a multi-run spec and when it diverges after a resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smoothnorm.cli import main
from smoothnorm.runs import runner
from smoothnorm.runs import spec as spec_module
from smoothnorm.runs.store import load_run
from tests.helpers import _Crash, _interrupt_at, assert_same_run

# The tiny 25-layer DLN on 50 samples: without BatchNorm, lr 3e-4 overflows at step 6; lr 1e-6 trains.
SPEC = """
title = "A diverging run among others"
[base]
model = "dln"
depth = 25
hidden = 10
dim = 10
data = "gaussian_regression"
n_train = 50
batch_size = 0
dtype = "float64"
lr = 1e-6
steps = 12
eval_every = 0
probe_every = 3
checkpoint_every = 2

[[runs]]
label = "stable"
norm = "none"

[[runs]]
label = "diverges"
norm = "none"
lr = 3e-4

[[runs]]
label = "stable + BatchNorm"
norm = "batch"
lr = 3e-4

[[probes]]
kind = "landscape"
preset = "dln"

[figure]
columns = 2

[[figure.panels]]
kind = "band"
quantity = "losses"
logy = true
title = "loss landscape"

[[figure.panels]]
kind = "accuracy"
metric = "loss"
logy = true
title = "training loss"
"""


@pytest.fixture
def spec_path(tmp_path) -> Path:
    path = tmp_path / "diverging.toml"
    path.write_text(SPEC)
    return path


def test_a_diverging_run_inside_a_multi_run_spec_is_recorded_and_drawn(tmp_path, spec_path):
    figures = tmp_path / "figures"
    assert main(["run", str(spec_path), "--profile", "tiny", "--runs", str(tmp_path / "runs"),
                 "--figures", str(figures)]) == 0
    spec = spec_module.load_spec(spec_path, "tiny")
    results = {run.label: load_run(tmp_path / "runs" / "tiny" / run.run_id) for run in spec.runs}
    assert results["stable"].status == results["stable + BatchNorm"].status == "finished"
    for label in ("stable", "stable + BatchNorm"):
        assert list(results[label].metrics["step"]) == list(range(12))
    boom = results["diverges"]
    assert boom.status == "diverged"
    steps, loss = boom.metrics["step"], boom.metrics["loss"]
    assert list(steps) == list(range(len(steps))) and 2 < len(steps) < 12
    assert np.isfinite(loss[:-1]).all() and not np.isfinite(loss[-1])  # the row where it diverged is kept
    assert boom.metrics["diverged"][-1] == 1
    status = json.loads((boom.path / "status.json").read_text())
    assert status["status"] == "diverged" and status["step"] == len(steps)
    assert list(boom.probe("landscape", "steps")) == [s for s in range(0, len(steps), 3)]
    for ext in ("png", "pdf"):
        assert (figures / f"diverging.{ext}").stat().st_size > 1000
    # Running again finds it done: a diverged run is a result, not a failure to retry.
    assert main(["run", str(spec_path), "--profile", "tiny", "--runs", str(tmp_path / "runs"), "--no-plot",
                 "--figures", str(figures)]) == 0
    assert load_run(boom.path).metrics["step"].tolist() == steps.tolist()


def test_a_run_that_diverges_after_a_resume_matches_the_uninterrupted_one(tmp_path, spec_path, monkeypatch):
    run = next(r for r in spec_module.load_spec(spec_path, "tiny").runs if r.label == "diverges")
    runner.execute_run(run, tmp_path / "clean")
    clean = load_run(tmp_path / "clean" / run.run_id)
    assert clean.status == "diverged" and len(clean.metrics["step"]) > 5
    _interrupt_at(monkeypatch, 5)  # after the checkpoint at step 4, before the divergence
    with pytest.raises(_Crash):
        runner.execute_run(run, tmp_path / "resumed")
    monkeypatch.undo()
    runner.execute_run(run, tmp_path / "resumed")
    attempts = (tmp_path / "resumed" / run.run_id / "attempts.jsonl").read_text().splitlines()
    assert '"from_step": 4' in attempts[-1]
    assert_same_run(tmp_path / "clean" / run.run_id, tmp_path / "resumed" / run.run_id)
