"""Learning-rate sweeps: expansion in specs and run identity, the largest-stable-learning-rate summary and claims on
synthetic run folders (a diverged run, a missing run, ties), and the sweep panel's data."""

import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from smoothnorm.claims import evaluate as claims_eval
from smoothnorm.plots.sweeps import draw_lr_sweep
from smoothnorm.runs import sweeps
from smoothnorm.runs.schema import SpecError, sweep_label
from smoothnorm.runs.spec import load_spec, run_id_for
from smoothnorm.runs.store import load_run, write_json, write_jsonl
from tests.helpers import ROOT

SPEC = """
title = "sweep"
[base]
model = "mlp"
depth = 2
hidden = 8
data = "synthetic_images"
n_train = 64
n_test = 32
batch_size = 8
steps = 10
{base_lr}
{base_extra}

[sweep]
criterion = 0.5

[[runs]]
label = "MLP"
norm = "none"

[[runs]]
label = "MLP + BN"
norm = "batch"

[[runs]]
label = "fixed"
lr = 0.05

[[runs]]
label = "own"
{own_lr}

[figure]
[[figure.panels]]
kind = "lr_sweep"
runs = ["MLP", "MLP + BN"]

{extra}
"""


def write_spec(tmp_path: Path, base_lr: str = "lr = [0.1, 0.01]", own_lr: str = "lr = [1, 0.3]",
               base_extra: str = "", extra: str = "", name: str = "sweep") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(SPEC.format(base_lr=base_lr, own_lr=own_lr, base_extra=base_extra, extra=extra))
    return path


def test_lists_expand_into_one_run_per_lr_and_scalars_stay_single(tmp_path):
    spec = load_spec(write_spec(tmp_path), "quick")
    assert [(r.label, r.settings["lr"], r.sweep) for r in spec.runs] == [
        ("MLP @ lr=0.01", 0.01, "MLP"), ("MLP @ lr=0.1", 0.1, "MLP"),
        ("MLP + BN @ lr=0.01", 0.01, "MLP + BN"), ("MLP + BN @ lr=0.1", 0.1, "MLP + BN"),
        ("fixed", 0.05, None),
        ("own @ lr=0.3", 0.3, "own"), ("own @ lr=1", 1.0, "own"),
    ]
    assert spec.sweeps == {"MLP": ["MLP @ lr=0.01", "MLP @ lr=0.1"],
                           "MLP + BN": ["MLP + BN @ lr=0.01", "MLP + BN @ lr=0.1"],
                           "own": ["own @ lr=0.3", "own @ lr=1"]}
    assert spec.sweep == {"criterion": 0.5, "window": 0.2}
    assert sweep_label("A", 3e-4) == "A @ lr=0.0003" and sweep_label("A", 1e-5) == "A @ lr=1e-05"
    # Without a list nothing is swept: the plain labels of before.
    plain = load_spec(write_spec(tmp_path, base_lr="lr = 0.1", own_lr="", name="plain"), "quick")
    assert [r.label for r in plain.runs] == ["MLP", "MLP + BN", "fixed", "own"]
    assert plain.sweeps == {} and all(r.sweep is None for r in plain.runs)


def test_a_swept_run_is_the_same_run_as_the_unswept_one_and_existing_ids_are_pinned(tmp_path):
    swept = {r.label: r for r in load_spec(write_spec(tmp_path), "quick").runs}
    plain = {r.label: r for r in load_spec(write_spec(tmp_path, base_lr="lr = 0.1", name="plain"), "quick").runs}
    assert swept["MLP @ lr=0.1"].run_id == plain["MLP"].run_id
    assert swept["MLP @ lr=0.1"].identity == plain["MLP"].identity
    assert swept["MLP @ lr=0.01"].run_id != plain["MLP"].run_id
    assert swept["MLP @ lr=0.1"].run_id == run_id_for(plain["MLP"].settings)
    # Run ids of paper specs, as stored before sweeps existed (their folders must keep their names).
    fig4 = load_spec(ROOT / "experiments" / "fig4_vgg_landscape.toml", "quick")
    assert [r.run_id for r in fig4.runs] == ["vgg11-none-lr0.1-s0-b064aa6ed9", "vgg11-batch-lr0.1-s0-976d5bdfc9"]
    fig10 = load_spec(ROOT / "experiments" / "fig10_dln_landscape.toml", "tiny")
    assert [r.run_id for r in fig10.runs] == ["dln25-none-lr1e-06-s0-f7812170e9", "dln25-batch-lr1e-06-s0-1c7f892ec3"]


