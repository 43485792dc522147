"""Provenance of published results: claims.json, CLAIMS.md and figures say which code, threads and machine made
the runs, warn when they are mixed, and results that differ from the published ones never take their names."""

from __future__ import annotations

import json
import shutil

import pytest

from smoothnorm.cli import main
from smoothnorm.runs.provenance import mixed_note, run_provenance
from smoothnorm.runs.store import read_config, write_json
from tests.helpers import ROOT

SPEC = "fig10"  # the DLN landscape: two runs, three claims, a fraction of a second per run at the tiny profile
PUBLISHED = ["--profile", "tiny", "--seeds", "2", "--specs", str(ROOT / "experiments")]


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A working folder with a published tiny-profile Fig 10 on 2 seeds: runs in ./runs, figures in ./figures."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SMOOTHNORM_RUNS", raising=False)
    assert main(["run", SPEC, *PUBLISHED]) == 0
    return tmp_path


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _remove_claims(folder):
    for name in ("CLAIMS.md", "claims.json"):
        (folder / name).unlink()


def test_claims_carry_the_provenance_of_every_run(published):
    records = json.loads((published / "figures" / "claims.json").read_text())
    assert records and all(len(r["provenance"]) == 4 for r in records)  # 2 runs x 2 seeds
    first = records[0]["provenance"][0]
    assert set(first) == {"run", "smoothnorm", "commits", "dirty", "threads", "cpu", "isa"}
    assert first["smoothnorm"] and first["threads"] and first["cpu"]
    md = (published / "figures" / "CLAIMS.md").read_text()
    assert "## Provenance" in md and "4 runs: smoothnorm" in md


def test_mixed_commits_warn_in_claims_and_under_the_figure(published, capsys, monkeypatch):
    run = sorted((published / "runs" / "tiny").iterdir())[0]
    config = read_config(run / "config.json")
    config["environment"]["git_commit"] = "0123456789abcdef"
    write_json(run / "config.json", config)
    assert "0123456789" in str(mixed_note([run_provenance(p) for p in (published / "runs" / "tiny").iterdir()]))
    capsys.readouterr()
    assert main(["claims", "--only", SPEC, *PUBLISHED]) == 0
    err = capsys.readouterr().err
    assert "Mixed provenance" in err and run.name in err and "0123456789" in err
    assert "Mixed provenance" in (published / "figures" / "CLAIMS.md").read_text()
    from smoothnorm import plots

    notes = []
    real = plots.draw_figure
    monkeypatch.setattr(plots, "draw_figure", lambda *a, **k: notes.append(k.get("note")) or real(*a, **k))
    assert main(["plot", "--only", SPEC, *PUBLISHED]) == 0
    assert notes and run.name in notes[0]


@pytest.mark.parametrize("extra,variant", [
    (["--set", "steps=3", "--seeds", "2", "--no-plot"], "set-steps-3"),
    (["--runs", "scratch", "--seeds", "2", "--no-plot"], "runs-scratch"),
    ([], "seeds-0"),  # one seed against the published two; with the figure
], ids=["override", "other-runs-folder", "fewer-seeds"])
def test_results_unlike_the_published_ones_get_their_own_names(published, extra, variant):
    before = _files(published / "figures")
    assert main(["run", SPEC, "--profile", "tiny", "--specs", str(ROOT / "experiments"), *extra]) == 0
    after = _files(published / "figures")
    assert {k: v for k, v in after.items() if k in before} == before  # the published files, byte for byte
    figure = set() if "--no-plot" in extra else {f"fig10_dln_landscape.{variant}.png",
                                                 f"fig10_dln_landscape.{variant}.pdf"}
    assert set(after) - set(before) == {f"CLAIMS.{variant}.md", f"claims.{variant}.json", *figure}
    records = json.loads((published / "figures" / f"claims.{variant}.json").read_text())
    if extra[:1] == ["--set"]:
        assert all(r["settings"] == {"overrides": ["steps=3"]} for r in records)
        assert "with `--set steps=3`" in (published / "figures" / f"CLAIMS.{variant}.md").read_text()
    if extra[:1] == ["--runs"]:
        assert all(r["settings"] == {"runs_root": "scratch"} for r in records)
    assert all(r["seeds"] == ([0, 1] if extra else [0]) for r in records)


