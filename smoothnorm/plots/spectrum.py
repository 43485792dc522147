"""Panels of the Hessian-outlier follow-up (Ghorbani et al. 2019): spectral densities and the spectrum probe's
scalars over training. Registered in smoothnorm.plots.panels.PANELS."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize

from smoothnorm.measure.linalg import SpectralDensity
from smoothnorm.plots.style import (
    STEP_CMAP,
    STEP_LABEL,
    _check_runs,
    _choice,
    _colors,
    _finite_xy,
    _legend,
    _legend_label,
    _mark_divergence,
    _positive_int,
    _probe,
    _select_run,
)
from smoothnorm.runs.store import RunResult


def draw_spectrum_density(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    run: str | int = 0,
    sigma: float = 0.01,
    points: int = 400,
    probe: str = "spectrum",
    colors: Mapping[str, str] | None = None,
) -> None:
    """Hessian spectral density (SLQ, Gaussian-smoothed) of one run at each probed step, log y (Ghorbani et al.
    2019, Figs 1-4): early steps blue, late red. sigma: the kernel width as a fraction of the eigenvalue range."""
    chosen = _select_run(runs, run)
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0):
        raise ValueError(f"sigma: expected a positive fraction of the eigenvalue range, got {sigma!r}")
    points = _positive_int("points", points)
    steps = _probe(chosen, probe, "steps")
    nodes, weights = _probe(chosen, probe, "nodes"), _probe(chosen, probe, "weights")
    finite = nodes[np.isfinite(nodes)]
    if finite.size == 0:
        ax.text(0.5, 0.5, "no finite Ritz values", transform=ax.transAxes, ha="center")
        return
    lo, hi = float(finite.min()), float(finite.max())
    width = max(hi - lo, 1e-12)
    grid = np.linspace(lo - 0.05 * width, hi + 0.05 * width, points)
    norm = Normalize(vmin=float(steps.min()), vmax=float(max(steps.max(), steps.min() + 1)))
    for i, step in enumerate(steps):
        density = SpectralDensity(nodes[i], weights[i]).density(grid, sigma * width)
        ax.plot(grid, np.maximum(density, 1e-12), color=STEP_CMAP(norm(step)), linewidth=1.0,
                label=f"step {int(step)}")
    ax.set_yscale("log")
    ax.set_ylim(bottom=max(1e-8, 1e-6 / width))
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("spectral density")
    _legend(ax)


_SPECTRUM_LABELS = {
    "outlier_ratio": "lambda_1 / lambda_k",
    "gradient_share": "gradient share in top-k eigenspace",
    "grad_norm": "gradient norm",
}


def draw_spectrum_series(
    ax: Axes,
    runs: Sequence[RunResult],
    *,
    quantity: str = "outlier_ratio",
    logy: bool = False,
    probe: str = "spectrum",
    colors: Mapping[str, str] | None = None,
) -> None:
    """A spectrum-probe scalar over training, one line per run: the outlier ratio lambda_1 / lambda_k or the
    gradient's share in the top-k eigenspace (Ghorbani et al. 2019)."""
    _choice("quantity", quantity, tuple(_SPECTRUM_LABELS))
    runs = _check_runs(runs)
    cmap = _colors(runs, colors)
    for r in runs:
        x, y = _finite_xy(_probe(r, probe, "steps"), _probe(r, probe, quantity))
        ax.plot(x, y, color=cmap[r.label], label=_legend_label(r), linewidth=1.2, marker="o", markersize=3)
        _mark_divergence(ax, r, x, y, cmap[r.label])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(_SPECTRUM_LABELS[quantity])
    _legend(ax)
