"""Figures of the paper drawn from stored runs: one `draw_<kind>(ax, runs, **options)` per panel kind, and
`draw_figure`, which lays panels out in a grid and writes PNG and PDF atomically.

Matplotlib only, and never through pyplot: figures are `matplotlib.figure.Figure` objects on an Agg canvas, so
importing or drawing changes no global state (no backend switch, no figure manager, nothing to leak).
Conventions shared by every panel:
- x is the training step; non-finite values (steps after divergence, NaN metrics) are left out, and the finite
  points are joined, so a metric recorded only at evaluation steps draws as one connected line;
- a run whose status is "diverged" draws what it recorded and reads "<label> (diverged)" in the legend
  ("<label> (running)" for a run still in progress);
- colours follow the run label (`run_colors`), so a run keeps its colour in every panel of a figure.
Accuracies are stored as fractions in [0, 1] (smoothnorm.train, smoothnorm.experiment) and drawn in percent.
"""

from __future__ import annotations

import inspect
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import LinearSegmentedColormap, Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from smoothnorm.measure.distributions import moment_series
from smoothnorm.results import RunResult

__all__ = [
    "PANELS",
    "run_colors",
    "moving_average",
    "draw_accuracy",
    "draw_band",
    "draw_beta",
    "draw_ics",
    "draw_grad_vs_eta",
    "draw_ridge",
    "draw_moments",
    "draw_hessian",
    "draw_figure",
]

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


def _layer_names(run: RunResult, probe: str) -> list[str] | None:
    """Layer names of a per-layer probe: its metadata, else (distributions) the names in its array keys."""
    meta = run.probe_meta.get(probe, {}) if isinstance(run.probe_meta, Mapping) else {}
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
    meta = run.probe_meta.get(probe, {}) if isinstance(run.probe_meta, Mapping) else {}
    if "etas" not in meta:
        raise ValueError(
            f"probe: run {run.label!r} has no step sizes ('etas') in the metadata of probe {probe!r}"
        )
    return np.asarray(meta["etas"], dtype=np.float64)


def _legend(ax: Axes, **kwargs) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize="small", **kwargs)


def _run_legend(ax: Axes, run: RunResult, color: str) -> None:
    """A one-entry legend naming the single run a panel draws."""
    proxy = Line2D([], [], color=color, linewidth=6, alpha=0.6)
    ax.legend([proxy], [_legend_label(run)], fontsize="small", handlelength=1.0)


def _mark_divergence(ax: Axes, run: RunResult, x: np.ndarray, y: np.ndarray, color: str) -> None:
    """An x at the last finite point of a diverged run's line."""
    if run.status == "diverged" and x.size:
        ax.plot(x[-1:], y[-1:], marker="x", markersize=7, color=color, linestyle="none")


# ----------------------------------------------------------------------------------------------------------------
# Panels
# ----------------------------------------------------------------------------------------------------------------
_METRIC_LABELS = {
    "train_acc": "training accuracy (%)",
    "test_acc": "test accuracy (%)",
    "loss": "training loss",
    "test_loss": "test loss",
}


def draw_accuracy(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    metric: str = "train_acc",
    smooth: int = 1,
    logy: bool = False,
    colors: Mapping[str, str] | None = None,
) -> None:
    """A metric over training, one line per run (Figs 1a,b, 2, 3, 5, 12a, 13a).

    metric: "train_acc", "test_acc" (in %), "loss" or "test_loss". smooth: moving-average window over the finite
    points (`moving_average`; batch metrics are noisy). Evaluation metrics exist only at evaluation steps and are
    drawn as connected markers. logy: log-scale y (the DLN's loss).
    """
    runs = _check_runs(runs)
    _choice("metric", metric, tuple(_METRIC_LABELS))
    smooth = _positive_int("smooth", smooth)
    cmap = _colors(runs, colors)
    scale = 100.0 if metric.endswith("acc") else 1.0
    for run in runs:
        steps = run.metrics.get("step", np.zeros(0, dtype=np.int64))
        values = run.metrics.get(metric, np.full(len(steps), np.nan))
        x, y = _finite_xy(steps, values)
        y = moving_average(y * scale, smooth) if y.size else y
        marker = "o" if metric.startswith("test") else None
        ax.plot(
            x, y, color=cmap[run.label], label=_legend_label(run), marker=marker, markersize=3, linewidth=1.2
        )
        _mark_divergence(ax, run, x, y, cmap[run.label])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(_METRIC_LABELS[metric])
    _legend(ax)


