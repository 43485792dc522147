"""Fuzzing the CIFAR-10 reader: damaged batch files and archives end in a ValueError naming the file, never in a
traceback from inside pickle/tarfile/NumPy, never in silently wrong data, and pickled code is never executed."""

from __future__ import annotations

import hashlib
import pickle
import pickletools

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import smoothnorm.data.cifar10 as cifar10
from smoothnorm.data import load_cifar10
from smoothnorm.data._io import ChecksumError
from tests.helpers import FakeCifar

from .conftest import budget, count, fuzz_settings


@pytest.fixture
def fake(tmp_path, monkeypatch):
    fake = FakeCifar(tmp_path / "root", np.random.default_rng(7))
    fake.root.mkdir()
    monkeypatch.setattr(cifar10, "FILE_MD5", {k: hashlib.md5(v).hexdigest() for k, v in fake.files.items()})
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(fake.archive_bytes()).hexdigest())
    fake.write_folder()
    return fake


def _load_test_split(fake: FakeCifar, content: bytes, verify: bool = False):
    """Write `content` as the test batch and read it; returns (x, y) or the ValueError (which must name the file)."""
    (fake.folder / "test_batch").write_bytes(content)
    try:
        return load_cifar10(fake.root, train=False, verify=verify, normalize=False)
    except ValueError as exc:
        assert "test_batch" in str(exc), f"{type(exc).__name__} does not name the file: {exc}"
        return exc


def _assert_matches_raw(result, data: np.ndarray, labels: np.ndarray) -> None:
    x, y = result
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(np.rint(x.reshape(len(x), -1).astype(np.float64) * 255), data)


@budget
def test_truncated_batch_file_is_refused(fake, budget):
    content = fake.files["test_batch"]

    @fuzz_settings(50, budget)
    @given(cut=st.integers(0, len(content) - 1), verify=st.booleans())
    def prop(cut, verify):
        count("cifar batch truncated")
        result = _load_test_split(fake, content[:cut], verify)
        assert isinstance(result, ValueError)
        assert isinstance(result, ChecksumError) == verify

    prop()


@budget
def test_byte_flips_in_batch_file(fake, budget):
    content = fake.files["test_batch"]
    data, labels = fake.raw["test_batch"]

    @fuzz_settings(60, budget)
    @given(flips=st.lists(st.tuples(st.integers(0, len(content) - 1), st.integers(1, 255)), min_size=1, max_size=4),
           verify=st.booleans())
    def prop(flips, verify):
        count("cifar batch byte flips")
        damaged = bytearray(content)
        for position, mask in flips:
            damaged[position] ^= mask
        damaged = bytes(damaged)
        assume(damaged != content)
        result = _load_test_split(fake, damaged, verify)
        if verify:
            assert isinstance(result, ChecksumError)
        elif not isinstance(result, ValueError):
            # Without the checksum, a flip inside the pixels or a label is undetectable; anything read is
            # still well formed.
            x, y = result
            assert x.shape == (len(y), 3, 32, 32) and y.dtype == np.int64 and ((y >= 0) & (y < 10)).all()

    prop()


_ARRAYS = st.builds(
    lambda dtype, shape, fill: np.full(shape, fill).astype(dtype),
    st.sampled_from([np.uint8, np.int8, np.int64, np.float32, np.float64, np.bool_, np.uint16, object]),
    st.one_of(
        st.tuples(st.integers(0, 12), st.sampled_from([3072, 3071, 1, 0])),
        st.tuples(st.integers(0, 4), st.just(3), st.just(32), st.just(32)),
        st.tuples(st.integers(0, 3072)),
        st.just(()),
    ),
    st.integers(0, 255),
)
_SCALARS = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=3),
    st.binary(max_size=3),
)
_LABELS = st.one_of(
    st.lists(st.integers(-3, 12), max_size=12),
    st.lists(_SCALARS, max_size=12),
    st.lists(st.lists(st.integers(0, 9), max_size=2), max_size=12),
    _ARRAYS,
    _SCALARS,
    st.dictionaries(st.integers(0, 9), st.integers(0, 9), max_size=3),
)


