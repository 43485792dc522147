"""Fixtures for the data tests: a small CIFAR-10 look-alike in the official format, with its checksums patched in."""

import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

import smoothnorm.data.cifar10 as cifar10

PER_TRAIN_BATCH = 12
N_TEST = 10


def _batch_bytes(data: np.ndarray, labels: list[int], name: str) -> bytes:
    # Protocol 2 and bytes keys, as in the official (Python 2) files.
    entry = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * len(labels)}
    return pickle.dumps(entry, protocol=2)


class FakeCifar:
    """Raw contents of a fake archive, and where its files were written."""

    def __init__(self, root: Path, rng: np.random.Generator):
        self.root = root
        self.files: dict[str, bytes] = {}
        self.raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in (*cifar10.TRAIN_FILES, *cifar10.TEST_FILES):
            n = N_TEST if name == "test_batch" else PER_TRAIN_BATCH
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, n).tolist()
            self.raw[name] = (data, np.array(labels, dtype=np.int64))
            self.files[name] = _batch_bytes(data, labels, name)
        meta = {b"label_names": [c.encode() for c in cifar10.CLASSES], b"num_cases_per_batch": PER_TRAIN_BATCH}
        self.files["batches.meta"] = pickle.dumps(meta, protocol=2)
        self.folder = root / cifar10.FOLDER_NAME
        self.archive = root / cifar10.ARCHIVE_NAME

    def raw_split(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        names = cifar10.TRAIN_FILES if train else cifar10.TEST_FILES
        return (
            np.concatenate([self.raw[n][0] for n in names]),
            np.concatenate([self.raw[n][1] for n in names]),
        )

    def write_folder(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, content in self.files.items():
            (self.folder / name).write_bytes(content)
        return self.folder

    def archive_bytes(self) -> bytes:
        """The tar.gz bytes; gzip mtime fixed at 0 so repeated calls give the same bytes (and MD5)."""
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
            for name, content in self.files.items():
                info = tarfile.TarInfo(f"{cifar10.FOLDER_NAME}/{name}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        return buffer.getvalue()

    def write_archive(self) -> Path:
        self.archive.write_bytes(self.archive_bytes())
        return self.archive


@pytest.fixture
def fake_cifar(tmp_path, rng, monkeypatch) -> FakeCifar:
    """A fake CIFAR-10 (12 images per training batch, 10 test images) whose MD5s replace the published ones."""
    fake = FakeCifar(tmp_path / "root", rng)
    fake.root.mkdir()
    monkeypatch.setattr(cifar10, "FILE_MD5", {k: hashlib.md5(v).hexdigest() for k, v in fake.files.items()})
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(fake.archive_bytes()).hexdigest())
    return fake
