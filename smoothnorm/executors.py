"""Where runs execute. An executor takes resolved runs and a results root and returns {run_id: run directory};
the run directory is the only result. `SequentialExecutor` (the default) trains them one after another in this
process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from smoothnorm.experiment import execute_run
from smoothnorm.spec import RunSpec, Spec, merge_runs


class Executor:
    """Runs a list of RunSpecs into `root`; subclasses implement `run`."""

    def run(self, runs: list[RunSpec], root: Path, progress: Callable[[str], None] | None = None) -> dict[str, Path]:
        raise NotImplementedError


class SequentialExecutor(Executor):
    """Train each run in this process, one after another."""

    def run(self, runs, root, progress=None):
        return {run.run_id: execute_run(run, root, progress=progress) for run in runs}


def run_specs(
    specs: list[Spec], root: Path, progress: Callable[[str], None] | None = None, executor: Executor | None = None
) -> dict[str, Path]:
    """Execute every run the specs need (each once, with the union of their probes); returns {run_id: path}."""
    return (executor or SequentialExecutor()).run(merge_runs(specs), root, progress)