@budget
def test_wrong_contents_in_a_valid_pickle(fake, budget):
    @fuzz_settings(80, budget)
    @given(
        data=st.one_of(_ARRAYS, _SCALARS, st.lists(st.integers(0, 255), max_size=4)),
        labels=_LABELS,
        keys=st.sampled_from([(b"data", b"labels"), ("data", "labels"), (b"data",), (b"labels",), (b"x", b"labels")]),
        wrapper=st.sampled_from(["dict", "list", "tuple", "none"]),
        protocol=st.sampled_from([2, 4, 5]),
    )
    def prop(data, labels, keys, wrapper, protocol):
        count("cifar batch wrong contents")
        entry = dict(zip(keys, (data, labels)[: len(keys)])) if keys[0] in (b"data", "data") else {keys[0]: labels}
        if keys == (b"x", b"labels"):
            entry = {b"x": data, b"labels": labels}
        obj = {"dict": entry, "list": [entry], "tuple": (entry,), "none": None}[wrapper]
        result = _load_test_split(fake, pickle.dumps(obj, protocol=protocol))
        if isinstance(result, ValueError):
            return
        # Accepted: it must be exactly what the pickle held, a valid CIFAR batch.
        assert isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
        lab = np.asarray(labels)
        assert lab.dtype.kind in "iu" or lab.size == 0
        _assert_matches_raw(result, data, lab.astype(np.int64))

    prop()


_SENTINEL_CALLS: list = []


def sentinel(*args):
    """A global that a hostile pickle names; it must never run."""
    _SENTINEL_CALLS.append(args)
    return {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}


def _pickle_calling(module: str, name: str, protocol: int) -> bytes:
    """A pickle whose top object is `module.name()` (GLOBAL/STACK_GLOBAL + REDUCE), as an attacker would write."""
    if protocol < 4:
        body = b"c" + module.encode() + b"\n" + name.encode() + b"\n" + b")R."
    else:
        body = (
            b"\x8c" + bytes([len(module.encode())]) + module.encode()
            + b"\x8c" + bytes([len(name.encode())]) + name.encode() + b"\x93)R."
        )
        body = b"\x80" + bytes([protocol]) + body
    return body


@budget
def test_pickles_naming_other_globals_are_refused_unexecuted(fake, budget):
    names = st.text(st.characters(min_codepoint=ord("a"), max_codepoint=ord("z"), include_characters="._"),
                     min_size=1, max_size=20)

    @fuzz_settings(50, budget)
    @given(
        target=st.one_of(
            st.sampled_from([
                (__name__, "sentinel"), ("os", "system"), ("builtins", "eval"), ("builtins", "exec"),
                ("subprocess", "Popen"), ("numpy", "load"), ("numpy", "frombuffer"), ("pickle", "loads"),
                ("numpy.lib.npyio", "load"), ("builtins", "getattr"), ("numpy.testing", "assert_equal"),
            ]),
            st.tuples(names, names),
        ),
        protocol=st.sampled_from([2, 4]),
        nested=st.booleans(),
    )
    def prop(target, protocol, nested):
        count("cifar hostile pickles")
        module, name = target
        assume((module, name) not in cifar10._BatchUnpickler._ALLOWED)
        content = _pickle_calling(module, name, protocol)
        if nested:  # the call hidden inside an otherwise valid batch dict
            data, labels = fake.raw["test_batch"]
            valid = pickle.dumps({b"data": data, b"labels": labels.tolist()}, protocol=protocol)
            ops = list(pickletools.genops(valid))
            assert ops[-1][0].name == "STOP"
            content = valid[:-1] + content[2 if protocol >= 4 else 0:-1] + b"0."  # push, call, POP, then STOP
        result = _load_test_split(fake, content)
        assert isinstance(result, ValueError)
        assert "not allowed" in str(result)
        assert not _SENTINEL_CALLS

    prop()


@budget
def test_damaged_archive(fake, budget):
    content = fake.archive_bytes()
    test_data, test_labels = fake.raw["test_batch"]
    (fake.folder / "test_batch").unlink()  # so the archive is read

    @fuzz_settings(60, budget)
    @given(
        cut=st.one_of(st.none(), st.integers(0, len(content) - 1)),
        flips=st.lists(st.tuples(st.integers(0, len(content) - 1), st.integers(1, 255)), max_size=3),
        verify=st.booleans(),
    )
    def prop(cut, flips, verify):
        count("cifar archive damaged")
        damaged = bytearray(content if cut is None else content[:cut])
        for position, mask in flips:
            if position < len(damaged):
                damaged[position] ^= mask
        damaged = bytes(damaged)
        assume(damaged != content)
        fake.archive.write_bytes(damaged)
        try:
            x, y = load_cifar10(fake.root, train=False, verify=verify, normalize=False)
        except ValueError as exc:
            assert cifar10.ARCHIVE_NAME in str(exc), f"{type(exc).__name__} does not name the archive: {exc}"
            assert not verify or isinstance(exc, ChecksumError)
            return
        assert not verify
        # gzip checks a CRC-32 of the whole stream, so a damaged archive that reads must read the original.
        _assert_matches_raw((x, y), test_data, test_labels)

    prop()