def test_seeds_times_lrs(tmp_path):
    spec = load_spec(write_spec(tmp_path, base_extra="seeds = [0, 3]"), "quick")
    mlp = [(r.label, r.settings["seed"]) for r in spec.runs if r.sweep == "MLP"]
    assert mlp == [("MLP @ lr=0.01", 0), ("MLP @ lr=0.01", 3), ("MLP @ lr=0.1", 0), ("MLP @ lr=0.1", 3)]
    assert len({r.run_id for r in spec.runs}) == len(spec.runs) == 2 * 7
    assert len(load_spec(write_spec(tmp_path), "quick", seeds=3).runs) == 3 * 7


def test_profiles_and_set_replace_the_sweep(tmp_path):
    path = write_spec(tmp_path, base_extra='[profile.tiny]\nlr = [0.5]\n[profile.paper]\nlr = 0.2\n[profile.quick]')
    tiny = load_spec(path, "tiny")
    assert [r.label for r in tiny.runs if r.sweep == "MLP"] == ["MLP @ lr=0.5"]
    paper = load_spec(path, "paper")  # a profile's number replaces the base's list: nothing swept but "own"
    assert [r.label for r in paper.runs] == ["MLP", "MLP + BN", "fixed", "own @ lr=0.3", "own @ lr=1"]
    assert paper.runs[0].settings["lr"] == 0.2
    # --set wins over everything, a run's own lr included.
    swept = load_spec(path, "quick", ["lr=[0.2, 0.4]"])
    assert {r.label.split(" @ ")[0]: r.sweep for r in swept.runs} == {"MLP": "MLP", "MLP + BN": "MLP + BN",
                                                                        "fixed": "fixed", "own": "own"}
    assert sorted({r.settings["lr"] for r in swept.runs}) == [0.2, 0.4]
    single = load_spec(path, "quick", ["lr=0.3"])
    assert [r.label for r in single.runs] == ["MLP", "MLP + BN", "fixed", "own"]
    assert {r.settings["lr"] for r in single.runs} == {0.3}


@pytest.mark.parametrize(("where", "value", "message"), [
    ("base", "[]", r"\[base\]: key 'lr' expects a positive number or a non-empty list"),
    ("base", "[0.1, -1]", r"\[base\]: key 'lr' expects positive finite learning rates, got -1"),
    ("base", "[0.1, 0]", r"\[base\]: key 'lr' expects positive finite learning rates, got 0"),
    ("base", '[0.1, "fast"]', r"\[base\]: key 'lr' expects a list of numbers, got str 'fast'"),
    ("base", "[0.1, true]", r"\[base\]: key 'lr' expects a list of numbers, got bool"),
    ("base", "[0.1, 0.1]", r"\[base\]: key 'lr' repeats a learning rate"),
    ("run", "[]", r"\[\[runs\]\] #4: key 'lr' expects a positive number or a non-empty list"),
    ("run", "[1, -0.5]", r"\[\[runs\]\] #4: key 'lr' expects positive finite"),
    ("profile", "[nan]", r"\[profile.quick\]: key 'lr' expects positive finite"),
])
def test_bad_sweeps_name_the_file_and_the_key(tmp_path, where, value, message):
    if where == "base":
        path = write_spec(tmp_path, base_lr=f"lr = {value}")
    elif where == "run":
        path = write_spec(tmp_path, own_lr=f"lr = {value}")
    else:
        path = write_spec(tmp_path, base_extra=f"[profile.quick]\nlr = {value}")
    with pytest.raises(SpecError, match=message) as err:
        load_spec(path, "quick")
    assert str(path) in str(err.value)
    with pytest.raises(SpecError, match=r"--set 'lr=\[\]': key 'lr' expects"):
        load_spec(write_spec(tmp_path, name="ok"), "quick", ["lr=[]"])


