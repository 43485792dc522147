"""Run directories on disk: atomic writers and `load_run`, the one reader that figures and users share.

A run directory holds
- `config.json`: the fully resolved run config, the probes it records, seed, package versions, git commit;
- `status.json`: {"status": "running" | "finished" | "diverged", "step": int, ...};
- `metrics.jsonl`: one JSON object per step ({"step", "loss", "train_acc", "test_acc", ...});
- `probes.npz`: arrays "{probe}/steps" and "{probe}/{key}" (rows stacked over probe steps);
- `checkpoint.npz`: the trainer's full state (see smoothnorm.train.Trainer.state_dict), and
  `checkpoint.prev.npz`: the one before it, kept until the new one is complete (`write_checkpoint`).
Every file is written to a temporary name and renamed, so a crash never leaves a half-written file. Every reader
here checks what it reads and raises RunFileError (a ValueError naming the file and what to do) for a damaged
file or one this version does not understand; it never returns silently wrong data.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smoothnorm.data._io import atomic_open

CHECKPOINT = "checkpoint.npz"
PREVIOUS_CHECKPOINT = "checkpoint.prev.npz"


class RunFileError(ValueError):
    """A file in a run folder is damaged or not in this version's format; `path` names it, the message says what
    was expected and what to do."""

    def __init__(self, path: str | os.PathLike, problem: str, advice: str = ""):
        self.path = Path(path)
        message = f"{os.fspath(path)}: {problem}"
        if advice:
            message += f". {advice}"
        super().__init__(message)


_RERUN = "Delete the run folder and run the spec again to recompute it"
_DATA_ERRORS = (OSError, EOFError, ValueError, UnicodeDecodeError, zipfile.BadZipFile, zlib.error)


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


def read_json(path: str | os.PathLike, advice: str = _RERUN) -> Any:
    """Parse a JSON file (strict UTF-8); RunFileError naming it if it is not valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RunFileError(path, f"not valid JSON ({exc})", advice) from exc


