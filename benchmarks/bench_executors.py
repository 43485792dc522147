"""Wall time of a sweep: sequential (all cores in one run) against Dask (one run per core), and a paper-profile
estimate for sizing a cluster.

    python -m benchmarks.bench_executors                       # reproduce --profile quick, both executors
    python -m benchmarks.bench_executors --only fig10,fig3b    # a subset, when the machine is busy
    python -m benchmarks.bench_executors --only fig10 --set steps=3000 --repeats 2
    python -m benchmarks.bench_executors --estimate            # paper profile: runs x steps x measured s/step

The comparison runs `smoothnorm reproduce` in fresh processes on fresh run folders, alternating the executors'
order from repeat to repeat, and prints the load average around each, since a shared machine moves the result.
The estimate times a few steps of one run per kind of paper-profile run (same model, batch and probes; synthetic
data of CIFAR-10's shape, so no download) with 1 thread and with all cores, in fresh processes whose thread
variables are set before Numba loads, and leaves out each run's first (compiling) step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _reproduce(profile: str, only: str | None, extra: list[str]) -> float:
    """Wall seconds of one `smoothnorm reproduce` in a fresh process on a fresh run folder."""
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp:
        cmd = [sys.executable, "-m", "smoothnorm.cli", "reproduce", "--profile", profile, "--runs", f"{tmp}/runs",
               "--figures", f"{tmp}/figures", *(["--only", only] if only else []), *extra]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return wall


def compare(profile: str, only: str | None, workers: int, repeats: int, overrides: list[str]) -> None:
    cores = os.cpu_count() or 1
    sets = [a for item in overrides for a in ("--set", item)]
    candidates = {
        f"sequential, {cores} threads": ["--threads-per-run", str(cores), *sets],
        f"dask, {workers} workers x {max(1, cores // workers)} thread": [
            "--workers", str(workers), "--threads-per-run", str(max(1, cores // workers)), *sets],
    }
    walls: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(repeats):
        for name in names[r % 2:] + names[:r % 2]:
            before = _load()
            wall = _reproduce(profile, only, candidates[name])
            walls[name].append(wall)
            print(f"{name:32s} {wall:8.1f} s   (load average before: {before}; after: {_load()})", flush=True)
    medians = {name: sorted(v)[len(v) // 2] for name, v in walls.items()}
    seq, dask = medians[names[0]], medians[names[1]]
    what = f"reproduce --profile {profile}{' --only ' + only if only else ''} {' '.join(sets)}"
    print(f"\n{what}: sequential {seq:.1f} s, dask {dask:.1f} s, sequential / dask = {seq / dask:.2f}")


# ----------------------------------------------------------------------------------------------------------------
# Paper-profile estimate
# ----------------------------------------------------------------------------------------------------------------
def _cost_key(run) -> tuple:
    """Runs that cost the same per step: model, size, batch, norm, and which probes run how often."""
    s = run.settings
    size = (s["arch"], s["width"]) if s["model"] == "vgg" else (s["depth"], s["hidden"], s["n_train"])
    return (s["model"], *size, s["batch_size"], s["norm"], s["dtype"],
            tuple(sorted((p.kind, p.every) for p in run.probes)))


def _paper_groups():
    from smoothnorm.runs import spec as spec_module

    specs = [spec_module.load_spec(p, "paper") for p in spec_module.list_specs(ROOT / "experiments")]
    groups: dict[tuple, list] = {}
    for run in spec_module.merge_runs(specs):
        groups.setdefault(_cost_key(run), []).append(run)
    return groups


def _child_time_steps(steps: int) -> None:
    """In a fresh process (threads set by the parent): seconds per step of one run per group, as JSON lines."""
    from smoothnorm.runs.runner import execute_run
    from smoothnorm.runs.spec import RunSpec
    from smoothnorm.runs.store import read_jsonl

    with tempfile.TemporaryDirectory(prefix="bench-estimate-") as tmp:
        for key, runs in _paper_groups().items():
            run = runs[0]
            settings = dict(run.settings, steps=steps, checkpoint_every=0)
            if settings["data"] == "cifar10":
                settings.update(data="synthetic_images", n_train=5000, n_test=1000)
            execute_run(RunSpec(run.label, settings, run.probes), Path(tmp))
            times = [row["time"] for row in read_jsonl(Path(tmp) / RunSpec(run.label, settings).run_id /
                                                       "metrics.jsonl")]
            per_step = (times[-1] - times[0]) / (len(times) - 1)
            print(json.dumps({"key": repr(key), "per_step": per_step}), flush=True)


def estimate(steps: int, thread_counts: list[int]) -> None:
    """Measure s/step per paper-profile run with each thread count (fresh processes), print a table and totals.
    Each measurement is printed as it arrives, so an interrupted estimate keeps what it measured."""
    from smoothnorm.runs.executors import thread_environment

    groups = _paper_groups()
    measured: dict[int, dict[str, float]] = {}
    for threads in thread_counts:
        env = {**os.environ, **thread_environment(threads)}
        measured[threads] = {}
        with subprocess.Popen([sys.executable, "-m", "benchmarks.bench_executors", "--child-steps", str(steps)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as child:
            for line in child.stdout:
                d = json.loads(line)
                measured[threads][d["key"]] = d["per_step"]
                print(f"{threads} thread(s): {d['per_step']:.3g} s/step  {d['key']}  (load {_load()})", flush=True)
        if child.returncode != 0:
            raise SystemExit(f"the timing process failed (exit {child.returncode})")
    print(f"\nPaper profile: {sum(len(r) for r in groups.values())} runs; seconds per step measured over "
          f"{steps - 1} steps after the first (load average {_load()}):\n")
    heads = " | ".join(f"s/step, {t} thread{'s' if t > 1 else ''}" for t in thread_counts)
    print(f"| runs | model | batch | probes (every) | steps each | {heads} |")
    print("|---|---|---|---|---|" + "---|" * len(thread_counts))
    total = {threads: 0.0 for threads in thread_counts}
    longest = {threads: 0.0 for threads in thread_counts}
    for key, runs in groups.items():
        steps_each = runs[0].settings["steps"]
        model = f"{key[0]} {key[1]}" + (f" x{key[2]:g}" if key[0] == "vgg" else "") + f" {key[-3]}"
        probes = ", ".join(f"{k} ({e})" for k, e in key[-1])
        for threads in thread_counts:
            seconds = len(runs) * steps_each * measured[threads][repr(key)]
            total[threads] += seconds
            longest[threads] = max(longest[threads], steps_each * measured[threads][repr(key)])
        cells = " | ".join(f"{measured[t][repr(key)]:.3g}" for t in thread_counts)
        print(f"| {len(runs)} | {model} | {runs[0].settings['batch_size'] or 'full'} | {probes} | {steps_each} | "
              f"{cells} |")
    runs_total = sum(len(r) for r in groups.values())
    for threads in thread_counts:
        print(f"\n{threads} thread(s) per run: {total[threads] / 3600:.0f} h of runs in sequence; with one run per "
              f"{threads} core(s) on N cores about {total[threads] / 3600:.0f} / (N / {threads}) h, at best the "
              f"longest run, {longest[threads] / 3600:.0f} h (at most {runs_total * threads} cores help)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--only", default=None, help="comma-separated spec names (a subset)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to reproduce")
    parser.add_argument("--estimate", action="store_true", help="paper-profile estimate instead of the comparison")
    parser.add_argument("--steps", type=int, default=4, help="steps timed per run for --estimate (first excluded)")
    parser.add_argument("--threads", default=None, help="thread counts for --estimate, e.g. 1,2 (default: 1 and all)")
    parser.add_argument("--child-steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_steps:
        _child_time_steps(args.child_steps)
    elif args.estimate:
        cores = os.cpu_count() or 1
        threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cores})
        estimate(args.steps, threads)
    else:
        compare(args.profile, args.only, args.workers, args.repeats, args.set)


if __name__ == "__main__":
    main()
