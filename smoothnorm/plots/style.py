"""Shared by every panel: run colours, axis labels, argument checks and small drawing helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.lines import Line2D

from smoothnorm.runs.store import RunResult

# The paper draws the standard network in blue and the BatchNorm network in red/orange (Figs 1-5).
KNOWN_COLORS: dict[str, str] = {
    "standard": "#1f77b4",
    "standard + batchnorm": "#d62728",
    "standard + noisy batchnorm": "#2ca02c",
}
_CYCLE = (
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#2ca02c",
    "#1f77b4",
    "#d62728",
)
# Fig 11: early steps blue, late steps red.
STEP_CMAP = LinearSegmentedColormap.from_list("early_blue_late_red", ["#1f3fd6", "#8a2bb0", "#d62020"])

STEP_LABEL = "training step"
ETA_LABEL = "step size eta"
GRAD_DIFF_LABEL = "l2 difference of gradient"


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------
def _label_key(label: str) -> str:
    return " ".join(label.lower().replace('"', "").replace("'", "").split())


def run_colors(labels: Sequence[str]) -> dict[str, str]:
    """Colour per run label: the paper's colours for the labels it uses (`KNOWN_COLORS`), a fixed cycle otherwise."""
    colors = {label: KNOWN_COLORS[_label_key(label)] for label in labels if _label_key(label) in KNOWN_COLORS}
    free = [c for c in _CYCLE if c not in colors.values()] or list(_CYCLE)
    i = 0
    for label in labels:
        if label not in colors:
            colors[label] = free[i % len(free)]
            i += 1
    return colors


def moving_average(values, window: int) -> np.ndarray:
    """Centred moving average over `window` points; windows shrink at both ends so no point is lost or shifted.

    values: (n,) finite floats. window: odd or even positive int (an even window leans one point to the right).
    """
    v = np.asarray(values, dtype=np.float64)
    window = _positive_int("smooth", window)
    if window == 1 or v.size == 0:
        return v.copy()
    left = (window - 1) // 2
    right = window - 1 - left
    csum = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(v.size)
    lo = np.maximum(idx - left, 0)
    hi = np.minimum(idx + right + 1, v.size)
    return (csum[hi] - csum[lo]) / (hi - lo)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _choice(name: str, value, allowed: Sequence) -> Any:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
    return value


def _legend_label(run: RunResult) -> str:
    if run.status == "diverged":
        return f"{run.label} (diverged)"
    if run.status == "running":
        return f"{run.label} (running)"
    return run.label


def _colors(runs: Sequence[RunResult], colors: Mapping[str, str] | None) -> dict[str, str]:
    out = run_colors([r.label for r in runs])
    if colors:
        out.update(colors)
    return out


def _finite_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(y)
    return x[keep], y[keep]


def _check_runs(runs: Sequence[RunResult]) -> list[RunResult]:
    runs = list(runs)
    if not runs:
        raise ValueError("runs: expected at least one RunResult, got none")
    return runs


def _select_run(runs: Sequence[RunResult], run: str | int) -> RunResult:
    runs = _check_runs(runs)
    labels = [r.label for r in runs]
    if isinstance(run, str):
        if run in labels:
            return runs[labels.index(run)]
    elif isinstance(run, (int, np.integer)) and not isinstance(run, bool) and -len(runs) <= run < len(runs):
        return runs[int(run)]
    raise ValueError(f"run: expected a label from {labels} or an index below {len(runs)}, got {run!r}")


def _probe(run: RunResult, probe: str, key: str) -> np.ndarray:
    full = f"{probe}/{key}"
    if full not in run.probes:
        have = sorted({k.split("/")[0] for k in run.probes})
        raise ValueError(f"probe: run {run.label!r} has no array {full!r}; probes recorded: {have}")
    return np.asarray(run.probes[full])


def _probe_meta(run: RunResult, probe: str) -> Mapping:
    """The metadata a run recorded for `probe` ({} when it recorded none)."""
    return run.probe_meta.get(probe, {}) if isinstance(run.probe_meta, Mapping) else {}


def _meta_array(run: RunResult, probe: str, key: str, what: str) -> np.ndarray:
    """The probe's metadata entry `key` as a float64 array; `what` names it in the error when it is missing."""
    meta = _probe_meta(run, probe)
    if key not in meta:
        raise ValueError(f"probe: run {run.label!r} has no {what} in the metadata of probe {probe!r}")
    return np.asarray(meta[key], dtype=np.float64)


def _layer_names(run: RunResult, probe: str) -> list[str] | None:
    """Layer names of a per-layer probe: its metadata, else (distributions) the names in its array keys."""
    meta = _probe_meta(run, probe)
    if meta.get("layers"):
        return [str(n) for n in meta["layers"]]
    prefix, suffix = f"{probe}/", "/mean"
    inferred = [
        k[len(prefix) : -len(suffix)] for k in run.probes if k.startswith(prefix) and k.endswith(suffix)
    ]
    return inferred or None


def _resolve_layer(run: RunResult, probe: str, layer: str | int, count: int | None = None) -> tuple[int, str]:
    """(index, name) of `layer` (a name, or an index into the probe's layer list) in one run."""
    names = _layer_names(run, probe)
    if names is None and count is not None:
        names = [f"#{i}" for i in range(count)]
    if names is None:
        raise ValueError(f"layer: run {run.label!r} records no layer names for probe {probe!r}")
    if isinstance(layer, str):
        if layer in names:
            return names.index(layer), layer
    elif (
        isinstance(layer, (int, np.integer))
        and not isinstance(layer, bool)
        and -len(names) <= layer < len(names)
    ):
        i = int(layer) % len(names)
        return i, names[i]
    raise ValueError(
        f"layer: expected a name from {names} or an index below {len(names)} (run {run.label!r}), "
        f"got {layer!r}"
    )


