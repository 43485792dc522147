"""CIFAR-10 in its official Python format: read (folder or tarball), verify, download.

Layout follows torchvision: `root` is the folder that holds `cifar-10-batches-py/` (the extracted archive) and/or
`cifar-10-python.tar.gz` (the archive, read in place without extracting). Batch files are Python pickles of dicts
with `b"data"` (uint8, (n, 3072): 1024 red, 1024 green, 1024 blue values, row-major) and `b"labels"` (n ints).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import struct
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

from ._io import _CHUNK, ChecksumError, check_md5, data_home, download, md5_file
from .normalization import IMAGE_SCALES, image_scale

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
# Published MD5 of the archive, and of each file inside it (the table torchvision checks in
# torchvision/datasets/cifar.py). Module-level so tests can substitute a fake archive's checksums.
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FILE_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
TRAIN_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
TEST_FILES = ("test_batch",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)

# Per-channel (R, G, B) mean and standard deviation of all pixels of the 50,000 training images, on the 0..1
# scale (the 0..255 values divided by 255). These are the widely used training-set constants (0.4914, 0.4822,
# 0.4465) / (0.2470, 0.2435, 0.2616): the std is over pixels (population std of 50,000 x 1024 values per
# channel). The also common (0.2023, 0.1994, 0.2010) is a different quantity (close to the mean of per-image
# stds) and is not used. Test images are normalized with the training constants too.
MEAN = np.array([125.30691805, 122.95039414, 113.86538318]) / 255.0
STD = np.array([62.99321928, 62.08870764, 66.70489964]) / 255.0

_ROW_LENGTH = 3 * 32 * 32


def _manual_help(root: Path, url: str, md5: str) -> str:
    return (
        f"Without network access, download {url} by other means (MD5 {md5}) and copy it to "
        f"{root / ARCHIVE_NAME}, or extract it so that {root / FOLDER_NAME}/data_batch_1 ... test_batch "
        f"exist; then pass root={str(root)!r}. Set $SMOOTHNORM_DATA to use another cache folder."
    )


def fetch_cifar10(
    root: str | os.PathLike | None = None,
    progress: bool = True,
    url: str | None = None,
    md5: str | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """Download the CIFAR-10 archive into `root` (default: `data_home()`) unless a verified copy is there.

    The transfer goes to a hidden partial file that is renamed to `root/cifar-10-python.tar.gz` only after its
    MD5 matches; a failed, interrupted or wrong download leaves nothing behind. An existing archive with the
    wrong MD5 is downloaded again (and replaced atomically). Progress goes to stderr when `progress`.
    `url` and `md5` default to the official `URL` and `ARCHIVE_MD5`.
    Returns the archive's path. Raises DownloadError (with manual instructions) or ChecksumError.
    """
    root = Path(root).expanduser() if root is not None else data_home()
    url = URL if url is None else url
    md5 = ARCHIVE_MD5 if md5 is None else md5
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    if len(md5) != 32 or not all(c in "0123456789abcdefABCDEF" for c in md5):
        raise ValueError(f"md5 must be 32 hexadecimal digits, got {md5!r}")
    dest = root / ARCHIVE_NAME
    if dest.is_file():
        actual = md5_file(dest)
        if actual == md5.lower():
            return dest
        if progress:
            print(f"{dest} has MD5 {actual}, expected {md5}: downloading it again", file=sys.stderr)
    if progress:
        print(f"downloading {url} to {dest}", file=sys.stderr)
    return download(url, dest, md5, progress=progress, timeout=timeout, manual_help=_manual_help(root, url, md5))


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and NumPy arrays, so a tampered file cannot run code (verify=False)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch file")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # NumPy 2 moved numpy.core
        return super().find_class(module, name)


def _parse_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pickled batch into (uint8 (n, 3072), int64 (n,)), checking types, shapes and label range."""
    advice = "Delete it and download or extract the archive again (see fetch_cifar10)."
    try:
        # encoding="bytes": the official batches were pickled by Python 2, their str keys become bytes.
        entry = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:
        raise ValueError(f"{source} is not a readable CIFAR-10 batch (truncated or corrupt: {exc}). {advice}") from exc
    if not isinstance(entry, dict):
        raise ValueError(f"{source} should hold a dict with 'data' and 'labels', found {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    missing = [key for key in ("data", "labels") if key not in entry]
    if missing:
        raise ValueError(f"{source} lacks the key(s) {missing}; found keys {sorted(map(str, entry))}. {advice}")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW_LENGTH:
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{source}: 'data' should be a uint8 array of shape (n, {_ROW_LENGTH}), found {found}")
    labels = np.asarray(entry["labels"])
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(
            f"{source}: 'labels' should be {data.shape[0]} integers (one per image), "
            f"found {labels.dtype} array of shape {labels.shape}"
        )
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        raise ValueError(
            f"{source}: labels must lie in [0, {NUM_CLASSES}), found {labels[bad][:5].tolist()} "
            f"({int(bad.sum())} out of range). {advice}"
        )
    return data, labels


def _read_folder(folder: Path, names: tuple[str, ...], verify: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    batches = []
    for name in names:
        path = folder / name
        if verify:
            check_md5(
                path,
                FILE_MD5[name],
                "The file is corrupt or not the official one: delete it and extract the archive again (or "
                "`smoothnorm data fetch`), or read it anyway with verify=False (Python) or `--set "
                "data_verify=false` (a spec's runs).",
            )
        batches.append(_parse_batch(path.read_bytes(), str(path)))
    return batches


def _read_archive(archive: Path, names: tuple[str, ...], verify: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    if verify:
        check_md5(
            archive,
            ARCHIVE_MD5,
            "The archive is incomplete or not the official one: delete it and download it again "
            "(`smoothnorm data fetch`, or fetch_cifar10), or read it anyway with verify=False (Python) or `--set "
            "data_verify=false` (a spec's runs).",
        )
    raw: dict[str, bytes] = {}
    try:
        with open(archive, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        # Stream mode reads the archive once, front to back, without extracting anything to disk. tarfile's own
        # gzip reader never checks the gzip CRC-32 (and stops at the end-of-archive blocks), so a flipped byte in a
        # stored deflate block would read as a different pixel: gzip files go through the gzip module instead,
        # read to the end so that its CRC-32 and length checks run.
        with contextlib.ExitStack() as stack:
            if gzipped:
                stream = stack.enter_context(gzip.open(archive, "rb"))
                tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|"))
            else:
                stream = None
                tar = stack.enter_context(tarfile.open(archive, "r|*"))
            for member in tar:
                parent, _, base = member.name.rpartition("/")
                if member.isfile() and base in names and parent.rstrip("/").endswith(FOLDER_NAME):
                    raw[base] = tar.extractfile(member).read()
            if stream is not None:
                while stream.read(_CHUNK):
                    pass
    # tarfile's stream reader lets some truncations escape as TypeError (ord() of an empty read in the gzip
    # header) or struct.error; everything raised in this block comes from reading the damaged file.
    except (tarfile.TarError, EOFError, zlib.error, OSError, TypeError, struct.error, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{archive} is not a readable tar.gz archive (truncated or corrupt: {exc}). Delete it and download "
            "it again (fetch_cifar10)."
        ) from exc
    missing = [name for name in names if name not in raw]
    if missing:
        raise ValueError(f"{archive} has no member(s) {FOLDER_NAME}/{missing}; it is not the CIFAR-10 archive.")
    return [_parse_batch(raw[name], f"{archive}:{FOLDER_NAME}/{name}") for name in names]


def _pixel_table(scale: str, dtype: np.dtype) -> np.ndarray:
    """(3, 256) lookup from a uint8 pixel value to its float value per channel, computed once in float64."""
    values = np.arange(256, dtype=np.float64)
    if scale == "raw":
        return np.broadcast_to(values, (3, 256)).astype(dtype)
    values /= 255.0
    if scale == "normalized":
        return ((values[None, :] - MEAN[:, None]) / STD[:, None]).astype(dtype)
    return np.broadcast_to(values, (3, 256)).astype(dtype)


def to_float_images(
    data: np.ndarray, normalize: bool = True, dtype: DTypeLike = np.float32, *, scale: str | None = None
) -> np.ndarray:
    """Turn CIFAR rows (uint8, (n, 3072)) or images ((n, 3, 32, 32)) into float NCHW images.

    normalize=True: `(pixel / 255 - MEAN[c]) / STD[c]` per channel; False: `pixel / 255` in [0, 1].
    scale: "normalized", "unit" or "raw" (0..255); when given it replaces `normalize`.
    Each value is computed in float64 and rounded once to `dtype`.
    """
    scale = image_scale(scale, normalize)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.shape[1:] not in ((_ROW_LENGTH,), IMAGE_SHAPE):
        raise ValueError(
            f"data should be uint8 of shape (n, {_ROW_LENGTH}) or (n, 3, 32, 32), found {data.dtype} {data.shape}"
        )
    images = data.reshape((len(data), *IMAGE_SHAPE))
    table = _pixel_table(scale, dtype)
    out = np.empty(images.shape, dtype=dtype)
    for start in range(0, len(images), 1024):  # blocks that stay in cache: about 2x faster than whole channels
        block = slice(start, start + 1024)
        for c in range(3):
            np.take(table[c], images[block, c], out=out[block, c])
    return out


def _find_source(root: Path, names: tuple[str, ...]) -> tuple[str, Path] | None:
    """Where to read `names` from: ('folder', path) or ('archive', path), or None if nothing is there."""
    for folder in (root / FOLDER_NAME, root):
        if folder.is_dir() and all((folder / name).is_file() for name in names):
            return "folder", folder
    for archive in (root / ARCHIVE_NAME, root):
        if archive.is_file():
            return "archive", archive
    return None


def load_cifar10(
    root: str | os.PathLike | None = None,
    train: bool = True,
    verify: bool = True,
    *,
    normalize: bool = True,
    dtype: DTypeLike = np.float32,
    download: bool = False,
    scale: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load the CIFAR-10 training (50,000) or test (10,000) set as `(x, y)`.

    root: folder holding `cifar-10-batches-py/` or `cifar-10-python.tar.gz` (default `data_home()`); the
        batches folder or the archive itself are accepted too. The folder is preferred when complete.
    verify: check MD5s (each batch file read from the folder, or the whole archive) against `FILE_MD5` /
        `ARCHIVE_MD5`, raising ChecksumError on mismatch. False skips the check (contents are still validated).
    normalize: per-channel standardisation with the training-set `MEAN` and `STD`; False gives pixel / 255.
    scale: "normalized", "unit" (pixel / 255) or "raw" (pixel values 0..255); when given it replaces `normalize`.
    download: fetch the archive with `fetch_cifar10(root)` when nothing is found.
    Returns x: `dtype` (N, 3, 32, 32) and y: int64 (N,) in [0, 10).
    """
    scale = image_scale(scale, normalize)
    root = Path(root).expanduser() if root is not None else data_home()
    names = TRAIN_FILES if train else TEST_FILES
    source = _find_source(root, names)
    if source is None and download:
        fetch_cifar10(root)
        source = _find_source(root, names)
    if source is None:
        if (root / FOLDER_NAME).is_dir():
            missing = [name for name in names if not (root / FOLDER_NAME / name).is_file()]
            found = f"{FOLDER_NAME}/ without {', '.join(missing)}"
        elif root.is_dir():
            found = ", ".join(sorted(p.name for p in root.iterdir())[:10]) or "an empty folder"
        else:
            found = "no such folder"
        raise FileNotFoundError(
            f"CIFAR-10 not found in {root}: looked for {FOLDER_NAME}/ with {', '.join(names)} and for "
            f"{ARCHIVE_NAME}, found {found}. Download it with `smoothnorm data fetch cifar10` or "
            f"load_cifar10(..., download=True). {_manual_help(root, URL, ARCHIVE_MD5)}"
        )
    kind, path = source
    batches = (_read_folder if kind == "folder" else _read_archive)(path, names, verify)
    data = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return to_float_images(data, dtype=dtype, scale=scale), labels


__all__ = [
    "ARCHIVE_MD5",
    "CLASSES",
    "FILE_MD5",
    "IMAGE_SCALES",
    "MEAN",
    "STD",
    "URL",
    "ChecksumError",
    "fetch_cifar10",
    "load_cifar10",
    "to_float_images",
]
