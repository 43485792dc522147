"""--estimate: probe evaluation counts, the longest-first schedule, the CLI prints a table and trains nothing, and
the estimate agrees with a measured sequential run of the tiny profile."""

import time
from types import SimpleNamespace

import pytest

from smoothnorm.cli import main
from smoothnorm.runs import estimate
from smoothnorm.runs.executors import SequentialExecutor, run_specs
from smoothnorm.runs.spec import ProbeSpec, load_spec
from tests.helpers import ROOT


@pytest.mark.parametrize(("every", "start", "options", "steps", "expected"), [
    (10, 0, {}, 100, 10),        # 0, 10, ..., 90
    (10, 5, {}, 100, 10),        # 5, 15, ..., 95
    (10, 0, {}, 101, 11),        # and 100
    (1, 0, {}, 7, 7),
    (0, 0, {}, 100, 0),          # never
    (10, 200, {}, 100, 0),       # starts after the run ends
    (0, 0, {"steps": [0, 5, 5, 200]}, 100, 2),  # chosen steps inside the run, each once
])
def test_probe_evaluations_count_the_steps_a_probe_measures_at(every, start, options, steps, expected):
    probe = ProbeSpec("landscape", every, start, options)
    assert estimate.probe_evaluations(probe, steps) == expected
    if not options:  # the count is the probes' own due() rule
        from smoothnorm.train.probes.base import Probe

        rule = Probe(name="p", every=every, start=start)
        assert expected == sum(rule.due(t) for t in range(steps))


def test_wall_time_puts_the_longest_runs_first_on_the_free_worker():
    runs = [SimpleNamespace(run_id=f"r{i}") for i in range(5)]
    seconds = dict(zip([r.run_id for r in runs], [10.0, 7.0, 5.0, 4.0, 4.0], strict=True))
    result = estimate.Estimate(runs, seconds)
    assert result.total() == 30.0
    assert result.wall(1) == 30.0
    assert result.wall(2) == 16.0  # longest first: 10 + 4 and 7 + 5 + 4 (the best split, 15, is not sought)
    assert result.wall(10) == 10.0  # never below the longest run


def test_the_cli_prints_the_table_and_trains_nothing(tmp_path, capsys):
    assert main(["run", "fig10", "--profile", "tiny", "--runs", str(tmp_path), "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "| fig10_dln_landscape | 2 |" in out and "core-hours" in out and "wall time on 1 worker process" in out
    assert not any(tmp_path.iterdir())


def test_the_estimate_is_within_a_quarter_of_a_measured_sequential_run(tmp_path):
    settings = ["steps=30", "checkpoint_every=10"]
    specs = [load_spec(ROOT / "experiments" / name, "tiny", settings)
             for name in ("fig10_dln_landscape.toml", "fig4_vgg_landscape.toml")]
    run_specs(specs, tmp_path / "warm", executor=SequentialExecutor(1))  # kernels loaded, as for the estimate
    tries = []
    for attempt in range(2):  # a second try only if other work on the machine moved the first by over a quarter
        result = estimate.estimate(specs)
        t0 = time.perf_counter()
        run_specs(specs, tmp_path / f"runs-{attempt}", executor=SequentialExecutor(1))
        measured = time.perf_counter() - t0
        tries.append((result.wall(1), measured))
        if abs(result.wall(1) - measured) <= 0.25 * measured:
            return
    pytest.fail(f"estimated against measured seconds, twice: {tries}")
