"""Numba kernels: pure forward/backward functions on C-contiguous float32/float64 arrays.

Each module exposes validating public functions; the `@njit(cache=True)` kernels behind them are private.
Kernels import nothing else from smoothnorm.

Numba's on-disk cache checks only the source file of the function it compiled, but a cached kernel also contains
the helpers it calls from other files (lp_norm's kernels hold norm.py's block helpers). After an edit to norm.py,
lp_norm would silently keep running the old helpers. So on import, a digest of every kernel source is compared with
the one stored beside the cache, and on a mismatch this package's cache files are deleted (they are rebuilt on
first use).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_STAMP = "smoothnorm-kernels.sha256"


def _source_digest(folder: Path) -> str:
    """SHA-256 over the names and contents of the kernel sources in `folder`."""
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        h.update(path.name.encode())
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


def _kernel_cache_dir() -> Path | None:
    """The folder where Numba caches functions defined in this package (Numba's own choice of locator)."""
    try:
        from numba.core.caching import CacheImpl

        source = Path(__file__)
        for locator in CacheImpl._locator_classes:
            found = locator.from_function(_source_digest, str(source))
            if found is not None:
                return Path(found.get_cache_path())
    except Exception:  # a Numba without this (private) API: leave its cache alone
        return None
    return None


def _check_cache() -> None:
    folder = Path(__file__).parent
    cache_dir = _kernel_cache_dir()
    if cache_dir is not None:
        modules = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"]
        _drop_stale_cache(cache_dir, _source_digest(folder), modules)


_check_cache()
