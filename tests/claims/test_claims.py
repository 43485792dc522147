"""Claims: validation with the spec, evaluation on small synthetic run folders, seeds, CLAIMS.md and claims.json."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from smoothnorm.claims import evaluate as claims_eval
from smoothnorm.claims import report as claims_report
from smoothnorm.cli import main
from smoothnorm.runs.schema import SpecError
from smoothnorm.runs.spec import load_spec
from smoothnorm.runs.store import write_json, write_jsonl, write_npz

SPEC = """
title = "synthetic"
[base]
model = "vgg"
width = 0.0625
data = "synthetic_images"
n_train = 64
n_test = 32
batch_size = 8
steps = 100
{base_extra}

[[runs]]
label = "Standard"
norm = "none"

[[runs]]
label = "BN"
norm = "batch"

[[probes]]
kind = "landscape"

[[probes]]
kind = "distributions"
layers = [2]

[figure]
[[figure.panels]]
kind = "accuracy"

{claims}
"""

CLAIMS = """
[[claims]]
id = "faster"
text = "BN trains faster (Fig 1)"
quantity = "train_acc"
stat = "mean"
window = [0.5, 1.0]
run = "BN"
relation = "greater"
than = "Standard"

[[claims]]
id = "smoother"
text = "BN's loss band is smaller (Fig 4a)"
quantity = "loss_band"
stat = "median"
run = "BN"
relation = "less"
than = "Standard"

