"""Where runs execute. An executor takes resolved runs and a results root and returns {run_id: run directory};
the run directory is the only result, and its lease (smoothnorm.runs.leases) makes sure one process trains it.

- `SequentialExecutor` (the default) trains the runs one after another in this process; Dask is not imported.
- `DaskExecutor` hands each run to a Dask cluster as one task keyed by its run id: a `LocalCluster` of worker
  processes (`workers=N`) or an existing cluster (`scheduler="tcp://host:8786"`). Workers forward progress events to
  the client; a task returns a small summary. Dask is an optional extra (`pip install 'smoothnorm[dask]'`).

A Ray or multiprocessing executor implements the same `run(runs, root, progress)`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from smoothnorm.runs import leases
from smoothnorm.runs.runner import execute_run
from smoothnorm.runs.spec import RunSpec, Spec, merge_runs

Progress = Callable[[dict], None]
PROGRESS_TOPIC = "smoothnorm-progress"
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class MissingExtraError(RuntimeError):
    """An optional feature's extra is not installed; the message names the extra and how to install it."""


class RunsFailed(RuntimeError):
    """Some runs raised; `errors` maps run id to the error text."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        lines = "\n".join(f"  {rid}: {err}" for rid, err in errors.items())
        super().__init__(f"{len(errors)} run(s) failed:\n{lines}")


def require_dask(flag: str):
    """Import dask.distributed, or raise MissingExtraError naming the `dask` extra and the flag that needs it."""
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as err:
        raise MissingExtraError(
            f"{flag} needs the 'dask' extra (dask and distributed): pip install 'smoothnorm[dask]' ({err})"
        ) from err
    return distributed


def thread_environment(threads: int) -> dict[str, str]:
    """Environment variables that give a fresh process `threads` Numba, OpenMP and BLAS threads."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads per run: expected a positive integer, got {threads!r}")
    return {name: str(threads) for name in THREAD_VARIABLES}


def put_back_environment(saved: dict[str, str | None]) -> None:
    """Set the environment variables of `saved` to its values again (None: unset), after something changed them."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Run Numba's parallel kernels on at most `threads` threads inside (None: leave as is).

    Numba cannot go above the NUMBA_NUM_THREADS its process started with; BLAS threads are fixed by the environment
    at start-up (see thread_environment), so a process that must use fewer BLAS threads is started with them set.
    """
    if threads is None:
        yield
        return
    import numba

    thread_environment(threads)  # validates
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


class Executor:
    """Runs a list of RunSpecs into `root`; returns {run_id: run directory} in the order of `runs`.

    `progress` receives the event dicts described in smoothnorm.runs.progress. Executors that hold resources (a cluster)
    release them in `close()`; every executor is a context manager.
    """

    def run(self, runs: list[RunSpec], root: Path, progress: Progress | None = None) -> dict[str, Path]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor holds (nothing for the sequential one)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SequentialExecutor(Executor):
    """Train each run in this process, one after another.

    A run whose lease a live process elsewhere holds (a second `smoothnorm reproduce` on the same folder) is put
    back and the other runs go first; at the end this process waits for such runs (or takes them over if their
    owner dies). So two sequential processes on one folder share the work instead of queueing behind each other.

    threads_per_run: Numba threads (None: as the process started); stale_after, heartbeat_every: lease timing.
    """

    def __init__(self, threads_per_run: int | None = None, *, stale_after: float = leases.STALE_AFTER,
                 heartbeat_every: float | None = None, poll: float = 1.0):
        if threads_per_run is not None:
            thread_environment(threads_per_run)
        self.threads_per_run = threads_per_run
        self.lease_options = {"stale_after": stale_after, "heartbeat_every": heartbeat_every, "poll": poll}

    def run(self, runs, root, progress=None):
        emit = progress or (lambda event: None)
        emit({"kind": "plan", "runs": [run.run_id for run in runs]})
        paths: dict[str, Path] = {}
        with thread_limit(self.threads_per_run):
            deferred = []
            for run in runs:
                try:
                    paths[run.run_id] = self._one(run, root, emit, wait=False)
                except leases.LeaseHeld as held:
                    emit({"kind": "wait", "run": run.run_id, "owner": held.owner})
                    deferred.append(run)
                except leases.LeaseLost as lost:
                    emit({"kind": "retry", "run": run.run_id, "error": str(lost)})
                    deferred.append(run)
            for run in deferred:
                paths[run.run_id] = _with_lost_retries(lambda run=run: self._one(run, root, emit, wait=True), run,
                                                       emit)
        return {run.run_id: paths[run.run_id] for run in runs}

    def _one(self, run: RunSpec, root: Path, emit: Progress, wait: bool) -> Path:
        try:
            return execute_run(run, root, progress=emit, wait=wait, **self.lease_options)
        except (leases.LeaseHeld, leases.LeaseLost):
            raise
        except Exception as err:
            emit({"kind": "fail", "run": run.run_id, "error": f"{type(err).__name__}: {err}"})
            raise


