"""Panels of the gradient-explosion follow-up (Yang et al. 2019): per-layer weight-gradient norms at
initialization with their fitted per-layer rate, that rate against the batch size, and how far networks of growing
depth train. Runs are told apart by their settings (config.json: norm, activation, batch_size, depth), not their
labels. Registered in smoothnorm.plots.panels.PANELS."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm

from smoothnorm.measure.gradient_explosion import large_batch_rate
from smoothnorm.plots.style import _check_runs, _choice, _legend, _probe
from smoothnorm.runs.store import RunResult

_PROBE = "gradient_explosion"
_BATCH_CMAP = colormaps["viridis"]


def _setting(run: RunResult, key: str):
    settings = run.config.get("run", {}) if isinstance(run.config, Mapping) else {}
    if key not in settings:
        raise ValueError(f"runs: run {run.label!r} records no setting {key!r} in its config.json")
    return settings[key]


def _activation(run: RunResult) -> str:
    activation = _setting(run, "activation")
    return "relu" if activation == "default" else activation


def _norm_name(norm: str) -> str:
    return "no norm" if norm == "none" else ("BatchNorm" if norm == "batch" else norm)


def _initial(run: RunResult, key: str) -> np.ndarray:
    """The probe's `key` at its first recorded step (step 0: initialization)."""
    values = _probe(run, _PROBE, key)
    if values.shape[0] == 0:
        raise ValueError(f"probe: run {run.label!r} recorded no {_PROBE} measurement")
    return np.asarray(values[0], dtype=np.float64)