@pytest.mark.parametrize(("extra", "message"), [
    ("[sweep]\ncriterion = 1.5", r"\[sweep\]: key 'criterion' expects a training accuracy in \[0, 1\)"),
    ("[sweep]\nwindow = 0", r"\[sweep\]: key 'window' expects a fraction of the steps in \(0, 1\]"),
    ("[sweep]\nmetric = 'loss'", r"\[sweep\]: unknown key 'metric'"),
])
def test_bad_sweep_criteria_are_named(tmp_path, extra, message):
    text = write_spec(tmp_path).read_text().replace("[sweep]\ncriterion = 0.5\n", extra + "\n")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(path, "quick")


def test_sweep_groups_in_panels_and_claims_are_checked(tmp_path):
    with pytest.raises(SpecError, match="key 'runs' names unknown run 'GELU'"):
        load_spec(write_spec(tmp_path, extra='[[figure.panels]]\nkind = "lr_sweep"\nruns = ["GELU"]'), "quick")
    claim = ('[[claims]]\nid = "c"\ntext = "t"\nquantity = "{q}"\nrun = "{run}"\nrelation = "greater"\n'
             'than = "MLP"\n{more}')
    cases = [
        (claim.format(q="largest_stable_lr", run="MLP @ lr=0.1", more=""), "names one run 'MLP @ lr=0.1'"),
        (claim.format(q="train_acc", run="MLP + BN", more='stat = "mean"'), "names the learning-rate sweep 'MLP + BN'"),
        (claim.format(q="largest_stable_lr", run="MLP + BN", more='stat = "mean"'), "stat 'final' only"),
        (claim.format(q="largest_stable_lr", run="MLP + BN", more="window = [0.5, 1.0]"), "stat 'final' only"),
        (claim.format(q="train_acc", run="MLP + BN @ lr=0.1", more='stat = "mean"').replace(
            'relation = "greater"', 'relation = "within"').replace('than = "MLP"', 'than = "MLP @ lr=0.1"'),
         "relation 'within' compares with 'than' up to a positive 'margin'"),
    ]
    for text, message in cases:
        with pytest.raises(SpecError, match=re.escape(message)):
            load_spec(write_spec(tmp_path, extra=text), "quick")
    plain = write_spec(tmp_path, base_lr="lr = 0.1", own_lr="", name="plain",
                       extra=claim.format(q="largest_stable_lr", run="MLP + BN", more=""))
    with pytest.raises(SpecError, match="needs a learning-rate sweep"):
        load_spec(plain, "quick")


# ----------------------------------------------------------------------------------------------------------------
# The summary on synthetic run folders
# ----------------------------------------------------------------------------------------------------------------
def write_run(root: Path, run, acc: float | list[float], status: str = "finished") -> Path:
    """A run folder as the runner writes it: training accuracy `acc` at every step (a list: per step)."""
    path = root / run.run_id
    path.mkdir(parents=True)
    steps = run.settings["steps"]
    values = list(acc) if isinstance(acc, list) else [acc] * steps
    write_json(path / "config.json", {"run_id": run.run_id, "run": {"label": run.label, **run.settings}})
    write_jsonl(path / "metrics.jsonl", [{"step": s, "loss": 1.0, "train_acc": a} for s, a in enumerate(values)])
    write_json(path / "status.json", {"status": status, "step": len(values), "probe_meta": {}})
    return path


CLAIMS = """
[[claims]]
id = "bn-larger"
text = "BN tolerates larger learning rates"
quantity = "largest_stable_lr"
run = "MLP + BN"
relation = "greater"
than = "MLP"

[[claims]]
id = "alike"
text = "at a small lr both train alike"
quantity = "train_acc"
stat = "mean"
window = [0.8, 1.0]
run = "MLP + BN @ lr=0.01"
relation = "within"
margin = 0.05
than = "MLP @ lr=0.01"
"""


def _runs(spec):
    return {(r.label, r.settings["seed"]): r for r in spec.runs}


