"""CIFAR-10 reader: official format from a folder and from the tarball, checksums, bad files."""

import fractions
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

import smoothnorm.data.cifar10 as cifar10
from smoothnorm.data import ChecksumError, data_home, load_cifar10

from .conftest import N_TEST, PER_TRAIN_BATCH


def _reference_images(raw: np.ndarray, normalize: bool, dtype) -> np.ndarray:
    """Obvious float64 formula, rounded once: (pixel / 255 - mean) / std per channel."""
    x = raw.reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    if normalize:
        x = (x - cifar10.MEAN[None, :, None, None]) / cifar10.STD[None, :, None, None]
    return x.astype(dtype)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("source", ["folder", "archive"])
def test_reads_official_format(fake_cifar, train, source):
    if source == "folder":
        fake_cifar.write_folder()
    else:
        fake_cifar.write_archive()
    x, y = load_cifar10(fake_cifar.root, train=train)
    raw, labels = fake_cifar.raw_split(train)
    n = 5 * PER_TRAIN_BATCH if train else N_TEST
    assert x.shape == (n, 3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (n,) and y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(x, _reference_images(raw, True, np.float32))


def test_folder_and_archive_agree_and_folder_is_preferred(fake_cifar):
    fake_cifar.write_archive()
    from_archive = load_cifar10(fake_cifar.root)
    fake_cifar.write_folder()
    fake_cifar.archive.write_bytes(b"not an archive")  # would fail if it were read
    from_folder = load_cifar10(fake_cifar.root)
    for a, b in zip(from_archive, from_folder, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unnormalized_and_dtype(fake_cifar, dtype):
    fake_cifar.write_folder()
    x, _ = load_cifar10(fake_cifar.root, train=False, normalize=False, dtype=dtype)
    raw, _ = fake_cifar.raw_split(False)
    assert x.dtype == dtype and 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x, _reference_images(raw, False, dtype))
    x_norm, _ = load_cifar10(fake_cifar.root, train=False, dtype=dtype)
    np.testing.assert_array_equal(x_norm, _reference_images(raw, True, dtype))


def test_root_may_be_the_folder_or_the_archive_itself(fake_cifar):
    folder = fake_cifar.write_folder()
    archive = fake_cifar.write_archive()
    expected = load_cifar10(fake_cifar.root, train=False)
    for root in (folder, archive):
        got = load_cifar10(root, train=False)
        np.testing.assert_array_equal(got[0], expected[0])


def test_normalization_constants():
    # The published training-set statistics (0..255 scale divided by 255).
    np.testing.assert_allclose(cifar10.MEAN, [0.4914, 0.4822, 0.4465], atol=5e-5)
    np.testing.assert_allclose(cifar10.STD, [0.2470, 0.2435, 0.2616], atol=5e-5)


def _flip_byte(path, position):
    content = bytearray(path.read_bytes())
    content[position] ^= 0xFF
    path.write_bytes(bytes(content))


def _change_pixel_byte(path):
    """Change one pixel byte in the middle of a pickled batch so that it still unpickles.

    Python 3 pickles bytes at protocol 2 as a UTF-8 string, so change an ASCII byte into another ASCII byte.
    """
    content = bytearray(path.read_bytes())
    position = len(content) // 2 + np.flatnonzero(np.frombuffer(content[len(content) // 2 :], np.uint8) < 0x7F)[0]
    content[position] += 1
    path.write_bytes(bytes(content))


def test_corrupt_batch_file_gives_checksum_error(fake_cifar):
    folder = fake_cifar.write_folder()
    path = folder / "data_batch_3"
    _change_pixel_byte(path)
    with pytest.raises(ChecksumError) as info:
        load_cifar10(fake_cifar.root)
    err = info.value
    assert isinstance(err, ValueError)
    assert "data_batch_3" in str(err) and err.expected in str(err) and err.actual in str(err)
    assert err.expected == cifar10.FILE_MD5["data_batch_3"] and err.actual != err.expected
    assert "verify=False" in str(err)
    # verify=False reads it: exactly one pixel differs from the original.
    x, _ = load_cifar10(fake_cifar.root, verify=False)
    raw, _ = fake_cifar.raw_split(True)
    assert np.count_nonzero(x != _reference_images(raw, True, np.float32)) == 1
    # The test split does not read data_batch_3, so it still verifies.
    load_cifar10(fake_cifar.root, train=False)


def test_corrupt_archive(fake_cifar):
    archive = fake_cifar.write_archive()
    _flip_byte(archive, len(archive.read_bytes()) // 2)
    with pytest.raises(ChecksumError, match=cifar10.ARCHIVE_NAME) as info:
        load_cifar10(fake_cifar.root)
    assert info.value.expected == cifar10.ARCHIVE_MD5
    # Without verification the damage is found by gzip, tar or the batch parser, depending on where it falls.
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        load_cifar10(fake_cifar.root, verify=False)
    assert not isinstance(info.value, ChecksumError)


def test_truncated_archive(fake_cifar):
    archive = fake_cifar.write_archive()
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ChecksumError):
        load_cifar10(fake_cifar.root)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_cifar10(fake_cifar.root, verify=False)


def test_archive_without_cifar_members(fake_cifar, tmp_path):
    import tarfile

    with tarfile.open(fake_cifar.archive, "w:gz") as tar:
        tar.add(__file__, arcname="something/else.py")
    with pytest.raises(ValueError, match="no member"):
        load_cifar10(fake_cifar.root, verify=False)


def test_truncated_batch_file(fake_cifar):
    folder = fake_cifar.write_folder()
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ChecksumError, match="test_batch"):
        load_cifar10(fake_cifar.root, train=False)
    with pytest.raises(ValueError, match="test_batch.*truncated or corrupt"):
        load_cifar10(fake_cifar.root, train=False, verify=False)


