"""Panels of the optimization study (experiments/study): any recorded series over training, per-layer profiles and
sweeps (a final metric against a run setting such as the learning rate or the batch size)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes

from smoothnorm.plots.style import (
    STEP_LABEL,
    _check_runs,
    _choice,
    _colors,
    _draw_series,
    _finite_xy,
    _legend,
    _legend_label,
    _positive_int,
    _probe,
    _seed_note,
    _seed_of,
    moving_average,
)
from smoothnorm.runs.store import RunResult


def _series(run: RunResult, probe: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a probe array, or of a metric column when probe == "metrics"."""
    if probe == "metrics":
        steps = run.metrics.get("step", np.zeros(0, dtype=np.int64))
        if key not in run.metrics:
            raise ValueError(f"key: run {run.label!r} has no metric {key!r}; metrics: {sorted(run.metrics)}")
        return steps, run.metrics[key]
    steps = _probe(run, probe, "steps")
    return steps, _probe(run, probe, key).astype(np.float64).reshape(len(steps), -1)


def draw_series(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    probe: str,
    key: str,
    reduce: str = "mean",
    index: int = 0,
    smooth: int = 1,
    logy: bool = False,
    ylabel: str | None = None,
    colors: Mapping[str, str] | None = None,
) -> None:
    """A recorded quantity over training, one line per run label (several seeds of a label: their median with a
    min-max band): a probe array ("{probe}/{key}") or, with probe="metrics", a metric column. Per-layer arrays are
    reduced over layers with reduce="mean" or "max", or one column is taken with reduce="index" (`index`)."""
    runs = _check_runs(runs)
    _choice("reduce", reduce, ("mean", "max", "index"))
    smooth = _positive_int("smooth", smooth)
    cmap = _colors(runs, colors)

    def series(run):
        steps, values = _series(run, probe, key)
        values = np.asarray(values, dtype=np.float64).reshape(len(steps), -1)
        if values.shape[1] == 0:
            return np.zeros(0), np.zeros(0)
        if reduce == "index":
            column = values[:, index]
        else:
            with warnings.catch_warnings():  # an all-NaN row (a skipped measurement) stays NaN, silently
                warnings.simplefilter("ignore", RuntimeWarning)
                column = np.nanmean(values, axis=1) if reduce == "mean" else np.nanmax(values, axis=1)
        x, y = _finite_xy(steps, column)
        return x, (moving_average(y, smooth) if y.size else y)

    _draw_series(ax, runs, series, cmap, linewidth=1.2,
                 marker="o" if probe == "metrics" and key.startswith("test") else None, markersize=3)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(ylabel or key.replace("_", " "))
    _legend(ax)


