"""Fuzzing the run-folder readers: damaged config.json, status.json, metrics.jsonl, probes.npz and checkpoints end
in RunFileError naming the file (or, for a torn last metrics line, in the rows before it), never in a traceback
from inside json/zipfile/NumPy and never in silently wrong data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from smoothnorm.runs.store import (
    CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    RunFileError,
    jsonl_line,
    load_run,
    read_checkpoint,
    read_jsonl,
    write_checkpoint,
    write_json,
    write_npz,
)

from .conftest import budget, count, fuzz_settings

ROWS = [{"step": i, "loss": 2.0 / (i + 1), "train_acc": 0.1 * (i % 10), "time": 0.01 * i} for i in range(8)]
ROWS[3]["test_acc"] = 0.25
ROWS[5]["loss"] = float("inf")
CONFIG = {"run_id": "dln3-none-lr0.1-s0-abc", "run": {"label": "plain", "lr": 0.1}, "identity": {"lr": 0.1},
          "probes": []}
STATUS = {"status": "finished", "step": 8, "steps": 8, "probe_meta": {"landscape": {"kind": "LandscapeProbe"}}}
PROBES = {"landscape/steps": np.arange(3), "landscape/losses": np.linspace(0, 1, 12).reshape(3, 4)}

_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=5)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _json_like(template: dict):
    """Dicts that share keys with `template` but hold arbitrary values and extra keys (another version's file)."""
    return st.one_of(
        _JSON,
        st.fixed_dictionaries({}, optional={k: _JSON for k in template}).map(lambda d: {**template, **d}),
        st.dictionaries(st.sampled_from([*template, "format", "version", "x"]), _JSON, max_size=5),
    )


def _write_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "config.json", CONFIG)
    write_json(path / "status.json", STATUS)
    (path / "metrics.jsonl").write_text("".join(jsonl_line(r) for r in ROWS))
    write_npz(path / "probes.npz", PROBES)


def _load_or_named_error(path, name: str):
    try:
        return load_run(path)
    except RunFileError as exc:
        assert exc.path.name == name and name in str(exc), exc
        return exc


def _check_loaded(result) -> None:
    """Whatever load_run returns has the types its users rely on."""
    assert isinstance(result.run_id, str) and isinstance(result.label, str) and isinstance(result.status, str)
    assert isinstance(result.probe_meta, dict) and all(isinstance(v, dict) for v in result.probe_meta.values())
    assert result.metrics["step"].dtype == np.int64


@budget
def test_garbage_config_and_status(tmp_path, budget):
    path = tmp_path / "run"
    _write_folder(path)

    @fuzz_settings(60, budget)
    @given(name=st.sampled_from(["config.json", "status.json"]), data=st.data(),
           raw=st.one_of(st.none(), st.binary(max_size=40)))
    def prop(name, data, raw):
        count("run folder config/status")
        template = CONFIG if name == "config.json" else STATUS
        if raw is None:
            (path / name).write_text(json.dumps(data.draw(_json_like(template))))
        else:
            (path / name).write_bytes(raw)
        result = _load_or_named_error(path, name)
        if not isinstance(result, RunFileError):
            _check_loaded(result)
        _write_folder(path)

    prop()


@budget
def test_torn_or_corrupt_metrics(tmp_path, budget):
    path = tmp_path / "run"
    _write_folder(path)
    content = "".join(jsonl_line(r) for r in ROWS).encode()
    ends = np.cumsum([len(jsonl_line(r).encode()) for r in ROWS])

    junk = st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b)

    @fuzz_settings(60, budget)
    @given(cut=st.integers(0, len(content)),
           garbage=st.one_of(st.none(), st.tuples(st.integers(0, len(ROWS) - 1), junk)))
    def prop(cut, garbage):
        count("run folder metrics.jsonl")
        if garbage is None:
            # A crash mid-append: the rows wholly written survive, the torn one is dropped.
            (path / "metrics.jsonl").write_bytes(content[:cut])
            rows = read_jsonl(path / "metrics.jsonl")
            whole = int(np.searchsorted(ends, cut, side="right"))
            complete = whole + (cut > 0 and whole < len(ROWS) and cut == ends[whole] - 1)  # only "\n" missing
            assert [r["step"] for r in rows] == [r["step"] for r in ROWS[:complete]]
            return
        line, junk = garbage
        lines = content.split(b"\n")
        lines.insert(line, junk)
        (path / "metrics.jsonl").write_bytes(b"\n".join(lines))
        try:
            rows = read_jsonl(path / "metrics.jsonl")
        except RunFileError as exc:
            assert exc.path.name == "metrics.jsonl" and f"line {line + 1}" in str(exc)
            return
        # Readable junk is only a blank line or a row that is itself a valid metrics row.
        assert len(rows) in (len(ROWS), len(ROWS) + 1) and all(isinstance(r["step"], int) for r in rows)

    prop()


