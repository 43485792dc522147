"""Panels of Li et al.'s (2018) filter-normalized loss surfaces (the surface probe): a 1-D curve per run, and 2-D
contours or a 3-D surface of one run, all 2-D panels of a figure on one colour scale. Registered in
smoothnorm.plots.panels.PANELS."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.ticker import FuncFormatter, NullFormatter

from smoothnorm.plots.style import (
    _check_runs,
    _choice,
    _colors,
    _draw_series,
    _finite_xy,
    _legend,
    _legend_label,
    _meta_array,
    _positive_int,
    _probe,
    _select_run,
)
from smoothnorm.runs.store import RunResult

SURFACE_CMAP = "viridis"
D1_LABEL = "alpha (filter-normalized d1)"
D2_LABEL = "beta (filter-normalized d2)"


def _step_index(run: RunResult, probe: str, step) -> tuple[int, int]:
    """(row index, training step) of `step`, an index into the probe's recorded steps (0: first, -1: last)."""
    steps = _probe(run, probe, "steps")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not -len(steps) <= step < len(steps):
        raise ValueError(f"step: expected an index into the {len(steps)} probed steps of run {run.label!r} "
                         f"({steps.tolist()}: 0 the first, -1 the last), got {step!r}")
    i = int(step) % len(steps)
    return i, int(steps[i])


def _bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    return value


def draw_surface_1d(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    step: int = -1,
    quantity: str = "loss",
    logy: bool = True,
    probe: str = "surface",
    colors: Mapping[str, str] | None = None,
) -> None:
    """Li et al.'s 1-D loss curve L(w + alpha d1), one line per run (several seeds: median and min-max band), at
    one probed step (`step`: 0 the first, -1 the last). quantity: "loss" or "accuracy" (in %)."""
    _choice("quantity", quantity, ("loss", "accuracy"))
    _bool("logy", logy)
    runs = _check_runs(runs)
    cmap = _colors(runs, colors)
    shown = set()
    key = "losses_1d" if quantity == "loss" else "accuracies_1d"

    def series(run):
        i, at = _step_index(run, probe, step)
        shown.add(at)
        alphas = _meta_array(run, probe, "alphas", "1-D coordinates ('alphas')")
        values = _probe(run, probe, key)[i].astype(np.float64) * (100.0 if quantity == "accuracy" else 1.0)
        return _finite_xy(alphas, values)

    _draw_series(ax, runs, series, cmap, linewidth=1.4)
    if logy and quantity == "loss":
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 3, not 3 x 10^0
        ax.yaxis.set_major_formatter(plain)
        lo, hi = ax.get_ylim()
        # Within a decade the minor ticks are the only labels; over several they would pile up.
        ax.yaxis.set_minor_formatter(plain if hi < 10 * lo else NullFormatter())
    ax.axvline(0.0, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_xlabel(D1_LABEL)
    ax.set_ylabel("training-batch loss" if quantity == "loss" else "training-batch accuracy (%)")
    # Below the axes: the curves fill the panel from edge to edge, so a legend inside would hide some of them.
    _legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, ncols=2,
            title="step " + ", ".join(str(s) for s in sorted(shown)))


