"""Reproducibility (docs/PROTOCOL.md, "Reproducibility"): the same seed gives the same bits at any thread count.

Two small specs (tests/runs/specs/) cover every layer kind: float32 VGG-11 with BatchNorm and VGG-16 plain and with
each other norm (im2col and Winograd convolutions, max-pool, every norm of the family), and the float64 deep linear
network plain and with BatchNorm, 30 training steps each with landscape and ICS probes. Runs trained at different
thread counts must agree bit for bit in every metric, probe value, parameter and optimizer state.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numba
import pytest

from smoothnorm.runs import runner
from smoothnorm.runs import spec as spec_module
from tests.helpers import ROOT, assert_same_roots

SPECS = ROOT / "tests" / "runs" / "specs"


def _train(root: Path, threads: int, names=("threads_vgg", "threads_dln")) -> Path:
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for name in names:
            for run in spec_module.load_spec(SPECS / f"{name}.toml", "tiny").runs:
                runner.execute_run(run, root)
    finally:
        numba.set_num_threads(before)
    return root


def test_same_seed_and_thread_count_is_bit_identical(tmp_path):
    threads = numba.get_num_threads()
    dln = ["threads_dln"]
    assert_same_roots(_train(tmp_path / "a", threads, dln), _train(tmp_path / "b", threads, dln))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_one_and_two_threads_give_the_same_bits(tmp_path):
    assert_same_roots(_train(tmp_path / "one", 1), _train(tmp_path / "two", 2))


def _cli(root: Path, *args: str) -> Path:
    """`smoothnorm run` of both specs into root; returns the folder of the runs (root/<profile>)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                                            "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    subprocess.run([sys.executable, "-m", "smoothnorm.cli", "run", "threads_vgg", "threads_dln", "--specs", str(SPECS),
                    "--profile", "tiny", "--runs", str(root), "--figures", str(root.parent / "figures"),
                    "--no-plot", *args], cwd=ROOT, env=env, check=True, capture_output=True)
    return root / "tiny"


@pytest.mark.slow
def test_one_two_and_four_threads_per_run_give_the_same_bits(tmp_path):
    """Numba and BLAS threads set before they load (--threads-per-run), four more than this machine may have."""
    one, two, four = (_cli(tmp_path / f"t{threads}", "--threads-per-run", str(threads)) for threads in (1, 2, 4))
    assert_same_roots(one, two)
    assert_same_roots(one, four)


@pytest.mark.slow
def test_dask_workers_at_one_thread_match_sequential_at_three(tmp_path):
    pytest.importorskip("distributed")
    sequential = _cli(tmp_path / "sequential", "--threads-per-run", "3")
    assert_same_roots(sequential, _cli(tmp_path / "dask", "--workers", "2", "--threads-per-run", "1"))
