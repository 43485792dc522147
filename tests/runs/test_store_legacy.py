"""Run files written before the npz manifest existed still read (older run folders stay usable)."""

import numpy as np

from smoothnorm.runs.store import read_npz, write_npz


def test_npz_without_manifest_reads_like_before(tmp_path):
    arrays = {"a": np.arange(6.0).reshape(2, 3), "steps": np.array([1, 2], dtype=np.int64)}
    np.savez(tmp_path / "old.npz", **arrays)  # what write_npz wrote before manifests
    got = read_npz(tmp_path / "old.npz")
    assert sorted(got) == ["a", "steps"]
    for key, value in arrays.items():
        np.testing.assert_array_equal(got[key], value)
    write_npz(tmp_path / "new.npz", arrays)
    assert sorted(read_npz(tmp_path / "new.npz")) == ["a", "steps"]
