"""What a sweep will cost before it starts: `smoothnorm run|reproduce ... --estimate`.

Runs that cost the same per step (the same settings but seed, learning rate and label, and the same probes) form a
group. For one run of each group the estimate builds the run as training would (stand-in synthetic images of
CIFAR-10's shape where a run reads CIFAR-10, so nothing is downloaded), and times on this machine, at one thread:
- setting the run up (data, network, probes), once per run;
- a training step (after one untimed step that loads or compiles the kernels);
- each probe once (after one untimed call), at the run's size when a step is cheap, else on a narrower copy of the
  network (width / 8, batch 32 at most) as a multiple of that copy's step, scaled by the real step;
- an evaluation on the test split, and a checkpoint write.
A run then costs setup + steps x step + sum over probes of (evaluations x probe) + evaluations + checkpoints. Wall
time on N worker processes (one run each, one thread) is the longest-first schedule of the runs on N workers; it
cannot be shorter than the longest run.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smoothnorm.runs.spec import RunSpec, Spec, merge_runs

# Settings that do not change what a step costs.
_FREE = ("seed", "lr", "data_seed", "plugin_files")
# A step slower than this (seconds) has its probes timed on a narrower copy of the network.
_CHEAP_STEP = 0.05


@dataclass
class GroupCost:
    """Measured seconds for one group of equally costly runs."""

    setup: float
    step: float
    probes: dict[str, float]
    evaluation: float
    checkpoint: float
    scaled: bool  # probes timed on a narrower copy

    def run_seconds(self, run: RunSpec) -> float:
        s = run.settings
        steps = int(s["steps"])
        seconds = self.setup + steps * self.step
        for probe in run.probes:
            seconds += probe_evaluations(probe, steps) * self.probes.get(probe.kind, 0.0)
        if s["eval_every"]:
            seconds += (steps // s["eval_every"] + 1) * self.evaluation
        every = s["checkpoint_every"] or steps
        return seconds + (steps // every + 1) * self.checkpoint


@dataclass
class Estimate:
    """Per-run seconds (one thread each) and the measurements of each run's group."""

    runs: list[RunSpec]
    seconds: dict[str, float]
    costs: dict[str, GroupCost] = field(default_factory=dict)  # run id -> its group's measurements
    calibration: float = 0.0  # seconds the measurements took

    def wall(self, workers: int) -> float:
        """Seconds for all runs on `workers` processes: each run, longest first, goes to the first free worker."""
        free = [0.0] * max(1, workers)
        for seconds in sorted(self.seconds.values(), reverse=True):
            i = free.index(min(free))
            free[i] += seconds
        return max(free)

    def total(self, runs: list[RunSpec] | None = None) -> float:
        return sum(self.seconds[run.run_id] for run in (runs if runs is not None else self.runs))


def probe_evaluations(probe, steps: int) -> int:
    """How many of the steps 0 .. steps-1 a probe spec measures at."""
    chosen = probe.options.get("steps") if isinstance(probe.options, dict) else None
    if chosen:
        return sum(1 for t in set(chosen) if 0 <= t < steps)
    if probe.every <= 0 or probe.start >= steps:
        return 0
    return (steps - 1 - probe.start) // probe.every + 1


def group_key(run: RunSpec) -> str:
    settings = {k: v for k, v in run.settings.items() if k not in _FREE}
    probes = [p.identity() for p in run.probes]
    return json.dumps([settings, probes], sort_keys=True, default=str)


def _stand_in(s: dict):
    """The data to time a run on: its own, except stand-in synthetic images of CIFAR-10's shape for CIFAR-10."""
    from smoothnorm.runs.setup import _dataset, _run_dataset

    if s["data"] != "cifar10":
        return _run_dataset(s)
    return _dataset("synthetic_images", min(s["n_train"], 5000), min(s["n_test"], 1000), s["dim"], s["data_seed"],
                    "", s["scale"], s["feature_scale_range"], s["input_norm"], 0.0)


def _time(fn, least: float = 0.2, most: int = 5, warm: bool = True) -> float:
    """Median seconds of fn() after one untimed call (`warm`); repeats while under `least` seconds in all, at most
    `most` times."""
    if warm:
        fn()
    times: list[float] = []
    while len(times) < most and (not times or sum(times) < least):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _trainer(run: RunSpec):
    """(trainer, seconds to set it up, its step-0 batch)."""
    from smoothnorm.runs.setup import build_trainer

    t0 = time.perf_counter()
    trainer = build_trainer(run, _stand_in(run.settings))
    setup = time.perf_counter() - t0
    return trainer, setup, trainer.batch_fn(0)


def _step_seconds(trainer, x, y) -> float:
    net, opt = trainer.net, trainer.optimizer
    state = net.params.copy()

    def step():
        net.resample_noise(trainer.noise_rng)
        with np.errstate(all="ignore"):
            net.loss_and_grad(x, y, mode="train")
            opt.step(net.params, net.grads)

    seconds = _time(step)
    net.params[...] = state
    return seconds


def _probe_seconds(trainer, x, y) -> list[float]:
    """Seconds of one evaluation of each of the trainer's probes (in the run's probe order)."""
    net = trainer.net
    with np.errstate(all="ignore"):
        loss, grads = net.loss_and_grad(x, y, mode="train")
    grad = grads.copy()
    return [_time(lambda probe=probe: probe.measure(trainer, x, y, grad, float(loss)), least=0.0, most=1)
            for probe in trainer.probes]


