"""HTTP/1.1 with curl as the independent client: TLS (verified against the test
CA), cleartext, IPv4, IPv6, unix sockets, 100-continue, HEAD, HTTP/1.0, and the
response headers every response carries (Server, Date, --header, Alt-Svc).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.certs import CertSet
from tests.support.server import ThreadedServer

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed (make deps)")


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


HAVE_IPV6 = _ipv6_loopback()


@pytest.fixture(scope="module")
def server(certs: CertSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    unix_path = tmp_path_factory.mktemp("unix") / "quicserve.sock"
    binds = ["127.0.0.1:0", f"unix:{unix_path}"] + (["[::1]:0"] if HAVE_IPV6 else [])
    with ThreadedServer(bind=binds, insecure_bind=["127.0.0.1:0"], certfile=str(certs.cert),
                        keyfile=str(certs.key), header=["X-Test-Header: on"],
                        access_log=False) as running:
        yield running


def curl(*args: str, timeout: float = 30, stdin: bytes | None = None
         ) -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    return subprocess.run([CURL, "--silent", "--show-error", "--max-time", str(timeout), *args],
                          input=stdin, capture_output=True, timeout=timeout + 10)


def test_tls_verified_with_the_test_ca(server: ThreadedServer, certs: CertSet) -> None:
    url = server.url("/hello", secure=True, family=socket.AF_INET)
    result = curl("--http1.1", "--cacert", str(certs.ca), "-w", "%{http_version} %{http_code}",
                  url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello1.1 200"


def test_tls_by_name(server: ThreadedServer, certs: CertSet) -> None:
    _, port = server.address(secure=True, family=socket.AF_INET)
    result = curl("--http1.1", "--cacert", str(certs.ca), "--resolve",
                  f"localhost:{port}:127.0.0.1", f"https://localhost:{port}/hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello"


def test_tls_rejected_without_the_ca(server: ThreadedServer) -> None:
    result = curl("--http1.1", server.url("/hello", secure=True, family=socket.AF_INET))
    assert result.returncode == 60  # peer certificate cannot be authenticated


def test_cleartext_post_echo(server: ThreadedServer) -> None:
    body = b"0123456789" * 1000
    result = curl("--http1.1", "--data-binary", "@-", server.url("/echo", secure=False),
                  stdin=body)
    assert result.returncode == 0, result.stderr
    assert result.stdout == body


@pytest.mark.parametrize("secure", [False, True])
def test_scope_header_names_are_lowercase(server: ThreadedServer, certs: CertSet,
                                          secure: bool) -> None:
    """Mixed-case names on the wire reach the app lowercased, in order,
    duplicates kept (the HTTP/1.1 parser lowers them; the scope copies)."""
    result = curl("--http1.1", "--cacert", str(certs.ca), "-H", "X-Mixed-Case: 1",
                  "-H", "COOKIE: a=1", "-H", "Cookie: b=2", server.url("/scope", secure=secure))
    assert result.returncode == 0, result.stderr
    headers = json.loads(result.stdout)["headers"]
    assert all(name == name.lower() for name, _ in headers), headers
    assert [h for h in headers if h[0] in ("x-mixed-case", "cookie")] == [
        ["x-mixed-case", "1"], ["cookie", "a=1"], ["cookie", "b=2"]]


@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback")
def test_ipv6(server: ThreadedServer, certs: CertSet) -> None:
    url = server.url("/scope", secure=True, family=socket.AF_INET6)
    assert url.startswith("https://[::1]:")
    result = curl("--http1.1", "--cacert", str(certs.ca), url)
    assert result.returncode == 0, result.stderr
    assert b'"client": ["::1", ' in result.stdout


def test_unix_socket(server: ThreadedServer) -> None:
    path = server.address(family=socket.AF_UNIX)
    result = curl("--http1.1", "--unix-socket", path, "-k", "https://localhost/hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello"


def test_expect_100_continue(server: ThreadedServer, tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(b"x" * 5000)
    result = curl("--http1.1", "-v", "-H", "Expect: 100-continue", "--expect100-timeout", "20",
                  "--data-binary", f"@{payload}", server.url("/expect", secure=False))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"x" * 5000
    assert b"HTTP/1.1 100 Continue" in result.stderr


def test_head(server: ThreadedServer) -> None:
    result = curl("--http1.1", "-I", server.url("/hello", secure=False))
    assert result.returncode == 0, result.stderr
    head = result.stdout.lower()
    assert head.startswith(b"http/1.1 200 ok\r\n")
    assert b"content-length: 5\r\n" in head
    assert head.endswith(b"\r\n\r\n")


def test_http10_stream(server: ThreadedServer) -> None:
    result = curl("--http1.0", "-i", server.url("/stream?n=3&size=2", secure=False))
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"aabbcc"


def test_response_headers(server: ThreadedServer) -> None:
    result = curl("--http1.1", "-i", server.url("/hello", secure=False))
    head = result.stdout.partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nserver: quicserve\r\n" in head
    assert b"\r\ndate: " in head
    assert b"\r\nx-test-header: on\r\n" in head
    assert b"alt-svc" not in head  # no QUIC endpoint


def test_no_server_and_date_headers() -> None:
    with ThreadedServer(insecure_bind=["127.0.0.1:0"], server_header=False, date_header=False,
                        access_log=False) as server:
        result = curl("--http1.1", "-i", server.url("/hello"))
    head = result.stdout.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200 ok")
    assert b"\r\nserver:" not in head
    assert b"\r\ndate:" not in head


@pytest.mark.skipif(importlib.util.find_spec("quicserve.transport.udp") is None,
                    reason="HTTP/3 is not in this build")
def test_alt_svc_names_the_bound_udp_port(certs: CertSet) -> None:
    with ThreadedServer(bind=["127.0.0.1:0"], insecure_bind=["127.0.0.1:0"],
                        quic_bind=["127.0.0.1:0"], certfile=str(certs.cert),
                        keyfile=str(certs.key), alt_svc_max_age=3600,
                        access_log=False) as server:
        _, udp_port = server.address(transport="udp")
        tls = curl("--http1.1", "-i", "--cacert", str(certs.ca), server.url(secure=True))
        clear = curl("--http1.1", "-i", server.url(secure=False))
    assert udp_port != 0
    tls_head = tls.stdout.partition(b"\r\n\r\n")[0].lower()
    assert f'\r\nalt-svc: h3=":{udp_port}"; ma=3600\r\n'.encode() in tls_head
    assert b"alt-svc" not in clear.stdout.partition(b"\r\n\r\n")[0].lower()


@pytest.mark.skipif(importlib.util.find_spec("quicserve.transport.udp") is None,
                    reason="HTTP/3 is not in this build")
def test_no_alt_svc(certs: CertSet) -> None:
    with ThreadedServer(bind=["127.0.0.1:0"], quic_bind=["127.0.0.1:0"], alt_svc=False,
                        certfile=str(certs.cert), keyfile=str(certs.key),
                        access_log=False) as server:
        tls = curl("--http1.1", "-i", "--cacert", str(certs.ca), server.url(secure=True))
    assert tls.returncode == 0, tls.stderr
    assert b"alt-svc" not in tls.stdout.partition(b"\r\n\r\n")[0].lower()
