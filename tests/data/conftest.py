"""Fixtures for the data tests: a small CIFAR-10 look-alike in the official format, with its checksums patched in."""

import hashlib

import pytest

import smoothnorm.data.cifar10 as cifar10
from tests.helpers import FakeCifar

PER_TRAIN_BATCH = 12
N_TEST = 10






@pytest.fixture
def fake_cifar(tmp_path, rng, monkeypatch) -> FakeCifar:
    """A fake CIFAR-10 (12 images per training batch, 10 test images) whose MD5s replace the published ones."""
    fake = FakeCifar(tmp_path / "root", rng)
    fake.root.mkdir()
    monkeypatch.setattr(cifar10, "FILE_MD5", {k: hashlib.md5(v).hexdigest() for k, v in fake.files.items()})
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(fake.archive_bytes()).hexdigest())
    return fake