def _with_lost_retries(attempt: Callable[[], Path], run: RunSpec, emit: Progress, tries: int = 3) -> Path:
    """Call `attempt` again when its lease was taken over (this process was judged dead while it trained: e.g. it
    was suspended longer than the lease timeout); the run then resumes from whatever the other process left."""
    for _ in range(tries - 1):
        try:
            return attempt()
        except leases.LeaseLost as lost:
            emit({"kind": "retry", "run": run.run_id, "error": str(lost)})
    return attempt()


# ----------------------------------------------------------------------------------------------------------------
# Side by side: worker processes of this machine, without Dask
# ----------------------------------------------------------------------------------------------------------------
def cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def pending_runs(runs: list[RunSpec], root: Path) -> int:
    """How many of `runs` still have training to do in `root` (not finished or diverged with their probes)."""
    from smoothnorm.runs.runner import run_is_done

    return sum(1 for run in runs if not run_is_done(run, Path(root)))


def _process_worker(runs: list[RunSpec], root: str, lease_options: dict, events) -> None:
    """One worker process of ProcessExecutor: the sequential executor over all runs; the leases share the runs out
    between the workers (a run another worker holds is put back, then waited for at the end, and taken over if
    that worker died). Every event goes to the parent through `events`, then ("done", paths) or ("error", text)."""
    def forward(event: dict) -> None:
        events.put(("event", os.getpid(), event))

    # The parent ends its workers with SIGTERM (its own Ctrl-C or SIGTERM, a failed run): leave as a run ended by
    # Ctrl-C does, releasing the lease (its checkpoint stays either way).
    leases.terminate_as_exit()
    try:
        paths = SequentialExecutor(**lease_options).run(runs, Path(root), forward)
    except BaseException as err:  # noqa: BLE001 -- reported to the parent, which decides
        events.put(("error", os.getpid(), f"{type(err).__name__}: {err}"))
        raise SystemExit(1) from None
    events.put(("done", os.getpid(), {rid: str(path) for rid, path in paths.items()}))