def _narrower(run: RunSpec) -> RunSpec:
    s = dict(run.settings)
    if s["model"] == "vgg":
        s["width"] = s["width"] / 8
    if s["batch_size"]:
        s["batch_size"] = min(s["batch_size"], 32)
    return RunSpec(run.label, s, run.probes)


def _measure_group(run: RunSpec) -> GroupCost:
    from smoothnorm.runs.runner import checkpoint_state
    from smoothnorm.runs.store import write_checkpoint

    trainer, setup, (x, y) = _trainer(run)
    step = _step_seconds(trainer, x, y)
    kinds = [p.kind for p in run.probes]
    scaled = step > _CHEAP_STEP and bool(kinds)
    if scaled:
        small, _, (xs, ys) = _trainer(_narrower(run))
        ratio = step / _step_seconds(small, xs, ys)
        measured = _probe_seconds(small, xs, ys)
        probes = {kind: seconds * ratio for kind, seconds in zip(kinds, measured, strict=True)}
    else:
        probes = dict(zip(kinds, _probe_seconds(trainer, x, y), strict=True))
    evaluation = 0.0
    if trainer.eval_fn is not None and run.settings["eval_every"]:
        # On the narrower copy when the step is costly (an evaluation is a pass over the whole test split), scaled
        # by the step and by the test split's size against the stand-in's.
        timed, factor = (small, ratio) if scaled else (trainer, 1.0)
        n_test = _stand_in(run.settings)[2]
        factor *= run.settings["n_test"] / len(n_test) if n_test is not None and len(n_test) else 1.0
        evaluation = factor * _time(lambda: timed.eval_fn(timed.net), least=0.0, most=1, warm=False)
    with tempfile.TemporaryDirectory(prefix="smoothnorm-estimate-") as tmp:
        state = checkpoint_state(trainer)
        checkpoint = _time(lambda: write_checkpoint(Path(tmp), state), least=0.0, most=1)
    return GroupCost(setup, step, probes, evaluation, checkpoint, scaled)


def estimate(specs: list[Spec], progress=None) -> Estimate:
    """Measure each group of the specs' runs once on this machine (one thread) and cost every run."""
    from smoothnorm.runs.executors import thread_limit

    runs = merge_runs(specs)
    t0 = time.perf_counter()
    keys = {run.run_id: group_key(run) for run in runs}
    kinds = len(set(keys.values()))
    groups: dict[str, GroupCost] = {}
    with thread_limit(1):
        for run in runs:
            key = keys[run.run_id]
            if key not in groups:
                if progress:
                    progress(f"timing {run.run_id} ({len(groups) + 1} of {kinds} kinds of run)")
                groups[key] = _measure_group(run)
    seconds = {run.run_id: groups[keys[run.run_id]].run_seconds(run) for run in runs}
    return Estimate(runs, seconds, {run_id: groups[key] for run_id, key in keys.items()},
                    time.perf_counter() - t0)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _span(values: list[float]) -> str:
    low, high = f"{min(values):.2g}", f"{max(values):.2g}"
    return low if low == high else f"{low}-{high}"


def report(specs: list[Spec], result: Estimate, workers: list[int]) -> str:
    """The per-spec table and the totals, as Markdown."""
    by_id = {run.run_id: run for run in result.runs}
    lines = ["| spec | runs | training steps | probe evaluations | s / step | s / probe evaluation | core-hours |",
             "|---|---|---|---|---|---|---|"]
    for spec in specs:
        runs = [by_id[run.run_id] for run in spec.runs if run.run_id in by_id]
        steps = sum(int(run.settings["steps"]) for run in runs)
        evaluations = sum(probe_evaluations(p, int(run.settings["steps"])) for run in runs for p in run.probes)
        costs = [result.costs[run.run_id] for run in runs]
        kinds: dict[str, list[float]] = {}
        for c in costs:
            for kind, sec in c.probes.items():
                kinds.setdefault(kind, []).append(sec)
        per_probe = [f"{kind} {_span(values)}" for kind, values in sorted(kinds.items())]
        lines.append(f"| {spec.name} | {len(runs)} | {steps:,} | {evaluations:,} | {_span([c.step for c in costs])} | "
                     f"{', '.join(per_probe) or '-'} | {result.total(runs) / 3600:.2f} |")
    total = result.total()
    longest = max(result.seconds.values(), default=0.0)
    lines.append("")
    lines.append(f"{len(result.runs)} runs (a run several specs share is trained once): {total / 3600:.2f} core-hours "
                 f"at one thread per run; the longest run {_duration(longest)}.")
    for n in workers:
        lines.append(f"- wall time on {n} worker process{'es' if n > 1 else ''} (one run each, one thread): "
                     f"{_duration(result.wall(n))}")
    lines.append(f"Measured on this machine in {result.calibration:.0f} s: seconds per step and per probe "
                 "evaluation at one thread; probes of runs whose step takes over "
                 f"{_CHEAP_STEP:g} s timed on a copy at 1/8 width (scaled by the step).")
    return "\n".join(lines)
