"""HTTP/2 against a real quicserve process with independent clients: h2load
(load, TLS and h2c by prior knowledge), curl (hash-checked 5 MiB transfers over
TLS, h2c prior knowledge and h2c Upgrade), and an h2 client on a socket for
extended CONNECT settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.certs import CertSet
from tests.support.h2_peers import _H2Socket, client_ssl_context
from tests.support.server import ServerProcess

CURL = shutil.which("curl")
H2LOAD = shutil.which("h2load")
APP = "tests.support.server:router_app"
FIVE_MIB = 5 * 1024 * 1024

_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout")


@pytest.fixture(scope="module")
def server(certs: CertSet) -> Iterator[ServerProcess]:
    with ServerProcess(APP, "--bind", "127.0.0.1:0", "--insecure-bind", "127.0.0.1:0",
                       "--certfile", str(certs.cert), "--keyfile", str(certs.key),
                       "--no-access-log") as process:
        process.wait_ready()
        yield process


def https(server: ServerProcess, path: str) -> str:
    return server.url("https") + path


def http(server: ServerProcess, path: str) -> str:
    return server.url("http") + path


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    return subprocess.run([CURL, "--silent", "--show-error", "--max-time", str(timeout), *args],
                          capture_output=True, timeout=timeout + 10)


def h2load(url: str, *args: str, timeout: float = 240) -> dict[str, int]:
    assert H2LOAD is not None
    result = subprocess.run([H2LOAD, *args, url], capture_output=True, timeout=timeout)
    output = result.stdout.decode(errors="replace")
    match = _REQUESTS.search(output)
    assert match is not None, output + result.stderr.decode(errors="replace")
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    return dict(zip(keys, map(int, match.groups())))


def stream_body(n: int, size: int) -> bytes:
    """What the router app's /stream?n=N&size=S sends."""
    return b"".join(bytes([0x61 + i % 26]) * size for i in range(n))


# -- h2load -----------------------------------------------------------------------------------


@pytest.mark.skipif(H2LOAD is None, reason="h2load (nghttp2-client) is not installed")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("scheme", ["https", "h2c"])
def test_h2load_100k_requests_without_a_failure(server: ServerProcess, scheme: str) -> None:
    url = https(server, "/hello") if scheme == "https" else http(server, "/hello")
    counts = h2load(url, "-n", "100000", "-c", "10", "-m", "100")
    assert counts["succeeded"] == 100000, counts
    assert counts["failed"] == counts["errored"] == counts["timeout"] == 0, counts


# -- curl: 5 MiB both ways, hash-checked -------------------------------------------------------


pytestmark_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")

MODES = {
    "tls": ("--http2",),
    "h2c-prior-knowledge": ("--http2-prior-knowledge",),
}


def url_for(server: ServerProcess, mode: str, path: str) -> str:
    return https(server, path) if mode == "tls" else http(server, path)


@pytestmark_curl
@pytest.mark.parametrize("mode", sorted(MODES))
def test_5mib_download_is_intact(server: ServerProcess, certs: CertSet, mode: str) -> None:
    n, size = 320, 16384
    result = curl(*MODES[mode], "--cacert", str(certs.ca), "-w", "\n%{http_version}",
                  url_for(server, mode, f"/stream?n={n}&size={size}"))
    assert result.returncode == 0, result.stderr
    body, _, version = result.stdout.rpartition(b"\n")
    assert version == b"2"
    assert len(body) == FIVE_MIB
    assert hashlib.sha256(body).digest() == hashlib.sha256(stream_body(n, size)).digest()


