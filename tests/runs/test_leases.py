"""Run leases: exclusive creation, heartbeat, live leases respected, stale ones (dead pid, old heartbeat) taken over
once, corrupt files named; and execute_run under a lease."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from smoothnorm.runs import leases
from smoothnorm.runs.leases import Lease, LeaseError, LeaseHeld, LeaseLost, read_lease
from smoothnorm.runs.runner import execute_run
from smoothnorm.runs.spec import load_spec
from tests.helpers import ROOT


def _write_record(folder: Path, **fields) -> dict:
    now = time.time()
    record = {"host": socket.gethostname(), "pid": os.getpid(), "token": "f" * 32, "start": now, "heartbeat": now,
              **fields}
    (folder / leases.LEASE_NAME).write_text(json.dumps(record))
    return record


@pytest.fixture
def sleeper():
    """A live process of our own whose pid can own a lease; killed on demand or at the end."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_acquire_writes_a_complete_record_and_release_removes_it(tmp_path):
    lease = Lease(tmp_path).acquire()
    record = read_lease(tmp_path / "lease.json")
    assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
    assert record["token"] == lease.record["token"] and record["start"] <= record["heartbeat"] <= time.time()
    assert lease.held
    lease.release()
    assert not (tmp_path / "lease.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary files left behind
    lease.release()  # a second release is harmless


def test_heartbeat_thread_refreshes_the_record(tmp_path):
    with Lease(tmp_path, stale_after=5.0, heartbeat_every=0.05).acquire():
        first = read_lease(tmp_path / "lease.json")["heartbeat"]
        deadline = time.time() + 10
        while read_lease(tmp_path / "lease.json")["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.02)
        assert read_lease(tmp_path / "lease.json")["heartbeat"] > first
    assert not (tmp_path / "lease.json").exists()


def test_a_live_lease_is_respected(tmp_path, sleeper):
    owner = _write_record(tmp_path, pid=sleeper.pid)
    lease = Lease(tmp_path)
    assert not lease.try_acquire()
    with pytest.raises(LeaseHeld, match=f"pid {sleeper.pid}") as info:
        lease.acquire()
    assert info.value.owner == owner
    # A live lease held by this very process (another Lease object) is live too.
    (tmp_path / "lease.json").unlink()
    with Lease(tmp_path).acquire():
        assert not Lease(tmp_path).try_acquire()
    # So is one on another host with a fresh heartbeat (its pid cannot be checked from here).
    _write_record(tmp_path, host="elsewhere.invalid", pid=_dead_pid())
    assert not Lease(tmp_path).try_acquire()


def test_a_dead_pid_on_this_host_makes_the_lease_stale(tmp_path, sleeper):
    owner = _write_record(tmp_path, pid=sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    lease = Lease(tmp_path)
    assert lease.try_acquire()
    assert lease.took_over == owner
    assert read_lease(tmp_path / "lease.json")["pid"] == os.getpid()
    lease.release()
    assert list(tmp_path.iterdir()) == []  # the stale lease, moved aside, is deleted


def test_an_old_heartbeat_makes_the_lease_stale(tmp_path, sleeper):
    _write_record(tmp_path, host="elsewhere.invalid", heartbeat=time.time() - 30)
    assert not Lease(tmp_path, stale_after=60).try_acquire()
    with Lease(tmp_path, stale_after=10).acquire() as lease:
        assert lease.took_over["host"] == "elsewhere.invalid"
    # A live pid with a heartbeat this old is stale too (a hung owner).
    _write_record(tmp_path, pid=sleeper.pid, heartbeat=time.time() - 30)
    assert Lease(tmp_path, stale_after=10).try_acquire()


def test_a_stale_lease_is_taken_over_by_exactly_one_of_many_takers(tmp_path):
    for _ in range(5):
        _write_record(tmp_path, pid=_dead_pid())
        barrier = threading.Barrier(8)
        won = []

        def take(barrier, won):
            lease = Lease(tmp_path)
            barrier.wait()
            if lease.try_acquire():
                won.append(lease)

        threads = [threading.Thread(target=take, args=(barrier, won)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1
        assert read_lease(tmp_path / "lease.json")["token"] == won[0].record["token"]
        won[0].release()
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"host": "x"}', b"\xff\xfe"])
def test_a_corrupt_lease_file_is_an_error_naming_it(tmp_path, content):
    (tmp_path / "lease.json").write_bytes(content)
    with pytest.raises(LeaseError, match="corrupt lease file") as info:
        Lease(tmp_path).try_acquire()
    assert str(tmp_path / "lease.json") in str(info.value)
    assert (tmp_path / "lease.json").read_bytes() == content  # left alone for a person to look at


def test_an_owner_notices_its_lease_was_taken_over(tmp_path):
    owner = Lease(tmp_path, stale_after=60, heartbeat_every=30).acquire()
    os.rename(tmp_path / "lease.json", tmp_path / "moved-aside")  # what a taker does with a stale lease
    taker = Lease(tmp_path).acquire()
    owner.check()  # not noticed before the next heartbeat
    owner.heartbeat()
    with pytest.raises(LeaseLost, match="taken over"):
        owner.check()
    owner.release()  # must not delete the taker's lease
    assert read_lease(tmp_path / "lease.json")["token"] == taker.record["token"]
    taker.release()


def test_bad_lease_settings_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="stale_after"):
        Lease(tmp_path, stale_after=0)
    with pytest.raises(ValueError, match="heartbeat_every"):
        Lease(tmp_path, stale_after=10, heartbeat_every=10)


# ----------------------------------------------------------------------------------------------------------------
# execute_run under a lease
# ----------------------------------------------------------------------------------------------------------------
def _tiny_run():
    spec = load_spec(ROOT / "experiments" / "fig10_dln_landscape.toml", "tiny", ["steps=6"])
    return spec.runs[0]


def _attempts(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "attempts.jsonl").read_text().splitlines()]


def test_execute_run_respects_a_live_lease_then_takes_it_over_when_its_owner_dies(tmp_path, sleeper):
    run = _tiny_run()
    folder = tmp_path / run.run_id
    folder.mkdir()
    _write_record(folder, pid=sleeper.pid)
    with pytest.raises(LeaseHeld):
        execute_run(run, tmp_path, wait=False)
    assert not (folder / "config.json").exists()  # nothing was trained
    events = []
    waiter = threading.Thread(target=lambda: execute_run(run, tmp_path, progress=events.append, poll=0.05))
    waiter.start()
    deadline = time.time() + 30
    while not events and time.time() < deadline:
        time.sleep(0.02)
    assert events and events[0]["kind"] == "wait" and events[0]["owner"]["pid"] == sleeper.pid
    sleeper.kill()
    sleeper.wait()
    waiter.join(timeout=300)
    assert not waiter.is_alive()
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "wait" and kinds[1] == "start" and kinds[-1] == "finish"
    assert events[1]["took_over"]["pid"] == sleeper.pid
    (attempt,) = _attempts(folder)
    assert attempt["pid"] == os.getpid() and attempt["took_over"]["pid"] == sleeper.pid
    assert not (folder / "lease.json").exists()
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"


def test_execute_run_names_a_corrupt_lease(tmp_path):
    run = _tiny_run()
    (tmp_path / run.run_id).mkdir()
    (tmp_path / run.run_id / "lease.json").write_text("garbage")
    with pytest.raises(LeaseError, match=str(tmp_path / run.run_id / "lease.json")):
        execute_run(run, tmp_path)


def test_execute_run_releases_its_lease_on_failure(tmp_path, monkeypatch):
    from smoothnorm.runs import runner

    run = _tiny_run()

    def broken(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises mid-run

    monkeypatch.setattr(runner, "_train", broken)
    with pytest.raises(KeyboardInterrupt):
        execute_run(run, tmp_path)
    assert not (tmp_path / run.run_id / "lease.json").exists()


@pytest.mark.parametrize("workers", ["1", "side by side"])
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_ctrl_c_and_sigterm_release_the_lease(tmp_path, signum, code, workers):
    """The signal goes to the command's process only (`kill`, a batch system), not to a terminal's process group:
    with runs side by side (fig10's two runs, the default on two or more cores) the command ends its worker
    processes, which release their leases too."""
    env = dict(os.environ)
    if workers == "1":
        env["SMOOTHNORM_WORKERS"] = "1"
    else:
        env.pop("SMOOTHNORM_WORKERS", None)
    proc = subprocess.Popen([sys.executable, "-m", "smoothnorm.cli", "run", "fig10", "--profile", "tiny",
                             "--set", "steps=100000", "--set", "checkpoint_every=5", "--no-plot",
                             "--runs", str(tmp_path), "--figures", str(tmp_path / "figures")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            # A job started in the background (e.g. `bash .ci/run &`) inherits SIGINT ignored, and
                            # Python then installs no KeyboardInterrupt handler: give the child the default, as a
                            # terminal's foreground job has.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    leases_seen = []
    while not leases_seen and time.time() < deadline and proc.poll() is None:
        leases_seen = list(tmp_path.glob("tiny/*/lease.json"))
        time.sleep(0.05)
    assert leases_seen, proc.stderr.read().decode()[-2000:]
    while not (leases_seen[0].parent / "status.json").exists() and time.time() < deadline:
        time.sleep(0.05)  # the first checkpoint: compiling is over (a signal waits for a long compile to return)
    proc.send_signal(signum)
    assert proc.wait(timeout=300) == code, proc.stderr.read().decode()[-2000:]  # what the command said, if not
    assert not leases_seen[0].exists()
    assert read_lease(leases_seen[0]) is None
    assert not list(tmp_path.glob("tiny/*/lease.json"))  # every run's, whichever process trained it
