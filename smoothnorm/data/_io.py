"""File plumbing for the data package: cache folder, MD5 checks, atomic writes and a checked download."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file's MD5 differs from the published one; `path`, `expected` and `actual` say which and how."""

    def __init__(self, path: str | os.PathLike, expected: str, actual: str, advice: str = ""):
        self.path = path  # a file path, an archive member ("archive.tar.gz:member") or a URL
        self.expected = expected
        self.actual = actual
        message = f"MD5 mismatch for {os.fspath(path)}: expected {expected}, found {actual}."
        if advice:
            message += " " + advice
        super().__init__(message)


class DownloadError(OSError):
    """A download failed (no network, HTTP error, interrupted transfer); nothing was left in the cache."""


def data_home() -> Path:
    """The cache folder for data sets: `$SMOOTHNORM_DATA` if set, else `~/.cache/smoothnorm` (not created here)."""
    configured = os.environ.get("SMOOTHNORM_DATA")
    return Path(configured).expanduser() if configured else Path("~/.cache/smoothnorm").expanduser()


def md5_file(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks so large archives need no memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path: str | os.PathLike, expected: str, advice: str = "") -> None:
    """Raise ChecksumError naming `path` unless its MD5 equals `expected` (hex, case-insensitive)."""
    actual = md5_file(path)
    if actual != expected.lower():
        raise ChecksumError(path, expected.lower(), actual, advice)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", *, before_replace: Callable[[], None] | None = None
) -> Iterator[IO]:
    """Open a temporary file next to `path`; rename it onto `path` only if the block finishes without error.

    The temporary file is hidden (`.name.XXXX.part`) and lives in the same folder so the final `os.replace`
    is atomic: readers see the old file or the complete new one, never a half-written one. On any exception
    (including KeyboardInterrupt, or a full disk while writing or flushing) the temporary file is removed and
    `path` is untouched. `before_replace` runs once the new content is on disk, just before the rename (used
    to keep the previous version under another name). The folder is fsynced after the rename so the new
    name survives a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp_name, path)
        fsync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def fsync_folder(folder: Path) -> None:
    """Make a rename or link inside `folder` durable (where the platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Progress:
    """A one-line download progress display on stderr, redrawn at most every 0.2 s (every 10% when not a TTY)."""

    def __init__(self, name: str, total: int | None, enabled: bool, stream=None):
        self.name = name
        self.total = total
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.last_decile = -1

    def update(self, done: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if not final and now - self.last_draw < 0.2:
                return
        else:
            decile = int(10 * done / self.total) if self.total else -1
            if not final and decile == self.last_decile:
                return
            self.last_decile = decile
        self.last_draw = now
        rate = done / max(now - self.start, 1e-9) / 1e6
        if self.total:
            text = f"{self.name}: {done / 1e6:7.1f} / {self.total / 1e6:.1f} MB ({100 * done / self.total:3.0f}%)"
        else:
            text = f"{self.name}: {done / 1e6:7.1f} MB"
        text += f"  {rate:5.1f} MB/s"
        end = "\n" if final or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + text + end)
        self.stream.flush()


def download(
    url: str,
    dest: str | os.PathLike,
    md5: str | None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
    manual_help: str = "",
) -> Path:
    """Download `url` to `dest` through a hidden partial file, renamed onto `dest` only once its MD5 matches.

    Raises DownloadError (network failure, HTTP error, fewer bytes than the announced Content-Length) or
    ChecksumError (complete transfer with the wrong MD5); in both cases nothing is left next to `dest`.
    `manual_help` is appended to DownloadError messages (how to place the file by hand).
    """
    dest = Path(dest)
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        with contextlib.ExitStack() as stack:
            try:
                response = stack.enter_context(urllib.request.urlopen(url, timeout=timeout))
            except (OSError, http.client.HTTPException) as exc:  # URLError, HTTPError, timeouts
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"could not download {url}: {reason}. {manual_help}".rstrip()) from exc
            length_header = response.headers.get("Content-Length")
            total = int(length_header) if length_header and length_header.isdigit() else None
            bar = _Progress(dest.name, total, progress)
            with atomic_open(dest) as f:
                while True:
                    try:
                        # http.client returns a short read (not an exception) when the peer closes early,
                        # so completeness is checked against Content-Length below.
                        chunk = response.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise DownloadError(
                            f"download of {url} failed after {received} bytes: {exc}. {manual_help}".rstrip()
                        ) from exc
                    if not chunk:
                        break
                    f.write(chunk)  # a local write error (disk full) propagates as itself
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(received)
                bar.update(received, final=True)
                if total is not None and received != total:
                    raise DownloadError(
                        f"download of {url} was interrupted: received {received} of {total} bytes. "
                        f"Try again. {manual_help}".rstrip()
                    )
                actual = digest.hexdigest()
                if md5 is not None and actual != md5.lower():
                    raise ChecksumError(
                        url,
                        md5.lower(),
                        actual,
                        "The download was discarded; try again, or check the URL.",
                    )
    except BaseException:
        if progress and received and sys.stderr.isatty():
            sys.stderr.write("\n")  # end the unfinished progress line before the traceback
        raise
    return dest
