"""Crash safety of run folders: SIGKILL at random moments, a full disk, a damaged newest checkpoint.

Each ends, after restarting, with metrics, probes and parameters identical to an uninterrupted run's.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smoothnorm.runs import runner, store
from smoothnorm.runs import spec as spec_module
from smoothnorm.runs.store import CHECKPOINT, PREVIOUS_CHECKPOINT, RunFileError
from tests.helpers import ROOT, _Crash, _interrupt_at, assert_same_roots, assert_same_run

DLN_SPEC = ROOT / "experiments" / "fig10_dln_landscape.toml"
# Two DLN runs (plain and BatchNorm) with landscape probes, checkpointing every 2 steps.
SETTINGS = ["steps=24", "checkpoint_every=2", "probe_every=3"]






def _spec(settings=SETTINGS):
    return spec_module.load_spec(DLN_SPEC, "tiny", settings)


def _run_all(root: Path, settings=SETTINGS) -> None:
    for run in _spec(settings).runs:
        runner.execute_run(run, root)


@pytest.fixture
def clean(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    _run_all(root)
    return root




def test_full_disk_leaves_previous_files_intact_and_says_what_to_do(tmp_path, clean, monkeypatch):
    real = store._write_npz_to
    calls = {"n": 0}

    def full_disk_on_the_7th_write(f, arrays):
        calls["n"] += 1
        if calls["n"] == 7:
            f.write(b"partial bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, arrays)

    run = _spec().runs[0]
    monkeypatch.setattr(store, "_write_npz_to", full_disk_on_the_7th_write)
    folder = tmp_path / run.run_id
    snapshots = {}
    real_checkpoint = store.write_checkpoint

    def remember(path, arrays):  # what is on disk before each checkpoint write
        snapshots.update({name: (Path(path) / name).read_bytes() for name in (CHECKPOINT, "probes.npz", "status.json")
                          if (Path(path) / name).exists()})
        return real_checkpoint(path, arrays)

    monkeypatch.setattr(runner, "write_checkpoint", remember)
    with pytest.raises(OSError) as info:
        runner.execute_run(run, tmp_path)
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert str(folder) in message and "intact" in message and "run the same command again" in message
    for name, content in snapshots.items():  # the failed write changed nothing
        assert (folder / name).read_bytes() == content, name
    assert not list(tmp_path.rglob("*.part"))
    monkeypatch.undo()
    _run_all(tmp_path)
    assert_same_roots(clean, tmp_path)




@pytest.mark.parametrize("damage", ["truncate", pytest.param("flip", marks=pytest.mark.slow), "delete"])
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(tmp_path, clean, monkeypatch, damage):
    run = _spec().runs[1]  # the BatchNorm run: running statistics, noise-free
    _interrupt_at(monkeypatch, 11)  # checkpoints at steps 8 (previous) and 10 (newest)
    with pytest.raises(_Crash):
        runner.execute_run(run, tmp_path)
    monkeypatch.undo()
    newest = tmp_path / run.run_id / CHECKPOINT
    content = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(content[: len(content) // 2])
    elif damage == "flip":
        newest.write_bytes(content[:200] + bytes([content[200] ^ 0x10]) + content[201:])
    else:
        newest.unlink()  # as if killed between the two renames of write_checkpoint
    runner.execute_run(run, tmp_path)
    attempts = (tmp_path / run.run_id / "attempts.jsonl").read_text().splitlines()
    assert '"from_step": 8' in attempts[-1] and PREVIOUS_CHECKPOINT in attempts[-1]
    assert_same_run(clean / run.run_id, tmp_path / run.run_id)


def test_no_intact_checkpoint_stops_with_an_error_naming_the_files(tmp_path, monkeypatch):
    run = _spec().runs[0]
    _interrupt_at(monkeypatch, 7)
    with pytest.raises(_Crash):
        runner.execute_run(run, tmp_path)
    monkeypatch.undo()
    folder = tmp_path / run.run_id
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (folder / name).write_bytes(b"PK\x03\x04 not a zip")
    rows_before = (folder / "metrics.jsonl").read_bytes()
    with pytest.raises(RunFileError) as info:
        runner.execute_run(run, tmp_path)
    message = str(info.value)
    assert CHECKPOINT in message and PREVIOUS_CHECKPOINT in message and "Delete" in message
    assert (folder / "metrics.jsonl").read_bytes() == rows_before  # nothing recorded was dropped


def test_garbage_config_stops_with_an_error_naming_it(tmp_path):
    run = _spec().runs[0]
    (tmp_path / run.run_id).mkdir()
    (tmp_path / run.run_id / "config.json").write_bytes(b"\xff{garbage")
    with pytest.raises(RunFileError, match="config.json"):
        runner.execute_run(run, tmp_path)


def _cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "smoothnorm.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _rows_written(root: Path) -> int:
    total = 0
    for path in root.rglob("metrics.jsonl"):
        try:
            total += path.read_bytes().count(b"\n")
        except OSError:  # replaced by a resume at this moment
            pass
    return total


@pytest.mark.parametrize(
    "kills, steps",
    [pytest.param(2, 60, id="2-kills"), pytest.param(20, 300, id="20-kills", marks=pytest.mark.slow)],
)
def test_sigkill_at_random_moments_then_restart_gives_identical_results(tmp_path, kills, steps):
    """SIGKILL the CLI at random moments of training (mid-step, mid-write of metrics, checkpoints, probes and
    status: with a checkpoint every 2 steps, writes are a large share of the time), restart, repeat; the final
    folders equal an uninterrupted run's (trained in this process)."""
    settings = [f"steps={steps}", "checkpoint_every=2", "probe_every=3"]
    # --figures: `run` writes CLAIMS.md and claims.json even with --no-plot (else into the repository's figures/).
    args = ["run", str(DLN_SPEC), "--profile", "tiny", "--no-plot", "--figures", str(tmp_path / "figures"),
            *[a for s in settings for a in ("--set", s)]]
    clean_root, killed_root = tmp_path / "clean", tmp_path / "killed"
    _run_all(clean_root / "tiny", settings)
    rng = random.Random(kills)
    runs = len(spec_module.load_spec(DLN_SPEC, "tiny", settings).runs)
    # Kill points as counts of metrics rows written (over all runs), so kills land whatever the machine's speed,
    # each plus a random few milliseconds so some land mid-write.
    targets = sorted(rng.sample(range(1, steps * runs), kills))
    survived = 0
    for _attempt in range(10 * kills):
        proc = _cli([*args, "--runs", str(killed_root)])
        if survived < kills:
            start = time.monotonic()
            while proc.poll() is None and time.monotonic() - start < 300:
                if _rows_written(killed_root) >= targets[survived]:
                    break
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.02))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                survived += 1
                continue
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]
        if survived >= kills:
            break
    assert survived == kills, f"only {survived} of {kills} kills landed before the runs finished"
    assert_same_roots(clean_root / "tiny", killed_root / "tiny")
