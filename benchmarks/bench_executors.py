"""Wall time of a sweep: sequential (all cores in one run) against Dask (one run per core).

    python -m benchmarks.bench_executors                       # reproduce --profile quick, both executors
    python -m benchmarks.bench_executors --only fig10,fig3b    # a subset, when the machine is busy
    python -m benchmarks.bench_executors --only fig10 --set steps=3000 --repeats 2

It runs `smoothnorm reproduce` in fresh processes on fresh run folders, alternating the executors' order from
repeat to repeat, and prints the load average around each, since a shared machine moves the result. What a sweep
will cost before it starts (for sizing a cluster) is `smoothnorm reproduce --profile paper --estimate`
(smoothnorm/runs/estimate.py): it times every kind of run, its probes, evaluations and checkpoints on this machine.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--only", default=None, help="comma-separated spec names (a subset)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to reproduce")
    args = parser.parse_args()
    compare(args.profile, args.only, args.workers, args.repeats, args.set)


if __name__ == "__main__":
    main()