def _damage(content: bytes, cut, flips) -> bytes:
    damaged = bytearray(content if cut is None else content[:cut])
    for position, mask in flips:
        if position < len(damaged):
            damaged[position] ^= mask
    return bytes(damaged)


_DAMAGE = dict(
    cut=st.one_of(st.none(), st.integers(0, 4000)),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 255)), max_size=3),
)


@budget
def test_damaged_probes_npz(tmp_path, budget):
    path = tmp_path / "run"
    _write_folder(path)
    content = (path / "probes.npz").read_bytes()

    @fuzz_settings(60, budget)
    @given(**_DAMAGE)
    def prop(cut, flips):
        count("run folder probes.npz")
        damaged = _damage(content, cut, flips)
        assume(damaged != content)
        (path / "probes.npz").write_bytes(damaged)
        result = _load_or_named_error(path, "probes.npz")
        if not isinstance(result, RunFileError):
            # zip CRCs guard the array bytes; what reads must be the original arrays.
            assert result.probes.keys() == PROBES.keys()
            for key, value in PROBES.items():
                np.testing.assert_array_equal(result.probes[key], value)

    prop()


def _state(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {"net/layers.0.weight": rng.standard_normal((4, 3)), "optim/momentum": rng.standard_normal(12),
            "meta_json": np.array(json.dumps({"step": step}))}


@budget
def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, budget):
    folder = tmp_path / "run"
    folder.mkdir()
    write_checkpoint(folder, _state(10))
    write_checkpoint(folder, _state(20))
    newest = (folder / CHECKPOINT).read_bytes()
    previous = (folder / PREVIOUS_CHECKPOINT).read_bytes()

    @fuzz_settings(60, budget)
    @given(**_DAMAGE, both=st.booleans())
    def prop(cut, flips, both):
        count("run folder checkpoints")
        damaged = _damage(newest, cut, flips)
        assume(damaged != newest)
        (folder / CHECKPOINT).write_bytes(damaged)
        (folder / PREVIOUS_CHECKPOINT).write_bytes(_damage(previous, 100, []) if both else previous)
        try:
            arrays, used = read_checkpoint(folder)
        except RunFileError as exc:
            assert both and CHECKPOINT in str(exc) and PREVIOUS_CHECKPOINT in str(exc) and "Delete" in str(exc)
            return
        expected = _state(20) if used.name == CHECKPOINT else _state(10)
        assert used.name == CHECKPOINT or not both
        assert arrays.keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_array_equal(arrays[key], value)

    prop()


def test_checkpoint_rotation_keeps_the_previous_one(tmp_path):
    write_checkpoint(tmp_path, _state(1))
    assert not (tmp_path / PREVIOUS_CHECKPOINT).exists()
    write_checkpoint(tmp_path, _state(2))
    write_checkpoint(tmp_path, _state(3))
    assert read_checkpoint(tmp_path)[0]["meta_json"] == _state(3)["meta_json"]
    (tmp_path / CHECKPOINT).unlink()  # as if killed between the two renames
    arrays, used = read_checkpoint(tmp_path)
    assert used.name == PREVIOUS_CHECKPOINT and arrays["meta_json"] == _state(2)["meta_json"]
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing")