_BAND_LABELS = {"losses": "loss", "grad_distances": GRAD_DIFF_LABEL}


def draw_band(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    quantity: str = "losses",
    center: str = "median",
    logy: bool | None = None,
    probe: str = "landscape",
    colors: Mapping[str, str] | None = None,
) -> None:
    """Shaded min-max band over the probed step sizes at each probe step, one per run (Figs 4a,b, 10a,b, 12b,c).

    quantity: "losses" (L(w_t - eta g_t), log y by default) or "grad_distances" (||grad L(w_t - eta g_t) - g_t||,
    linear y by default). Non-finite values (the step diverged at that eta) are left out of the band; a step with
    any such value gets a triangle at the top of the panel. center: the line drawn inside the band: "median"
    (median over the finite values), "lr" (the value at the eta nearest to the run's learning rate on a log scale,
    i.e. the training step itself) or "none".
    """
    runs = _check_runs(runs)
    _choice("quantity", quantity, tuple(_BAND_LABELS))
    _choice("center", center, ("median", "lr", "none"))
    cmap = _colors(runs, colors)
    marked = False
    for run in runs:
        color = cmap[run.label]
        steps = _probe(run, probe, "steps")
        values = _probe(run, probe, quantity).astype(np.float64).reshape(len(steps), -1)
        finite = np.isfinite(values)
        masked = np.where(finite, values, np.nan)
        any_finite = finite.any(axis=1)
        lo = np.full(len(steps), np.nan)
        hi = np.full(len(steps), np.nan)
        lo[any_finite] = np.nanmin(masked[any_finite], axis=1)
        hi[any_finite] = np.nanmax(masked[any_finite], axis=1)
        ax.fill_between(
            steps, lo, hi, where=any_finite, color=color, alpha=0.3, linewidth=0, label=_legend_label(run)
        )
        if center == "median":
            mid = np.full(len(steps), np.nan)
            mid[any_finite] = np.nanmedian(masked[any_finite], axis=1)
        elif center == "lr":
            etas = _etas(run, probe)
            if etas.size != values.shape[1]:
                raise ValueError(
                    f"probe: run {run.label!r} has {values.shape[1]} values per step but {etas.size} step sizes"
                )
            lr = float(run.config.get("run", {}).get("lr", math.nan))
            if not (math.isfinite(lr) and lr > 0):
                raise ValueError(f"center: 'lr' needs config['run']['lr'] > 0; run {run.label!r} has {lr!r}")
            mid = masked[:, int(np.argmin(np.abs(np.log(etas) - math.log(lr))))]
        if center != "none":
            x, y = _finite_xy(steps, mid)
            ax.plot(x, y, color=color, linewidth=1.0)
        bad = ~finite.all(axis=1)
        if bad.any():
            ax.plot(
                steps[bad],
                np.full(int(bad.sum()), 0.97),
                linestyle="none",
                marker="v",
                markersize=4,
                color=color,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                label=None if marked else "non-finite at some eta",
            )
            marked = True
    if quantity == "losses" if logy is None else logy:
        ax.set_yscale("log")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(_BAND_LABELS[quantity])
    _legend(ax)


def draw_beta(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    logy: bool = False,
    probe: str = "landscape",
    colors: Mapping[str, str] | None = None,
) -> None:
    """Effective beta-smoothness (max gradient change over distance moved) at each probe step (Figs 4c, 10c)."""
    runs = _check_runs(runs)
    cmap = _colors(runs, colors)
    for run in runs:
        x, y = _finite_xy(_probe(run, probe, "steps"), _probe(run, probe, "effective_beta").reshape(-1))
        ax.plot(x, y, color=cmap[run.label], label=_legend_label(run), linewidth=1.2)
        _mark_divergence(ax, run, x, y, cmap[run.label])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("effective beta-smoothness")
    _legend(ax)