def test_largest_stable_lr_with_a_diverged_run_a_missing_run_and_ties(tmp_path):
    path = write_spec(tmp_path, base_lr="lr = [0.01, 0.1, 1.0]", base_extra="seeds = [0, 1, 2]", extra=CLAIMS)
    spec = load_spec(path, "quick")
    runs, root = _runs(spec), tmp_path / "runs"
    # seed 0: MLP trains at 0.01 and 0.1, diverges at 1 (its final accuracy before diverging would pass);
    #         BN trains at all three. -> 0.1 vs 1: holds.
    # seed 1: MLP's accuracy equals the criterion at 0.1 (not above: does not train), passes at 1 but above a
    #         failure: the largest rate that trains counts (1). BN: 1 as well -> a tie: "greater" fails.
    # seed 2: MLP's run at lr 1 is missing (unknown above its largest 0.1): null; BN trains nowhere.
    table = {
        0: {"MLP": ([0.9, 0.8, 0.9], ["finished", "finished", "diverged"]), "MLP + BN": ([0.9, 0.9, 0.8], None)},
        1: {"MLP": ([0.7, 0.5, 0.6], None), "MLP + BN": ([0.9, 0.9, 0.9], None)},
        2: {"MLP": ([0.9, 0.9, None], None), "MLP + BN": ([0.2, 0.1, 0.0], None)},
    }
    for seed, groups in table.items():
        for group, (accs, statuses) in groups.items():
            for k, (lr, acc) in enumerate(zip(["0.01", "0.1", "1"], accs)):
                if acc is not None:
                    write_run(root, runs[(f"{group} @ lr={lr}", seed)], acc, statuses[k] if statuses else "finished")
    rates = {(r.group, r.seed): r for r in sweeps.stable_rates(spec, root)}
    assert (rates["MLP", 0].largest, rates["MLP + BN", 0].largest) == (0.1, 1.0)
    assert [p.status for p in rates["MLP", 0].points] == ["finished", "finished", "diverged"]
    assert [p.trains for p in rates["MLP", 1].points] == [True, False, True] and rates["MLP", 1].largest == 1.0
    assert rates["MLP", 2].known is False and rates["MLP", 2].unknown_lrs == [1.0]
    assert rates["MLP + BN", 2].largest is None and rates["MLP + BN", 2].known
    assert [p.final_accuracy for p in rates["MLP", 0].points] == pytest.approx([0.9, 0.8, 0.9])
    results = {r.claim.id: r for r in claims_eval.evaluate_spec(spec, root)}
    bn = results["bn-larger"]
    assert [o.holds for o in bn.outcomes] == [True, False, None]
    assert bn.outcomes[0].values == {"MLP + BN": 1.0, "MLP": 0.1}
    assert "lr 1 missing or unfinished" in bn.outcomes[2].note
    alike = results["alike"]
    assert [o.holds for o in alike.outcomes] == [True, False, False]  # |0.9-0.9|, |0.9-0.7|, |0.2-0.9|
    text = sweeps.format_stable_rates(list(rates.values()), 0.5, 0.2)
    assert "MLP (seed 0): 0.1" in text and "1: diverged" in text
    assert "MLP (seed 2): unknown (runs missing or unfinished: 1)" in text
    assert "MLP + BN (seed 2): none of the grid" in text


def test_none_of_the_grid_counts_as_zero_in_claims_and_unfinished_runs_are_unknown(tmp_path):
    path = write_spec(tmp_path, base_lr="lr = [0.01, 0.1]", extra=CLAIMS)
    spec = load_spec(path, "quick")
    runs, root = _runs(spec), tmp_path / "runs"
    for lr in ("0.01", "0.1"):
        write_run(root, runs[(f"MLP @ lr={lr}", 0)], 0.1, "diverged" if lr == "0.1" else "finished")
        write_run(root, runs[(f"MLP + BN @ lr={lr}", 0)], 0.9)
    (outcome,) = claims_eval.evaluate_spec(spec, root)[0].outcomes
    assert outcome.holds is True and outcome.values == {"MLP + BN": 0.1, "MLP": 0.0}
    assert "no learning rate of 'MLP' trains" in outcome.note
    write_json(root / runs[("MLP + BN @ lr=0.1", 0)].run_id / "status.json", {"status": "running", "step": 3})
    (rate,) = [r for r in sweeps.stable_rates(spec, root) if r.group == "MLP + BN"]
    assert rate.largest == 0.01 and not rate.known and rate.unknown_lrs == [0.1]


