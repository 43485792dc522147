"""Run leases: a file in a run directory that makes sure one process trains the run at a time.

The lease file (`lease.json`) holds the owner's host, pid, a random token, and its start and heartbeat times
(seconds since the epoch). It is created atomically and exclusively: the full content is written and fsynced under
a unique temporary name, then hard-linked to `lease.json` (`os.link` fails when the name exists, also on NFS), so a
reader never sees a half-written lease. A background thread rewrites the heartbeat in place, through the owner's
own file descriptor, every `heartbeat_every` seconds.

A lease is stale when its heartbeat is older than `stale_after` seconds, or when its host is this host and its pid
is not alive. A stale lease is taken over atomically: takers serialise on a takeover guard file (created
exclusively); under it, the taker reads the lease again and, if it is still the stale one, renames it to a name
unique to itself and deletes it, then creates its own lease like anyone else. The owner notices a lost lease (its
file is no longer `lease.json`) at its next heartbeat, and `Lease.check()` raises `LeaseLost` in the training loop.

Clocks: the heartbeat age compares the writer's wall clock with the reader's, so hosts that share a run folder
need synchronised clocks (NTP) to within a small part of `stale_after`.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

from smoothnorm.data._io import fsync_folder

LEASE_NAME = "lease.json"
HEARTBEAT_EVERY = 10.0  # seconds between heartbeats (at most; a quarter of stale_after when that is shorter)
STALE_AFTER = 120.0  # a lease with no heartbeat for this long is taken over
_RECORD_BYTES = 512  # the lease is padded to a fixed size so an in-place heartbeat rewrite keeps its length
_KEYS = ("host", "pid", "token", "start", "heartbeat")

# Tokens of the leases this process holds: a lease naming our own host and pid but a token we do not hold was left
# by an earlier attempt in this process, so it is stale.
_HELD: set[str] = set()
_HELD_LOCK = threading.Lock()


class LeaseError(RuntimeError):
    """A lease file cannot be used (corrupt, unwritable); the message names the file."""


class LeaseHeld(LeaseError):
    """The run is being trained by a live owner elsewhere; `owner` is its lease record."""

    def __init__(self, path: Path, owner: dict):
        self.path, self.owner = path, owner
        age = time.time() - owner["heartbeat"]
        super().__init__(f"{path}: run is being trained by pid {owner['pid']} on {owner['host']} "
                         f"(last heartbeat {age:.0f}s ago)")


class LeaseLost(LeaseError):
    """Another process took over this lease (ours was judged stale); training must stop."""


def _hostname() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _encode(record: dict) -> bytes:
    data = json.dumps(record).encode()
    if len(data) >= _RECORD_BYTES:
        raise LeaseError(f"lease record too long ({len(data)} bytes): host name {record['host']!r}")
    return data + b" " * (_RECORD_BYTES - 1 - len(data)) + b"\n"


def read_lease(path: str | os.PathLike, *, retries: int = 5) -> dict | None:
    """The lease record at `path`, or None when there is none. Raises LeaseError naming the file when it is corrupt.

    A read that catches a heartbeat rewrite half-way is retried a few times before the file counts as corrupt.
    """
    path = Path(path)
    for attempt in range(retries + 1):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise LeaseError(f"{path}: cannot read lease file: {err}") from err
        try:
            record = json.loads(raw.decode())
            if (isinstance(record, dict) and all(k in record for k in _KEYS)
                    and isinstance(record["pid"], int) and isinstance(record["heartbeat"], (int, float))):
                return record
            problem = f"expected a JSON object with keys {', '.join(_KEYS)}"
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            problem = f"not JSON ({err})"
        if attempt < retries:
            time.sleep(0.05 * (attempt + 1))
    raise LeaseError(f"{path}: corrupt lease file: {problem}; delete it if no process is training this run")


def terminate_as_exit() -> dict:
    """Turn SIGTERM (a batch system's walltime, `kill`, an executor ending its worker processes) and SIGHUP (a
    closed terminal) into SystemExit in this process, so its leases are released on the way out. Returns the
    previous handlers (none when not called from the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signals = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    return {signum: signal.signal(signum, handler) for signum in signals}


def lease_is_stale(record: dict, stale_after: float = STALE_AFTER, now: float | None = None) -> bool:
    """True when the lease has no heartbeat for `stale_after` seconds, or names a dead pid on this host."""
    now = time.time() if now is None else now
    if now - record["heartbeat"] > stale_after:
        return True
    if record["host"] == _hostname():
        if record["pid"] == os.getpid():
            with _HELD_LOCK:
                return record["token"] not in _HELD
        return not _pid_alive(record["pid"])
    return False


class Lease:
    """The lease of one run directory. `acquire()` takes it (or raises LeaseHeld), `release()` gives it back.

    Use as a context manager after acquiring, or call `release()` in a `finally`. `check()` raises LeaseLost when
    another process took the lease over.
    """

    def __init__(self, folder: str | os.PathLike, *, stale_after: float = STALE_AFTER,
                 heartbeat_every: float | None = None):
        if not stale_after > 0:
            raise ValueError(f"stale_after: expected a positive number of seconds, got {stale_after!r}")
        if heartbeat_every is None:
            heartbeat_every = min(HEARTBEAT_EVERY, stale_after / 4)
        if not 0 < heartbeat_every < stale_after:
            raise ValueError(f"heartbeat_every: expected a positive number below stale_after ({stale_after}), "
                             f"got {heartbeat_every!r}")
        self.path = Path(folder) / LEASE_NAME
        self.stale_after = float(stale_after)
        self.heartbeat_every = float(heartbeat_every)
        self.record: dict | None = None
        self.took_over: dict | None = None  # the stale record this lease replaced, if any
        self._fd: int | None = None
        self._lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking ------------------------------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Take the lease if it is free or stale; False when a live owner holds it. Raises LeaseError if corrupt."""
        if self._fd is not None:
            raise LeaseError(f"{self.path}: already held by this Lease")
        for _ in range(100):
            if self._create():
                return True
            record = read_lease(self.path)
            if record is None:
                continue  # released between our attempt and the read: try again
            if not lease_is_stale(record, self.stale_after):
                self._owner = record
                return False
            taken = self._remove_stale(record)
            if taken is None:
                time.sleep(0.02)  # another process is taking it over right now
            elif taken:
                self.took_over = record
        raise LeaseError(f"{self.path}: could not take the lease after 100 attempts (heavy contention)")

    def acquire(self, *, wait: bool = False, poll: float = 1.0, timeout: float | None = None,
                on_wait=None) -> Lease:
        """Take the lease. Without `wait`, raise LeaseHeld when a live owner holds it; with `wait`, poll every
        `poll` seconds (calling `on_wait(owner_record)` once) until it is released or goes stale, up to `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        told = False
        while not self.try_acquire():
            if not wait or (deadline is not None and time.monotonic() > deadline):
                raise LeaseHeld(self.path, self._owner)
            if on_wait is not None and not told:
                on_wait(self._owner)
                told = True
            time.sleep(poll)
        return self

    def _create(self) -> bool:
        """Create lease.json exclusively with our complete record; False if the name exists."""
        token = uuid.uuid4().hex
        now = time.time()
        record = {"host": _hostname(), "pid": os.getpid(), "token": token, "start": now, "heartbeat": now}
        tmp = self.path.with_name(f".{LEASE_NAME}.{token}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        created = False
        with _HELD_LOCK:
            _HELD.add(token)  # before the lease is visible, or a thread of ours could judge it stale
        try:
            os.write(fd, _encode(record))
            os.fsync(fd)
            try:
                os.link(tmp, self.path)
                created = True
            except FileExistsError:
                pass
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                # A file system without hard links: rename is atomic but not exclusive, so check first.
                if not self.path.exists():
                    os.rename(tmp, self.path)
                    created = True
        finally:
            tmp.unlink(missing_ok=True)
            if not created:
                os.close(fd)
                with _HELD_LOCK:
                    _HELD.discard(token)
        if not created:
            return False
        self._fd, self.record, self._lost = fd, record, False
        fsync_folder(self.path.parent)
        self._start_heartbeat()
        return True

    def _remove_stale(self, record: dict) -> bool | None:
        """Move the stale lease `record` out of the way. True when we moved it, False when it had changed already,
        None when another taker holds the takeover guard.

        Takers serialise on a guard file (`.lease.json.takeover`, created exclusively): under it, the lease is read
        again and moved aside only if it is still the stale one, so two takers never move each other's fresh lease.
        """
        guard = self.path.with_name(f".{LEASE_NAME}.takeover")
        if not self._take_guard(guard):
            return None
        try:
            current = read_lease(self.path)
            if current is None or current["token"] != record["token"]:
                return False
            aside = self.path.with_name(f".{LEASE_NAME}.stale-{uuid.uuid4().hex}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return False
            try:
                moved = read_lease(aside)
            except LeaseError:
                moved = None
            if moved is not None and moved["token"] != record["token"]:
                # The stale owner released and a new lease was made between our read and the rename: put it back
                # (same inode, so its owner never notices).
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                return False
            aside.unlink(missing_ok=True)
            return True
        finally:
            guard.unlink(missing_ok=True)

    def _take_guard(self, guard: Path) -> bool:
        """Create the takeover guard exclusively; a guard left by a taker that died (dead pid on this host, or
        older than stale_after) is removed first."""
        content = json.dumps({"host": _hostname(), "pid": os.getpid(), "time": time.time()}).encode()
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(guard.read_bytes() or b"{}")
                age = time.time() - guard.stat().st_mtime
            except (OSError, ValueError):
                return False  # being written or just removed: look again soon
            dead = held.get("host") == _hostname() and isinstance(held.get("pid"), int) and not _pid_alive(held["pid"])
            if dead or age > self.stale_after:
                aside = guard.with_name(f"{guard.name}.stale-{uuid.uuid4().hex}")
                try:
                    os.rename(guard, aside)
                    aside.unlink()
                except FileNotFoundError:
                    pass
            return False
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        return True

    # -- holding -----------------------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat {self.path.parent.name}",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                self.heartbeat()
            except OSError:
                pass  # a transient file-system error: the next beat tries again; staleness has a wide margin

    def _owns_name(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    def heartbeat(self) -> None:
        """Refresh the heartbeat time now (the background thread calls this every `heartbeat_every` s)."""
        if self._fd is None or self._lost:
            return
        if not self._owns_name():
            time.sleep(0.2)  # a taker may be putting our lease back (see _remove_stale)
            if not self._owns_name():
                self._lost = True
                return
        self.record["heartbeat"] = time.time()
        os.pwrite(self._fd, _encode(self.record), 0)
        os.fsync(self._fd)

    @property
    def held(self) -> bool:
        return self._fd is not None and not self._lost

    def check(self) -> None:
        """Raise LeaseLost when another process took this lease over."""
        if self._lost:
            raise LeaseLost(f"{self.path}: lease taken over by another process (ours was judged stale: no "
                            f"heartbeat for {self.stale_after:.0f}s); stopping so the run is trained once")

    def release(self) -> None:
        """Stop the heartbeat and delete the lease file if it is still ours."""
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            if self._owns_name():
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
            with _HELD_LOCK:
                _HELD.discard(self.record["token"])

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