def _etas(run: RunResult, probe: str) -> np.ndarray:
    return _meta_array(run, probe, "etas", "step sizes ('etas')")


# A legend with more entries than this, or with a label longer than _LONG_LABEL characters, goes below its axes
# (the figure's constrained layout makes room for it): inside, it would cover curves, or outgrow a panel and cover
# its neighbour.
_INSIDE_ENTRIES = 3
_LONG_LABEL = 45


def _legend(ax: Axes, **kwargs) -> None:
    """The panel's legend: inside at the best place when it is small, else below the axes (never over data)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    longest = max(len(line) for label in labels for line in label.split("\n"))
    if len(labels) <= _INSIDE_ENTRIES and longest <= _LONG_LABEL or "loc" in kwargs:
        ax.legend(handles, labels, fontsize="small", **kwargs)
        return
    columns = 2 if len(labels) > 6 and longest <= 34 else 1
    # Anchored at the bottom of the axes and pushed below the tick labels and the x label.
    legend = ax.legend(handles, labels, fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, 0.0),
                       borderaxespad=4.6, ncols=columns, frameon=False, **kwargs)
    legend.set_in_layout(True)


def _run_legend(ax: Axes, run: RunResult, color: str) -> None:
    """A one-entry legend naming the single run a panel draws."""
    proxy = Line2D([], [], color=color, linewidth=6, alpha=0.6)
    ax.legend([proxy], [_legend_label(run)], fontsize="small", handlelength=1.0)


def _mark_divergence(ax: Axes, run: RunResult, x: np.ndarray, y: np.ndarray, color: str) -> None:
    """An x at the last finite point of a diverged run's line."""
    if run.status == "diverged" and x.size:
        ax.plot(x[-1:], y[-1:], marker="x", markersize=7, color=color, linestyle="none")


def _seed_of(run: RunResult) -> int:
    return int(run.config.get("run", {}).get("seed", 0)) if isinstance(run.config, Mapping) else 0


def group_by_label(runs: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    """Runs grouped by label in first-seen order, each group sorted by seed (one group per curve)."""
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return {label: sorted(group, key=_seed_of) for label, group in groups.items()}


def _seed_legend(group: Sequence[RunResult]) -> str:
    """The legend label of a label's median over seeds (with how many seeds diverged or are still running)."""
    diverged = sum(r.status == "diverged" for r in group)
    running = sum(r.status == "running" for r in group)
    extra = ", ".join(([f"{diverged} diverged"] if diverged else []) + ([f"{running} running"] if running else []))
    return f"{group[0].label} ({extra})" if extra else group[0].label


def _seed_note(ax: Axes, n: int, band: str = "shaded: min-max over seeds") -> None:
    """One legend entry saying what the lines and bands of several seeds are (added once per panel)."""
    text = f"line: median of {n} seeds\n{band}"
    if text not in ax.get_legend_handles_labels()[1]:
        ax.plot([], [], color="none", label=text)


def _on_common_steps(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values (seeds, steps)): each seed's curve on the union of steps, NaN outside its own range."""
    xs = [np.asarray(x, dtype=np.float64) for x, _ in series]
    grid = np.unique(np.concatenate(xs)) if xs else np.zeros(0)
    table = np.full((len(series), grid.size), np.nan)
    for i, (x, y) in enumerate(series):
        x = np.asarray(x, dtype=np.float64)
        if x.size:
            inside = (grid >= x[0]) & (grid <= x[-1])
            table[i, inside] = np.interp(grid[inside], x, np.asarray(y, dtype=np.float64))
    return grid, table


def _seed_stats(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, min and max over seeds (axis 0) where at least one seed has a value (NaN elsewhere)."""
    any_value = np.isfinite(table).any(axis=0)
    mid, lo, hi = (np.full(table.shape[1], np.nan) for _ in range(3))
    if any_value.any():
        sub = table[:, any_value]
        mid[any_value] = np.nanmedian(sub, axis=0)
        lo[any_value] = np.nanmin(sub, axis=0)
        hi[any_value] = np.nanmax(sub, axis=0)
    return mid, lo, hi


def _draw_series(ax: Axes, runs: Sequence[RunResult], series, cmap: Mapping[str, str], **line) -> None:
    """One curve per run label: a single run as a line; several seeds as their median with a min-max band.

    series(run) -> (x, y) finite points of one run.
    """
    for label, group in group_by_label(runs).items():
        color = cmap[label]
        if len(group) == 1:
            x, y = series(group[0])
            ax.plot(x, y, color=color, label=_legend_label(group[0]), **line)
            _mark_divergence(ax, group[0], x, y, color)
            continue
        grid, table = _on_common_steps([series(r) for r in group])
        mid, lo, hi = _seed_stats(table)
        keep = np.isfinite(mid)
        ax.fill_between(grid, lo, hi, where=keep, color=color, alpha=0.2, linewidth=0)
        ax.plot(grid[keep], mid[keep], color=color, label=_seed_legend(group), **line)
    counts = [len(group) for group in group_by_label(runs).values() if len(group) > 1]
    if counts:
        _seed_note(ax, max(counts))
