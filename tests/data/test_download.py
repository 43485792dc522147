"""fetch_cifar10 against a local HTTP server on 127.0.0.1: success, interruption, wrong checksum, no server.

No test contacts any address other than 127.0.0.1: URL and checksum are always patched.
"""

import hashlib
import http.server
import socket
import threading

import numpy as np
import pytest

import smoothnorm.data.cifar10 as cifar10
from smoothnorm.data import ChecksumError, DownloadError, fetch_cifar10, load_cifar10
from smoothnorm.data._io import atomic_open


class _Server:
    """Serves `routes[path] = (body, mode)`; mode 'ok', 'truncate' (half the body, full Content-Length) or '404'."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body, mode = server.routes.get(self.path, (b"", "404"))
                if mode == "404":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mode == "truncate" else body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _payload(rng, n=300_000) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def test_download_succeeds_with_progress(server, tmp_path, rng, capsys):
    body = _payload(rng)
    server.routes["/c.tar.gz"] = (body, "ok")
    root = tmp_path / "cache"
    path = fetch_cifar10(root, url=server.url("/c.tar.gz"), md5=_md5(body))
    assert path == root / cifar10.ARCHIVE_NAME and path.read_bytes() == body
    assert sorted(p.name for p in root.iterdir()) == [cifar10.ARCHIVE_NAME]
    err = capsys.readouterr().err
    assert "100%" in err and "MB" in err
    # A verified archive is not downloaded again; quiet mode prints nothing.
    fetch_cifar10(root, progress=False, url=server.url("/c.tar.gz"), md5=_md5(body))
    assert server.requests == ["/c.tar.gz"] and capsys.readouterr().err == ""


def test_existing_file_with_wrong_md5_is_replaced(server, tmp_path, rng):
    body = _payload(rng)
    server.routes["/c.tar.gz"] = (body, "ok")
    (tmp_path / cifar10.ARCHIVE_NAME).write_bytes(b"stale partial download")
    fetch_cifar10(tmp_path, progress=False, url=server.url("/c.tar.gz"), md5=_md5(body))
    assert (tmp_path / cifar10.ARCHIVE_NAME).read_bytes() == body
    assert len(list(tmp_path.iterdir())) == 1


def test_interrupted_transfer_leaves_nothing(server, tmp_path, rng):
    body = _payload(rng)
    server.routes["/c.tar.gz"] = (body, "truncate")
    with pytest.raises(DownloadError, match=f"received {len(body) // 2} of {len(body)} bytes"):
        fetch_cifar10(tmp_path, progress=False, url=server.url("/c.tar.gz"), md5=_md5(body))
    assert list(tmp_path.iterdir()) == []


def test_wrong_checksum_is_refused_and_leaves_nothing(server, tmp_path, rng):
    body = _payload(rng)
    server.routes["/c.tar.gz"] = (body, "ok")
    with pytest.raises(ChecksumError) as info:
        fetch_cifar10(tmp_path, progress=False, url=server.url("/c.tar.gz"), md5="0" * 32)
    assert info.value.expected == "0" * 32 and info.value.actual == _md5(body)
    assert "/c.tar.gz" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_http_error_gives_manual_instructions(server, tmp_path):
    with pytest.raises(DownloadError) as info:
        fetch_cifar10(tmp_path, progress=False, url=server.url("/missing"), md5="0" * 32)
    message = str(info.value)
    assert "Not Found" in message and str(tmp_path / cifar10.ARCHIVE_NAME) in message
    assert "cifar-10-batches-py" in message and "SMOOTHNORM_DATA" in message
    assert list(tmp_path.iterdir()) == []


def test_no_server_gives_manual_instructions(tmp_path):
    # A port on 127.0.0.1 that was just free: connection refused, as offline.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="Without network access") as info:
        fetch_cifar10(tmp_path, progress=False, url=f"http://127.0.0.1:{port}/c.tar.gz", md5="0" * 32, timeout=5)
    assert isinstance(info.value, OSError)
    assert list(tmp_path.iterdir()) == []


def test_load_with_download(server, fake_cifar, monkeypatch):
    body = fake_cifar.archive_bytes()
    server.routes["/cifar.tar.gz"] = (body, "ok")
    monkeypatch.setattr(cifar10, "URL", server.url("/cifar.tar.gz"))
    with pytest.raises(FileNotFoundError):
        load_cifar10(fake_cifar.root, train=False)
    x, y = load_cifar10(fake_cifar.root, train=False, download=True)
    np.testing.assert_array_equal(y, fake_cifar.raw["test_batch"][1])
    assert (fake_cifar.root / cifar10.ARCHIVE_NAME).read_bytes() == body


def test_default_cache_from_environment(server, tmp_path, rng, monkeypatch):
    body = _payload(rng, 1000)
    server.routes["/c.tar.gz"] = (body, "ok")
    monkeypatch.setenv("SMOOTHNORM_DATA", str(tmp_path / "env-cache"))
    path = fetch_cifar10(progress=False, url=server.url("/c.tar.gz"), md5=_md5(body))
    assert path == tmp_path / "env-cache" / cifar10.ARCHIVE_NAME and path.read_bytes() == body


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_open_keeps_old_file_on_failure(tmp_path, error):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(error), atomic_open(target) as f:
        f.write(b"half of the new cont")
        raise error()
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with atomic_open(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]


def test_fetch_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="timeout"):
        fetch_cifar10(tmp_path, url="http://127.0.0.1:9/x", md5="0" * 32, timeout=0)
    with pytest.raises(ValueError, match="32 hexadecimal"):
        fetch_cifar10(tmp_path, url="http://127.0.0.1:9/x", md5="abc")
    assert list(tmp_path.iterdir()) == []
