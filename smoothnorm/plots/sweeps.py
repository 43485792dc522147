"""Panels of the largest-stable-learning-rate follow-up (Bjorck et al. 2018): final accuracy against the swept
learning rate, the one-step relative loss against the learning rate, and the gradient's distribution at
initialization. Registered in smoothnorm.plots.panels.PANELS.

A run of a learning-rate sweep is labelled "<group> @ lr=<lr>" (smoothnorm.runs.spec.sweep_label); these panels draw one
line per group. Probes at initialization see the same weights and batch in every run of a group (the learning rate
has not acted yet), so the probe panels draw each group's first run (smallest learning rate, lowest seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes

from smoothnorm.plots.style import (
    _check_runs,
    _choice,
    _colors,
    _legend,
    _meta_array,
    _probe,
    _probe_meta,
    _seed_note,
    _seed_of,
)
from smoothnorm.runs.schema import SWEEP_SEPARATOR
from smoothnorm.runs.store import RunResult
from smoothnorm.runs.sweeps import stable_rate, sweep_point

LR_LABEL = "learning rate"


def sweep_groups(runs: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    """Runs by sweep group (the label before " @ lr="; an unswept run is its own group), first-seen order, each
    group sorted by learning rate, then seed."""
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.label.split(SWEEP_SEPARATOR)[0], []).append(run)
    return {g: sorted(members, key=lambda r: (_lr(r), _seed_of(r))) for g, members in groups.items()}


def _lr(run: RunResult) -> float:
    lr = run.config.get("run", {}).get("lr") if isinstance(run.config, Mapping) else None
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f"runs: run {run.label!r} records no learning rate ('lr') in its config")
    return float(lr)


def _group_colors(groups: Sequence[str], colors: Mapping[str, str] | None) -> dict[str, str]:
    return _colors([RunResult(path=None, run_id=g, label=g, config={}, status="") for g in groups], colors)


def _fraction(name: str, value, *, closed_low: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not ((0.0 <= value if closed_low else 0.0 < value) and value <= 1.0):
        raise ValueError(f"{name}: expected a fraction in {'[0' if closed_low else '(0'}, 1], got {value!r}")
    return float(value)


def draw_lr_sweep(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    criterion: float = 0.5,
    window: float = 0.2,
    colors: Mapping[str, str] | None = None,
) -> None:
    """Final training accuracy (mean over the last `window` fraction of steps) against the learning rate, log x, one
    line per sweep group (median over seeds, diverged seeds left out). Diverged runs are x at 0%; the dashed line is
    the `criterion` a run must exceed to train, and a star marks each seed's largest stable learning rate (at the
    line's height; smoothnorm.runs.sweeps)."""
    runs = _check_runs(runs)
    criterion = _fraction("criterion", criterion, closed_low=True)
    window = _fraction("window", window, closed_low=False)
    groups = sweep_groups(runs)
    cmap = _group_colors(list(groups), colors)
    all_lrs: list[float] = []
    seeds = 1
    for group, members in groups.items():
        color = cmap[group]
        by_lr: dict[float, list] = {}
        by_seed: dict[int, list] = {}
        for run in members:
            point = sweep_point(run, _lr(run), criterion, window)
            by_lr.setdefault(point.lr, []).append(point)
            by_seed.setdefault(_seed_of(run), []).append(point)
        lrs = np.array(sorted(by_lr))
        all_lrs.extend(lrs)
        accuracy = np.full(lrs.size, np.nan)
        for k, lr in enumerate(lrs):
            kept = [p.final_accuracy for p in by_lr[lr] if p.status != "diverged" and np.isfinite(p.final_accuracy)]
            if kept:
                accuracy[k] = 100.0 * float(np.median(kept))
        rates = [stable_rate(group, seed, points) for seed, points in sorted(by_seed.items())]
        largest = [r.largest for r in rates if r.known]
        shown = ", ".join("none" if lr is None else f"{lr:g}" for lr in largest) or "unknown"
        per_seed = " by seed:" if len(rates) > 1 else ""
        ok = np.isfinite(accuracy)
        ax.plot(lrs[ok], accuracy[ok], color=color, marker="o", markersize=4, linewidth=1.2,
                label=f"{group} (largest stable lr{per_seed} {shown})")
        seeds = max(seeds, len(rates))
        diverged = np.array([any(p.status == "diverged" for p in by_lr[lr]) for lr in lrs])
        if diverged.any():
            ax.plot(lrs[diverged], np.zeros(diverged.sum()), color=color, marker="x", markersize=8,
                    linestyle="none")
        for lr in largest:
            if lr is not None:
                y = accuracy[np.searchsorted(lrs, lr)]
                ax.plot([lr], [y], color=color, marker="*", markersize=12, linestyle="none")
    ax.axhline(100.0 * criterion, color="0.4", linestyle="--", linewidth=0.9,
               label=f"criterion {100 * criterion:g}% (x: diverged)")
    if seeds > 1:
        _seed_note(ax, seeds, band="stars: per seed")
    ax.set_xscale("log")
    ax.set_xlim(min(all_lrs) / 2, max(all_lrs) * 2)
    ax.set_xlabel(LR_LABEL)
    ax.set_ylabel(f"training accuracy, last {100 * window:g}% of steps (%)")
    _legend(ax)


def _first_runs(runs: Sequence[RunResult]) -> dict[str, RunResult]:
    """Each sweep group's first run: smallest learning rate, lowest seed."""
    return {group: members[0] for group, members in sweep_groups(_check_runs(runs)).items()}


def _record(run: RunResult, probe: str, record: int) -> int:
    steps = _probe(run, probe, "steps")
    if isinstance(record, bool) or not isinstance(record, int) or not -len(steps) <= record < len(steps):
        raise ValueError(f"record: run {run.label!r} has {len(steps)} records of {probe!r}, got {record!r}")
    return record % len(steps)