class ProcessExecutor(Executor):
    """Train runs side by side in `processes` worker processes of this machine, `threads_per_run` threads each
    (default 1). No extra is needed: the workers are started with multiprocessing's "spawn" and share the runs out
    through the runs' leases, so the results, checkpoints, resumption and a second process on the same folder
    behave as with SequentialExecutor, and (runs being thread-count invariant) the bits are a sequential run's.

    A worker that dies (killed, out of memory) leaves its run's lease to a dead pid; another worker takes the run
    over at the end and resumes it from its checkpoint. A run that raises stops the sweep: the other workers are
    ended (their runs keep their checkpoints) and RunsFailed names the run and its error.
    """

    def __init__(self, processes: int | None = None, threads_per_run: int | None = None, *,
                 stale_after: float = leases.STALE_AFTER, heartbeat_every: float | None = None, poll: float = 1.0):
        processes = cores() if processes is None else processes
        if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
            raise ValueError(f"processes: expected a positive integer, got {processes!r}")
        self.processes = processes
        self.threads_per_run = threads_per_run or 1
        thread_environment(self.threads_per_run)  # validates
        self.lease_options = {"stale_after": stale_after, "heartbeat_every": heartbeat_every, "poll": poll}
        self.workers: list = []

    def worker_pids(self) -> list[int]:
        """The pids of the worker processes of the current (or last) `run`."""
        return [worker.pid for worker in self.workers]

    def run(self, runs, root, progress=None):
        import multiprocessing
        import queue

        emit = progress or (lambda event: None)
        emit({"kind": "plan", "runs": [run.run_id for run in runs]})
        if not runs:
            return {}
        context = multiprocessing.get_context("spawn")
        events = context.Queue()
        environ = thread_environment(self.threads_per_run)
        saved = {name: os.environ.get(name) for name in environ}
        self.workers = []
        try:
            # A spawned process reads its environment at start: the thread variables reach NumPy, BLAS and Numba
            # there before they load. This process's own values are put back at once.
            os.environ.update(environ)
            for _ in range(min(self.processes, len(runs))):
                worker = context.Process(target=_process_worker, args=(runs, str(Path(root).resolve()),
                                                                         self.lease_options, events), daemon=True)
                worker.start()
                self.workers.append(worker)
        finally:
            put_back_environment(saved)
        pids = {worker.pid for worker in self.workers}
        trained: set[str] = set()  # runs a worker of this sweep started: their "skip"s by the others are not news
        paths: dict[str, Path] = {}
        errors: dict[str, str] = {}
        failed_in: set[int] = set()
        open_workers = set(pids)
        checked = time.monotonic()
        try:
            while open_workers and not errors:
                if time.monotonic() - checked > 1.0:
                    # Reap workers that died without a word (killed): until reaped, their pid looks alive and the
                    # other workers could not take their leases over.
                    checked = time.monotonic()
                    open_workers -= {worker.pid for worker in self.workers if not worker.is_alive()}
                try:
                    tag, pid, payload = events.get(timeout=1.0)
                except queue.Empty:
                    continue
                if tag == "event":
                    if payload["kind"] == "fail":
                        errors[payload["run"]] = payload["error"]
                        failed_in.add(pid)
                    self._forward(payload, pids, trained, emit)
                elif tag == "done":
                    open_workers.discard(pid)
                    paths.update({rid: Path(path) for rid, path in payload.items()})
                else:
                    open_workers.discard(pid)
                    if pid not in failed_in:
                        errors[f"worker process {pid}"] = payload
        except BaseException:
            self._end_workers()
            raise
        self._end_workers()
        missing = [run.run_id for run in runs if run.run_id not in paths]
        if errors or missing:
            raise RunsFailed(errors or {rid: "no worker process finished it (every worker died)" for rid in missing})
        return {run.run_id: paths[run.run_id] for run in runs}

    @staticmethod
    def _forward(event: dict, pids: set[int], trained: set[str], emit: Progress) -> None:
        kind, run = event["kind"], event.get("run")
        if kind == "plan":
            return
        if kind == "wait" and event["owner"].get("pid") in pids and event["owner"].get("host") == socket.gethostname():
            return  # a sibling worker has it: that is the plan, not a wait
        if kind == "skip" and run in trained:
            return  # a sibling finished it in this sweep and said so
        if kind == "start":
            trained.add(run)
        emit(event)

    def _end_workers(self) -> None:
        for worker in self.workers:
            worker.join(timeout=0.5 if worker.is_alive() else None)
        for worker in self.workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: it stops at its next Python instruction, releasing its lease
        for worker in self.workers:
            worker.join(timeout=5)


# ----------------------------------------------------------------------------------------------------------------
# Dask
# ----------------------------------------------------------------------------------------------------------------
# Events a worker forwards; the client makes "skip" and "finish" from the task's summary, so they are exact and
# never arrive after the task's result.
_FORWARDED = ("wait", "start", "step", "retry")


def _run_task(run: RunSpec, root: str, threads: int | None, lease_options: dict, wait: bool) -> dict:
    """One run on a Dask worker: train it under its lease, forward progress, return a small summary
    ({"kind": "held", "owner"} without `wait` when a live process elsewhere holds the lease)."""
    import socket

    from distributed import get_worker

    worker = get_worker()
    ending: dict = {}

    def forward(event: dict) -> None:
        if event["kind"] in _FORWARDED:
            worker.log_event(PROGRESS_TOPIC, event)
        else:
            ending.update(event)

    try:
        with thread_limit(threads):
            path = _with_lost_retries(
                lambda: execute_run(run, Path(root), progress=forward, wait=wait, **lease_options), run, forward)
    except leases.LeaseHeld as held:
        return {"kind": "held", "run": run.run_id, "owner": held.owner}
    return {**ending, "run": run.run_id, "path": str(path), "host": socket.gethostname(), "pid": os.getpid(),
            "worker": worker.address}