def _write_test_batch(fake_cifar, entry, protocol=2):
    folder = fake_cifar.write_folder()
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=protocol))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e.update({b"data": e[b"data"][:, :3000]}), r"uint8 array of shape \(n, 3072\).*\(10, 3000\)"),
        (lambda e: e.update({b"data": e[b"data"].astype(np.float32)}), "float32"),
        (lambda e: e.update({b"data": e[b"data"].reshape(10, 3, 32, 32)}), r"\(10, 3, 32, 32\)"),
        (lambda e: e.update({b"data": e[b"data"].tolist()}), "found list"),
        (lambda e: e.update({b"labels": [10] + e[b"labels"][1:]}), r"labels must lie in \[0, 10\).*\[10\]"),
        (lambda e: e.update({b"labels": [-1] + e[b"labels"][1:]}), r"labels must lie in \[0, 10\)"),
        (lambda e: e.update({b"labels": e[b"labels"][:-1]}), "10 integers"),
        (lambda e: e.update({b"labels": [0.5] * 10}), "10 integers.*float64"),
        (lambda e: e.pop(b"labels"), "lacks the key"),
    ],
)
def test_bad_contents(fake_cifar, change, message):
    data, labels = fake_cifar.raw["test_batch"]
    entry = {b"data": data, b"labels": labels.tolist()}
    change(entry)
    _write_test_batch(fake_cifar, entry)
    with pytest.raises(ValueError, match=message) as info:
        load_cifar10(fake_cifar.root, train=False, verify=False)
    assert "test_batch" in str(info.value)


def test_not_a_dict(fake_cifar):
    _write_test_batch(fake_cifar, [1, 2, 3])
    with pytest.raises(ValueError, match="found list"):
        load_cifar10(fake_cifar.root, train=False, verify=False)


def test_str_keys_and_modern_protocol_are_accepted(fake_cifar):
    data, labels = fake_cifar.raw["test_batch"]
    _write_test_batch(fake_cifar, {"data": data, "labels": labels}, protocol=5)
    x, y = load_cifar10(fake_cifar.root, train=False, verify=False)
    np.testing.assert_array_equal(y, labels)


def test_python2_era_numpy_core_pickles_load_without_warnings(fake_cifar):
    # The official files name numpy.core.multiarray._reconstruct, which NumPy 2 moved to numpy._core.
    data, labels = fake_cifar.raw["test_batch"]
    content = pickle.dumps({b"data": data, b"labels": labels.tolist()}, protocol=2)
    content = content.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in content
    fake_cifar.write_folder()
    (fake_cifar.folder / "test_batch").write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y = load_cifar10(fake_cifar.root, train=False, verify=False)
    np.testing.assert_array_equal(y, labels)