def draw_ics(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    layer: str | int = 0,
    quantity: str = "l2",
    logy: bool | None = None,
    probe: str = "ics",
    colors: Mapping[str, str] | None = None,
) -> None:
    """Internal covariate shift (Definition 2.1) of one layer over training, one line per run (Fig 3).

    layer: a name from the probe's meta["layers"] or an index into it (0-based: the paper's "Layer #5" is 4 under a
    weight-layer count); an index picks the same position in runs whose layer names differ (with/without BN).
    quantity: "l2" (||G - G'||, log y by default) or "cosine" (cos(G, G'), y in [-1, 1], dashed "ideal" at 1).
    """
    runs = _check_runs(runs)
    _choice("quantity", quantity, ("l2", "cosine"))
    if quantity == "cosine" and logy:
        raise ValueError("logy: a log scale cannot show cosines in [-1, 1]; use quantity='l2'")
    cmap = _colors(runs, colors)
    title = None
    for run in runs:
        values = _probe(run, probe, quantity)
        steps = _probe(run, probe, "steps")
        values = values.reshape(len(steps), -1)
        index, name = _resolve_layer(run, probe, layer, count=values.shape[1])
        title = title or f"layer #{index + 1} ({name})"
        x, y = _finite_xy(steps, values[:, index])
        ax.plot(x, y, color=cmap[run.label], label=_legend_label(run), linewidth=1.2)
        _mark_divergence(ax, run, x, y, cmap[run.label])
    if quantity == "cosine":
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1.0, label="ideal")
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("cosine(G, G')")
    else:
        ax.set_ylabel("l2 difference")
        if logy is None or logy:
            ax.set_yscale("log")
    ax.set_xlabel(STEP_LABEL)
    ax.set_title(title)
    _legend(ax)


def draw_grad_vs_eta(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    run: str | int = 0,
    logx: bool = False,
    logy: bool = False,
    max_curves: int | None = None,
    probe: str = "landscape",
    colors: Mapping[str, str] | None = None,
) -> None:
    """Gradient change against step size along the gradient for one run, one curve per probe step (Fig 11).

    Curves are coloured by training step from blue (early) to red (late), with a colorbar "training step".
    run: a label or an index into runs. logx: log-scale step sizes (the DLN panel). max_curves: draw at most this
    many probe steps, evenly spaced (None: all). Non-finite points are left out of their curve.
    """
    chosen = _select_run(runs, run)
    if max_curves is not None:
        max_curves = _positive_int("max_curves", max_curves)
    etas = _etas(chosen, probe)
    steps = _probe(chosen, probe, "steps")
    values = _probe(chosen, probe, "grad_distances").astype(np.float64).reshape(len(steps), -1)
    if values.shape[1] != etas.size:
        raise ValueError(
            f"probe: run {chosen.label!r} has {values.shape[1]} gradient distances per step but "
            f"{etas.size} step sizes"
        )
    pick = _even_indices(len(steps), max_curves or len(steps))
    segments = []
    for i in pick:
        x, y = _finite_xy(etas, values[i])
        segments.append(np.column_stack([x, y]))
    norm = Normalize(float(steps.min()) if steps.size else 0.0, float(steps.max()) if steps.size else 1.0)
    lines = LineCollection(segments, cmap=STEP_CMAP, norm=norm, linewidths=1.0, alpha=0.8)
    lines.set_array(steps[pick].astype(np.float64))
    ax.add_collection(lines)
    ax.autoscale_view()
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    sm = ScalarMappable(norm=norm, cmap=STEP_CMAP)
    ax.figure.colorbar(sm, ax=ax, label=STEP_LABEL)
    ax.set_xlabel(ETA_LABEL)
    ax.set_ylabel(GRAD_DIFF_LABEL)
    _run_legend(ax, chosen, _colors([chosen], colors)[chosen.label])


