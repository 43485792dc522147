"""Learning-rate sweeps (Bjorck, Gomes, Selman, Weinberger, NeurIPS 2018): the largest learning rate that trains.

A spec sweeps a run over learning rates with `lr = [..]` (smoothnorm.runs.spec); its `[sweep]` table records what
"trains" means: the run did not diverge and its mean training accuracy over the last `window` fraction of the
steps (as a claim's `window = [1 - window, 1]` reads it, smoothnorm.claims) exceeds `criterion`. Per sweep group
and seed, the largest stable learning rate is the largest swept rate that trains (not the last one before the first
failure: a rate that trains above one that does not still counts, and the summary shows both). A run that is
missing or unfinished is unknown; the answer is unknown only if such a run could change it (its rate is above the
largest rate that trains). Used by the `stable_lr` claims, the `lr_sweep` panel and `smoothnorm run`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smoothnorm.runs.store import RunResult, load_run

__all__ = ["SweepPoint", "StableRate", "final_accuracy", "sweep_point", "stable_rate", "stable_rates",
           "format_stable_rates"]


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its learning rate, status ("finished", "diverged", "running", "missing"), final training
    accuracy (NaN when not recorded) and whether it trains (None: unknown, the run is missing or unfinished)."""

    lr: float
    status: str
    final_accuracy: float
    trains: bool | None


@dataclass(frozen=True)
class StableRate:
    """A sweep group's largest stable learning rate at one seed.

    largest: the largest learning rate that trains (None: none of the grid trains, or unknown, see `known`);
    points: every swept rate, ascending; known: False when a missing or unfinished run above `largest` could change
    the answer.
    """

    group: str
    seed: int
    largest: float | None
    points: tuple[SweepPoint, ...]
    known: bool

    @property
    def unknown_lrs(self) -> list[float]:
        return [p.lr for p in self.points if p.trains is None]


def final_accuracy(run: RunResult, window: float = 0.2) -> float:
    """Mean training accuracy over the last `window` fraction of the run's steps (steps >= (1 - window) * steps,
    as smoothnorm.claims reads `window = [1 - window, 1]`; at least the last recorded step, so a run of a few steps
    is judged by its last one); NaN when the run recorded none."""
    if not 0.0 < window <= 1.0:
        raise ValueError(f"window: expected a fraction of the steps in (0, 1], got {window!r}")
    steps = run.metrics.get("step")
    values = run.metrics.get("train_acc")
    if steps is None or values is None:
        return math.nan
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    total = int(run.config.get("run", {}).get("steps", 0)) or (int(steps.max()) + 1 if steps.size else 0)
    recorded = ~np.isnan(values)
    if not recorded.any():
        return math.nan
    inside = (steps >= min((1.0 - window) * total, steps[recorded].max())) & recorded
    return float(np.mean(values[inside])) if inside.any() else math.nan


def sweep_point(run: RunResult | None, lr: float, criterion: float, window: float = 0.2) -> SweepPoint:
    """Whether one swept run trains: not diverged and final training accuracy > criterion (strictly)."""
    if run is None:
        return SweepPoint(float(lr), "missing", math.nan, None)
    accuracy = final_accuracy(run, window)
    if run.status == "diverged":
        return SweepPoint(float(lr), "diverged", accuracy, False)
    if run.status != "finished":
        return SweepPoint(float(lr), run.status or "running", accuracy, None)
    # A finished run without training accuracy (a regression net) cannot be judged by this criterion.
    return SweepPoint(float(lr), "finished", accuracy, None if math.isnan(accuracy) else bool(accuracy > criterion))


def stable_rate(group: str, seed: int, points: list[SweepPoint]) -> StableRate:
    """The largest learning rate of `points` that trains, and whether unknown points could change it."""
    points = sorted(points, key=lambda p: p.lr)
    training = [p.lr for p in points if p.trains is True]
    largest = max(training) if training else None
    known = not any(p.trains is None and (largest is None or p.lr > largest) for p in points)
    return StableRate(group, int(seed), largest, tuple(points), known)


def stable_rates(spec, root: str | os.PathLike) -> list[StableRate]:
    """Per sweep group of a spec (smoothnorm.runs.spec.Spec) and seed, the largest stable learning rate of its stored
    runs under `root` (criterion and window from the spec's [sweep] table)."""
    criterion, window = spec.sweep["criterion"], spec.sweep["window"]
    out = []
    for group in spec.sweeps:
        by_seed: dict[int, list[SweepPoint]] = {}
        for run in spec.runs:
            if run.sweep != group:
                continue
            path = Path(root) / run.run_id
            result = load_run(path, label=run.label) if (path / "config.json").exists() else None
            point = sweep_point(result, run.settings["lr"], criterion, window)
            by_seed.setdefault(int(run.settings["seed"]), []).append(point)
        out.extend(stable_rate(group, seed, points) for seed, points in sorted(by_seed.items()))
    return out


def _mark(p: SweepPoint) -> str:
    if p.status == "diverged":
        return "diverged"
    if p.trains is None:
        return p.status
    return f"{100 * p.final_accuracy:.0f}%" + ("" if p.trains else " (no)")


def format_stable_rates(rates: list[StableRate], criterion: float, window: float) -> str:
    """A plain-text table: per group and seed, the largest stable learning rate and every rate's outcome."""
    lines = [f"largest stable learning rate (not diverged, mean training accuracy over the last {100 * window:g}% "
             f"of steps > {100 * criterion:g}%):"]
    for r in rates:
        if not r.known:
            largest = "unknown (runs missing or unfinished: " + ", ".join(f"{lr:g}" for lr in r.unknown_lrs) + ")"
        else:
            largest = "none of the grid" if r.largest is None else f"{r.largest:g}"
        lines.append(f"  {r.group} (seed {r.seed}): {largest}")
        lines.append("    " + "  ".join(f"{p.lr:g}: {_mark(p)}" for p in r.points))
    return "\n".join(lines)
