"""Stored runs as tables (smoothnorm.runs_frame, probes_frame, `smoothnorm export`): the same numbers as load_run,
every run kept with its status, column types that do not depend on which runs are present."""

from __future__ import annotations

import json

import numpy as np
import pytest

import smoothnorm
from smoothnorm.cli import main
from smoothnorm.runs import runner
from smoothnorm.runs import spec as spec_module
from smoothnorm.runs.frames import METRICS, SETTING_COLUMNS, probes_frame, runs_frame
from smoothnorm.runs.store import load_run
from tests.helpers import ROOT, _Crash, _interrupt_at

pandas = pytest.importorskip("pandas")
SPEC = ROOT / "experiments" / "fig10_dln_landscape.toml"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Fig 10's tiny DLN runs on 2 seeds, finished; one more run stopped at step 3; one that diverged; in the tiny
    profile's folder of a runs root (root/tiny)."""
    root = tmp_path_factory.mktemp("runs") / "tiny"
    for run in spec_module.load_spec(SPEC, "tiny", seeds=2).runs:
        runner.execute_run(run, root)
    unfinished = spec_module.load_spec(SPEC, "tiny", ["steps=6", "checkpoint_every=1"]).runs[1]
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_at(mp, 3)
        with pytest.raises(_Crash):
            runner.execute_run(unfinished, root)
    runner.execute_run(spec_module.load_spec(SPEC, "tiny", ["lr=10"]).runs[0], root)
    return root


def _assert_the_frame_is_load_run(root) -> dict[str, int]:
    """runs_frame(root) holds every run folder of `root` with load_run's status, metrics and settings; returns the
    count of runs per status."""
    frame = runs_frame(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    assert sorted(frame["run_id"].unique()) == [p.name for p in folders]
    statuses = {}
    by_run = dict(tuple(frame.groupby("run_id", sort=False)))  # one pass, not a scan of the frame per run
    for path in folders:
        run = load_run(path)
        rows = by_run[path.name]
        statuses[run.status] = statuses.get(run.status, 0) + 1
        assert (rows["status"] == run.status).all()
        np.testing.assert_array_equal(rows["step"].to_numpy(dtype=np.int64), run.metrics["step"])
        for key, values in run.metrics.items():
            if key != "step":
                np.testing.assert_array_equal(rows[key].to_numpy(dtype=np.float64), values, err_msg=key)
        settings = run.config["run"]
        for key, column in SETTING_COLUMNS.items():
            want = json.dumps(settings[key], sort_keys=True) if isinstance(settings[key], dict) else settings[key]
            assert rows[column].iloc[0] == want, column
    return statuses


def test_every_metric_of_every_run_as_load_run_reads_it(root):
    statuses = _assert_the_frame_is_load_run(root)
    assert statuses.get("finished") == 4 and statuses.get("diverged") == 1 and len(statuses) == 3


def test_the_published_quick_runs_as_tables():
    """The committed run data of the published quick profile (results/quick), when the repository has it."""
    published = ROOT / "results" / "quick"
    if not published.is_dir():
        pytest.skip("no published run data in results/quick")
    statuses = _assert_the_frame_is_load_run(published)
    assert sum(statuses.values()) >= 27


def test_column_types_do_not_depend_on_which_runs_are_present(root, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    path = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (one / path.name).symlink_to(path)
    full, part, empty = runs_frame(root), runs_frame(one), runs_frame(tmp_path / "nothing")
    assert list(full.columns) == list(part.columns) == list(empty.columns)
    assert full.dtypes.to_dict() == part.dtypes.to_dict() == empty.dtypes.to_dict()
    assert set(METRICS) <= set(full.columns)
    assert probes_frame(root).dtypes.to_dict() == probes_frame(one).dtypes.to_dict() == \
        probes_frame(tmp_path / "nothing").dtypes.to_dict()


def test_a_spec_names_its_runs_and_shows_the_missing_ones(root):
    frame = runs_frame(root, spec=SPEC, profile=None)  # the quick profile's runs: none of them stored here
    assert set(frame["status"]) == {"missing"} and set(frame["spec"]) == {"fig10_dln_landscape"}
    assert set(frame["label"]) == {"Standard", "Standard + BatchNorm"} and frame["step"].isna().all()
    with pytest.raises(ValueError, match="no spec named 'fig99'"):
        runs_frame(root, spec="fig99")


def test_probe_values_in_long_form(root):
    frame = probes_frame(root)
    path = sorted(p for p in root.iterdir() if p.is_dir())[0]
    run = load_run(path)
    rows = frame[(frame["run_id"] == path.name) & (frame["quantity"] == "losses")]
    losses, steps = run.probes["landscape/losses"], run.probes["landscape/steps"]
    etas = run.probe_meta["landscape"]["etas"]
    assert len(rows) == losses.size
    for (i, j), value in np.ndenumerate(losses):
        row = rows[(rows["step"] == steps[i]) & (rows["index"] == j)]
        assert row["eta"].iloc[0] == etas[j] and row["value"].iloc[0] == value
    beta = frame[(frame["run_id"] == path.name) & (frame["quantity"] == "effective_beta")]
    np.testing.assert_array_equal(beta["value"].to_numpy(), run.probes["landscape/effective_beta"])
    assert beta["index"].isna().all() and beta["layer"].isna().all()


def test_top_level_names():
    assert smoothnorm.runs_frame is runs_frame and smoothnorm.probes_frame is probes_frame


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_writes_the_same_tables(root, tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / "out"
    assert main(["export", "--profile", "tiny", "--runs", str(root.parent), "--format", fmt, "--out", str(out)]) == 0
    read = pandas.read_csv if fmt == "csv" else pandas.read_parquet
    for name, frame in (("runs", runs_frame(root)), ("probes", probes_frame(root))):
        back = read(out / f"{name}.{fmt}")
        assert list(back.columns) == list(frame.columns)
        for column in ("loss", "time") if name == "runs" else ("value",):
            np.testing.assert_array_equal(back[column].to_numpy(dtype=np.float64),
                                          frame[column].to_numpy(dtype=np.float64))
    assert sorted(p.name for p in out.iterdir()) == [f"probes.{fmt}", f"runs.{fmt}"]
