"""Helpers shared by the tests: repository paths, gradient checks, thread-count checks, run-folder comparisons,
small models and batches, a fake CIFAR-10. Reference implementations live in tests/reference.py; the PyTorch twins
of our networks in tests/torch_twin.py (it needs torch)."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numba
import numpy as np

import smoothnorm.data.cifar10 as cifar10
from smoothnorm import optim
from smoothnorm.nn import models
from smoothnorm.runs.store import CHECKPOINT, load_run, read_npz
from tests.reference import relative_error

# The repository's root folder (experiments/, docs/, README.md).
ROOT = Path(__file__).resolve().parent.parent
# The data tests' fake CIFAR-10: images per training batch, test images.
PER_TRAIN_BATCH = 12
N_TEST = 10


def vgg_conv_shapes(name: str = "vgg16", width: float = 1.0) -> list[tuple[int, int, int]]:
    """The distinct (c_in, c_out, map size) of a CIFAR VGG's 3x3 convolutions, from models.VGG_CONFIGS."""
    return list(dict.fromkeys(models.conv_shapes(name, width)))


def at_thread_counts(compute):
    """compute() with 1 Numba thread and with NUMBA_NUM_THREADS (one run if they are equal), the thread count
    restored afterwards: the list of its results."""
    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results.append(compute())
    finally:
        numba.set_num_threads(before)
    return results


def assert_same_at_thread_counts(compute):
    """compute() returns an array, a scalar or a tuple of them: each must be bit-identical at every thread count."""
    results = [r if isinstance(r, tuple) else (r,) for r in at_thread_counts(compute)]
    for result in results[1:]:
        assert len(result) == len(results[0])
        for a, b in zip(result, results[0]):
            np.testing.assert_array_equal(a, b)


def assert_out_and_in_place(kernel, args: dict, in_place: tuple[str, ...] = ()) -> None:
    """A kernel's `out=`: kernel(**args, out=buffer) returns the buffer itself holding the bits of kernel(**args)
    (its first result, for a kernel that returns a tuple); and for each argument named in `in_place`, passing a
    copy of it as its own `out` gives those bits too."""

    def first(result):
        return result[0] if isinstance(result, tuple) else result

    expected = first(kernel(**args))
    buffer = np.full_like(expected, np.nan)
    assert first(kernel(**args, out=buffer)) is buffer
    np.testing.assert_array_equal(buffer, expected)
    for name in in_place:
        own = np.array(args[name], copy=True)
        assert first(kernel(**{**args, name: own}, out=own)) is own
        np.testing.assert_array_equal(own, expected)


def directional_fd(net, x, y, direction, eps=1e-6, mode="probe"):
    """Central difference of the loss along `direction` in parameter space (probe mode: the noise stays fixed)."""
    w0 = net.params.copy()
    net.params[:] = w0 + eps * direction
    fp = net.loss(x, y, mode=mode)
    net.params[:] = w0 - eps * direction
    fm = net.loss(x, y, mode=mode)
    net.params[:] = w0
    return (fp - fm) / (2 * eps)


def check_gradient(net, x, y, rng, n_coords=24, n_dirs=3):
    """Analytic gradient (probe mode) against central differences: random coordinates and unit directions."""
    _, g = net.loss_and_grad(x, y, mode="probe")
    g = g.copy()
    analytic, numeric = [], []
    for i in rng.choice(net.num_params, size=min(n_coords, net.num_params), replace=False):
        e = np.zeros(net.num_params)
        e[i] = 1.0
        analytic.append(g[i])
        numeric.append(directional_fd(net, x, y, e))
    for _ in range(n_dirs):
        # Unit directions: a step of eps * ||d|| ~ 2e-4 for unnormalized d would cross ReLU / max-pool kinks.
        d = rng.standard_normal(net.num_params)
        d /= np.linalg.norm(d)
        analytic.append(g @ d)
        numeric.append(directional_fd(net, x, y, d))
    return relative_error(analytic, numeric)


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same results: status, every metric but wall time, every probe array, parameters
    and optimizer state, bit for bit."""
    ra, rb = load_run(a), load_run(b)
    assert ra.status == rb.status and ra.status in ("finished", "diverged")
    assert ra.metrics.keys() == rb.metrics.keys()
    for key in ra.metrics:
        if key != "time":
            np.testing.assert_array_equal(ra.metrics[key], rb.metrics[key], err_msg=f"{a.name} metric {key}")
    assert ra.probes.keys() == rb.probes.keys()
    for key in ra.probes:
        np.testing.assert_array_equal(ra.probes[key], rb.probes[key], err_msg=f"{a.name} probe {key}")
    ca, cb = read_npz(a / CHECKPOINT), read_npz(b / CHECKPOINT)
    for key in ca:
        if key.startswith(("net/", "optim/", "probe/")):
            np.testing.assert_array_equal(ca[key], cb[key], err_msg=f"{a.name} checkpoint {key}")


def assert_same_roots(a_root: Path, b_root: Path) -> None:
    names = sorted(p.name for p in a_root.iterdir())
    assert names and names == sorted(p.name for p in b_root.iterdir())
    for name in names:
        assert_same_run(a_root / name, b_root / name)
    assert not [p for p in b_root.rglob("*.part")], "a temporary file was left behind"


class _Crash(BaseException):
    """Stands in for the process dying (not an Exception, so nothing on the way catches it)."""


def _interrupt_at(monkeypatch, step: int) -> None:
    from smoothnorm.train.loop import Trainer

    real = Trainer.train_step

    def train_step(self):
        if self.step == step:
            raise _Crash
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def stepped(net, x, y, lr=0.01, steps=1):
    """Take SGD training steps so running statistics, counters and grads are non-trivial."""
    opt = optim.SGD(lr=lr)
    for _ in range(steps):
        net.loss_and_grad(x, y, mode="train")
        opt.step(net.params, net.grads)
    net.loss_and_grad(x, y, mode="train")
    return net


def regression_batch(rng, n=20, in_dim=5, out_dim=3):
    x = rng.standard_normal((n, in_dim))
    t = rng.standard_normal((n, out_dim))
    return x, t


def linear_model(in_dim=5, out_dim=3, dtype=np.float64, seed=0):
    """A 1-layer DLN: y = W x, loss sum ||W x - t||^2, Hessian 2 I (kron) X^T X."""
    return models.dln(1, 4, in_dim=in_dim, out_dim=out_dim, dtype=dtype, seed=seed)


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