[[claims]]
id = "fails"
text = "the standard net fails to train"
quantity = "train_acc"
stat = "final"
run = "Standard"
relation = "less"
level = 0.2
if_diverged = "holds"
notes = {quick = "measured: the quick budget is too short"}
"""


def write_spec(tmp_path: Path, claims: str = CLAIMS, base_extra: str = "") -> Path:
    path = tmp_path / "figx_synthetic.toml"
    path.write_text(SPEC.format(claims=claims, base_extra=base_extra))
    return path


def write_run(root: Path, run, *, acc: np.ndarray, bands: np.ndarray | None = None, status: str = "finished",
              distributions: bool = False) -> Path:
    """A run folder as the experiment runner writes it: config, status, metrics rows, probe arrays."""
    path = root / run.run_id
    path.mkdir(parents=True)
    write_json(path / "config.json", {"run_id": run.run_id, "run": {"label": run.label, **run.settings}})
    steps = np.arange(len(acc))
    write_jsonl(path / "metrics.jsonl", [{"step": int(s), "loss": 1.0, "train_acc": float(a)}
                                         for s, a in zip(steps, acc)])
    arrays = {}
    meta = {}
    if bands is not None:
        probe_steps = np.arange(0, len(acc), len(acc) // len(bands))[: len(bands)]
        arrays["landscape/steps"] = probe_steps
        arrays["landscape/losses"] = bands
        arrays["landscape/grad_distances"] = np.abs(bands)
        arrays["landscape/effective_beta"] = bands.max(axis=1)
        meta["landscape"] = {"etas": [0.05, 0.1, 0.2, 0.4]}
    if distributions:
        arrays["distributions/steps"] = np.array([0, 10, 20, 30])
        arrays["distributions/conv/mean"] = np.array([[0.0, 1.0], [1.0, 1.0], [3.0, 0.0], [3.0, 0.0]])
        arrays["distributions/conv/var"] = np.ones((4, 2))
        meta["distributions"] = {"layers": ["conv"]}
    if arrays:
        write_npz(path / "probes.npz", arrays)
    write_json(path / "status.json", {"status": status, "step": len(acc), "probe_meta": meta})
    return path


def runs_by(spec):
    return {(r.label, r.settings["seed"]): r for r in spec.runs}


def band(lo: float, hi: float, n: int = 5) -> np.ndarray:
    return np.tile(np.linspace(lo, hi, 4), (n, 1))


def test_claims_hold_fail_and_report_values(tmp_path):
    spec = load_spec(write_spec(tmp_path), "quick")
    root = tmp_path / "runs"
    runs = runs_by(spec)
    rng = np.random.default_rng(0)
    std_acc = 0.1 + 0.02 * rng.random(100)
    bn_acc = np.linspace(0.1, 0.9, 100)
    write_run(root, runs["Standard", 0], acc=std_acc, bands=band(1.0, 3.0))
    write_run(root, runs["BN", 0], acc=bn_acc, bands=band(1.0, 1.5))
    results = {r.claim.id: r for r in claims_eval.evaluate_spec(spec, root)}
    faster = results["faster"].outcomes[0]
    # Window [0.5, 1] of 100 steps: steps 50..99 (the reference statistic, computed directly).
    assert faster.values["BN"] == pytest.approx(bn_acc[50:].mean())
    assert faster.values["Standard"] == pytest.approx(std_acc[50:].mean())
    assert faster.holds is True
    smoother = results["smoother"].outcomes[0]
    assert smoother.values == {"BN": pytest.approx(0.5), "Standard": pytest.approx(2.0)}
    assert smoother.holds is True
    fails = results["fails"].outcomes[0]
    assert fails.values["Standard"] == pytest.approx(std_acc[-1]) and fails.holds is True
    assert results["faster"].verdict() == "holds in 1 of 1 seeds"

    # The same checks fail when the runs say the opposite.
    root2 = tmp_path / "runs2"
    write_run(root2, runs["Standard", 0], acc=bn_acc, bands=band(1.0, 1.2))
    write_run(root2, runs["BN", 0], acc=std_acc, bands=band(1.0, 3.0))
    results = {r.claim.id: r for r in claims_eval.evaluate_spec(spec, root2)}
    assert [results[k].outcomes[0].holds for k in ("faster", "smoother", "fails")] == [False, False, False]
    assert results["fails"].verdict() == "holds in 0 of 1 seeds"


def test_diverged_or_missing_is_null_never_holding(tmp_path):
    spec = load_spec(write_spec(tmp_path), "quick")
    root = tmp_path / "runs"
    runs = runs_by(spec)
    write_run(root, runs["Standard", 0], acc=np.full(100, 0.1), status="diverged")  # no landscape probe either
    write_run(root, runs["BN", 0], acc=np.full(100, 0.9))
    results = {r.claim.id: r for r in claims_eval.evaluate_spec(spec, root)}
    assert results["faster"].outcomes[0].holds is None
    assert "diverged" in results["faster"].outcomes[0].note
    # A "fails to train" check with if_diverged = "holds": diverging is failing to train.
    assert results["fails"].outcomes[0].holds is True
    assert "diverged" in results["fails"].outcomes[0].note

    # Missing quantity: BN finished but recorded no landscape probe; the standard run is absent entirely.
    root2 = tmp_path / "runs2"
    write_run(root2, runs["BN", 0], acc=np.full(100, 0.9))
    results = {r.claim.id: r for r in claims_eval.evaluate_spec(spec, root2)}
    for cid in ("faster", "smoother", "fails"):
        assert results[cid].outcomes[0].holds is None, cid
    assert "no results" in results["faster"].outcomes[0].note
    root3 = tmp_path / "runs3"
    write_run(root3, runs["BN", 0], acc=np.full(100, 0.9))
    write_run(root3, runs["Standard", 0], acc=np.full(100, 0.1), bands=band(1.0, 2.0))
    smoother = next(r for r in claims_eval.evaluate_spec(spec, root3) if r.claim.id == "smoother")
    assert smoother.outcomes[0].holds is None and "landscape" in smoother.outcomes[0].note
    # A run still in progress is not evaluated either.
    root4 = tmp_path / "runs4"
    write_run(root4, runs["BN", 0], acc=np.full(100, 0.9), status="running")
    write_run(root4, runs["Standard", 0], acc=np.full(100, 0.1))
    faster = next(r for r in claims_eval.evaluate_spec(spec, root4) if r.claim.id == "faster")
    assert faster.outcomes[0].holds is None and "running" in faster.outcomes[0].note


def test_several_seeds_with_mixed_outcomes(tmp_path):
    spec = load_spec(write_spec(tmp_path, base_extra="seeds = [0, 1, 2]"), "quick")
    assert spec.seeds == [0, 1, 2]
    root = tmp_path / "runs"
    runs = runs_by(spec)
    high, low = np.full(100, 0.8), np.full(100, 0.3)
    write_run(root, runs["BN", 0], acc=high)
    write_run(root, runs["Standard", 0], acc=low)
    write_run(root, runs["BN", 1], acc=low)
    write_run(root, runs["Standard", 1], acc=high)
    write_run(root, runs["BN", 2], acc=high)
    write_run(root, runs["Standard", 2], acc=low, status="diverged")
    faster = next(r for r in claims_eval.evaluate_spec(spec, root) if r.claim.id == "faster")
    assert faster.seeds == [0, 1, 2]
    assert [o.holds for o in faster.outcomes] == [True, False, None]
    assert faster.verdict() == "holds in 1 of 3 seeds (1 null)"
    record = faster.as_json()
    assert record["holds"] == [True, False, None]
    assert record["values"][0] == {"BN": pytest.approx(0.8), "Standard": pytest.approx(0.3)}
    assert record["values"][2]["Standard"] is None


def test_moment_change_and_ics_quantities_read_the_probe_arrays(tmp_path):
    spec = load_spec(write_spec(tmp_path, claims="""
