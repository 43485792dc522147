"""Executors: Dask (local worker processes) gives the sequential results bit for bit, survives a SIGKILLed worker,
and shares a run folder with a second `reproduce` process; the sequential executor lets such a process go first;
progress events and their display; a missing `dask` extra is a named error."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from smoothnorm.cli import main
from smoothnorm.runs import executors, leases
from smoothnorm.runs.progress import ProgressDisplay, describe
from smoothnorm.runs.runner import execute_run
from smoothnorm.runs.spec import load_spec
from smoothnorm.runs.store import load_run, read_npz
from tests.helpers import ROOT

# One DLN spec and one VGG spec (conv kernels), a few more steps than the tiny profile's so runs overlap in time.
ONLY = "fig10,fig4"
SETTINGS = ["--set", "steps=12", "--set", "checkpoint_every=4"]


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "smoothnorm.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def _finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode() + err.decode()


def _assert_same_runs(reference: Path, other: Path, names: list[str] | None = None) -> list[str]:
    """The run directories `names` (default: all of `reference`) are in `other` with equal metrics (but wall time),
    probes and weights."""
    names = names or sorted(p.name for p in reference.iterdir() if p.is_dir())
    assert names and set(names) <= {p.name for p in other.iterdir() if p.is_dir()}
    for name in names:
        a, b = load_run(reference / name), load_run(other / name)
        assert a.status == b.status and a.status in ("finished", "diverged"), name
        assert list(a.metrics) == list(b.metrics)
        for key in a.metrics:
            if key != "time":
                np.testing.assert_array_equal(a.metrics[key], b.metrics[key], err_msg=f"{name} {key}")
        assert a.probes.keys() == b.probes.keys()
        for key in a.probes:
            np.testing.assert_array_equal(a.probes[key], b.probes[key], err_msg=f"{name} {key}")
        ca, cb = read_npz(reference / name / "checkpoint.npz"), read_npz(other / name / "checkpoint.npz")
        for key in ca:
            if key != "meta_json":
                np.testing.assert_array_equal(ca[key], cb[key], err_msg=f"{name} {key}")
    return names


def _fig10_reference(tmp_path: Path, settings: list[str]) -> subprocess.Popen:
    """Fig 10's tiny runs with `settings`, one after another at one thread, in a fresh process, into
    tmp_path/reference (CLAIMS.md and claims.json into tmp_path/figures, not the repository's)."""
    return _cli("run", "fig10", "--profile", "tiny", *[a for s in settings for a in ("--set", s)], "--no-plot",
                "--runs", str(tmp_path / "reference"), "--threads-per-run", "1", "--workers", "1",
                "--figures", str(tmp_path / "figures"))


def _caught_mid_run(root: Path, runs, runner: threading.Thread, low: int, high: int,
                    lease: bool = False) -> tuple:
    """(run, lease record or None): the first of `runs` whose status in `root` says running at a step in
    [low, high] (with `lease`: and whose lease can be read), polled while `runner` trains them."""
    deadline = time.time() + 600
    while time.time() < deadline and runner.is_alive():
        for run in runs:
            folder = root / run.run_id
            try:
                status = json.loads((folder / "status.json").read_text())
                owner = leases.read_lease(folder / leases.LEASE_NAME) if lease else None
            except (OSError, ValueError, leases.LeaseError):
                continue
            if (owner or not lease) and status["status"] == "running" and low <= status["step"] <= high:
                return run, owner
        time.sleep(0.005)
    pytest.fail("no run could be caught mid-run")


def _attempts(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "attempts.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The runs of ONLY trained sequentially with one thread, in a fresh process (so BLAS starts with one too)."""
    root = tmp_path_factory.mktemp("reference")
    _finish(_cli("reproduce", "--profile", "tiny", "--only", ONLY, *SETTINGS, "--runs", str(root),
                 "--figures", str(root / "figures"), "--threads-per-run", "1", "--workers", "1"))
    return root / "tiny"


# ----------------------------------------------------------------------------------------------------------------
# Without Dask
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", [["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:1"]])
def test_dask_flags_without_the_extra_name_it(tmp_path, monkeypatch, capsys, flag):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    args = ["run", "fig10", "--profile", "tiny", "--runs", str(tmp_path), "--figures", str(tmp_path), *flag]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{flag[0]} needs the 'dask' extra" in err and "pip install 'smoothnorm[dask]'" in err
    assert not (tmp_path / "tiny").exists()


def test_workers_and_scheduler_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["run", "fig10", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--workers and --scheduler"):
        executors.make_executor(2, "tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="threads per run"):
        executors.SequentialExecutor(0)


def _tiny_runs(steps: int = 6):
    return load_spec(ROOT / "experiments" / "fig10_dln_landscape.toml", "tiny", [f"steps={steps}"]).runs


def test_sequential_executor_lets_a_run_held_elsewhere_go_last(tmp_path):
    held_run, free_run = _tiny_runs()
    folder = tmp_path / held_run.run_id
    folder.mkdir()
    other = leases.Lease(folder).acquire()  # another trainer (a live lease of this process counts as one)
    events = []
    executor = executors.SequentialExecutor(poll=0.05)
    worker = threading.Thread(target=lambda: executor.run([held_run, free_run], tmp_path, events.append))
    worker.start()
    deadline = time.time() + 300
    while not any(e["kind"] == "finish" for e in events) and time.time() < deadline:
        time.sleep(0.02)
    assert [(e["kind"], e.get("run")) for e in events if e["kind"] != "step"][:4] == [
        ("plan", None), ("wait", held_run.run_id), ("start", free_run.run_id), ("finish", free_run.run_id)]
    assert not (folder / "config.json").exists()
    other.release()
    worker.join(timeout=300)
    assert not worker.is_alive()
    assert [e["kind"] for e in events if e.get("run") == held_run.run_id][-1] == "finish"
    for run in (held_run, free_run):
        assert load_run(tmp_path / run.run_id).status == "finished"
        assert len(_attempts(tmp_path / run.run_id)) == 1


def test_step_events_leave_the_first_step_out_of_rates(tmp_path):
    (run,) = _tiny_runs(steps=8)[:1]
    events = []
    execute_run(run, tmp_path, progress=events.append, progress_every=0.0)
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 9))
    assert steps[0]["rate"] is None and steps[0]["eta"] is None  # only the first (compiling) step so far
    for e in steps[1:]:
        assert e["rate"] > 0 and e["eta"] == pytest.approx((8 - e["step"]) / e["rate"])
    assert events[0]["kind"] == "start" and events[-1]["kind"] == "finish"
    assert "? steps/s, ETA ?" in describe(steps[0]) and "steps/s, ETA 0s" in describe(steps[-1])


def test_plain_display_counts_runs_and_throttles_step_lines():
    stream = io.StringIO()
    display = ProgressDisplay(stream, live=False, every=3600)
    display({"kind": "plan", "runs": ["a", "b", "c"]})
    display({"kind": "skip", "run": "c", "status": "finished"})
    display({"kind": "start", "run": "a", "step": 0, "steps": 10, "resumed": False, "took_over": None})
    for step in (1, 2, 3):
        display({"kind": "step", "run": "a", "step": step, "steps": 10, "loss": 1.5, "rate": 2.0, "eta": 3.5})
    for _ in range(2):  # the executor and the run both report a wait: shown once
        display({"kind": "wait", "run": "b", "owner": {"host": "h", "pid": 7, "heartbeat": time.time()}})
    assert display.counts() == {"done": 1, "running": 2, "queued": 0}
    display({"kind": "step", "run": "a", "step": 10, "steps": 10, "loss": 1.0, "rate": 2.0, "eta": 0.0})
    display({"kind": "finish", "run": "a", "status": "finished", "step": 10, "steps": 10, "elapsed": 5.0})
    lines = stream.getvalue().splitlines()
    assert lines[0] == "3 runs to do"
    assert lines[1] == "c: already finished, skipped  [runs: 1 done, 0 running, 2 queued]"
    assert [line for line in lines if ": step " in line] == [
        "a: step 1/10 loss 1.5 (2 steps/s, ETA 4s)", "a: step 10/10 loss 1 (2 steps/s, ETA 0s)"]
    assert lines[-1] == "a: finished in 5.0s  [runs: 2 done, 1 running, 0 queued]"
    assert lines.count("b: being trained by pid 7 on h; waiting for it") == 1


def test_live_display_table_shows_running_runs():
    pytest.importorskip("rich")  # the `progress` extra; without it the display falls back to plain lines
    from rich.console import Console

    display = ProgressDisplay(io.StringIO(), live=True)
    display({"kind": "plan", "runs": ["a", "b"]})
    display({"kind": "start", "run": "a", "step": 0, "steps": 10, "resumed": False, "took_over": None,
             "host": "node1", "pid": 42})
    display({"kind": "step", "run": "a", "step": 3, "steps": 10, "loss": 0.25, "rate": 1.5, "eta": 4.7})
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(display._table())
    text = console.export_text()
    assert "runs: 0 done, 1 running, 1 queued" in text
    row = next(line for line in text.splitlines() if "node1:42" in line)
    for cell in ("a", "3/10", "0.25", "1.5", "5s"):
        assert cell in row.split(), (cell, row)


# ----------------------------------------------------------------------------------------------------------------
# Side by side (worker processes without Dask)
# ----------------------------------------------------------------------------------------------------------------
def test_the_default_trains_runs_side_by_side_with_the_sequential_bits(tmp_path, reference):
    if executors.cores() < 2:
        pytest.skip("side by side needs two cores")
    out = _finish(_cli("reproduce", "--profile", "tiny", "--only", ONLY, *SETTINGS, "--runs", str(tmp_path),
                       "--figures", str(tmp_path / "figures"), env={"SMOOTHNORM_WORKERS": ""}))
    names = _assert_same_runs(reference, tmp_path / "tiny")
    pids = set()
    for name in names:
        (attempt,) = _attempts(tmp_path / "tiny" / name)  # each run trained once, in whole
        pids.add(attempt["pid"])
    assert len(pids) == 2  # by two processes
    assert f"{len(names)} runs to do" in out and f"runs: {len(names)} done, 0 running, 0 queued" in out
    assert "waiting for it" not in out and "skipped" not in out  # the workers' sharing is not news
    assert (tmp_path / "figures" / "fig4_vgg_landscape.png").stat().st_size > 1000


def test_the_executor_choice_follows_the_flags_the_cores_and_the_pending_runs(monkeypatch):
    monkeypatch.setattr(executors, "cores", lambda: 4)
    side = executors.make_executor(pending=4)
    assert isinstance(side, executors.ProcessExecutor) and (side.processes, side.threads_per_run) == (4, 1)
    assert isinstance(executors.make_executor(pending=3), executors.SequentialExecutor)  # fewer runs than cores
    assert isinstance(executors.make_executor(pending=None), executors.SequentialExecutor)
    assert isinstance(executors.make_executor(workers=1, pending=8), executors.SequentialExecutor)
    two = executors.make_executor(threads_per_run=2, pending=2)
    assert isinstance(two, executors.ProcessExecutor) and (two.processes, two.threads_per_run) == (2, 2)
    assert isinstance(executors.make_executor(threads_per_run=3, pending=8), executors.SequentialExecutor)


def test_smoothnorm_workers_sets_the_default_and_is_checked(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SMOOTHNORM_WORKERS", "two")
    assert main(["run", "fig10", "--profile", "tiny", "--runs", str(tmp_path), "--no-plot"]) == 2
    assert "$SMOOTHNORM_WORKERS: expected a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "tiny").exists()


def test_a_killed_side_by_side_worker_s_run_is_resumed_by_the_other(tmp_path):
    if executors.cores() < 2:
        pytest.skip("side by side needs two cores")
    settings = ["steps=1200", "checkpoint_every=50", "probe_every=10"]
    spec = load_spec(ROOT / "experiments" / "fig10_dln_landscape.toml", "tiny", settings)
    reference = _fig10_reference(tmp_path, settings)
    executor = executors.ProcessExecutor(2)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(executor.run(spec.runs, tmp_path / "side")))
    runner.start()
    victim, owner = _caught_mid_run(tmp_path / "side", spec.runs, runner, 100, 600, lease=True)
    killed = owner["pid"]
    assert killed in executor.worker_pids()
    os.kill(killed, signal.SIGKILL)
    runner.join(timeout=600)
    assert not runner.is_alive() and set(result) == {run.run_id for run in spec.runs}
    _finish(reference)
    _assert_same_runs(tmp_path / "reference" / "tiny", tmp_path / "side")
    first, second = _attempts(tmp_path / "side" / victim.run_id)
    assert first["pid"] == killed and first["from_step"] == 0
    assert second["pid"] in executor.worker_pids() and second["pid"] != killed
    assert second["took_over"]["pid"] == killed
    assert 100 <= second["from_step"] < 1200 and second["from_step"] % 50 == 0  # resumed from a checkpoint


def test_a_run_that_raises_in_a_worker_stops_the_sweep_and_is_named(tmp_path):
    (tmp_path / "broken_norm.py").write_text(
        "from smoothnorm.nn.norms.batch import BatchNorm\n\n\nclass Broken(BatchNorm):\n"
        "    def forward(self, x, mode):\n        raise RuntimeError('broken on purpose')\n")
    (tmp_path / "spec.toml").write_text(
        '[base]\nmodel = "dln"\ndepth = 3\nhidden = 4\ndim = 4\ndata = "gaussian_regression"\nn_train = 20\n'
        'batch_size = 0\ndtype = "float64"\nlr = 1e-3\nsteps = 4\nprobe_every = 0\ncheckpoint_every = 2\n'
        'eval_every = 0\n\n[[runs]]\nlabel = "plain"\nnorm = "none"\n\n'
        '[[runs]]\nlabel = "broken"\nnorm = "./broken_norm.py:Broken"\n')
    spec = load_spec(tmp_path / "spec.toml", "quick")
    events: list[dict] = []
    with pytest.raises(executors.RunsFailed, match="broken on purpose") as failed:
        executors.ProcessExecutor(2).run(spec.runs, tmp_path / "runs", events.append)
    broken = next(run for run in spec.runs if run.label == "broken")
    assert list(failed.value.errors) == [broken.run_id]
    assert any(e["kind"] == "fail" and e["run"] == broken.run_id for e in events)
    assert not (tmp_path / "runs" / broken.run_id / leases.LEASE_NAME).exists()


# ----------------------------------------------------------------------------------------------------------------
# Dask
# ----------------------------------------------------------------------------------------------------------------
def test_local_cluster_gives_the_sequential_results_bit_for_bit(tmp_path, reference, capsys):
    pytest.importorskip("distributed")
    assert main(["reproduce", "--profile", "tiny", "--only", ONLY, *SETTINGS, "--runs", str(tmp_path),
                 "--figures", str(tmp_path / "figures"), "--workers", "2", "--threads-per-run", "1"]) == 0
    names = _assert_same_runs(reference, tmp_path / "tiny")
    for name in names:
        (attempt,) = _attempts(tmp_path / "tiny" / name)
        assert attempt["pid"] != os.getpid()  # trained in a worker process
    err = capsys.readouterr().err
    assert f"{len(names)} runs to do" in err and f"runs: {len(names)} done, 0 running, 0 queued" in err
    assert (tmp_path / "figures" / "fig4_vgg_landscape.png").stat().st_size > 1000


def test_two_reproduce_processes_on_one_folder_train_each_run_once(tmp_path, reference):
    """One sequential process and one on a local Dask cluster, started together on the same run folder (the DLN
    spec only: its runs are cheap, and the bit-for-bit test above covers VGG on Dask)."""
    pytest.importorskip("distributed")
    common = ["reproduce", "--profile", "tiny", "--only", "fig10", *SETTINGS, "--runs", str(tmp_path / "runs"),
              "--threads-per-run", "1"]
    first = _cli(*common, "--figures", str(tmp_path / "figures-1"))
    second = _cli(*common, "--figures", str(tmp_path / "figures-2"), "--workers", "1")
    _finish(first), _finish(second)
    names = sorted(run.run_id for run in load_spec(ROOT / "experiments" / "fig10_dln_landscape.toml", "tiny",
                                                   [SETTINGS[1], SETTINGS[3]]).runs)
    _assert_same_runs(reference, tmp_path / "runs" / "tiny", names)
    # attempts.jsonl gets one line per training session (after the lease is taken, when there is work left):
    # one line each means no run was trained twice, in whole or in part.
    for name in names:
        assert len(_attempts(tmp_path / "runs" / "tiny" / name)) == 1, name
        assert not (tmp_path / "runs" / "tiny" / name / "lease.json").exists()
    for figures in ("figures-1", "figures-2"):
        assert (tmp_path / figures / "fig10_dln_landscape.png").stat().st_size > 1000


def test_a_worker_killed_mid_run_costs_only_the_steps_since_its_checkpoint(tmp_path):
    pytest.importorskip("distributed")
    settings = ["steps=800", "checkpoint_every=50", "probe_every=10"]
    spec = load_spec(ROOT / "experiments" / "fig10_dln_landscape.toml", "tiny", settings)
    reference = _fig10_reference(tmp_path, settings)
    environ = {name: os.environ.get(name) for name in executors.THREAD_VARIABLES}
    with executors.DaskExecutor(workers=2, threads_per_run=1) as executor:
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(executor.run(spec.runs, tmp_path / "dask")))
        runner.start()
        victim, _ = _caught_mid_run(tmp_path / "dask", spec.runs, runner, 100, 400)  # well before its end
        key = f"smoothnorm-run-{victim.run_id}"
        address = None
        for _ in range(200):  # the scheduler's view of who processes what can lag the status file
            address = next((addr for addr, keys in executor.client.processing().items() if key in keys), None)
            if address is not None:
                break
            time.sleep(0.05)
        assert address is not None, f"no worker processes {key}"
        killed = executor.worker_pids()[address]
        os.kill(killed, signal.SIGKILL)
        runner.join(timeout=600)
        assert not runner.is_alive() and set(result) == {run.run_id for run in spec.runs}
    # The nannies wrote the workers' thread variables into this process's environment at every spawn (the
    # restart too); the executor puts them back, or Numba would refuse to compile here afterwards.
    assert {name: os.environ.get(name) for name in executors.THREAD_VARIABLES} == environ
    _finish(reference)
    _assert_same_runs(tmp_path / "reference" / "tiny", tmp_path / "dask")
    first, second = _attempts(tmp_path / "dask" / victim.run_id)
    assert first["pid"] == killed and first["from_step"] == 0
    assert second["pid"] != killed and second["took_over"]["pid"] == killed
    assert 100 <= second["from_step"] < 800 and second["from_step"] % 50 == 0  # resumed from a checkpoint


def test_scheduler_address_uses_an_existing_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    (run,) = _tiny_runs(steps=4)[:1]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with executors.make_executor(scheduler=cluster.scheduler_address, threads_per_run=1) as executor:
            assert isinstance(executor, executors.DaskExecutor) and executor.cluster is None
            (pid,) = executor.worker_pids().values()
            events = []
            paths = executor.run([run], tmp_path, events.append)
    assert paths == {run.run_id: tmp_path.resolve() / run.run_id}
    assert load_run(paths[run.run_id]).status == "finished"
    (attempt,) = _attempts(paths[run.run_id])
    assert attempt["pid"] == pid
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "plan" and kinds.count("finish") == 1  # worker events may arrive late, so not always last


@pytest.mark.slow
def test_every_tiny_spec_on_a_local_cluster_equals_sequential(tmp_path):
    """The heavier variant: every spec of the tiny profile, Dask with two workers against one sequential thread."""
    pytest.importorskip("distributed")
    common = ["reproduce", "--profile", "tiny", "--threads-per-run", "1"]
    sequential = _cli(*common, "--runs", str(tmp_path / "sequential"), "--figures", str(tmp_path / "f1"))
    _finish(sequential, timeout=3600)
    _finish(_cli(*common, "--runs", str(tmp_path / "dask"), "--figures", str(tmp_path / "f2"), "--workers", "2"),
            timeout=3600)
    _assert_same_runs(tmp_path / "sequential" / "tiny", tmp_path / "dask" / "tiny")
