"""Run directories on disk: atomic writers and `load_run`, the one reader that figures and users share.

A run directory holds
- `config.json`: the fully resolved run config, the probes it records, seed, package versions, git commit;
- `status.json`: {"status": "running" | "finished" | "diverged", "step": int, ...};
- `metrics.jsonl`: one JSON object per step ({"step", "loss", "train_acc", "test_acc", ...});
- `probes.npz`: arrays "{probe}/steps" and "{probe}/{key}" (rows stacked over probe steps);
- `checkpoint.npz`: the trainer's full state (see smoothnorm.train.Trainer.state_dict).
Every file is written to a temporary name and renamed, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smoothnorm.data._io import atomic_open


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def jsonl_line(row: dict) -> str:
    """One JSON-lines record (NaN as null, Inf as "inf"), newline included."""
    return json.dumps(_jsonable(row)) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically (NaN as null, Inf as "inf")."""
    with atomic_open(path, "w") as f:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez to a temporary file, then rename."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite a JSON-lines file atomically (used on resume to drop rows past the checkpoint)."""
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(jsonl_line(row))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (from a crash mid-append) is dropped."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def metrics_columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Columns of metric rows as float arrays, NaN where a row lacks the key ("step" is int64)."""
    keys: list[str] = []
    for row in rows:
        for k in row:
            if k not in keys:
                keys.append(k)
    cols = {}
    for k in keys:
        values = [row.get(k) for row in rows]
        if k == "step":
            cols[k] = np.asarray(values, dtype=np.int64)
            continue
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):
            if isinstance(v, bool):
                out[i] = float(v)
            elif isinstance(v, (int, float)):
                out[i] = v
            elif v in ("inf", "-inf"):
                out[i] = float(v)
        cols[k] = out
    return cols


@dataclass
class RunResult:
    """A run as stored: config, status, metric columns, probe arrays and probe metadata."""

    path: Path
    run_id: str
    label: str
    config: dict
    status: str
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    probes: dict[str, np.ndarray] = field(default_factory=dict)
    probe_meta: dict[str, dict] = field(default_factory=dict)

    def probe(self, name: str, key: str) -> np.ndarray:
        """Array "{name}/{key}" (KeyError naming what exists when absent)."""
        full = f"{name}/{key}"
        if full not in self.probes:
            have = sorted({k.split("/")[0] for k in self.probes})
            raise KeyError(f"run {self.run_id}: no probe array {full!r}; probes recorded: {have}")
        return self.probes[full]


def load_run(path: str | os.PathLike, label: str | None = None) -> RunResult:
    """Read a run directory written by the experiment runner."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a run directory (no config.json)")
    config = read_json(path / "config.json")
    status = read_json(path / "status.json") if (path / "status.json").exists() else {"status": "unknown"}
    metrics = metrics_columns(read_jsonl(path / "metrics.jsonl"))
    probes = read_npz(path / "probes.npz") if (path / "probes.npz").exists() else {}
    return RunResult(
        path=path,
        run_id=config.get("run_id", path.name),
        label=label or config.get("run", {}).get("label", path.name),
        config=config,
        status=status.get("status", "unknown"),
        metrics=metrics,
        probes=probes,
        probe_meta=status.get("probe_meta", config.get("probe_meta", {})),
    )