class DaskExecutor(Executor):
    """Each run is one Dask task keyed by its run id, on a LocalCluster of `workers` processes or on the cluster
    at `scheduler`.

    threads_per_run: Numba/OpenMP/BLAS threads inside each run. For a LocalCluster they reach each worker process
    through its environment before Numba is imported (default: all cores divided by `workers`, at least 1). On a
    given cluster, the workers' environment decides (README: "Running on a cluster"); a value here can only lower
    Numba's threads there.
    allowed_failures: how often a run may be on a worker that dies before Dask gives up on it (each retry resumes
    from the run's checkpoint). worker_ttl: how long a silent worker is kept (Dask's heartbeat, not the run's).
    The last two apply to a LocalCluster; a given scheduler has its own configuration.
    """

    def __init__(self, workers: int | None = None, scheduler: str | None = None, threads_per_run: int | None = None,
                 *, stale_after: float = leases.STALE_AFTER, heartbeat_every: float | None = None,
                 allowed_failures: int = 10, worker_ttl: str = "15 minutes"):
        distributed = require_dask("--scheduler" if scheduler else "--workers")
        import dask

        if (workers is None) == (scheduler is None):
            raise ValueError("DaskExecutor: give exactly one of workers (a local cluster) or scheduler (an address)")
        self.lease_options = {"stale_after": stale_after, "heartbeat_every": heartbeat_every}
        self.cluster = None
        if workers is not None:
            if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
                raise ValueError(f"--workers: expected a positive integer, got {workers!r}")
            threads_per_run = threads_per_run or max(1, (os.cpu_count() or 1) // workers)
            environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}),
                       **thread_environment(threads_per_run)}
            settings = {
                "distributed.nanny.pre-spawn-environ": environ,
                "distributed.scheduler.allowed-failures": allowed_failures,
                "distributed.scheduler.worker-ttl": worker_ttl,
            }
            # A nanny writes pre-spawn-environ into os.environ of the process it runs in (here: this one) before
            # every worker it spawns, so this process's thread variables are put back afterwards: Numba refuses
            # to compile once NUMBA_NUM_THREADS differs from the count its threads started with.
            self._environ = {name: os.environ.get(name) for name in environ}
            with dask.config.set(settings):
                self.cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
                self.client = distributed.Client(self.cluster)
            self._restore_environ()
            # The environment already holds the threads; no need to lower them again inside the task.
            self.task_threads = None
        else:
            if threads_per_run is not None:
                thread_environment(threads_per_run)
            self.client = distributed.Client(scheduler)
            self.task_threads = threads_per_run
        self.threads_per_run = threads_per_run

    def worker_pids(self) -> dict[str, int]:
        """{worker address: pid} of the cluster's worker processes."""
        return self.client.run(os.getpid)

    def run(self, runs, root, progress=None):
        try:
            return self._run(runs, root, progress)
        finally:
            self._restore_environ()

    def _run(self, runs, root, progress=None):
        from distributed import as_completed

        emit = progress or (lambda event: None)
        emit({"kind": "plan", "runs": [run.run_id for run in runs]})
        done: set[str] = set()

        def on_event(item) -> None:
            event = item[1]
            if event.get("run") not in done:  # a late step event of a finished run is dropped
                emit(event)

        self.client.subscribe_topic(PROGRESS_TOPIC, on_event)
        root = str(Path(root).resolve())

        def submit(run: RunSpec, wait: bool):
            # A run held by a live process elsewhere (another `reproduce` on this folder) is tried without waiting
            # first, so this cluster's slots go to the other runs; it is submitted again, to wait, when it comes back.
            return self.client.submit(_run_task, run, root, self.task_threads, self.lease_options, wait,
                                      key=f"smoothnorm-run-{run.run_id}" + ("-wait" if wait else ""), pure=False)

        futures = {submit(run, False): run for run in runs}
        errors: dict[str, str] = {}
        paths: dict[str, Path] = {}
        pending = as_completed(futures)
        try:
            for future in pending:
                run = futures[future]
                if future.status == "error":
                    done.add(run.run_id)
                    error = future.exception()
                    errors[run.run_id] = f"{type(error).__name__}: {error}"
                    emit({"kind": "fail", "run": run.run_id, "error": errors[run.run_id]})
                    continue
                summary = future.result()
                if summary.get("kind") == "held":
                    emit({"kind": "wait", "run": run.run_id, "owner": summary["owner"]})
                    again = submit(run, True)
                    futures[again] = run
                    pending.add(again)
                    continue
                done.add(run.run_id)
                paths[run.run_id] = Path(summary["path"])
                if summary.get("kind") == "skip":
                    emit({"kind": "skip", "run": run.run_id, "status": summary["status"]})
                else:
                    emit({"kind": "finish", "run": run.run_id, "status": summary["status"], "step": summary["step"],
                          "steps": summary["steps"], "elapsed": summary["elapsed"]})
        except BaseException:
            self.client.cancel(list(futures))
            raise
        finally:
            self.client.unsubscribe_topic(PROGRESS_TOPIC)
        if errors:
            raise RunsFailed(errors)
        return {run.run_id: paths[run.run_id] for run in runs}

    def _restore_environ(self) -> None:
        put_back_environment(getattr(self, "_environ", {}))

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self._restore_environ()  # a worker restarted mid-run (after a kill) set them again


