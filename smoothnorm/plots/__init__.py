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
Accuracies are stored as fractions in [0, 1] (smoothnorm.train, smoothnorm.runs.runner) and drawn in percent.
"""

from __future__ import annotations

import inspect
import math
import os
import tempfile
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from smoothnorm.plots.panels import (
    PANELS,
    draw_accuracy,
    draw_band,
    draw_beta,
    draw_grad_vs_eta,
    draw_hessian,
    draw_ics,
    draw_moments,
    draw_ridge,
)
from smoothnorm.plots.study import STUDY_PANELS, draw_profile, draw_series, draw_sweep, select_best
from smoothnorm.plots.style import (
    KNOWN_COLORS,
    _check_runs,
    _positive_int,
    _seed_of,
    group_by_label,
    moving_average,
    run_colors,
)
from smoothnorm.plots.sweeps import (
    SWEEP_PANELS,
    draw_grad_histogram,
    draw_grad_layers,
    draw_lr_sweep,
    draw_one_step_loss,
)
from smoothnorm.runs.plugins import load_all
from smoothnorm.runs.provenance import mixed_note, run_provenance
from smoothnorm.runs.store import RunResult, load_run

__all__ = [
    "PANELS",
    "KNOWN_COLORS",
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
    "draw_series",
    "draw_profile",
    "draw_sweep",
    "select_best",
    "draw_lr_sweep",
    "draw_one_step_loss",
    "draw_grad_histogram",
    "draw_grad_layers",
    "draw_figure",
]

PANELS.update(STUDY_PANELS)  # the optimization study's panels (smoothnorm.plots.study)
PANELS.update(SWEEP_PANELS)  # learning-rate sweeps and gradients at initialization (smoothnorm.plots.sweeps)

# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------
_PANEL_KEYS = ("kind", "title", "runs", "select")
_STYLE = {"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "figure.titlesize": 12}


def _panel_options(i: int, panel: Mapping, registry: Mapping[str, Callable[..., None]] = PANELS,
                   ) -> tuple[Callable[..., None], dict]:
    if not isinstance(panel, Mapping) or "kind" not in panel:
        raise ValueError(f"figure: panel #{i + 1} must be a dict with a 'kind' (one of {list(registry)})")
    kind = panel["kind"]
    if not isinstance(kind, str) or kind not in registry:
        raise ValueError(f"kind: panel #{i + 1} has unknown kind {kind!r}; expected one of {list(registry)}")
    fn = registry[kind]
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
    note: str | None = None,
    panels_extra: Mapping[str, Callable[..., None]] | None = None,
) -> list[Path]:
    """Draw a figure of panels from runs and write `<out_base>.png` and `<out_base>.pdf`; returns both paths.

    figure: {"title": str, "columns": int (default min(3, panels)), "panels": [{"kind": one of PANELS, "title":
    str (optional), "runs": [labels] (optional subset, in legend order; default all; a learning-rate sweep's group
    label names all its runs "<group> @ lr=..."), **options of the kind}]}.
    runs: one per label, or one per (label, seed): curve panels then draw each label's median over seeds with a
    min-max band, and single-run panels (ridge, grad_vs_eta) the lowest seed (the title says which).
    note: a line under the figure (the provenance warning of draw_spec).
    panels_extra: more panel kinds, {kind: draw(ax, runs, *, colors, **options)} (a spec's plug-in panels), called
    as the built-in ones are: options are the panel's keys besides kind, title, runs and select.
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
    keys = [(r.label, _seed_of(r)) for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"runs: (label, seed) pairs must be unique to select runs by label, got {keys}")
    by_label = group_by_label(runs)
    labels = list(by_label)
    columns = _positive_int("columns", figure.get("columns", min(3, len(panels))))
    registry = {**PANELS, **(panels_extra or {})}
    jobs = []
    for i, panel in enumerate(panels):
        fn, options = _panel_options(i, panel, registry)
        wanted = _expand_sweeps(list(panel.get("runs") or labels), labels)
        missing = [label for label in wanted if label not in by_label]
        if missing:
            raise ValueError(f"runs: panel #{i + 1} names unknown run {missing[0]!r}; runs: {labels}")
        # A panel of one run (ridge, Fig 11) draws the lowest seed; curve panels draw every seed.
        single = "run" in inspect.signature(fn).parameters
        chosen = [r for label in wanted for r in (by_label[label][:1] if single else by_label[label])]
        select = panel.get("select")
        if select not in (None, "best_lr"):
            raise ValueError(f"select: panel #{i + 1} expects 'best_lr' (the lowest final training loss of each "
                             f"group 'NAME @ lr=...') or no select, got {select!r}")
        panel_colors = None
        if select == "best_lr":
            chosen = select_best(chosen)
            panel_colors = run_colors([r.label for r in chosen])  # the groups, not the sweep's runs
        jobs.append((fn, chosen, options, panel.get("title"), panel_colors))
    colors = run_colors(labels)
    rows = math.ceil(len(panels) / columns)
    with rc_context(_STYLE):
        fig = Figure(figsize=(4.4 * columns, 3.4 * rows + 0.4), layout="constrained")
        FigureCanvasAgg(fig)
        try:
            axes = list(fig.subplots(rows, columns, squeeze=False).ravel())
            for i, (fn, *_) in enumerate(jobs):
                if getattr(fn, "projection", None):  # e.g. a 3-D surface: the same grid cell, that projection
                    cell = axes[i].get_subplotspec()
                    axes[i].remove()
                    axes[i] = fig.add_subplot(cell, projection=fn.projection)
            seeded = any(len(group) > 1 for group in by_label.values())
            for ax, (fn, panel_runs, options, title, panel_colors) in zip(axes, jobs):
                fn(ax, panel_runs, colors=panel_colors or colors, **options)
                if title and seeded and "run" in inspect.signature(fn).parameters:
                    title = f"{title} (seed {_seed_of(panel_runs[0])})"
                if title:
                    ax.set_title(title)
            for ax in axes[len(jobs) :]:
                ax.set_axis_off()
            if figure.get("title"):
                fig.suptitle(str(figure["title"]))
            if note:
                fig.supxlabel(textwrap.fill(note, 40 * columns), fontsize=7, color="firebrick")
            return _save_atomically(fig, _output_base(out_base), dpi)
        finally:
            fig.clear()


def _expand_sweeps(wanted: list[str], labels: list[str]) -> list[str]:
    """Panel run names with each sweep group (not itself a label) replaced by its runs "<group> @ lr=..."."""
    from smoothnorm.runs.schema import SWEEP_SEPARATOR

    out = []
    for name in wanted:
        members = [] if name in labels else [label for label in labels if label.startswith(name + SWEEP_SEPARATOR)]
        out.extend(members or [name])
    return out


def draw_spec(spec, root: str | os.PathLike, out_dir: str | os.PathLike, variant: str = "") -> list[Path]:
    """Draw a spec's figure (a smoothnorm.runs.spec.Spec) from its runs in `root` into out_dir/<name>.png, .pdf
    (<name>.<variant>.png, .pdf for a variant). When the runs come from different commits or a modified tree, a
    note under the figure says so (smoothnorm.runs.provenance). The spec's plug-in panels are imported first (each
    file said on stderr)."""
    extra = load_all("panel", spec.plugins.get("panel", {}))
    runs: list[RunResult] = []
    for run in spec.runs:
        path = Path(root) / run.run_id
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{spec.name}: run {run.label!r} has no results at {path}; run the spec first")
        runs.append(load_run(path, label=run.label))
    figure = dict(spec.figure)
    figure.setdefault("title", spec.title)
    # The sweep panel draws the spec's recorded criterion of "trains" unless the panel sets its own.
    figure["panels"] = [dict(p, **{k: v for k, v in spec.sweep.items() if k not in p})
                        if isinstance(p, Mapping) and p.get("kind") == "lr_sweep" else p
                        for p in figure.get("panels", [])]
    note = mixed_note([run_provenance(r.path) for r in runs])
    return draw_figure(figure, runs, Path(out_dir) / (f"{spec.name}.{variant}" if variant else spec.name), note=note,
                       panels_extra=extra)
