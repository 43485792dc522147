"""Panel of the edge-of-stability follow-up (Cohen, Kaur, Li, Kolter, Talwalkar, ICLR 2021): the sharpness (top
Hessian eigenvalue of the full-batch training loss) over training against gradient descent's stability threshold
2 / lr. Registered in smoothnorm.plots.panels.PANELS."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes

from smoothnorm.plots.style import STEP_LABEL, _check_runs, _colors, _draw_series, _finite_xy, _legend, _probe
from smoothnorm.runs.store import RunResult


def run_lr(run: RunResult) -> float:
    """The run's learning rate from its config (ValueError naming the run when it is missing or not positive)."""
    lr = run.config.get("run", {}).get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"run {run.label!r}: config has no positive learning rate 'lr' (got {lr!r})")
    return float(lr)


def draw_sharpness(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    normalized: bool = False,
    logy: bool = False,
    probe: str = "hessian",
    colors: Mapping[str, str] | None = None,
) -> None:
    """Sharpness (the hessian probe's top eigenvalue) over training, one line per run, with each run's threshold
    2 / lr dashed in its colour (Cohen et al. 2021, Fig 1). normalized: plot sharpness x lr / 2 instead, with one
    dashed line at 1, so runs of different learning rates share a scale."""
    if not isinstance(normalized, bool):
        raise ValueError(f"normalized: expected true or false, got {normalized!r}")
    runs = _check_runs(runs)
    cmap = _colors(runs, colors)

    def series(run):
        steps = _probe(run, probe, "steps")
        values = _probe(run, probe, "top_eigenvalues").astype(np.float64).reshape(len(steps), -1)[:, 0]
        return _finite_xy(steps, values * run_lr(run) / 2.0 if normalized else values)

    _draw_series(ax, runs, series, cmap, linewidth=1.2, marker="o", markersize=2.5)
    if normalized:
        ax.axhline(1.0, color="0.3", linestyle="--", linewidth=1.0, label="2 / lr")
    else:
        drawn = set()
        for r in runs:
            threshold = 2.0 / run_lr(r)
            if (r.label, threshold) in drawn:
                continue  # seeds of one run share the line
            drawn.add((r.label, threshold))
            ax.axhline(threshold, color=cmap[r.label], linestyle="--", linewidth=1.0,
                       label=f"2 / lr = {threshold:.4g}")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("sharpness x lr / 2" if normalized else "sharpness (top Hessian eigenvalue)")
    _legend(ax)