_MANIFEST = "__manifest__"


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez to a temporary file, then rename; a manifest entry lists every array's name, dtype and shape.

    Zip CRCs guard each array's bytes, but damage to the zip directory can drop or rename an entry and still read;
    `read_npz` checks the manifest so that such a file is refused instead of read with an array missing.
    """
    if _MANIFEST in arrays:
        raise ValueError(f"arrays: the name {_MANIFEST!r} is reserved")
    with atomic_open(path, "wb") as f:
        _write_npz_to(f, arrays)


def _write_npz_to(f, arrays: dict[str, np.ndarray]) -> None:
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    manifest = json.dumps({k: [v.dtype.str, list(v.shape)] for k, v in arrays.items()})
    np.savez(f, **arrays, **{_MANIFEST: np.array(manifest)})


def read_npz(path: str | os.PathLike, advice: str = _RERUN) -> dict[str, np.ndarray]:
    """All arrays of an .npz file written by `write_npz`, read, CRC-checked and compared with its manifest now
    (files from before manifests are read without that comparison).

    Raises FileNotFoundError if absent, RunFileError naming the file if it is damaged.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    # zipfile reports some damage as RuntimeError (a flipped "encrypted" flag) or NotImplementedError (a flipped
    # compression method); a damaged .npy header can ask for an impossible allocation.
    except (*_DATA_ERRORS, KeyError, NotImplementedError, RuntimeError, MemoryError) as exc:
        raise RunFileError(path, f"not a readable .npz file (truncated or corrupt: {exc})", advice) from exc
    manifest = arrays.pop(_MANIFEST, None)
    if manifest is None:
        # Written before manifests existed (smoothnorm before 2026-12): each array is still CRC-checked by the zip
        # reader above; only a dropped entry would go unnoticed. Refusing them would strand every older run folder.
        return arrays
    try:
        listed = json.loads(str(manifest))
        listed = {k: (np.dtype(v[0]).str, tuple(v[1])) for k, v in listed.items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        raise RunFileError(path, f"unreadable {_MANIFEST!r} entry ({exc})", advice) from exc
    found = {k: (v.dtype.str, v.shape) for k, v in arrays.items()}
    if found != listed:
        differ = sorted(set(found) ^ set(listed)) or sorted(k for k in found if found[k] != listed[k])
        raise RunFileError(path, f"arrays differ from its manifest (damaged zip directory?): {differ[:5]}", advice)
    return arrays


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite a JSON-lines file atomically (used on resume to drop rows past the checkpoint)."""
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(jsonl_line(row))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Metric rows of a JSON-lines file, each an object with an integer "step"; none if the file is absent.

    A torn last line (a crash mid-append: no final newline) is dropped. Any other unreadable line, or a row that
    is not an object with an integer "step", raises RunFileError naming the file and line.
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        content = f.read()
    lines = content.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline, else the line a crash cut short
    rows = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        rows.append(_metrics_row(path, number, raw))
    if torn.strip():
        try:
            rows.append(_metrics_row(path, len(lines) + 1, torn))
        except RunFileError:
            pass  # torn by a crash: the row is recomputed on resume
    return rows


def _metrics_row(path, number: int, raw: bytes) -> dict:
    try:
        row = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RunFileError(path, f"line {number} is not valid JSON ({exc})", _RERUN) from exc
    if not isinstance(row, dict):
        raise RunFileError(path, f"line {number}: expected a JSON object, found {type(row).__name__}", _RERUN)
    step = row.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise RunFileError(path, f"line {number}: expected a non-negative integer 'step', found {step!r}", _RERUN)
    return row


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


def _field(path: Path, table: dict, key: str, kind: type, default: Any, what: str) -> Any:
    """table[key] (or `default`), checked to be a `kind` (never a bool)."""
    value = table.get(key, default)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RunFileError(path, f"key {key!r} should be {what}, found {type(value).__name__} {value!r:.80}", _RERUN)
    return value


def read_config(path: str | os.PathLike) -> dict:
    """A run's config.json: a JSON object whose 'run_id' (if any) is a string and 'run' (if any) an object."""
    path = Path(path)
    config = read_json(path)
    if not isinstance(config, dict):
        raise RunFileError(path, f"expected a JSON object, found {type(config).__name__}", _RERUN)
    _field(path, config, "run_id", str, "", "a string")
    _field(path, config, "run", dict, {}, "an object")
    _field(path, config, "probe_meta", dict, {}, "an object")
    return config


def read_status(path: str | os.PathLike) -> dict:
    """A run's status.json: {"status": str, "step": int, "probe_meta": {...}, ...}."""
    path = Path(path)
    advice = f"Delete {path.name} and run the spec again: the run resumes from its checkpoint"
    status = read_json(path, advice)
    if not isinstance(status, dict):
        raise RunFileError(path, f"expected a JSON object, found {type(status).__name__}", advice)
    for key, kind, what in (("status", str, "a string"), ("step", int, "an integer"),
                            ("probe_meta", dict, "an object")):
        if key in status:
            _field(path, status, key, kind, None, what)
    if not all(isinstance(v, dict) for v in status.get("probe_meta", {}).values()):
        raise RunFileError(path, "key 'probe_meta' should map probe names to objects", advice)
    return status


def load_run(path: str | os.PathLike, label: str | None = None) -> RunResult:
    """Read a run directory written by the experiment runner (RunFileError naming any damaged file)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a run directory (no config.json)")
    config = read_config(path / "config.json")
    status = read_status(path / "status.json") if (path / "status.json").exists() else {"status": "unknown"}
    metrics = metrics_columns(read_jsonl(path / "metrics.jsonl"))
    probes = read_npz(path / "probes.npz") if (path / "probes.npz").exists() else {}
    for key, value in probes.items():
        if value.dtype.kind not in "biuf":
            raise RunFileError(path / "probes.npz", f"array {key!r} should be numeric, found {value.dtype}", _RERUN)
    run_label = _field(path / "config.json", config["run"] if "run" in config else {}, "label", str, path.name,
                       "a string")
    return RunResult(
        path=path,
        run_id=config.get("run_id", path.name),
        label=label or run_label,
        config=config,
        status=status.get("status", "unknown"),
        metrics=metrics,
        probes=probes,
        probe_meta=status.get("probe_meta", config.get("probe_meta", {})),
    )


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: the newest and the one before it
# ----------------------------------------------------------------------------------------------------------------
def write_checkpoint(folder: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write `folder/checkpoint.npz`, keeping the previous one as `checkpoint.prev.npz` until the new one is complete.

    Order: the new file is written and fsynced under a temporary name; then the current checkpoint becomes the
    previous one; then the new file takes its place. A crash at any moment leaves at least one complete checkpoint
    (`read_checkpoint` looks at both), and the previous one survives a newest one damaged later on disk.
    """
    folder = Path(folder)
    current, previous = folder / CHECKPOINT, folder / PREVIOUS_CHECKPOINT
    with atomic_open(current, "wb", before_replace=lambda: _rotate(current, previous)) as f:
        _write_npz_to(f, arrays)


def _rotate(current: Path, previous: Path) -> None:
    if current.exists():
        os.replace(current, previous)


def read_checkpoint(folder: str | os.PathLike, check: Any = None) -> tuple[dict[str, np.ndarray], Path]:
    """The newest intact checkpoint of a run folder: (arrays, file read).

    Tries `checkpoint.npz`, then `checkpoint.prev.npz`. `check(arrays)` may raise ValueError to reject a file that
    reads but does not fit (wrong keys or shapes). Raises FileNotFoundError if neither exists, RunFileError naming
    both files and what to do if none is intact.
    """
    folder = Path(folder)
    problems = []
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = folder / name
        if not path.exists():
            continue
        try:
            arrays = read_npz(path)
            if check is not None:
                check(arrays)
            return arrays, path
        except RunFileError as exc:
            problems.append(str(exc))
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
    if not problems:
        raise FileNotFoundError(f"{folder}: no {CHECKPOINT}")
    raise RunFileError(
        folder / CHECKPOINT,
        "no intact checkpoint to resume from (" + "; ".join(problems) + ")",
        f"Delete {folder} (or its checkpoint files) and run the spec again to restart this run from step 0",
    )