[[claims]]
id = "moves"
text = "noisy BN's moments move more"
quantity = "mean_change"
layer = 0
stat = "mean"
run = "BN"
relation = "greater"
than = "Standard"
factor = 2.0
"""), "quick")
    root = tmp_path / "runs"
    runs = runs_by(spec)
    write_run(root, runs["BN", 0], acc=np.full(100, 0.5), distributions=True)
    write_run(root, runs["Standard", 0], acc=np.full(100, 0.5), distributions=True)
    result = claims_eval.evaluate_spec(spec, root)[0]
    means = np.array([[0.0, 1.0], [1.0, 1.0], [3.0, 0.0], [3.0, 0.0]])
    expected = np.abs(np.diff(means, axis=0)).mean(axis=1).mean()
    assert result.outcomes[0].values["BN"] == pytest.approx(expected)
    assert result.outcomes[0].holds is False  # equal runs: not greater than twice the other


@pytest.mark.parametrize(
    "claim, message",
    [
        ('quantity = "accuracy"', "'quantity'"),
        ('quantity = "train_acc"\nrun = "Noisy"', "'run'"),
        ('quantity = "ics_l2"\nlayer = 0', "kind 'ics'"),
        ('quantity = "mean_change"', "'layer'"),
        ('quantity = "train_acc"\nstat = "average"', "'stat'"),
        ('quantity = "train_acc"\nwindow = [0.8, 0.2]', "'window'"),
        ('quantity = "train_acc"\nhue = 1', "unknown key 'hue'"),
        ('quantity = "train_acc"\nnotes = {fast = "x"}', "'notes'"),
    ],
)
def test_claim_validation_names_file_and_key(tmp_path, claim, message):
    defaults = {"id": '"c"', "text": '"t"', "stat": '"mean"', "run": '"BN"', "relation": '"greater"',
                "than": '"Standard"'}
    lines = dict(line.split(" = ", 1) for line in claim.split("\n"))
    table = "\n".join(f"{k} = {v}" for k, v in {**defaults, **lines}.items())
    path = write_spec(tmp_path, claims=f"[[claims]]\n{table}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path, "quick")
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_claim_needs_a_comparison_or_a_threshold(tmp_path):
    path = write_spec(tmp_path, claims='[[claims]]\nid = "c"\ntext = "t"\nquantity = "loss"\nstat = "final"\n'
                                       'run = "BN"\nrelation = "less"\n')
    with pytest.raises(SpecError, match="'than'.*'level'"):
        load_spec(path, "quick")


def test_seeds_change_run_identity_and_nothing_else(tmp_path):
    path = write_spec(tmp_path)
    single = load_spec(path, "quick")
    expanded = load_spec(path, "quick", seeds=3)
    assert expanded.seeds == [0, 1, 2] and len(expanded.runs) == 3 * len(single.runs)
    in_spec = load_spec(write_spec(tmp_path, base_extra="seeds = [0, 1, 2]"), "quick")
    assert [r.run_id for r in in_spec.runs] == [r.run_id for r in expanded.runs]
    for run in single.runs:
        copies = [r for r in expanded.runs if r.label == run.label]
        assert [r.settings["seed"] for r in copies] == [0, 1, 2]
        assert copies[0].run_id == run.run_id  # seed 0 is the existing run: reused
        assert len({r.run_id for r in copies}) == 3
        for copy in copies:
            differ = {k for k in run.settings if run.settings[k] != copy.settings[k]}
            assert differ <= {"seed"}
            assert [p.identity() for p in copy.probes] == [p.identity() for p in run.probes]
    with pytest.raises(SpecError, match="'seeds'"):
        load_spec(write_spec(tmp_path, base_extra="seeds = [0, 0]"), "quick")
    with pytest.raises(SpecError, match="--seeds"):
        load_spec(write_spec(tmp_path), "quick", seeds=0)


def _three_seed_folder(tmp_path):
    spec = load_spec(write_spec(tmp_path, base_extra="seeds = [0, 1]"), "quick")
    root = tmp_path / "runs" / "quick"
    runs = runs_by(spec)
    for seed in (0, 1):
        write_run(root, runs["BN", seed], acc=np.full(100, 0.8 - 0.5 * seed), bands=band(1.0, 1.5))
        write_run(root, runs["Standard", seed], acc=np.full(100, 0.3), bands=band(1.0, 3.0))
    return spec, root


def test_claims_files_are_atomic_and_regenerate_identically(tmp_path, monkeypatch):
    spec, root = _three_seed_folder(tmp_path)
    out = tmp_path / "figures"
    md, js = claims_report.write_claims(claims_eval.evaluate_spec(spec, root), out, profile="quick")
    first = (md.read_bytes(), js.read_bytes())
    records = json.loads(js.read_text())
    assert [r["id"] for r in records] == ["faster", "smoother", "fails"]
    for r in records:
        assert {"spec", "id", "text", "seeds", "holds", "values"} <= set(r) and r["seeds"] == [0, 1]
    assert records[0]["holds"] == [True, False]
    assert "holds in 1 of 2 seeds" in md.read_text() and "figx_synthetic.png" in md.read_text()
    assert records[2]["note"] == "measured: the quick budget is too short" and "note" not in records[0]
    assert "Why, measured: measured: the quick budget" in md.read_text()
    md2, js2 = claims_report.write_claims(claims_eval.evaluate_spec(spec, root), out, profile="quick")
    assert (md2.read_bytes(), js2.read_bytes()) == first

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        claims_report.write_claims([], out, profile="quick", keep_others=False)
    monkeypatch.undo()
    assert (md.read_bytes(), js.read_bytes()) == first
    assert sorted(p.name for p in out.iterdir()) == ["CLAIMS.md", "claims.json"]  # no temporary files left


def test_cli_claims_prints_verdicts_and_the_markdown_table(tmp_path, capsys):
    spec, root = _three_seed_folder(tmp_path)
    figures = tmp_path / "figures"
    args = ["--runs", str(tmp_path / "runs"), "--figures", str(figures), "--specs", str(tmp_path)]
    assert main(["claims", *args]) == 0
    out = capsys.readouterr().out
    assert "[figx_synthetic:faster] holds in 1 of 2 seeds" in out and "paper: BN trains faster (Fig 1)" in out
    assert main(["claims", "--markdown", "--figures", str(figures)]) == 0
    table = capsys.readouterr().out
    # --runs names another folder than the default: the table says so.
    runs = tmp_path / "runs"
    assert table.startswith(f"Profile `quick` with runs from `{runs}`: 2 seeds [0, 1] for 3 claims. 1 of 3 claims "
                            "hold in a majority")
    assert table.count("| [figx_synthetic]") == 3
    assert main(["claims", "--only", "nope", *args]) == 2
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{claims_report.README_BEGIN}\nSTALE ROW\n{claims_report.README_END}\n\nafter\n")
    assert main(["claims", "--readme", str(readme), "--figures", str(figures)]) == 0
    text = readme.read_text()
    assert "STALE ROW" not in text and table.strip() in text and text.endswith("after\n")
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    assert main(["claims", "--readme", str(bare), "--figures", str(figures)]) == 2


def test_figures_draw_the_median_over_seeds_with_a_band(tmp_path):
    from matplotlib.figure import Figure

    from smoothnorm.plots.panels import draw_accuracy
    from smoothnorm.runs.store import load_run

    spec, root = _three_seed_folder(tmp_path)
    runs = [load_run(root / r.run_id, label=r.label) for r in spec.runs]
    fig = Figure()
    ax = fig.subplots()
    draw_accuracy(ax, runs, metric="train_acc")
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert "line: median of 2 seeds\nshaded: min-max over seeds" in lines
    bn = lines["BN"]
    assert np.allclose(bn.get_ydata(), 100 * np.median([0.8, 0.3]))
    assert len(ax.collections) == 2  # one band per label
    band_path = ax.collections[1].get_paths()[0].vertices[:, 1]  # runs in spec order: Standard, then BN
    assert band_path.min() == pytest.approx(30.0) and band_path.max() == pytest.approx(80.0)
    # One seed: drawn as before, one line per run labelled with the run's label, no band.
    fig2 = Figure()
    ax2 = fig2.subplots()
    draw_accuracy(ax2, [r for r in runs if r.config["run"]["seed"] == 0], metric="train_acc")
    assert sorted(line.get_label() for line in ax2.get_lines()) == ["BN", "Standard"]
    assert len(ax2.collections) == 0


def test_run_with_seeds_trains_each_seed_draws_and_prints_verdicts(tmp_path, capsys):
    path = write_spec(tmp_path)
    runs, figures = tmp_path / "runs", tmp_path / "figures"
    args = ["run", str(path), "--profile", "tiny", "--seeds", "2", "--runs", str(runs), "--figures", str(figures),
            "--set", "steps=4", "--set", "eval_every=2", "--set", "probe_every=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert sorted(p.name.split("-")[3] for p in (runs / "tiny").iterdir()) == ["s0", "s0", "s1", "s1"]
    assert "[figx_synthetic:faster] holds in" in out and "of 2 seeds" in out
    records = json.loads((figures / "claims.json").read_text())
    assert [r["seeds"] for r in records] == [[0, 1]] * 3 and records[0]["profile"] == "tiny"
    assert (figures / "figx_synthetic.png").stat().st_size > 1000
    # Again: every run is reused (nothing retrained), and the claims files come out byte for byte the same.
    before = {p: p.read_bytes() for p in figures.glob("claims.json")}
    assert main(args) == 0
    assert "starting" not in capsys.readouterr().err
    assert {p: p.read_bytes() for p in figures.glob("claims.json")} == before


def test_spectrum_quantities_read_the_probe_arrays(tmp_path):
    """outlier_ratio and gradient_share (Ghorbani et al.) are the spectrum probe's recorded values per probed step."""
    text = SPEC.replace('kind = "landscape"', 'kind = "spectrum"\nsteps = [0, 50, 99]').format(claims="""
[[claims]]
id = "fewer-outliers"
text = "BN's lambda_1 / lambda_k is smaller"
quantity = "outlier_ratio"
stat = "median"
run = "BN"
relation = "less"
than = "Standard"

[[claims]]
id = "share"
text = "the gradient concentrates in the top eigenspace without BN"
quantity = "gradient_share"
stat = "final"
run = "Standard"
relation = "greater"
than = "BN"
""", base_extra="")
    path = tmp_path / "figx_spectrum.toml"
    path.write_text(text)
    spec = load_spec(path, "quick")
    root = tmp_path / "runs"
    runs = runs_by(spec)
    recorded = {"Standard": ([2.0, 9.0, 15.0], [0.6, 0.4, 0.99]), "BN": ([1.7, 4.8, 17.0], [0.1, 0.5, 0.98])}
    for label, (ratios, shares) in recorded.items():
        folder = write_run(root, runs[label, 0], acc=np.full(100, 0.5))
        write_npz(folder / "probes.npz", {"spectrum/steps": np.array([0, 50, 99]),
                                          "spectrum/outlier_ratio": np.array(ratios),
                                          "spectrum/gradient_share": np.array(shares)})
    ratio, share = claims_eval.evaluate_spec(spec, root)
    assert ratio.outcomes[0].values == {"BN": pytest.approx(4.8), "Standard": pytest.approx(9.0)}
    assert ratio.outcomes[0].holds is True
    assert share.outcomes[0].values == {"Standard": pytest.approx(0.99), "BN": pytest.approx(0.98)}
    assert share.outcomes[0].holds is True
