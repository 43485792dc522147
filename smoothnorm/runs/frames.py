"""Stored runs as tables: every metrics row of every run (`runs_frame`) and every scalar probe value in long form
(`probes_frame`), as pandas DataFrames, for analyses the shipped figures do not make.

pandas (the optional extra `.[analysis]`) because it is what researchers already query in notebooks (group-by,
pivot, plotting) and it writes CSV and Parquet for R, Excel or DuckDB; Arrow alone stores tables but has no such
analysis interface. Column types are fixed (they do not depend on which runs are present): settings take their
schema type (strings, nullable integers, floats, booleans; option tables as JSON text), metrics are float64 and
steps nullable integers. A run that is unfinished or diverged appears with its status; a run a spec names that
has no folder yet appears as one row with status "missing".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from smoothnorm.runs.schema import BASE_KEYS
from smoothnorm.runs.store import load_run

# Metrics every table has (float64; "diverged" 1.0 on the step that diverged), whichever runs recorded them: what
# the training loop and the evaluation write. A metric outside this list (a plug-in's) is added after them.
METRICS = ("loss", "lr", "train_acc", "test_loss", "test_acc", "test_loss_batch_stats", "test_acc_batch_stats",
           "test_loss_population", "test_acc_population", "diverged", "time")
# Settings whose names are also metrics take another column name: the loss function, and the learning rate the
# run was configured with (the metric `lr` is the one used at each step).
SETTING_COLUMNS = {key: {"loss": "loss_function", "lr": "base_lr"}.get(key, key) for key in BASE_KEYS}
_DTYPES = {str: "string", int: "Int64", float: "float64", bool: "boolean", dict: "string"}


def _pandas():
    try:
        import pandas
    except ImportError as err:
        raise ImportError("runs_frame / probes_frame / `smoothnorm export` need pandas: "
                          "pip install 'smoothnorm[analysis]'") from err
    return pandas


def _runs(root: str | os.PathLike, spec, profile: str | None, specs_folder) -> list[tuple[Path, dict]]:
    """(run folder, run columns) for every run: those of `spec` (a name, path or loaded Spec) at `profile`, or
    every run folder under root[/profile]."""
    base = Path(root) / profile if profile else Path(root)
    if spec is None:
        folders = sorted(p for p in base.iterdir() if (p / "config.json").exists()) if base.is_dir() else []
        return [(p, {"spec": None}) for p in folders]
    from smoothnorm.runs.spec import SPEC_GROUPS, Spec, list_specs, load_spec

    if not isinstance(spec, Spec):
        path = Path(spec)
        if not path.suffix:
            named = {p.stem: p for p in list_specs(specs_folder, tuple(SPEC_GROUPS))}
            if str(spec) not in named:
                raise ValueError(f"spec: no spec named {str(spec)!r}; specs: {sorted(named)}")
            path = named[str(spec)]
        spec = load_spec(path, profile or "quick")
    return [(base / run.run_id, {"spec": spec.name, "label": run.label}) for run in spec.runs]


def _run_columns(path: Path, known: dict) -> tuple[dict[str, Any], Any]:
    """(the columns that describe a run: id, label, spec, seed, status and every setting; the loaded run, or None
    for a run without a folder)."""
    if not (path / "config.json").exists():
        return {"run_id": path.name, "label": known.get("label"), "spec": known.get("spec"), "status": "missing"}, None
    run = load_run(path, label=known.get("label"))
    settings = run.config.get("run", {})
    row = {"run_id": run.run_id, "label": run.label, "spec": known.get("spec"), "status": run.status}
    for key, column in SETTING_COLUMNS.items():
        value = settings.get(key)
        row[column] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
    return row, run


def _typed(frame, extra_float: list[str]):
    """The frame with its columns in a fixed order and of fixed types."""
    pandas = _pandas()
    types = {"run_id": "string", "label": "string", "spec": "string", "status": "string"}
    types.update({SETTING_COLUMNS[key]: _DTYPES[kind] for key, (kind, _, _) in BASE_KEYS.items()})
    for name, dtype in types.items():
        if name not in frame:
            frame[name] = pandas.Series(np.nan if dtype == "float64" else pandas.NA, index=frame.index, dtype=dtype)
        else:
            frame[name] = frame[name].astype(dtype)
    for name in extra_float:
        frame[name] = frame[name].astype("float64") if name in frame else np.nan
    return frame


def runs_frame(root: str | os.PathLike = "runs", spec=None, profile: str | None = None, *, specs_folder=None):
    """One row per metrics row of every run (per logged step), with the run's id, label, spec, seed, status and
    settings as columns (the settings `loss` and `lr` as loss_function and base_lr; metrics keep load_run's
    names). root: the runs folder (`--runs`); profile: its subfolder and, with `spec`, the profile the spec is
    resolved at (default quick); spec: a spec name, path or Spec to restrict to (and name) its runs."""
    pandas = _pandas()
    rows = []
    for path, known in _runs(root, spec, profile, specs_folder):
        run_row, run = _run_columns(path, known)
        if run is None:
            rows.append(dict(run_row, step=None))
            continue
        metrics = run.metrics
        steps = metrics.get("step", np.zeros(0))
        for i in range(len(steps)):
            rows.append(dict(run_row, step=int(steps[i]), **{k: float(v[i]) for k, v in metrics.items()
                                                             if k != "step"}))
    frame = pandas.DataFrame(rows)
    extras = sorted({k for r in rows for k in r} - set(METRICS) - {"step"} - set(_run_columns_names()))
    frame = _typed(frame, [*METRICS, *extras])
    frame["step"] = frame["step"].astype("Int64") if "step" in frame else pandas.Series(dtype="Int64")
    return frame[[*_run_columns_names(), "step", *METRICS, *extras]].reset_index(drop=True)


def _run_columns_names() -> list[str]:
    return ["run_id", "label", "spec", "status", *SETTING_COLUMNS.values()]


def probes_frame(root: str | os.PathLike = "runs", spec=None, profile: str | None = None, *, specs_folder=None):
    """Every scalar probe value in long form: one row per (run, probe, quantity, step, and layer or step size where
    the probe records one value per layer or per step size), with the run's columns as in runs_frame. Columns:
    probe, quantity, step, layer (the probe's layer name), eta (the step size), index (the position along the
    probe's second axis), value. Arrays with more than one value per step and position (histograms) are left out."""
    pandas = _pandas()
    rows = []
    for path, known in _runs(root, spec, profile, specs_folder):
        run_row, run = _run_columns(path, known)
        if run is None:
            continue
        for name in sorted({key.split("/", 1)[0] for key in run.probes}):
            steps = run.probes.get(f"{name}/steps")
            meta = run.probe_meta.get(name, {})
            for key in sorted(k for k in run.probes if k.startswith(f"{name}/") and k != f"{name}/steps"):
                values = run.probes[key]
                if steps is None or values.ndim not in (1, 2) or values.shape[0] != len(steps):
                    continue
                quantity = key.split("/", 1)[1]
                columns = values.reshape(len(steps), -1)
                layers, etas = meta.get("layers"), meta.get("etas")
                for j in range(columns.shape[1]):
                    position = {"layer": None, "eta": np.nan, "index": None}
                    if values.ndim == 2:
                        position["index"] = j
                        if layers is not None and len(layers) == columns.shape[1]:
                            position["layer"] = str(layers[j])
                        elif etas is not None and len(etas) == columns.shape[1]:
                            position["eta"] = float(etas[j])
                    for i, step in enumerate(steps):
                        rows.append(dict(run_row, probe=name, quantity=quantity, step=int(step), **position,
                                         value=float(columns[i, j])))
    frame = _typed(pandas.DataFrame(rows), ["eta", "value"])
    for name, dtype in (("probe", "string"), ("quantity", "string"), ("layer", "string"), ("step", "Int64"),
                        ("index", "Int64")):
        frame[name] = frame[name].astype(dtype) if name in frame else pandas.Series(dtype=dtype)
    return frame[[*_run_columns_names(), "probe", "quantity", "step", "layer", "eta", "index", "value"]]


def export(out_dir: str | os.PathLike, root: str | os.PathLike = "runs", spec=None, profile: str | None = None,
           fmt: str = "csv", *, specs_folder=None) -> list[Path]:
    """Write runs.<fmt> and probes.<fmt> (csv or parquet) of runs_frame and probes_frame into out_dir, atomically."""
    from smoothnorm.data._io import atomic_open

    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format: expected 'csv' or 'parquet', got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in (("runs", runs_frame(root, spec, profile, specs_folder=specs_folder)),
                        ("probes", probes_frame(root, spec, profile, specs_folder=specs_folder))):
        path = out / f"{name}.{fmt}"
        with atomic_open(path, "w" if fmt == "csv" else "wb") as f:
            if fmt == "csv":
                frame.to_csv(f, index=False)
            else:
                frame.to_parquet(f, index=False)
        paths.append(path)
    return paths