def test_final_accuracy_is_the_mean_over_the_last_fifth_of_the_steps(tmp_path):
    spec = load_spec(write_spec(tmp_path), "quick")
    run = spec.runs[0]
    path = write_run(tmp_path, run, [0.0] * 8 + [0.6, 1.0])  # 10 steps: steps 8 and 9 are the last 20%
    result = load_run(path)
    assert sweeps.final_accuracy(result, 0.2) == pytest.approx(0.8)
    assert sweeps.final_accuracy(result, 1.0) == pytest.approx(0.16)
    assert sweeps.sweep_point(result, 0.01, 0.8, 0.2).trains is False  # equal to the criterion: not above
    assert sweeps.sweep_point(result, 0.01, 0.79, 0.2).trains is True


def test_lr_sweep_panel_draws_the_median_final_accuracy_and_marks_divergence(tmp_path):
    path = write_spec(tmp_path, base_lr="lr = [0.01, 0.1]", base_extra="seeds = [0, 1]")
    spec = load_spec(path, "quick")
    runs, root = _runs(spec), tmp_path / "runs"
    accs = {("MLP", "0.01"): (0.6, 0.8), ("MLP", "0.1"): (0.9, None), ("MLP + BN", "0.01"): (0.2, 0.4),
            ("MLP + BN", "0.1"): (0.7, 0.7)}
    results = []
    for (group, lr), pair in accs.items():
        for seed, acc in enumerate(pair):
            run = runs[(f"{group} @ lr={lr}", seed)]
            diverged = acc is None
            results.append(load_run(write_run(root, run, 0.3 if diverged else acc,
                                              "diverged" if diverged else "finished"), label=run.label))
    fig = Figure()
    ax = fig.subplots()
    draw_lr_sweep(ax, results, criterion=0.5)
    lines = {line.get_label(): line for line in ax.lines}
    mlp = lines["MLP (largest stable lr by seed: 0.1, 0.01)"]
    np.testing.assert_allclose(mlp.get_xdata(), [0.01, 0.1])
    np.testing.assert_allclose(mlp.get_ydata(), [70.0, 90.0])  # the diverged seed is left out of the median
    bn = lines["MLP + BN (largest stable lr by seed: 0.1, 0.1)"]
    np.testing.assert_allclose(bn.get_ydata(), [30.0, 70.0])
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [0.1] and list(crosses[0].get_ydata()) == [0.0]
    assert ax.get_xscale() == "log" and "training accuracy" in ax.get_ylabel()


