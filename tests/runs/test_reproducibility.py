"""Reproducibility (docs/PROTOCOL.md, "Reproducibility"): same seed and thread count give bit-identical runs (a VGG
and a DLN); the deep linear network's results are bit-identical for 1 and 2 threads."""

from __future__ import annotations

from pathlib import Path

import numba
import pytest

from smoothnorm.runs import runner
from smoothnorm.runs import spec as spec_module
from tests.helpers import ROOT, assert_same_roots

# VGG-11 at width 1/16 with BatchNorm (convolutions, pooling, norm, landscape probes), 2 steps.
VGG = (ROOT / "experiments" / "fig4_vgg_landscape.toml",
       ["arch=vgg11", "steps=2", "probe_every=1", "checkpoint_every=1"])
DLN = (ROOT / "experiments" / "fig10_dln_landscape.toml", ["steps=6", "probe_every=2", "checkpoint_every=2"])


def _train(spec, root: Path, threads: int) -> Path:
    path, overrides = spec
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for run in spec_module.load_spec(path, "tiny", overrides).runs:
            if run.settings["model"] == "dln" or run.settings["norm"] != "none":
                runner.execute_run(run, root)
    finally:
        numba.set_num_threads(before)
    return root


@pytest.mark.parametrize("spec", [VGG, DLN], ids=["vgg", "dln"])
def test_same_seed_and_thread_count_is_bit_identical(tmp_path, spec):
    threads = numba.get_num_threads()
    assert_same_roots(_train(spec, tmp_path / "a", threads), _train(spec, tmp_path / "b", threads))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_deep_linear_network_is_bit_identical_for_1_and_2_threads(tmp_path):
    # Linear kernels split rows of the batch over threads with each output row computed by one thread, and
    # reductions over the batch merge per-thread parts in a fixed order of equal-size blocks independent of the
    # thread count; the norms' statistics likewise. (Convolutions are not: see PROTOCOL.md.)
    assert_same_roots(_train(DLN, tmp_path / "one", 1), _train(DLN, tmp_path / "two", 2))
