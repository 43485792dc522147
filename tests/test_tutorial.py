"""docs/TUTORIAL.md: every ```python block runs, in order, in one namespace (so the tutorial cannot rot); the
blocks tagged ```python torch (the PyTorch section) run where torch is installed."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from tests.helpers import ROOT

TUTORIAL = ROOT / "docs" / "TUTORIAL.md"


def code_blocks(text: str, tag: str = "") -> list[str]:
    """The ```python blocks (tag ""), or those tagged ```python <tag> (torch: they need PyTorch)."""
    head = "```python" + (f" {tag}" if tag else "")
    return re.findall(rf"^{re.escape(head)}\n(.*?)^```", text, flags=re.S | re.M)


def run_tutorial(folder: str | os.PathLike) -> dict:
    """Execute the tutorial's code blocks with `folder` as the working directory; returns their namespace."""
    namespace: dict = {"__name__": "tutorial"}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for i, block in enumerate(code_blocks(TUTORIAL.read_text())):
            exec(compile(block, f"{TUTORIAL}:block{i + 1}", "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
    return namespace


def test_tutorial_has_its_sections_and_code():
    text = TUTORIAL.read_text()
    assert len(code_blocks(text)) >= 7
    for words in ("Gradient descent", "Standardizing the inputs", "before a sigmoid", "training and in testing",
                  "ICS", "LayerNorm and InstanceNorm", "questions of stored runs", "your own normalization",
                  "your own probe, panel or claim quantity"):
        assert words in text


def test_tutorial_code_runs(tmp_path, capsys):
    namespace = run_tutorial(tmp_path)
    for figure in ("optimizers", "input_normalization", "sigmoid_inputs", "batchnorm_modes"):
        assert (tmp_path / "tutorial" / f"{figure}.png").stat().st_size > 1000
    assert namespace["curves"]["standardized"][-1] < namespace["curves"]["raw"][-1] / 10
    printed = capsys.readouterr().out
    assert "condition" in printed and "% of sigmoid inputs" in printed
    # The tutorial's claims, checked on what it computed.
    assert namespace["c"].condition_number < 10  # the standardized features: the last one printed
    # The stored-runs analysis: one row per norm, one column per seed, the step read back from the runs' metrics.
    table, frame = namespace["table"], namespace["frame"]
    assert sorted(table["norm"]) == sorted(["none", "batch", "l1", "l2", "linf"] * 2)
    assert (frame.groupby("run_id")["step"].max() == 59).all()
    reached = table.dropna()
    assert len(reached) >= 2 and all(0 < step < 60 for step in reached["first_step"])
    # The plug-in norm passes the kit; the forgetful copy fails its backward check.
    assert "backward: dx wrong by" in printed
    # The plug-in probe passes the kit; the meddling copy moves BatchNorm's running statistics. Its spec trains,
    # draws with the plug-in panel and evaluates the plug-in quantity's claim.
    assert "buffers: measure changed" in printed
    assert (tmp_path / "tutorial" / "dead_relu_batchnorm.png").stat().st_size > 1000
    assert "batchnorm-fewer-dead-units: holds in" in printed
    dead = namespace["dead"]
    assert dead.shape == (3, 5) and ((dead >= 0) & (dead <= 1)).all()


@pytest.mark.torch
def test_tutorial_torch_section_runs(capsys):
    """The PyTorch section's blocks (```python torch) run in a namespace of their own, where torch is installed."""
    pytest.importorskip("torch")
    blocks = code_blocks(TUTORIAL.read_text(), "torch")
    assert blocks and "Measure your own PyTorch model" in TUTORIAL.read_text()
    namespace: dict = {"__name__": "tutorial_torch"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{TUTORIAL}:torch-block{i + 1}", "exec"), namespace)  # noqa: S102
    assert "weight layers ['conv', 'block', 'fc']" in capsys.readouterr().out
    assert np.isfinite(namespace["top"][0]) and namespace["top"][0] > 0