def make_executor(workers: int | None = None, scheduler: str | None = None, threads_per_run: int | None = None,
                  pending: int | None = None, **lease_options) -> Executor:
    """The executor for the CLI flags.

    - neither --workers nor --scheduler: runs side by side (ProcessExecutor, `threads_per_run` threads each,
      default 1) when the cores hold at least two such runs and at least that many runs are `pending`; else one
      after another in this process (SequentialExecutor). One run gains little from a second thread at the
      quick profile's sizes, so two runs at one thread each finish a sweep sooner than two threads on one run.
    - --workers 1: one after another in this process.
    - --workers N (N > 1): a local Dask cluster; --scheduler: an existing Dask cluster.
    """
    if workers is not None and scheduler is not None:
        raise ValueError("--workers and --scheduler: give one (--workers starts a local cluster, --scheduler uses "
                         "an existing one)")
    if scheduler is None and workers == 1:
        return SequentialExecutor(threads_per_run, **lease_options)
    if workers is None and scheduler is None:
        side_by_side = cores() // (threads_per_run or 1)
        if side_by_side >= 2 and pending is not None and pending >= side_by_side:
            return ProcessExecutor(side_by_side, threads_per_run or 1, **lease_options)
        return SequentialExecutor(threads_per_run, **lease_options)
    return DaskExecutor(workers, scheduler, threads_per_run, **lease_options)


def run_specs(specs: list[Spec], root: Path, progress: Progress | None = None,
              executor: Executor | None = None) -> dict[str, Path]:
    """Execute every run the specs need (each once, with the union of their probes); returns {run_id: path}.
    Every run's options and every plug-in are checked first, so a bad value or a broken plug-in (a panel or claim
    quantity too, used only after training) stops the command before any run trains."""
    from smoothnorm.runs.plugins import load, loaded_message
    from smoothnorm.runs.schema import PLUGIN_KEYS
    from smoothnorm.runs.setup import check_norm_options, check_plugin_probes

    runs = merge_runs(specs)
    loaded = {}
    for run in runs:
        check_norm_options(run)
        check_plugin_probes(run)
        for kind, plugin in run.settings.get("plugin_files", {}).items():
            if kind in PLUGIN_KEYS:  # a norm or model; probes below
                loaded[(kind, plugin["ref"], plugin["file"])] = loaded_message(kind, plugin)
        for probe in run.probes:
            if probe.plugin is not None:
                loaded[("probe", probe.plugin["ref"], probe.plugin["file"])] = loaded_message("probe", probe.plugin)
    for spec in specs:
        for kind in ("panel", "quantity"):
            for plugin in spec.plugins.get(kind, {}).values():
                load(kind, plugin, plugin["where"])  # said on stderr when the figure or the claims use it
    for _, message in sorted(loaded.items()):
        print(message, file=sys.stderr)
    return (executor or SequentialExecutor()).run(runs, root, progress)
