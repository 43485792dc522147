"""Numba kernels: pure forward/backward functions on C-contiguous float32/float64 arrays.

Each module exposes validating public functions; the `@njit(cache=True)` kernels behind them are private.
`conv/` holds the convolution algorithms (im2col, Winograd, their per-thread scratch memory), `norm/` the
normalization family; `linear`, `pool`, `activation`, `loss` and `optim` the rest; `_checks` the array checks
every public function shares, `_blas` the BLAS calls. Kernels import nothing else from smoothnorm.

Numba's on-disk cache checks only the source file of the function it compiled, but a cached kernel also contains
the helpers it calls from other files (the Lp norms' kernels hold BatchNorm's block helpers). After an edit to one
file, another would silently keep running the old helpers. So on import, a digest of every kernel source (this
folder and its subfolders) is compared with the one stored beside each folder's cache, and on a mismatch that
folder's cache files are deleted (they are rebuilt on first use).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_STAMP = "smoothnorm-kernels.sha256"


def _source_digest(folder: Path) -> str:
    """SHA-256 over the relative paths and contents of the kernel sources in `folder` and its subfolders."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _drop_stale_cache(cache_dir: Path, digest: str, modules: list[str]) -> bool:
    """Delete the Numba cache files (index .nbi, data .nbc) of `modules` in cache_dir unless its stamp equals
    `digest`, then write the stamp. Returns True when files were dropped (or there was no stamp yet)."""
    stamp = cache_dir / _STAMP
    try:
        if stamp.read_text().strip() == digest:
            return False
    except OSError:
        pass
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for path in cache_dir.iterdir():
            if path.suffix in (".nbi", ".nbc") and path.name.split(".", 1)[0] in modules:
                path.unlink(missing_ok=True)
        tmp = cache_dir / f"{_STAMP}.{os.getpid()}.tmp"
        tmp.write_text(digest + "\n")
        os.replace(tmp, stamp)
    except OSError:
        pass  # a read-only or missing cache folder: Numba then compiles in memory or elsewhere
    return True


def _kernel_cache_dir(source: Path | None = None) -> Path | None:
    """The folder where Numba caches functions defined in `source` (default: this file), by Numba's own locators."""
    try:
        from numba.core.caching import CacheImpl

        source = Path(__file__) if source is None else source
        for locator in CacheImpl._locator_classes:
            found = locator.from_function(_source_digest, str(source))
            if found is not None:
                return Path(found.get_cache_path())
    except Exception:  # a Numba without this (private) API: leave its cache alone
        return None
    return None


def _kernel_folders() -> list[Path]:
    """This package's folder and its subpackages' folders: each has its own Numba cache folder."""
    root = Path(__file__).parent
    return [root, *sorted(p.parent for p in root.glob("*/__init__.py"))]


def _check_cache() -> None:
    digest = _source_digest(Path(__file__).parent)
    for folder in _kernel_folders():
        cache_dir = _kernel_cache_dir(folder / "__init__.py")
        if cache_dir is not None:
            modules = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"]
            _drop_stale_cache(cache_dir, digest, modules)


_check_cache()