@pytestmark_curl
@pytest.mark.parametrize("mode", sorted(MODES))
def test_5mib_upload_is_echoed_intact(server: ServerProcess, certs: CertSet, tmp_path: Path,
                                      mode: str) -> None:
    payload = hashlib.sha256(b"seed").digest() * (FIVE_MIB // 32)
    source = tmp_path / "upload.bin"
    source.write_bytes(payload)
    result = curl(*MODES[mode], "--cacert", str(certs.ca), "--data-binary", f"@{source}",
                  "-H", "content-type: application/octet-stream", "-w", "\n%{http_version}",
                  url_for(server, mode, "/echo"))
    assert result.returncode == 0, result.stderr
    body, _, version = result.stdout.rpartition(b"\n")
    assert version == b"2"
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(payload).hexdigest()


@pytestmark_curl
def test_h2c_upgrade_download(server: ServerProcess) -> None:
    n, size = 320, 16384
    result = curl("--http2", "-w", "\n%{http_version}", http(server, f"/stream?n={n}&size={size}"))
    assert result.returncode == 0, result.stderr
    body, _, version = result.stdout.rpartition(b"\n")
    assert version == b"2", "curl --http2 on cleartext upgrades with Upgrade: h2c"
    assert hashlib.sha256(body).digest() == hashlib.sha256(stream_body(n, size)).digest()


@pytestmark_curl
def test_h2c_upgrade_then_more_requests_on_the_connection(server: ServerProcess) -> None:
    url = http(server, "/hello")
    result = curl("--http2", "-w", " %{http_version}\n", url, url, url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello 2\n" * 3


@pytestmark_curl
def test_alt_svc_and_defaults_on_tls_responses(server: ServerProcess, certs: CertSet) -> None:
    result = curl("--http2", "--cacert", str(certs.ca), "-D", "-", "-o", "/dev/null",
                  https(server, "/hello"))
    assert result.returncode == 0, result.stderr
    head = result.stdout.lower()
    assert head.startswith(b"http/2 200")
    assert b"server: quicserve" in head
    assert b"date: " in head


# -- SETTINGS seen by a client ---------------------------------------------------------------------


def test_server_settings_enable_extended_connect(server: ServerProcess, certs: CertSet) -> None:
    async def main() -> None:
        host, port = server.tcp_address("https")
        sock = await _H2Socket.open(host, port, ssl_context=client_ssl_context(str(certs.ca)))
        try:
            await sock.wait(lambda: sock.settings_received.is_set())
            remote = sock.conn.remote_settings
            assert remote.enable_connect_protocol == 1
            assert remote.max_concurrent_streams == 100
        finally:
            await sock.close()

    asyncio.run(asyncio.wait_for(main(), 20))


# -- graceful shutdown and the access log over HTTP/2 ----------------------------------------------


@pytestmark_curl
def test_graceful_shutdown_sends_goaway_and_finishes_the_request(certs: CertSet) -> None:
    """curl is the client: h2's own client state machine refuses frames after a GOAWAY."""
    import time

    from tests.support.server import ThreadedServer

    with ThreadedServer(bind=["127.0.0.1:0"], certfile=str(certs.cert), keyfile=str(certs.key),
                        access_log=False, graceful_timeout=10) as server:
        assert CURL is not None
        process = subprocess.Popen(
            [CURL, "--silent", "--show-error", "--verbose", "--max-time", "30", "--http2",
             "--cacert", str(certs.ca), server.url("/slow?s=1", secure=True)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.4)
        server.request_shutdown()
        stdout, stderr = process.communicate(timeout=40)
        assert process.returncode == 0, stderr
        assert stdout == b"slow done"
        assert b"GOAWAY" in stderr
        assert server.join(15), "the server did not stop once the stream was done"


@pytestmark_curl
def test_access_log_names_http2(certs: CertSet) -> None:
    with ServerProcess(APP, "--insecure-bind", "127.0.0.1:0") as process:
        process.wait_ready()
        result = curl("--http2-prior-knowledge", http(process, "/hello?x=1"))
        assert result.returncode == 0, result.stderr
        for _ in range(100):
            if any("HTTP/2" in line for line in process.stdout_lines):
                break
            import time
            time.sleep(0.05)
        assert any('"GET /hello?x=1 HTTP/2" 200' in line for line in process.stdout_lines), \
            process.stdout_lines


def test_a_client_goaway_lets_the_open_streams_finish(certs: CertSet) -> None:
    """RFC 9113 section 6.8: after the client's GOAWAY (NO_ERROR) the request
    it already sent is still answered in full, then the connection closes."""
    from tests.support.server import ThreadedServer

    with ThreadedServer(bind=["127.0.0.1:0"], access_log=False) as server:
        host, port = server.address()

        async def main() -> tuple[int, bytes, bool]:
            client = await _H2Socket.open(host, port, ssl_context=None)
            await client.wait(lambda: client.settings_received.is_set())
            request = asyncio.ensure_future(client.request("GET", "/slow?s=0.3"))
            await asyncio.sleep(0.1)
            # GOAWAY(last stream 0, NO_ERROR), written raw: the h2 library's
            # client would stop reading after sending one.
            client.writer.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8))
            status, _, body = await request
            for _ in range(500):
                if client.closed:
                    break
                await asyncio.sleep(0.01)
            return status, body, client.closed

        status, body, closed = asyncio.run(asyncio.wait_for(main(), 20))
    assert (status, body) == (200, b"slow done")
    assert closed, "the server kept the connection open after the last stream"
