"""One `draw_<kind>(ax, runs, **options)` per panel kind (see smoothnorm.plots for the shared conventions)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize, to_rgb

from smoothnorm.measure.distributions import moment_series
from smoothnorm.plots.gradients import draw_depth_training, draw_explosion_rate, draw_gradient_layers
from smoothnorm.plots.spectrum import draw_spectrum_density, draw_spectrum_series
from smoothnorm.plots.stability import draw_sharpness
from smoothnorm.plots.style import (
    ETA_LABEL,
    GRAD_DIFF_LABEL,
    STEP_CMAP,
    STEP_LABEL,
    _check_runs,
    _choice,
    _colors,
    _draw_series,
    _etas,
    _finite_xy,
    _legend,
    _legend_label,
    _on_common_steps,
    _positive_int,
    _probe,
    _resolve_layer,
    _run_legend,
    _seed_legend,
    _seed_note,
    _seed_stats,
    _select_run,
    group_by_label,
    moving_average,
)
from smoothnorm.plots.surfaces import draw_surface_1d, draw_surface_2d, draw_surface_3d
from smoothnorm.runs.store import RunResult

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

    def series(run):
        steps = run.metrics.get("step", np.zeros(0, dtype=np.int64))
        x, y = _finite_xy(steps, run.metrics.get(metric, np.full(len(steps), np.nan)))
        return x, (moving_average(y * scale, smooth) if y.size else y)

    marker = "o" if metric.startswith("test") else None
    _draw_series(ax, runs, series, cmap, marker=marker, markersize=3, linewidth=1.2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(_METRIC_LABELS[metric])
    _legend(ax)


_BAND_LABELS = {"losses": "loss", "grad_distances": GRAD_DIFF_LABEL}


def _band_edges(run: RunResult, probe: str, quantity: str, center: str):
    """(steps, low, high, centre, any non-finite) of one run's band over step sizes at each probe step."""
    steps = _probe(run, probe, "steps")
    values = _probe(run, probe, quantity).astype(np.float64).reshape(len(steps), -1)
    finite = np.isfinite(values)
    masked = np.where(finite, values, np.nan)
    any_finite = finite.any(axis=1)
    lo, hi, mid = (np.full(len(steps), np.nan) for _ in range(3))
    lo[any_finite] = np.nanmin(masked[any_finite], axis=1)
    hi[any_finite] = np.nanmax(masked[any_finite], axis=1)
    if center == "median":
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
    return steps, lo, hi, mid, ~finite.all(axis=1)


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
    i.e. the training step itself) or "none". Several seeds of one label: the median over seeds of the band's
    edges and of its centre (the legend says so).
    """
    runs = _check_runs(runs)
    _choice("quantity", quantity, tuple(_BAND_LABELS))
    _choice("center", center, ("median", "lr", "none"))
    cmap = _colors(runs, colors)
    marked = False
    for label, group in group_by_label(runs).items():
        color = cmap[label]
        edges = [_band_edges(run, probe, quantity, center) for run in group]
        if len(group) == 1:
            steps, lo, hi, mid, bad = edges[0]
            legend = _legend_label(group[0])
        else:
            # Several seeds: the median over seeds of each edge of the band and of its centre line.
            steps, lows = _on_common_steps([(e[0], e[1]) for e in edges])
            highs = _on_common_steps([(e[0], e[2]) for e in edges])[1]
            mids = _on_common_steps([(e[0], e[3]) for e in edges])[1]
            lo, hi, mid = _seed_stats(lows)[0], _seed_stats(highs)[0], _seed_stats(mids)[0]
            bad = np.isin(steps, np.concatenate([e[0][e[4]] for e in edges]))
            legend = _seed_legend(group)
            _seed_note(ax, len(group), band="band edges: medians over seeds")
        any_finite = np.isfinite(lo) & np.isfinite(hi)
        ax.fill_between(steps, lo, hi, where=any_finite, color=color, alpha=0.3, linewidth=0, label=legend)
        if center != "none":
            x, y = _finite_xy(steps, mid)
            ax.plot(x, y, color=color, linewidth=1.0)
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
    _draw_series(
        ax, runs,
        lambda run: _finite_xy(_probe(run, probe, "steps"), _probe(run, probe, "effective_beta").reshape(-1)),
        cmap, linewidth=1.2,
    )
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
    titles = []

    def series(run):
        values = _probe(run, probe, quantity)
        steps = _probe(run, probe, "steps")
        values = values.reshape(len(steps), -1)
        index, name = _resolve_layer(run, probe, layer, count=values.shape[1])
        titles.append(f"layer #{index + 1} ({name})")
        return _finite_xy(steps, values[:, index])

    _draw_series(ax, runs, series, cmap, linewidth=1.2)
    title = titles[0]
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
    titles = []

    def series(run):
        index, name = _resolve_layer(run, probe, layer)
        titles.append(f"layer #{index + 1} ({name})")
        steps = _probe(run, probe, "steps")
        if len(steps) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        values = moment_series(_probe(run, probe, f"{name}/mean"), _probe(run, probe, f"{name}/var"))[key]
        return _finite_xy(steps[1:] if which == "change" else steps, values.mean(axis=1))

    _draw_series(ax, runs, series, cmap, linewidth=1.2)
    title = titles[0]
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

    def series(run):
        steps = _probe(run, probe, "steps")
        values = _probe(run, probe, "top_eigenvalues").reshape(len(steps), -1)
        k = values.shape[1]
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < max(k, 1):
            raise ValueError(
                f"index: expected an eigenvalue index below {k} (run {run.label!r}), got {index!r}"
            )
        return _finite_xy(steps, values[:, index] if k else np.zeros(0))

    _draw_series(ax, runs, series, cmap, linewidth=1.2)
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
    "spectrum_density": draw_spectrum_density,
    "spectrum_series": draw_spectrum_series,
    "sharpness": draw_sharpness,
    "gradient_layers": draw_gradient_layers,
    "explosion_rate": draw_explosion_rate,
    "depth_training": draw_depth_training,
    "surface_1d": draw_surface_1d,
    "surface_2d": draw_surface_2d,
    "surface_3d": draw_surface_3d,
}