def draw_profile(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    probe: str,
    key: str,
    record: int = 0,
    logy: bool = True,
    ylabel: str | None = None,
    colors: Mapping[str, str] | None = None,
) -> None:
    """A per-layer probe array at one recorded step (record 0: the first, e.g. at initialization), against the
    layer's depth (1 = first layer), one line per run."""
    runs = _check_runs(runs)
    cmap = _colors(runs, colors)
    for run in runs:
        steps = _probe(run, probe, "steps")
        if not -len(steps) <= record < len(steps):
            raise ValueError(f"record: run {run.label!r} has {len(steps)} records of {probe!r}, got {record}")
        values = _probe(run, probe, key).astype(np.float64).reshape(len(steps), -1)[record]
        ax.plot(np.arange(1, values.size + 1), values, color=cmap[run.label], label=_legend_label(run),
                marker="o", markersize=3, linewidth=1.2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("layer (input to output)")
    ax.set_ylabel(ylabel or key.replace("_", " "))
    _legend(ax)


def final_value(run: RunResult, metric: str, last: int, require_progress: bool = False) -> float:
    """Mean of the last `last` finite values of a metric column; inf if the run diverged, or (require_progress, for
    losses) if that mean is above the first recorded value: the run did not train. NaN if never recorded."""
    if run.status == "diverged":
        return np.inf
    values = run.metrics.get(metric)
    if values is None:
        return np.nan
    finite = values[np.isfinite(values)]
    if not finite.size:
        return np.nan
    value = float(np.mean(finite[-last:]))
    return np.inf if require_progress and value > finite[0] else value


def draw_sweep(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    x: str = "lr",
    metric: str | Sequence[str] = "loss",
    last: int = 20,
    group_by: str = " @ ",
    logx: bool = True,
    logy: bool = True,
    percent: bool = False,
    require_progress: bool = True,
    ylabel: str | None = None,
    colors: Mapping[str, str] | None = None,
) -> None:
    """A final metric (mean of its last `last` finite values) against a run setting `x` (e.g. "lr",
    "batch_size"), one line per group of runs (and per metric when `metric` is a list: solid, dashed, dotted). A
    run's group is its label before `group_by` ("Adam @ lr=0.01" is in group "Adam"). Runs that diverged, or (with
    require_progress, for losses) ended above their first value, did not train. Several seeds at one setting: the
    line is their median (a setting where most seeds did not train counts as not trained) and the band spans the
    seeds that trained. Settings that did not train are drawn as x at the top of the panel: the largest learning
    rate that still trains is the last dot. percent: draw fractions (accuracies) in percent."""
    runs = _check_runs(runs)
    last = _positive_int("last", last)
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not metrics:
        raise ValueError("metric: expected a metric name or a non-empty list of them")
    scale = 100.0 if percent else 1.0
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        if x not in run.config.get("run", {}):
            raise ValueError(f"x: run {run.label!r} has no setting {x!r}")
        groups.setdefault(run.label.split(group_by)[0], []).append(run)
    cmap = _colors([RunResult(path=None, run_id=g, label=g, config={}, status="") for g in groups], colors)
    lines = []
    seeds = 1
    for group, members in groups.items():
        by_x: dict[float, list[RunResult]] = {}
        for r in members:
            by_x.setdefault(float(r.config["run"][x]), []).append(r)
        xs = np.array(sorted(by_x))
        seeds = max(seeds, *(len(v) for v in by_x.values()))
        for m, name in enumerate(metrics):
            table = [np.array([final_value(r, name, last, require_progress) for r in by_x[v]]) * scale for v in xs]
            mid = np.array([_median_trained(vals) for vals in table])
            lo = np.array([np.min(vals[np.isfinite(vals)], initial=np.inf) for vals in table])
            hi = np.array([np.max(vals[np.isfinite(vals)], initial=-np.inf) for vals in table])
            lines.append((group, name, m, xs, mid, lo, hi))
    finite = [v for *_, ys, _lo, hi in lines for v in np.concatenate([ys, hi]) if np.isfinite(v)]
    top = max(finite, default=1.0)
    for group, name, m, xs, ys, lo, hi in lines:
        ok = np.isfinite(ys)
        label = group if len(metrics) == 1 else f"{group}: {name.replace('_', ' ')}"
        ax.plot(xs[ok], ys[ok], color=cmap[group], label=label, marker="o", markersize=4, linewidth=1.2,
                linestyle=("-", "--", ":")[m % 3])
        if seeds > 1 and ok.any():
            ax.fill_between(xs[ok], lo[ok], hi[ok], color=cmap[group], alpha=0.15, linewidth=0)
        if (~ok).any():
            ax.plot(xs[~ok], np.full((~ok).sum(), top), color=cmap[group], marker="x", markersize=8,
                    linestyle="none")
    if seeds > 1:
        _seed_note(ax, seeds, band="shaded: min-max over the seeds that trained")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel({"lr": "learning rate", "batch_size": "batch size"}.get(x, x.replace("_", " ")))
    what = metrics[0].replace("_", " ") if len(metrics) == 1 else "final value"
    ax.set_ylabel(ylabel or f"{what} (last {last}; x: did not train)")
    _legend(ax)


def _median_trained(values: np.ndarray) -> float:
    """The median over seeds of final values, not-trained (inf or NaN) counting as +inf: finite only when most
    seeds trained."""
    return float(np.median(np.where(np.isfinite(values), values, np.inf))) if values.size else np.nan


def select_best(runs: Sequence[RunResult], *, group_by: str = " @ ", metric: str = "loss",
                last: int = 20) -> list[RunResult]:
    """Per group of runs (label before `group_by`), the learning rate a sweep picks: the one whose runs have the
    lowest final metric (see `final_value`), over several seeds the lowest median (a run that did not train counts
    as +inf). Returns every seed's run at that rate, relabelled with the group name and the rate, so that curve
    panels draw their median and band. Groups keep their first run's order; a group whose runs all diverged keeps
    its first rate."""
    groups: dict[str, dict[object, list[RunResult]]] = {}
    for run in runs:
        group = run.label.split(group_by)[0]
        rate = run.config.get("run", {}).get("lr", run.label)
        groups.setdefault(group, {}).setdefault(rate, []).append(run)
    out = []
    for group, rates in groups.items():
        best_rate, best_value = None, None
        for rate, members in rates.items():
            value = _median_trained(np.array([final_value(r, metric, last) for r in members]))
            if best_value is None or value < best_value:
                best_rate, best_value = rate, value
        label = f"{group} (lr {best_rate:g})" if isinstance(best_rate, (int, float)) else group
        for run in sorted(rates[best_rate], key=_seed_of):
            out.append(RunResult(run.path, run.run_id, label, run.config, run.status, run.metrics, run.probes,
                                 run.probe_meta))
    return out


STUDY_PANELS = {"series": draw_series, "profile": draw_profile, "sweep": draw_sweep}