def _groups(runs: Sequence[RunResult], keys: tuple[str, ...]) -> dict[tuple, list[RunResult]]:
    groups: dict[tuple, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(tuple(_activation(run) if k == "activation" else _setting(run, k) for k in keys),
                          []).append(run)
    return dict(sorted(groups.items(), key=lambda kv: tuple(str(v) if isinstance(v, str) else v for v in kv[0])))


def draw_gradient_layers(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    activation: str = "relu",
    baseline_batch_size: int = 0,
    colors: Mapping[str, str] | None = None,
) -> None:
    """||dL/dW_l||^2 at initialization against the layer l (log y, the geometric mean over seeds), divided by its
    value at the last hidden layer so slopes compare across batch sizes: BatchNorm runs of one activation, one
    line per batch size (colour), and the network without a norm (black, dashed) at `baseline_batch_size`
    (0: the largest recorded). The legend gives the fitted per-layer rate exp(-slope) (mean over seeds)."""
    _choice("activation", activation, ("relu", "tanh", "identity", "sigmoid"))
    runs = [r for r in _check_runs(runs) if _activation(r) == activation]
    if not runs:
        ax.text(0.5, 0.5, f"no {activation} runs", transform=ax.transAxes, ha="center")
        return
    groups = _groups(runs, ("norm", "batch_size"))
    batch_sizes = sorted({b for (_, b) in groups})
    norm = LogNorm(vmin=min(batch_sizes), vmax=max(max(batch_sizes), min(batch_sizes) + 1))
    plain = sorted(b for (n, b) in groups if n == "none")
    baseline = (baseline_batch_size or (plain[-1] if plain else 0))
    for (norm_kind, batch), group in groups.items():
        if norm_kind == "none" and batch != baseline:
            continue
        logs = np.stack([np.log(_initial(r, "sq_norms")) for r in group])
        mean = logs.mean(axis=0)
        layers = np.arange(1, mean.size + 1)
        reference = mean[-2] if mean.size > 1 else mean[-1]
        rates = np.array([float(_initial(r, "rate")) for r in group])
        label = f"{_norm_name(norm_kind)}, B={batch}: rate {np.nanmean(rates):.3g}"
        style = ({"color": "black", "linestyle": "--"} if norm_kind == "none"
                 else {"color": _BATCH_CMAP(norm(batch) * 0.9)})
        ax.plot(layers, np.exp(mean - reference), label=label, linewidth=1.2, **style)
    ax.set_yscale("log")
    ys = np.concatenate([line.get_ydata() for line in ax.get_lines()])
    ys = ys[np.isfinite(ys) & (ys > 0)]
    if ys.size:  # headroom above the curves for the legend
        lo, hi = np.log10(ys.min()), np.log10(ys.max())
        ax.set_ylim(10 ** (lo - 0.05 * (hi - lo + 1)), 10 ** (hi + 0.6 * (hi - lo + 1)))
    ax.set_xlabel("layer l (1 = input side)")
    ax.set_ylabel("||dL/dW_l||^2 / value at layer L-1")
    ax.legend(fontsize="x-small", loc="upper right", ncols=2 if len(ax.get_lines()) > 4 else 1)


def draw_explosion_rate(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    theory: bool = True,
    colors: Mapping[str, str] | None = None,
) -> None:
    """The fitted per-layer rate at initialization against the batch size (log x), one line per (activation,
    norm): the mean over seeds, the shaded band min-max; dotted: the large-batch mean-field rate
    E[phi'(z)^2] / Var[phi(z)] of each activation with BatchNorm (`theory`). 1 means no explosion."""
    runs = _check_runs(runs)
    cycle = {"relu": "#d62728", "tanh": "#1f77b4", "identity": "#2ca02c", "sigmoid": "#9467bd"}
    for (activation, norm_kind), group in _groups(runs, ("activation", "norm")).items():
        by_batch = _groups(group, ("batch_size",))
        xs = np.array([b for (b,) in by_batch], dtype=np.float64)
        table = [np.array([float(_initial(r, "rate")) for r in g]) for g in by_batch.values()]
        mean = np.array([np.nanmean(t) for t in table])
        color = cycle.get(activation, "gray")
        dashed = norm_kind == "none"
        ax.plot(xs, mean, marker="o", markersize=3, color=color, linestyle="--" if dashed else "-",
                label=f"{activation}, {_norm_name(norm_kind)}")
        ax.fill_between(xs, [np.nanmin(t) for t in table], [np.nanmax(t) for t in table], color=color, alpha=0.15,
                        linewidth=0)
        if theory and norm_kind == "batch":
            ax.axhline(large_batch_rate(activation), color=color, linestyle=":", linewidth=1.0)
    ax.axhline(1.0, color="gray", linewidth=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("rate: growth of ||dL/dW_l||^2 per layer")
    if theory:
        ax.plot([], [], color="gray", linestyle=":", label="large-batch theory (BatchNorm)")
    ax.legend(fontsize="x-small", loc="upper right")


_DEPTH_METRICS = {"train_acc": "final training accuracy (%)", "loss": "final training loss"}


def draw_depth_training(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    metric: str = "train_acc",
    window: float = 0.1,
    colors: Mapping[str, str] | None = None,
) -> None:
    """Where training fails with depth: the mean of `metric` over the last `window` fraction of training against
    the network's depth, one line per norm (mean over seeds, band min-max); a diverged run counts as chance
    accuracy (10%) or infinite loss and is marked with an x."""
    _choice("metric", metric, tuple(_DEPTH_METRICS))
    if not (isinstance(window, (int, float)) and not isinstance(window, bool) and 0 < window <= 1):
        raise ValueError(f"window: expected a fraction in (0, 1], got {window!r}")
    runs = _check_runs(runs)
    cycle = {"batch": "#d62728", "none": "#1f77b4"}
    for (norm_kind,), group in _groups(runs, ("norm",)).items():
        by_depth = _groups(group, ("depth",))
        depths, table, diverged_at = [], [], []
        for (depth,), g in by_depth.items():
            values = []
            for r in g:
                if r.status == "diverged":
                    values.append(0.1 if metric == "train_acc" else np.inf)
                    diverged_at.append(depth)
                    continue
                series = np.asarray(r.metrics.get(metric, np.zeros(0)), dtype=np.float64)
                series = series[np.isfinite(series)]
                tail = series[-max(1, int(round(window * series.size))):] if series.size else series
                values.append(float(np.mean(tail)) if tail.size else np.nan)
            depths.append(depth)
            table.append(np.array(values))
        scale = 100.0 if metric == "train_acc" else 1.0
        color = (colors or {}).get(norm_kind, cycle.get(norm_kind, "gray"))
        mean = np.array([np.nanmean(np.where(np.isinf(t), np.nan, t)) for t in table]) * scale
        ax.plot(depths, mean, marker="o", color=color, label=_norm_name(norm_kind))
        finite = [np.where(np.isinf(t), np.nan, t) for t in table]
        ax.fill_between(depths, [np.nanmin(t) * scale for t in finite], [np.nanmax(t) * scale for t in finite],
                        color=color, alpha=0.15, linewidth=0)
        for depth in sorted(set(diverged_at)):
            ax.plot([depth], [0.1 * scale if metric == "train_acc" else np.nanmax(mean)], marker="x", color=color,
                    markersize=8, linestyle="none")
    if metric == "train_acc":
        ax.axhline(10.0, color="gray", linewidth=0.6, linestyle=":")
    ax.set_xlabel("depth (weight layers)")
    ax.set_ylabel(_DEPTH_METRICS[metric])
    _legend(ax)
