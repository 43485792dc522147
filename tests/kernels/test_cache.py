"""The kernels package drops its Numba cache when any kernel source changes, not just the compiled function's file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smoothnorm import kernels


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"x")


def test_stale_cache_files_of_kernel_modules_are_dropped(tmp_path):
    _touch(tmp_path, "norm._kernel-10.py311.nbi", "norm._kernel-10.py311.1.nbc", "lp_norm._f-5.py311.nbi",
           "other._g-1.py311.nbi", "norm.cpython-311.pyc")
    assert kernels._drop_stale_cache(tmp_path, "digest-a", ["norm", "lp_norm"])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["norm.cpython-311.pyc", "other._g-1.py311.nbi", kernels._STAMP]
    assert (tmp_path / kernels._STAMP).read_text().strip() == "digest-a"


def test_cache_with_a_matching_stamp_is_kept(tmp_path):
    (tmp_path / kernels._STAMP).write_text("digest-a\n")
    _touch(tmp_path, "norm._kernel-10.py311.nbi")
    assert not kernels._drop_stale_cache(tmp_path, "digest-a", ["norm"])
    assert (tmp_path / "norm._kernel-10.py311.nbi").exists()
    assert kernels._drop_stale_cache(tmp_path, "digest-b", ["norm"])
    assert not (tmp_path / "norm._kernel-10.py311.nbi").exists()


def test_digest_changes_with_any_kernel_source(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    before = kernels._source_digest(tmp_path)
    (tmp_path / "b.py").write_text("y = 3\n")
    assert kernels._source_digest(tmp_path) != before


def test_digest_covers_the_subfolders(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    before = kernels._source_digest(tmp_path)
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    assert kernels._source_digest(tmp_path) != before


@pytest.mark.parametrize("folder", kernels._kernel_folders(), ids=lambda p: p.name)
def test_every_kernel_cache_folder_carries_the_current_stamp(folder):
    assert {p.name for p in kernels._kernel_folders()} >= {"kernels", "conv", "norm"}
    cache_dir = kernels._kernel_cache_dir(folder / "__init__.py")
    assert cache_dir is not None
    if not os.access(cache_dir, os.W_OK):
        pytest.skip(f"Numba cache folder {cache_dir} is read-only")
    digest = kernels._source_digest(Path(kernels.__file__).parent)
    assert (cache_dir / kernels._STAMP).read_text().strip() == digest


# Calls every normalization variant once (float64) in a fresh process and prints, as JSON, Numba's cache hits and
# misses of their parallel entry points.
_NORM_VARIANTS = """
import json, math
import numpy as np
from smoothnorm.kernels.norm import batch, lp, lp_eval, noisy
x = np.random.default_rng(0).standard_normal((8, 3, 2, 2))
g, b, dg = np.ones(3), np.zeros(3), np.empty(3)
y, mean, invstd, var = batch.batch_norm_train_forward(x, g, b)
batch.batch_norm_train_backward(x, x, mean, invstd, g, dg)
batch.batch_norm_eval_forward(x, mean, var, g, b)
batch.batch_norm_eval_backward(x, x, mean, var, g, dg)
noisy.noisy_batch_norm_forward(x, x + 2, x, g, b)
noisy.noisy_batch_norm_backward(x, x, x + 2, x, mean, invstd, g, dg)
_, lmean, lnorm, argmax = lp.lp_norm_train_forward(x, math.inf, g, b)
lp.lp_norm_train_backward(x, x, math.inf, lmean, lnorm, argmax, g, dg)
entries = [batch._batch_norm_train_forward, batch._batch_norm_train_backward, batch._fixed_stats_forward,
           batch._fixed_stats_backward, noisy._noisy_batch_norm_forward, noisy._noisy_batch_norm_backward,
           lp._lp_norm_forward, lp._lp_norm_backward]
print(json.dumps({"hits": sum(sum(e.stats.cache_hits.values()) for e in entries),
                  "misses": sum(sum(e.stats.cache_misses.values()) for e in entries)}))
"""


def test_norm_kernels_bound_to_their_pieces_still_load_from_the_cache():
    """The normalization variants pass their statistic (a jitted function) to one inlined skeleton inside jitted
    entry points; a second process must find every entry in the on-disk cache, and no entry may be refused by the
    cache (a function object's address compiled into a kernel makes Numba refuse it: 'dynamic globals')."""
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-W", "always", "-c", _NORM_VARIANTS], capture_output=True, text=True,
                              timeout=1200, check=True)
        assert "Cannot cache" not in done.stderr, done.stderr
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[1] == {"hits": 8, "misses": 0}, runs