def test_pickled_code_is_refused(fake_cifar):
    # Only containers and NumPy arrays may be unpickled: anything else (here a Fraction) is rejected.
    _write_test_batch(fake_cifar, {b"data": fractions.Fraction(1, 2), b"labels": []})
    with pytest.raises(ValueError, match="fractions.Fraction is not allowed"):
        load_cifar10(fake_cifar.root, train=False, verify=False)


def test_missing_data_explains_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and "cifar-10-batches-py" in message and str(tmp_path) in message
    assert "download=True" in message and cifar10.ARCHIVE_MD5 in message
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_cifar10(tmp_path / "absent")


def test_incomplete_folder_names_missing_file(fake_cifar):
    folder = fake_cifar.write_folder()
    (folder / "data_batch_2").unlink()
    with pytest.raises(FileNotFoundError, match="without data_batch_2"):
        load_cifar10(fake_cifar.root)
    load_cifar10(fake_cifar.root, train=False)  # the test split is complete
    fake_cifar.write_archive()  # an archive next to an incomplete folder is used instead
    x, _ = load_cifar10(fake_cifar.root)
    assert len(x) == 5 * PER_TRAIN_BATCH


def test_default_root_is_the_cache(fake_cifar, monkeypatch):
    monkeypatch.setenv("SMOOTHNORM_DATA", str(fake_cifar.root))
    assert data_home() == fake_cifar.root
    fake_cifar.write_archive()
    x, _ = load_cifar10(train=False)
    assert len(x) == N_TEST
    monkeypatch.delenv("SMOOTHNORM_DATA")
    assert data_home() == Path.home() / ".cache" / "smoothnorm"


def test_to_float_images_validates():
    with pytest.raises(ValueError, match="uint8"):
        cifar10.to_float_images(np.zeros((2, 3072), dtype=np.int16))
    with pytest.raises(ValueError, match="uint8"):
        cifar10.to_float_images(np.zeros((2, 3071), dtype=np.uint8))
    with pytest.raises(ValueError, match="float32 or float64"):
        cifar10.to_float_images(np.zeros((2, 3072), dtype=np.uint8), dtype=np.float16)
    assert cifar10.to_float_images(np.zeros((0, 3072), dtype=np.uint8)).shape == (0, 3, 32, 32)


@pytest.mark.slow
def test_real_cifar10_if_present():
    """On a machine with the real data in the cache: published checksums pass and the constants match."""
    root = data_home()
    if not ((root / cifar10.FOLDER_NAME).is_dir() or (root / cifar10.ARCHIVE_NAME).is_file()):
        pytest.skip(f"CIFAR-10 not in {root}")
    x, y = load_cifar10(root, normalize=False, dtype=np.float64)
    assert x.shape == (50000, 3, 32, 32) and np.bincount(y).tolist() == [5000] * 10
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), cifar10.MEAN, atol=1e-7)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), cifar10.STD, atol=1e-7)
    x_test, y_test = load_cifar10(root, train=False)
    assert x_test.shape == (10000, 3, 32, 32) and np.bincount(y_test).tolist() == [1000] * 10


def test_a_spec_can_read_an_unverified_copy_and_the_error_says_how(fake_cifar, capsys):
    """The checksum error names the command-line way (`--set data_verify=false`), and that key reads the files
    anyway, with a warning, in a run's data setup."""
    from smoothnorm.runs.setup import _raw_dataset

    folder = fake_cifar.write_folder()
    _change_pixel_byte(folder / "data_batch_2")
    args = ("cifar10", 0, 0, 0, 0, str(fake_cifar.root), "raw", 1.0, 0.0)
    with pytest.raises(ChecksumError, match="--set data_verify=false") as info:
        _raw_dataset.__wrapped__(*args, True)
    assert "smoothnorm data fetch" in str(info.value)
    xtr, ytr, xte, yte = _raw_dataset.__wrapped__(*args, False)
    assert "data_verify = false" in capsys.readouterr().err
    assert xtr.shape[0] == 5 * fake_cifar.raw["data_batch_1"][0].shape[0] and xte.shape[0] == yte.shape[0]
