"""One run: train a resolved RunSpec into its run directory under its lease, resuming from the checkpoint there.

What a run needs (data, network, probes, batches, evaluation) is built by smoothnorm.runs.setup. Specs (schema,
validation, run identity) live in smoothnorm.runs.spec; where runs execute (sequentially, on Dask) in
smoothnorm.runs.executors.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from smoothnorm import __version__
from smoothnorm.runs import leases
from smoothnorm.runs.provenance import machine
from smoothnorm.runs.setup import build_trainer
from smoothnorm.runs.spec import RunSpec, _probe_key, _union_probes
from smoothnorm.runs.store import (
    CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    jsonl_line,
    read_checkpoint,
    read_config,
    read_jsonl,
    write_checkpoint,
    write_json,
    write_jsonl,
    write_npz,
)


def environment() -> dict:
    """Package versions, threads, machine and git commit, recorded beside every result."""
    import numba
    import scipy

    env = {
        "smoothnorm": __version__, "python": platform.python_version(), "numpy": np.__version__,
        "scipy": scipy.__version__, "numba": numba.__version__, "numba_threads": numba.get_num_threads(),
        "machine": platform.machine(), "system": platform.system(), "cpu_count": os.cpu_count(), **machine(),
    }
    if "torch" in sys.modules:  # a run of a PyTorch model (smoothnorm.torch) imported it
        env["torch"] = sys.modules["torch"].__version__
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        env["git_commit"] = commit.stdout.strip() or None
        env["git_dirty"] = bool(dirty.stdout.strip()) if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


# ----------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------
def _status(path: Path) -> dict:
    try:
        with open(path / "status.json") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def _plan(run: RunSpec, path: Path) -> tuple[RunSpec, bool, str | None]:
    """(the run to train, whether its stored config matches so it can resume, status if there is nothing to do)."""
    wanted = _probe_key(run.probes)
    status = _status(path)
    config_path = path / "config.json"
    old = read_config(config_path) if config_path.exists() else None  # RunFileError naming it if damaged
    same = old is not None and old.get("identity") == run.identity
    have = old.get("probes", []) if same else []
    if same and status.get("status") in ("finished", "diverged") and all(p in have for p in wanted):
        return run, same, status["status"]
    if same and have != wanted:
        # Other probes than recorded: retrain from scratch with the union (deterministic, so metrics are the same).
        # The run's own probes as they are (a plug-in probe keeps its file), the stored ones rebuilt; by kind.
        union = sorted(_union_probes(have, run.probes), key=lambda p: p.kind)
        run = RunSpec(run.label, run.settings, union)
        same = False
    return run, same, None


def run_is_done(run: RunSpec, root: Path) -> bool:
    """True when `root/<run_id>` holds this run finished (or diverged) with all its probes: nothing to train."""
    try:
        return _plan(run, Path(root) / run.run_id)[2] is not None
    except Exception:  # noqa: BLE001 -- a damaged folder has training to do; execute_run names the problem
        return False


def _log_attempt(path: Path, record: dict) -> None:
    """Append one line to the run's attempts.jsonl: who trained it from which step (an audit trail of leases)."""
    fd = os.open(path / "attempts.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, jsonl_line(record).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def execute_run(run: RunSpec, root: Path, *, progress: Callable[[dict], None] | None = None, wait: bool = True,
                stale_after: float = leases.STALE_AFTER, heartbeat_every: float | None = None,
                poll: float = 1.0, progress_every: float = 1.0) -> Path:
    """Train one run into `root/<run_id>` under its lease, resuming from its checkpoint; returns the run directory.

    progress: receives event dicts (smoothnorm.runs.progress describes them), step events at most every
    `progress_every` seconds. wait: when another live process holds the run's lease, wait for it (polling every
    `poll` s) instead of raising smoothnorm.runs.leases.LeaseHeld. stale_after, heartbeat_every: see
    smoothnorm.runs.leases.
    """
    emit = progress or (lambda event: None)
    path = Path(root) / run.run_id
    run, _, done = _plan(run, path)
    if done:
        emit({"kind": "skip", "run": run.run_id, "status": done})
        return path
    path.mkdir(parents=True, exist_ok=True)
    lease = leases.Lease(path, stale_after=stale_after, heartbeat_every=heartbeat_every)
    lease.acquire(wait=wait, poll=poll, on_wait=lambda owner: emit({"kind": "wait", "run": run.run_id, "owner": owner}))
    try:
        run, same, done = _plan(run, path)  # again: whoever held the lease may have finished the run meanwhile
        if done:
            emit({"kind": "skip", "run": run.run_id, "status": done})
            return path
        return _train(run, path, same, lease, emit, progress_every)
    finally:
        lease.release()


