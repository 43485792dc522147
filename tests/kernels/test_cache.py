"""The kernels package drops its Numba cache when any kernel source changes, not just the compiled function's file."""

import os
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