def _surface_scale(runs: Sequence[RunResult], probe: str, log: bool, vmax) -> tuple[float, float]:
    """(vmin, vmax) of the 2-D losses of every run at every probed step: one colour scale for all 2-D panels of a
    figure (each gets the figure's runs). vmax: a cap (the scale's top) or None for the largest finite loss."""
    values = []
    for r in runs:
        key = f"{probe}/losses_2d"
        if key in r.probes:
            v = np.asarray(r.probes[key], dtype=np.float64).ravel()
            values.append(v[np.isfinite(v) & ((v > 0) if log else True)])
    finite = np.concatenate(values) if values else np.zeros(0)
    if finite.size == 0:
        return (1.0, 10.0) if log else (0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if vmax is not None:
        if isinstance(vmax, bool) or not isinstance(vmax, (int, float)) or not np.isfinite(vmax) or not vmax > lo:
            raise ValueError(f"vmax: expected a number above the smallest loss {lo:.4g}, got {vmax!r}")
        hi = float(vmax)
    if hi <= lo:
        hi = lo * 1.01 + 1e-12 if log else lo + 1e-12
    return lo, hi


def _nice_log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2 and 5 times powers of ten inside [lo, hi] (readable colour-bar ticks on a log scale)."""
    out = []
    for exponent in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1):
        out += [m * 10.0**exponent for m in (1, 2, 5) if lo <= m * 10.0**exponent <= hi]
    return out


def _surface_data(ax_runs, run, step, probe):
    chosen = _select_run(ax_runs, run)
    i, at = _step_index(chosen, probe, step)
    coords = _meta_array(chosen, probe, "coords", "2-D grid coordinates ('coords')")
    losses = _probe(chosen, probe, "losses_2d")[i].astype(np.float64)
    if losses.shape != (coords.size, coords.size):
        raise ValueError(f"probe: run {chosen.label!r} has a {losses.shape} 2-D surface for {coords.size} grid "
                         f"coordinates")
    return chosen, at, coords, losses


def draw_surface_2d(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    run: str | int = 0,
    step: int = -1,
    log: bool = True,
    levels: int = 24,
    vmax: float | None = None,
    probe: str = "surface",
    colors: Mapping[str, str] | None = None,
) -> None:
    """Li et al.'s 2-D loss surface L(w + alpha d1 + beta d2) of one run at one probed step as filled contours, w
    marked at the centre. The colour scale (log with `log`) spans the 2-D losses of every run the panel gets at
    every probed step, so all 2-D panels of a figure share it; `vmax` caps it (higher losses take the top colour).
    Diverged grid points stay blank."""
    _bool("log", log)
    levels = _positive_int("levels", levels)
    chosen, at, coords, losses = _surface_data(runs, run, step, probe)
    lo, hi = _surface_scale(_check_runs(runs), probe, log, vmax)
    norm = LogNorm(lo, hi) if log else Normalize(lo, hi)
    bounds = np.geomspace(lo, hi, levels + 1) if log else np.linspace(lo, hi, levels + 1)
    z = np.ma.masked_invalid(np.clip(losses, lo, hi) if log else np.minimum(losses, hi)).T  # rows: beta
    filled = ax.contourf(coords, coords, z, levels=bounds, norm=norm, cmap=SURFACE_CMAP)
    ax.contour(coords, coords, z, levels=bounds, colors="white", linewidths=0.4, alpha=0.5)
    ax.plot([0.0], [0.0], marker="x", color="red", markersize=7, linestyle="none",
            label=f"{_legend_label(chosen)}: w at step {at}")
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(D1_LABEL)
    ax.set_ylabel(D2_LABEL)
    bar = ax.figure.colorbar(filled, ax=ax, label="training-batch loss" + (" (log scale)" if log else ""))
    if log:
        ticks = _nice_log_ticks(lo, hi)
        if len(ticks) >= 2:
            bar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    # Below the axes: a legend inside would hide part of the surface.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize="small", frameon=False)


def draw_surface_3d(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    run: str | int = 0,
    step: int = -1,
    log: bool = True,
    vmax: float | None = None,
    probe: str = "surface",
    colors: Mapping[str, str] | None = None,
) -> None:
    """The 2-D loss surface of one run at one probed step as a 3-D surface (height: log10 of the loss with `log`),
    coloured and bounded on the same scale as draw_surface_2d (whose colour bar reads it). Needs a 3-D axes
    (draw_figure makes one: `projection`)."""
    _bool("log", log)
    if getattr(ax, "name", "") != "3d":
        raise ValueError("ax: draw_surface_3d needs a 3-D axes (projection='3d')")
    chosen, at, coords, losses = _surface_data(runs, run, step, probe)
    lo, hi = _surface_scale(_check_runs(runs), probe, log, vmax)
    norm = LogNorm(lo, hi) if log else Normalize(lo, hi)
    clipped = np.clip(losses, lo, hi)
    height = np.log10(clipped) if log else clipped
    a, b = np.meshgrid(coords, coords, indexing="ij")
    from matplotlib import colormaps

    faces = colormaps[SURFACE_CMAP](norm(np.ma.masked_invalid(clipped)))
    ax.plot_surface(a, b, np.ma.masked_invalid(height), facecolors=faces, rstride=1, cstride=1, linewidth=0.2,
                    edgecolor="0.3", antialiased=True, shade=False)
    ax.set_xlabel("alpha (d1)")
    ax.set_ylabel("beta (d2)")
    ax.set_zlabel("log10 loss" if log else "loss")
    ax.set_zlim(np.log10(lo) if log else lo, np.log10(hi) if log else hi)
    ax.text2D(0.02, 0.98, f"{_legend_label(chosen)}, step {at}", transform=ax.transAxes, va="top", fontsize="small")


# draw_figure makes a 3-D axes for a panel whose function names its projection.
draw_surface_3d.projection = "3d"