def _train(run: RunSpec, path: Path, same: bool, lease: leases.Lease, emit: Callable[[dict], None],
           progress_every: float) -> Path:
    from smoothnorm.train.loop import Trainer

    s = run.settings
    config_path = path / "config.json"
    wanted = _probe_key(run.probes)
    trainer = build_trainer(run)
    # Temporary files of writes cut short by a kill (atomic_open's hidden ".name.XXXX.part"): under the lease no one
    # else writes here, so they are leftovers.
    for leftover in path.glob(".*.part"):
        leftover.unlink(missing_ok=True)
    resumed, checkpoint = False, None
    if same and ((path / CHECKPOINT).exists() or (path / PREVIOUS_CHECKPOINT).exists()):
        # The newest intact checkpoint: checkpoint.npz, else the one before it (RunFileError naming both if
        # neither can be read or fits this run).
        _, checkpoint = read_checkpoint(path, check=lambda arrays: _restore(trainer, arrays))
        rows = [r for r in read_jsonl(path / "metrics.jsonl") if r["step"] < trainer.step]
        write_jsonl(path / "metrics.jsonl", rows)
        trainer.metrics = rows
        resumed = True
    else:
        for name in (CHECKPOINT, PREVIOUS_CHECKPOINT, "probes.npz", "metrics.jsonl", "status.json", "attempts.jsonl"):
            if (path / name).exists():
                (path / name).unlink()
        write_json(config_path, {
            "run_id": run.run_id, "run": {"label": run.label, **s}, "identity": run.identity, "probes": wanted,
            "environment": environment(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": sys.argv,
        })
    owner = lease.record
    _log_attempt(path, {"host": owner["host"], "pid": owner["pid"], "start": owner["start"], "from_step": trainer.step,
                        "took_over": lease.took_over, "checkpoint": checkpoint.name if checkpoint else None,
                        "environment": environment()})
    probe_meta = {p.name: {"kind": type(p).__name__, **p.meta()} for p in trainer.probes}
    steps = s["steps"]
    every = s["checkpoint_every"] or steps
    metrics_file = open(path / "metrics.jsonl", "a")  # noqa: SIM115 (closed in finally)
    # Rates count from the end of this process's first step, which includes Numba's compilation.
    clock = {"t0": None, "step0": 0, "last": -1e9}

    saved = {"step": trainer.step if resumed else None}

    def save(status_name: str) -> None:
        metrics_file.flush()
        os.fsync(metrics_file.fileno())
        state = checkpoint_state(trainer)
        # The checkpoint first (the previous one is kept until it is complete); probes.npz and status.json are
        # views of it, so a crash between the writes loses nothing.
        write_checkpoint(path, state)
        saved["step"] = trainer.step
        write_npz(path / "probes.npz", trainer.probe_arrays())
        write_json(path / "status.json", {"status": status_name, "step": trainer.step, "steps": steps,
                                          "probe_meta": probe_meta, "elapsed": trainer.elapsed})

    def callback(tr: Trainer, row: dict) -> None:
        metrics_file.write(jsonl_line(row))
        lease.check()
        if tr.step % every == 0 and tr.step < steps:
            save("running")
        now = time.perf_counter()
        if clock["t0"] is None:
            clock["t0"], clock["step0"] = now, tr.step
        if now - clock["last"] >= progress_every or tr.step >= steps:
            clock["last"] = now
            done_here, spent = tr.step - clock["step0"], now - clock["t0"]
            rate = done_here / spent if done_here > 0 and spent > 0 else None
            loss = row.get("loss")
            emit({"kind": "step", "run": run.run_id, "step": tr.step, "steps": steps,
                  "loss": float(loss) if loss is not None and np.isfinite(loss) else None,
                  "rate": rate, "eta": (steps - tr.step) / rate if rate else None})

    try:
        emit({"kind": "start", "run": run.run_id, "step": trainer.step, "steps": steps, "resumed": resumed,
              "took_over": lease.took_over, "host": owner["host"], "pid": owner["pid"]})
        trainer.run(steps, callback)
        save("diverged" if trainer.diverged else "finished")
        if not s.get("keep_checkpoint", True):
            # The results are metrics.jsonl, probes.npz and status.json; a finished run never resumes.
            for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
                (path / name).unlink(missing_ok=True)
    except OSError as exc:  # a full disk, a lost mount, permissions: stop with what to do
        kept = f"its checkpoint at step {saved['step']} is intact" if saved["step"] is not None else "no checkpoint yet"
        raise OSError(exc.errno, f"{path}: could not write the run's files ({exc.strerror or exc}); {kept}. Free "
                                 "disk space (or fix the folder) and run the same command again to resume") from exc
    finally:
        with contextlib.suppress(OSError):  # closing flushes; a full disk already reported above
            metrics_file.close()
    emit({"kind": "finish", "run": run.run_id, "status": "diverged" if trainer.diverged else "finished",
          "step": trainer.step, "steps": steps, "elapsed": trainer.elapsed})
    return path


def checkpoint_state(trainer) -> dict[str, np.ndarray]:
    """The trainer's state as a checkpoint's arrays: its state_dict, the metadata as one JSON string."""
    state = trainer.state_dict()
    state["meta_json"] = np.array(json.dumps(state.pop("meta")))
    return state


def _restore(trainer, arrays: dict[str, np.ndarray]) -> None:
    """Load a checkpoint's arrays into `trainer`; ValueError if they do not fit this run (read_checkpoint's check)."""
    state = dict(arrays)
    try:
        state["meta"] = json.loads(str(state.pop("meta_json")))
        trainer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ValueError(f"does not fit this run ({type(exc).__name__}: {exc})") from exc


def runs_folder(root: str | os.PathLike | None = None) -> Path:
    """The folder of run folders: `root` if given, else $SMOOTHNORM_RUNS, else ./runs."""
    return Path(root or os.environ.get("SMOOTHNORM_RUNS", "runs"))


def results_root(root: str | os.PathLike | None, profile: str) -> Path:
    """The folder of one profile's run folders (runs_folder(root) / profile)."""
    return runs_folder(root) / profile