def draw_one_step_loss(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    record: int = 0,
    cap: float = 1e4,
    probe: str = "one_step_loss",
    colors: Mapping[str, str] | None = None,
) -> None:
    """One-step relative loss L(w - lr g) / L(w) against the learning rate (Bjorck et al. 2018), log-log, one line
    per sweep group (its first run, at the probe's `record`-th measurement: 0 is initialization when the probe runs
    at step 0). Ratios above `cap` or not finite (the step overflowed) are drawn as x at the cap."""
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not (math.isfinite(cap) and cap > 1):
        raise ValueError(f"cap: expected a number > 1, got {cap!r}")
    first = _first_runs(runs)
    cmap = _group_colors(list(first), colors)
    all_lrs: list[float] = []
    for group, run in first.items():
        i = _record(run, probe, record)
        lrs = _meta_array(run, probe, "lrs", "learning rates ('lrs')")
        all_lrs.extend(lrs)
        ratios = np.asarray(_probe(run, probe, "ratios"), dtype=np.float64).reshape(-1, lrs.size)[i]
        step = int(_probe(run, probe, "steps")[i])
        ok = np.isfinite(ratios) & (ratios <= cap) & (ratios > 0)
        ax.plot(lrs[ok], ratios[ok], color=cmap[group], marker="o", markersize=4, linewidth=1.2,
                label=f"{group} (step {step})")
        if (~ok).any():
            ax.plot(lrs[~ok], np.full((~ok).sum(), cap), color=cmap[group], marker="x", markersize=8,
                    linestyle="none")
    ax.axhline(1.0, color="0.4", linestyle="--", linewidth=0.9, label="no change (x: above the cap or overflow)")
    ax.set_xscale("log")
    ax.set_xlim(min(all_lrs) / 2, max(all_lrs) * 2)
    ax.set_yscale("log")
    ax.set_xlabel(LR_LABEL)
    ax.set_ylabel("loss after one step / loss before")
    _legend(ax)


def _layer_index(run: RunResult, probe: str, layer: int | None, count: int) -> tuple[int, str]:
    names = _probe_meta(run, probe).get("layers") or [f"#{i + 1}" for i in range(count)]
    if layer is None:
        return count // 2, names[count // 2]
    if isinstance(layer, bool) or not isinstance(layer, int) or not -count <= layer < count:
        raise ValueError(f"layer: expected an index into the {count} weight layers of {probe!r}, got {layer!r}")
    return layer % count, names[layer % count]


def draw_grad_histogram(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    layer: int | None = None,
    record: int = 0,
    probe: str = "grad_distribution",
    colors: Mapping[str, str] | None = None,
) -> None:
    """Histogram of one weight layer's gradient entries in standard deviations from their mean (log y), one line
    per sweep group (its first run, `record`-th measurement: 0 is initialization), with the gradient's norm and
    excess kurtosis in the legend (Bjorck et al. 2018: large and heavy-tailed without BatchNorm). layer: index into
    the probe's weight layers (default: the middle one)."""
    first = _first_runs(runs)
    cmap = _group_colors(list(first), colors)
    where = ""
    for group, run in first.items():
        i = _record(run, probe, record)
        edges = _meta_array(run, probe, "edges", "histogram edges")
        table = np.asarray(_probe(run, probe, "histograms"), dtype=np.float64)
        table = table.reshape(len(_probe(run, probe, "steps")), -1, edges.size - 1)[i]
        j, _ = _layer_index(run, probe, layer, table.shape[0])
        where = f"weight layer #{j + 1} of {table.shape[0]}"
        norm = float(np.asarray(_probe(run, probe, "norms"), dtype=np.float64).reshape(-1, table.shape[0])[i, j])
        kurtosis = float(np.asarray(_probe(run, probe, "kurtosis"), dtype=np.float64).reshape(-1, table.shape[0])[i, j])
        fractions = np.where(table[j] > 0, table[j], np.nan)
        ax.stairs(fractions, edges, color=cmap[group], linewidth=1.3,
                  label=f"{group}: kurtosis {kurtosis:.1f}, norm {norm:.2g}")
    ax.set_yscale("log")
    ax.set_xlabel(f"gradient entry (g - mean) / std, {where}")
    ax.set_ylabel("fraction of entries")
    _legend(ax)


_GRAD_LAYER_LABELS = {"norms": "gradient norm", "kurtosis": "gradient excess kurtosis"}


def draw_grad_layers(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    quantity: str = "kurtosis",
    record: int = 0,
    logy: bool = False,
    probe: str = "grad_distribution",
    colors: Mapping[str, str] | None = None,
) -> None:
    """The gradient's norm or excess kurtosis per weight layer (input to output), one line per sweep group (its
    first run, `record`-th measurement: 0 is initialization)."""
    _choice("quantity", quantity, tuple(_GRAD_LAYER_LABELS))
    first = _first_runs(runs)
    cmap = _group_colors(list(first), colors)
    for group, run in first.items():
        i = _record(run, probe, record)
        steps = _probe(run, probe, "steps")
        values = np.asarray(_probe(run, probe, quantity), dtype=np.float64).reshape(len(steps), -1)[i]
        ax.plot(np.arange(1, values.size + 1), values, color=cmap[group], marker="o", markersize=3, linewidth=1.2,
                label=f"{group} (step {int(steps[i])})")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("weight layer (input to output)")
    ax.set_ylabel(_GRAD_LAYER_LABELS[quantity])
    _legend(ax)


SWEEP_PANELS = {"lr_sweep": draw_lr_sweep, "one_step_loss": draw_one_step_loss,
                "grad_histogram": draw_grad_histogram, "grad_layers": draw_grad_layers}