def test_an_explicit_figures_folder_takes_the_plain_names(published):
    before = _files(published / "figures")
    assert main(["run", SPEC, "--profile", "tiny", "--specs", str(ROOT / "experiments"), "--set", "steps=3",
                 "--no-plot", "--figures", "mine"]) == 0
    assert _files(published / "figures") == before
    assert sorted(p.name for p in (published / "mine").iterdir()) == ["CLAIMS.md", "claims.json"]
    assert "with `--set steps=3`" in (published / "mine" / "CLAIMS.md").read_text()


def test_the_same_results_again_keep_the_published_names(published):
    shutil.rmtree(published / "runs")  # recomputed from scratch: same settings, same seeds, same bits
    before = _files(published / "figures")
    assert main(["run", SPEC, *PUBLISHED]) == 0
    after = _files(published / "figures")
    assert set(after) == set(before)
    assert json.loads(after["claims.json"])[0]["values"] == json.loads(before["claims.json"])[0]["values"]


def test_published_runs_in_another_folder_re_derive_claims_md_byte_for_byte(published):
    """The publishing workflow: runs kept in ./results re-derive CLAIMS.md exactly, however the folder is named."""
    shutil.move(published / "runs", published / "results")
    _remove_claims(published / "figures")
    assert main(["claims", "--only", SPEC, *PUBLISHED, "--runs", "results", "--figures", "figures"]) == 0
    first = {k: v for k, v in _files(published / "figures").items() if k in ("CLAIMS.md", "claims.json")}
    assert "with runs from `results`" in first["CLAIMS.md"].decode()
    for runs in ("./results", str(published / "results")):
        assert main(["claims", "--only", SPEC, *PUBLISHED, "--runs", runs, "--figures", "again"]) == 0
        assert _files(published / "again") == first
        shutil.rmtree(published / "again")


def test_all_takes_every_spec_group():
    from smoothnorm.cli import _specs, build_parser
    from smoothnorm.runs import spec as spec_module

    folder = ROOT / "experiments"
    every = spec_module.list_specs(folder, tuple(spec_module.SPEC_GROUPS))
    assert {p.parent.name for p in every} == {"experiments", "study", "examples", "beyond"}
    for command in ("claims", "plot"):
        args = build_parser().parse_args([command, "--all", "--specs", str(folder)])
        assert [spec.name for spec in _specs(args, None)] == [p.stem for p in every]
        args = build_parser().parse_args([command, "--specs", str(folder)])
        assert [spec.name for spec in _specs(args, None)] == [p.stem for p in spec_module.list_specs(folder)]


def test_the_published_claims_re_derive_from_the_committed_runs(tmp_path, monkeypatch):
    """figures/CLAIMS.md and claims.json are what `smoothnorm claims --all --runs results` says of the committed
    run data (results/quick), byte for byte."""
    if not (ROOT / "results" / "quick").is_dir():
        pytest.skip("the repository has no published quick runs (results/quick)")
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("SMOOTHNORM_RUNS", raising=False)
    assert main(["claims", "--all", "--runs", "results", "--figures", str(tmp_path)]) == 0
    for name in ("CLAIMS.md", "claims.json"):
        assert (tmp_path / name).read_bytes() == (ROOT / "figures" / name).read_bytes(), name


def test_claims_without_seeds_read_every_seed_the_runs_folder_holds(published):
    """`claims` and `plot` without --seeds take the seeds stored for each spec (here 2, the spec's own being 1)."""
    _remove_claims(published / "figures")
    assert main(["claims", "--only", SPEC, *PUBLISHED[:2], *PUBLISHED[4:], "--figures", "figures"]) == 0
    records = json.loads((published / "figures" / "claims.json").read_text())
    assert records and all(r["seeds"] == [0, 1] for r in records)
    shutil.rmtree(next((published / "runs" / "tiny").glob("*-s1-*")))  # seed 1 no longer complete
    assert main(["claims", "--only", SPEC, *PUBLISHED[:2], *PUBLISHED[4:], "--figures", "fewer"]) == 0
    records = json.loads((published / "fewer" / "claims.json").read_text())
    assert records and all(r["seeds"] == [0] for r in records)