def test_a_sweep_runs_end_to_end_records_divergence_and_prints_the_summary(tmp_path, capsys):
    from smoothnorm.cli import main
    from smoothnorm.measure.stability import gradient_statistics, one_step_relative_loss
    from smoothnorm.runs.setup import _run_dataset, build_network

    probes = ('[[probes]]\nkind = "grad_distribution"\nsteps = [0]\nbins = 11\nlimit = 4.0\n'
              '[[probes]]\nkind = "one_step_loss"\nsteps = [0]\nlrs = [0.1, 100.0]\n')
    path = write_spec(tmp_path, base_lr="lr = [0.01, 1e6]", own_lr="", extra=probes)
    runs, figures = tmp_path / "runs", tmp_path / "figures"
    assert main(["run", str(path), "--profile", "quick", "--set", "steps=6", "--runs", str(runs),
                 "--figures", str(figures)]) == 0
    out = capsys.readouterr().out
    assert "sweep: largest stable learning rate" in out and "MLP (seed 0): none of the grid" in out
    assert "1e+06: diverged" in out
    spec = load_spec(path, "quick", ["steps=6"])
    by_label = {r.label: r for r in spec.runs}
    diverged = load_run(runs / "quick" / by_label["MLP @ lr=1e+06"].run_id)
    assert diverged.status == "diverged" and len(diverged.metrics["step"]) < 6
    # The probes at step 0 are the measurements on the untrained network and the first batch.
    run = by_label["MLP + BN @ lr=0.01"]
    result = load_run(runs / "quick" / run.run_id)
    xtr, ytr, _, _ = _run_dataset(run.settings)
    net = build_network(run.settings, xtr.shape[1:])
    from smoothnorm.runs.setup import _batch_fn

    x, y = _batch_fn(run.settings, xtr.reshape(len(xtr), -1), ytr)(0)
    loss, grads = net.loss_and_grad(x, y, mode="train")
    stats = gradient_statistics(net, grads.copy(), bins=11, limit=4.0)
    np.testing.assert_allclose(result.probe("grad_distribution", "kurtosis")[0], stats.kurtosis, rtol=1e-6)
    np.testing.assert_allclose(result.probe("grad_distribution", "histograms")[0], stats.histograms, atol=1e-12)
    step = one_step_relative_loss(net, x, y, [0.1, 100.0], grad=grads.copy(), loss=loss)
    np.testing.assert_allclose(result.probe("one_step_loss", "ratios")[0], step.ratios, rtol=1e-6)
    assert result.probe_meta["one_step_loss"]["lrs"] == [0.1, 100.0]
    assert (figures / "sweep.png").stat().st_size > 1000


def test_probe_panels_draw_each_groups_first_run_and_mark_overflow(tmp_path):
    from smoothnorm.plots.sweeps import draw_grad_histogram, draw_one_step_loss
    from smoothnorm.runs.store import write_npz

    spec = load_spec(write_spec(tmp_path, base_lr="lr = [0.01, 0.1]", own_lr=""), "quick")
    lrs, edges = [0.1, 1.0, 10.0], np.linspace(-2.0, 2.0, 5)
    results = []
    for k, run in enumerate(r for r in spec.runs if r.sweep in ("MLP", "MLP + BN")):
        path = write_run(tmp_path / "runs", run, 0.5)
        first = run.settings["lr"] == 0.01
        ratios = [0.9, 2.0, np.inf] if first else [5.0, 5.0, 5.0]  # the lr-0.1 runs must not be drawn
        hist = np.full((1, 3, 4), 0.25)
        hist[0, 1] = [0.0, 0.5, 0.5, 0.0] if first else [0.25] * 4
        write_npz(path / "probes.npz", {
            "one_step_loss/steps": np.array([0]), "one_step_loss/ratios": np.array([ratios]),
            "grad_distribution/steps": np.array([0]), "grad_distribution/histograms": hist,
            "grad_distribution/norms": np.array([[1.0, 2.0 + k, 3.0]]),
            "grad_distribution/kurtosis": np.array([[0.0, 4.5 + k, 0.0]])})
        write_json(path / "status.json", {"status": "finished", "step": 10, "probe_meta": {
            "one_step_loss": {"lrs": lrs}, "grad_distribution": {"edges": edges.tolist(), "layers": ["a", "b", "c"]}}})
        results.append(load_run(path, label=run.label))
    fig = Figure()
    ax = fig.subplots()
    draw_one_step_loss(ax, results, cap=100.0)
    lines = {line.get_label(): line for line in ax.lines}
    assert set(lines) >= {"MLP (step 0)", "MLP + BN (step 0)"}
    np.testing.assert_allclose(lines["MLP (step 0)"].get_xdata(), [0.1, 1.0])
    np.testing.assert_allclose(lines["MLP (step 0)"].get_ydata(), [0.9, 2.0])
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert [list(c.get_xdata()) for c in crosses] == [[10.0], [10.0]] and list(crosses[0].get_ydata()) == [100.0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    ax = fig.subplots()
    draw_grad_histogram(ax, results)  # the middle of 3 layers: index 1
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["MLP: kurtosis 4.5, norm 2", "MLP + BN: kurtosis 6.5, norm 4"]
    assert "weight layer #2 of 3" in ax.get_xlabel()
    with pytest.raises(ValueError, match="record: run"):
        draw_one_step_loss(ax, results, record=3)
