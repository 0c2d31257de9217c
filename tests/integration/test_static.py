"""``quicserve --static DIR`` end to end, with independent clients.

One server process per module (``python -m quicserve --static ...``) on
ephemeral TCP and UDP ports.  curl speaks HTTP/1.1 over TLS (``--path-as-is``
so traversal attempts reach the server unnormalized), aioquic's client speaks
HTTP/3 and hq-interop, and ngtcp2's gtlsclient downloads the 100 MiB file over
HTTP/3 while the server's peak memory is watched.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.certs import CertSet
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from interop.client import ClientOptions, fetch  # noqa: E402

CURL = shutil.which("curl")
GTLSCLIENT = shutil.which("gtlsclient")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed (make deps)")

BIG = 100 * 1024 * 1024


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("static") / "www"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello, static world\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 64)
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_bytes(b"<h1>docs</h1>")
    (root.parent / "secret.txt").write_bytes(b"do not serve me")
    os.symlink(root.parent / "secret.txt", root / "leak")
    block = os.urandom(1024 * 1024)
    with open(root / "big.bin", "wb") as fh:
        for _ in range(BIG // len(block)):
            fh.write(block)
    return root


@pytest.fixture(scope="module")
def server(www: Path, certs: CertSet) -> Iterator[ServerProcess]:
    with ServerProcess("--static", str(www), "--bind", "127.0.0.1:0",
                       "--quic-bind", "127.0.0.1:0", "--certfile", str(certs.cert),
                       "--keyfile", str(certs.key), "--quic-alpn", "h3,hq-interop",
                       "--no-access-log") as proc:
        proc.wait_ready()
        yield proc


def _https(server: ServerProcess) -> str:
    return server.url("https")


def _quic_port(server: ServerProcess) -> int:
    for url in server.urls:
        if "QUIC" in url or url.startswith("https+quic") or url.startswith("quic"):
            return int(url.rsplit(":", 1)[1].strip("/"))
    for line in server.lines:
        if "listening on" in line and "(QUIC" in line:
            return int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
    raise LookupError(f"no QUIC address in {server.lines}")


def curl(server: ServerProcess, certs: CertSet, path: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    result = subprocess.run(
        [CURL or "curl", "-sS", "--path-as-is", "--cacert", str(certs.ca), "-D", "-",
         "--max-time", "60", *args, _https(server) + path],
        capture_output=True, timeout=90)
    assert result.returncode == 0, result.stderr.decode()
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def test_get_and_head(server: ServerProcess, certs: CertSet, www: Path) -> None:
    status, headers, body = curl(server, certs, "/hello.txt")
    assert (status, body) == (200, b"hello, static world\n")
    assert headers["content-type"].startswith("text/plain")
    assert headers["content-length"] == "20"
    assert headers["etag"].startswith('"')
    status, headers, body = curl(server, certs, "/data.bin", "-I")
    assert (status, headers["content-length"], body.strip()) == (200, "16384", b"")


def test_directory_index(server: ServerProcess, certs: CertSet) -> None:
    assert curl(server, certs, "/docs/")[2] == b"<h1>docs</h1>"


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/%2e%2e/secret.txt", "/docs/%2e%2e/%2e%2e/secret.txt",
    "/..%2fsecret.txt", "/leak", "/nope",
])
def test_traversal_is_404(server: ServerProcess, certs: CertSet, path: str) -> None:
    status, _, body = curl(server, certs, path)
    assert status == 404
    assert b"do not serve me" not in body


def test_nul_is_400(server: ServerProcess, certs: CertSet) -> None:
    assert curl(server, certs, "/hello.txt%00")[0] == 400


def test_method_not_allowed(server: ServerProcess, certs: CertSet) -> None:
    status, headers, _ = curl(server, certs, "/hello.txt", "-X", "DELETE")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_range_requests(server: ServerProcess, certs: CertSet, www: Path) -> None:
    data = (www / "data.bin").read_bytes()
    status, headers, body = curl(server, certs, "/data.bin", "-r", "100-199")
    assert (status, body, headers["content-range"]) == (206, data[100:200], "bytes 100-199/16384")
    status, headers, _ = curl(server, certs, "/data.bin", "-r", "20000-")
    assert (status, headers["content-range"]) == (416, "bytes */16384")
    status, _, body = curl(server, certs, "/data.bin", "-r", "0-1,5-6")
    assert (status, body) == (200, data)


def test_conditional_requests(server: ServerProcess, certs: CertSet, www: Path) -> None:
    _, headers, _ = curl(server, certs, "/hello.txt")
    etag, modified = headers["etag"], headers["last-modified"]
    assert curl(server, certs, "/hello.txt", "-H", f"If-None-Match: {etag}")[0] == 304
    assert curl(server, certs, "/hello.txt", "-H", f"If-Modified-Since: {modified}")[0] == 304
    old = email.utils.formatdate(0, usegmt=True)
    assert curl(server, certs, "/hello.txt", "-H", f"If-Modified-Since: {old}")[0] == 200
    status, _, body = curl(server, certs, "/data.bin", "-r", "0-9", "-H", 'If-Range: "stale"')
    assert (status, len(body)) == (200, 16384)


@pytest.mark.parametrize("alpn", ["h3", "hq-interop"])
def test_over_quic(server: ServerProcess, www: Path, alpn: str) -> None:
    options = ClientOptions(host="127.0.0.1", port=_quic_port(server), alpn=alpn, timeout=30)
    report = asyncio.run(fetch(options, ["/hello.txt", "/data.bin", "/%2e%2e/secret.txt"]))
    assert report.alpn == alpn
    assert report.files["/hello.txt"][0] == hashlib.sha256(b"hello, static world\n").hexdigest()
    assert report.files["/data.bin"][1] == 16384
    assert "/%2e%2e/secret.txt" in report.errors  # 404: a status on h3, a reset on hq
    assert "404" in report.errors["/%2e%2e/secret.txt"]


def _peak_rss(pid: int) -> int:
    """The peak resident set (VmHWM) of ``pid`` and its children, in bytes."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


def test_100_mib_with_flat_memory(server: ServerProcess, certs: CertSet, www: Path,
                                  tmp_path: Path) -> None:
    """The whole 100 MiB file over HTTP/1.1 (curl) and HTTP/3 (gtlsclient): the
    server's peak RSS grows by far less than the file."""
    expected = hashlib.sha256((www / "big.bin").read_bytes()).hexdigest()
    curl(server, certs, "/hello.txt")  # warm up: imports, TLS, first request
    before = _peak_rss(server.pid)
    out = tmp_path / "h1.bin"
    result = subprocess.run([CURL or "curl", "-sS", "--cacert", str(certs.ca), "-o", str(out),
                             "--max-time", "120", _https(server) + "/big.bin"], timeout=150)
    assert result.returncode == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == expected
    out.unlink()
    if GTLSCLIENT is not None:
        downloads = tmp_path / "h3"
        downloads.mkdir()
        port = _quic_port(server)
        result = subprocess.run([GTLSCLIENT, "-q", "--exit-on-all-streams-close",
                                 f"--download={downloads}", "--timeout=30s", "127.0.0.1",
                                 str(port), f"https://localhost:{port}/big.bin"],
                                capture_output=True, timeout=240)
        got = downloads / "big.bin"
        assert got.exists(), result.stdout[-500:] + result.stderr[-500:]
        assert hashlib.sha256(got.read_bytes()).hexdigest() == expected
    growth = _peak_rss(server.pid) - before
    assert growth < 32 * 1024 * 1024, f"server peak RSS grew by {growth / 2**20:.1f} MiB"