def _even_indices(n: int, k: int) -> np.ndarray:
    """Up to k indices spread evenly over range(n), always including the first and the last."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, min(k, n))).astype(np.int64))


def draw_ridge(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    run: str | int = 0,
    layer: str | int = 0,
    unit: int = 0,
    max_curves: int = 8,
    scale: str = "each",
    probe: str = "distributions",
    colors: Mapping[str, str] | None = None,
) -> None:
    """Ridge plot of one sampled unit's activation histogram over training (Figs 1c, 2, 6, 9).

    One histogram per drawn probe step, offset vertically, earliest at the top and latest at the bottom (in front);
    y tick labels are the steps. run: label or index. layer: name or index into the probe's layers. unit: index
    into that layer's sampled units. max_curves: steps drawn, evenly spaced from first to last.
    scale: "each" (every histogram's peak has the same height; shapes compare) or "shared" (densities on one
    scale; spreads compare). A step whose unit had NaN/Inf values is annotated with their count.
    """
    chosen = _select_run(runs, run)
    max_curves = _positive_int("max_curves", max_curves)
    _choice("scale", scale, ("each", "shared"))
    _, name = _resolve_layer(chosen, probe, layer)
    steps = _probe(chosen, probe, "steps")
    counts = _probe(chosen, probe, f"{name}/counts").astype(np.float64)
    edges = _probe(chosen, probe, f"{name}/edges").astype(np.float64)
    k = counts.shape[1] if counts.ndim == 3 else 0
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or not -k <= unit < k:
        raise ValueError(f"unit: expected an index below {k} (sampled units of {name!r}), got {unit!r}")
    units_key = f"{probe}/{name}/units"
    channel = (
        int(np.asarray(chosen.probes[units_key]).reshape(len(steps), -1)[0, unit])
        if units_key in chosen.probes and len(steps)
        else int(unit)
    )
    nonfinite_key = f"{probe}/{name}/nonfinite"
    nonfinite = np.asarray(chosen.probes[nonfinite_key])[:, unit] if nonfinite_key in chosen.probes else None
    pick = _even_indices(len(steps), max_curves)
    widths = np.diff(edges[:, unit, :], axis=1)
    with np.errstate(all="ignore"):
        density = counts[:, unit, :] / (counts[:, unit, :].sum(axis=1, keepdims=True) * widths)
    density = np.where(np.isfinite(density), density, 0.0)
    peak_shared = max(float(density[pick].max()) if pick.size else 0.0, 1e-300)
    color = _colors([chosen], colors)[chosen.label]
    height = 1.6  # in units of the offset between curves: ridges overlap, as in the paper
    face = tuple(0.45 + 0.55 * np.asarray(to_rgb(color)))  # the run colour, lightened
    offsets = []
    for rank, i in enumerate(pick):
        offset = float(len(pick) - 1 - rank)
        peak = max(float(density[i].max()), 1e-300) if scale == "each" else peak_shared
        xs = np.repeat(edges[i, unit], 2)
        ys = offset + height * np.concatenate([[0.0], np.repeat(density[i] / peak, 2), [0.0]])
        # Opaque fills: a later (lower, front) ridge hides the one behind it, as in a ridge plot.
        ax.fill_between(xs, offset, ys, color=face, linewidth=0, zorder=2 * rank + 1)
        ax.plot(xs, ys, color="black", linewidth=0.6, zorder=2 * rank + 2)
        if nonfinite is not None and nonfinite[i] > 0:
            ax.annotate(
                f"{int(nonfinite[i])} non-finite",
                (xs[-1], offset),
                fontsize="x-small",
                xytext=(2, 2),
                textcoords="offset points",
            )
        offsets.append(offset)
    ax.set_yticks(offsets, [str(int(steps[i])) for i in pick])
    ax.set_ylim(-0.3, max(offsets, default=0.0) + height + 1.0)  # headroom for the top ridge and the legend
    ax.set_ylabel(STEP_LABEL)
    ax.set_xlabel("activation value")
    ax.set_title(f"{name}, unit {channel}")
    _run_legend(ax, chosen, color)


_MOMENT_KEYS = {
    ("change", "mean"): ("abs_mean_change", r"$|\mu_{t+1} - \mu_t|$"),
    ("change", "var"): ("abs_var_change", r"$|\sigma^2_{t+1} - \sigma^2_t|$"),
    ("drift", "mean"): ("mean_drift", r"$\mu_t - \mu_0$"),
    ("drift", "var"): ("var_drift", r"$\sigma^2_t - \sigma^2_0$"),
}


def draw_moments(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    layer: str | int = 0,
    which: str = "change",
    stat: str = "mean",
    logy: bool = False,
    probe: str = "distributions",
    colors: Mapping[str, str] | None = None,
) -> None:
    """Moments of sampled activations over training, averaged over the sampled units, one line per run (Fig 8).

    which: "change" (|m_{t+1} - m_t| between successive probe steps, drawn at the later step; Fig 8a) or "drift"
    (m_t - m_0; Fig 8b). stat: "mean" or "var" (m is the unit's mean or variance over the batch, H and W).
    layer: a name or an index into the probe's layers (per run, so runs with different layer names line up).
    """
    runs = _check_runs(runs)
    _choice("which", which, ("change", "drift"))
    _choice("stat", stat, ("mean", "var"))
    key, ylabel = _MOMENT_KEYS[(which, stat)]
    cmap = _colors(runs, colors)
    title = None
    for run in runs:
        index, name = _resolve_layer(run, probe, layer)
        title = title or f"layer #{index + 1} ({name})"
        steps = _probe(run, probe, "steps")
        if len(steps) == 0:
            ax.plot([], [], color=cmap[run.label], label=_legend_label(run))
            continue
        series = moment_series(_probe(run, probe, f"{name}/mean"), _probe(run, probe, f"{name}/var"))[key]
        x = steps[1:] if which == "change" else steps
        x, y = _finite_xy(x, series.mean(axis=1))
        ax.plot(x, y, color=cmap[run.label], label=_legend_label(run), linewidth=1.2)
        _mark_divergence(ax, run, x, y, cmap[run.label])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _legend(ax)


def draw_hessian(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    index: int = 0,
    logy: bool = False,
    probe: str = "hessian",
    colors: Mapping[str, str] | None = None,
) -> None:
    """The index-th largest Hessian eigenvalue on the training batch over training, one line per run."""
    runs = _check_runs(runs)
    cmap = _colors(runs, colors)
    for run in runs:
        steps = _probe(run, probe, "steps")
        values = _probe(run, probe, "top_eigenvalues").reshape(len(steps), -1)
        k = values.shape[1]
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < max(k, 1):
            raise ValueError(
                f"index: expected an eigenvalue index below {k} (run {run.label!r}), got {index!r}"
            )
        x, y = _finite_xy(steps, values[:, index] if k else np.zeros(0))
        ax.plot(x, y, color=cmap[run.label], label=_legend_label(run), linewidth=1.2)
        _mark_divergence(ax, run, x, y, cmap[run.label])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("top Hessian eigenvalue" if index == 0 else f"Hessian eigenvalue #{index + 1}")
    _legend(ax)


PANELS: dict[str, Callable[..., None]] = {
    "accuracy": draw_accuracy,
    "band": draw_band,
    "beta": draw_beta,
    "ics": draw_ics,
    "grad_vs_eta": draw_grad_vs_eta,
    "ridge": draw_ridge,
    "moments": draw_moments,
    "hessian": draw_hessian,
}


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------
_PANEL_KEYS = ("kind", "title", "runs")
_STYLE = {"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "figure.titlesize": 12}


def _panel_options(i: int, panel: Mapping) -> tuple[Callable[..., None], dict]:
    if not isinstance(panel, Mapping) or "kind" not in panel:
        raise ValueError(f"figure: panel #{i + 1} must be a dict with a 'kind' (one of {list(PANELS)})")
    kind = panel["kind"]
    if kind not in PANELS:
        raise ValueError(f"kind: panel #{i + 1} has unknown kind {kind!r}; expected one of {list(PANELS)}")
    fn = PANELS[kind]
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("ax", "runs", "colors")]
    options = {k: v for k, v in panel.items() if k not in _PANEL_KEYS}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"figure: panel #{i + 1} ({kind}) has unknown option {unknown[0]!r}; "
            f"expected options: {', '.join(_PANEL_KEYS + tuple(accepted))}"
        )
    return fn, options


def _output_base(out_base: str | os.PathLike) -> Path:
    base = Path(out_base)
    return base.with_suffix("") if base.suffix.lower() in (".png", ".pdf") else base


def _save_atomically(fig: Figure, base: Path, dpi: int) -> list[Path]:
    """Render PNG and PDF to temporary files beside their targets, then rename both (nothing left on failure)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    targets = [base.parent / f"{base.name}.png", base.parent / f"{base.name}.pdf"]
    temps: list[str] = []
    try:
        for target in targets:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            temps.append(tmp)
            fmt = target.suffix[1:]
            # No creation date, so a figure redrawn from the same runs gives the same bytes (clean git diffs).
            metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
            with os.fdopen(fd, "wb") as f:
                fig.savefig(f, format=fmt, dpi=dpi, metadata=metadata)
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
    except BaseException:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    return targets


def draw_figure(
    figure: Mapping[str, Any],
    runs: Sequence[RunResult],
    out_base: str | os.PathLike,
    *,
    dpi: int = 150,
) -> list[Path]:
    """Draw a figure of panels from runs and write `<out_base>.png` and `<out_base>.pdf`; returns both paths.

    figure: {"title": str, "columns": int (default min(3, panels)), "panels": [{"kind": one of PANELS, "title":
    str (optional), "runs": [labels] (optional subset, in legend order; default all), **options of the kind}]}.
    Each run keeps one colour (by label, `run_colors`) in every panel. Every option is validated before anything is
    written; files are replaced atomically, so a failure leaves earlier files untouched and no temporary files.
    """
    if not isinstance(figure, Mapping):
        raise ValueError(f"figure: expected a dict, got {type(figure).__name__}")
    unknown = sorted(set(figure) - {"title", "columns", "panels"})
    if unknown:
        raise ValueError(f"figure: unknown key {unknown[0]!r}; expected keys: title, columns, panels")
    panels = list(figure.get("panels") or [])
    if not panels:
        raise ValueError("panels: expected at least one panel")
    runs = _check_runs(runs)
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"runs: labels must be unique to select runs by label, got {labels}")
    by_label = dict(zip(labels, runs))
    columns = _positive_int("columns", figure.get("columns", min(3, len(panels))))
    jobs = []
    for i, panel in enumerate(panels):
        fn, options = _panel_options(i, panel)
        wanted = list(panel.get("runs") or labels)
        missing = [label for label in wanted if label not in by_label]
        if missing:
            raise ValueError(f"runs: panel #{i + 1} names unknown run {missing[0]!r}; runs: {labels}")
        jobs.append((fn, [by_label[label] for label in wanted], options, panel.get("title")))
    colors = run_colors(labels)
    rows = math.ceil(len(panels) / columns)
    with rc_context(_STYLE):
        fig = Figure(figsize=(4.4 * columns, 3.4 * rows + 0.4), layout="constrained")
        FigureCanvasAgg(fig)
        try:
            axes = fig.subplots(rows, columns, squeeze=False).ravel()
            for ax, (fn, panel_runs, options, title) in zip(axes, jobs):
                fn(ax, panel_runs, colors=colors, **options)
                if title:
                    ax.set_title(title)
            for ax in axes[len(jobs) :]:
                ax.set_axis_off()
            if figure.get("title"):
                fig.suptitle(str(figure["title"]))
            return _save_atomically(fig, _output_base(out_base), dpi)
        finally:
            fig.clear()
