"""HTTP/3 over real UDP on 127.0.0.1 and ::1 with independent clients.

The server is quicserve's real ``Server`` (in-process, on its own loop in a
thread, :class:`~tests.support.server.ThreadedServer`) serving the router app;
the clients are ngtcp2's ``gtlsclient`` (a separate process) and aioquic's
asyncio client.  Bodies are hash-checked both ways.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.certs import CertSet
from tests.support.quic_peers import (
    GTLSCLIENT,
    aioquic_configuration,
    aioquic_connect,
    gtlsclient,
    url_host,
)
from tests.support.server import ThreadedServer

pytestmark = pytest.mark.skipif(GTLSCLIENT is None, reason="gtlsclient (ngtcp2-client) missing")

FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
SIZES = {"0B": 0, "1KiB": 1024, "5MiB": 5 * 1024 * 1024}


@pytest.fixture(scope="module")
def server(certs: CertSet) -> Iterator[ThreadedServer]:
    with ThreadedServer(quic_bind=["127.0.0.1:0", "[::1]:0"], certfile=str(certs.cert),
                        keyfile=str(certs.key), access_log=False) as running:
        yield running


def udp(server: ThreadedServer, family: str) -> tuple[str, int]:
    host, port = server.address(transport="udp", family=FAMILIES[family])
    return str(host), int(port)


def stream_body(n: int, size: int) -> bytes:
    """What the router app's ``/stream?n=N&size=S`` sends."""
    return b"".join(bytes([0x61 + i % 26]) * size for i in range(n))


def only_file(directory: Path) -> bytes:
    (path,) = list(directory.iterdir())
    return path.read_bytes()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# gtlsclient


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("size", sorted(SIZES))
def test_gtlsclient_post_echo(server: ThreadedServer, tmp_path: Path, family: str,
                              size: str) -> None:
    body = os.urandom(SIZES[size])
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    download = tmp_path / "dl"
    download.mkdir()
    host, port = udp(server, family)
    # gtlsclient cannot mmap an empty file: a 0-byte POST is sent without -d.
    data = ["-d", str(upload)] if body else []
    result = gtlsclient(host, port, ["/echo"], "-m", "POST", *data, "--download", str(download))
    assert result.returncode == 0, result.stdout[-2000:]
    assert digest(only_file(download)) == digest(body)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gtlsclient_get_5mib(server: ThreadedServer, tmp_path: Path, family: str) -> None:
    host, port = udp(server, family)
    result = gtlsclient(host, port, ["/stream?n=80&size=65536"], "--download", str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:]
    assert digest(only_file(tmp_path)) == digest(stream_body(80, 65536))


def test_gtlsclient_200_streams_on_one_connection(server: ThreadedServer,
                                                  tmp_path: Path) -> None:
    host, port = udp(server, "ipv4")
    before = server.statistics()["requests"]
    result = gtlsclient(host, port, ["/hello"], "-n", "200", "--download", str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:]
    assert server.statistics()["requests"] - before == 200
    assert only_file(tmp_path) == b"hello"


def test_gtlsclient_20_connections_at_once(server: ThreadedServer, tmp_path: Path) -> None:
    host, port = udp(server, "ipv4")
    expected = digest(stream_body(8, 65536))
    procs = []
    for i in range(20):
        directory = tmp_path / f"c{i}"
        directory.mkdir()
        uri = f"https://{url_host(host)}:{port}/stream?n=8&size=65536"
        procs.append((directory, subprocess.Popen(
            [str(GTLSCLIENT), "-q", "--exit-on-all-streams-close", "--download", str(directory),
             host, str(port), uri],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    try:
        codes = [proc.wait(timeout=90) for _, proc in procs]
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert codes == [0] * 20
    assert all(digest(only_file(directory)) == expected for directory, _ in procs)


# --------------------------------------------------------------------------
# aioquic's client


def run(coro: Any, timeout: float = 90.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("size", sorted(SIZES))
def test_aioquic_post_echo(server: ThreadedServer, certs: CertSet, family: str,
                           size: str) -> None:
    body = os.urandom(SIZES[size])
    host, port = udp(server, family)

    async def main() -> Any:
        async with aioquic_connect(host, port, aioquic_configuration(str(certs.ca))) as client:
            return await client.request("POST", "/echo", f"{url_host(host)}:{port}", body=body)

    response = run(main())
    assert response.status == 200
    assert digest(bytes(response.body)) == digest(body)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_aioquic_get_5mib(server: ThreadedServer, certs: CertSet, family: str) -> None:
    host, port = udp(server, family)

    async def main() -> Any:
        async with aioquic_connect(host, port, aioquic_configuration(str(certs.ca))) as client:
            return await client.request("GET", "/stream?n=80&size=65536",
                                        f"{url_host(host)}:{port}")

    response = run(main())
    assert response.status == 200
    assert digest(bytes(response.body)) == digest(stream_body(80, 65536))


def test_aioquic_200_concurrent_streams_on_one_connection(server: ThreadedServer,
                                                          certs: CertSet) -> None:
    """More streams than the initial limit (128): MAX_STREAMS must follow."""
    host, port = udp(server, "ipv4")
    authority = f"{host}:{port}"

    async def main() -> list[Any]:
        async with aioquic_connect(host, port, aioquic_configuration(str(certs.ca))) as client:
            return list(await asyncio.gather(*(
                client.request("POST", "/echo", authority, body=f"body {i}".encode())
                for i in range(200))))

    responses = run(main())
    assert [bytes(r.body) for r in responses] == [f"body {i}".encode() for i in range(200)]


def test_aioquic_20_connections_at_once(server: ThreadedServer, certs: CertSet) -> None:
    host, port = udp(server, "ipv6")
    authority = f"[{host}]:{port}"

    async def one(i: int) -> bytes:
        async with aioquic_connect(host, port, aioquic_configuration(str(certs.ca))) as client:
            response = await client.request("POST", "/echo", authority, body=b"%d" % i * 1000)
            return bytes(response.body)

    async def main() -> list[bytes]:
        return list(await asyncio.gather(*(one(i) for i in range(20))))

    assert run(main()) == [b"%d" % i * 1000 for i in range(20)]


# --------------------------------------------------------------------------
# WebSocket over HTTP/3 (RFC 9220)


def test_websocket_over_http3_with_aioquic(certs: CertSet) -> None:
    import wsproto
    import wsproto.events

    from tests.support import apps

    with ThreadedServer(apps.websocket_echo, quic_bind=["127.0.0.1:0"],
                        certfile=str(certs.cert), keyfile=str(certs.key), lifespan="off",
                        access_log=False, ws_ping_interval=0) as ws_server:
        host, port = udp(ws_server, "ipv4")

        async def main() -> list[str]:
            ws = wsproto.connection.Connection(wsproto.connection.ConnectionType.CLIENT)
            async with aioquic_connect(host, port, aioquic_configuration(str(certs.ca))) as client:
                stream_id = client.start_request(
                    "CONNECT", "/ws", f"{host}:{port}", end=False,
                    headers=[(b":protocol", b"websocket"), (b"sec-websocket-version", b"13")])
                response = client.responses[stream_id]
                for _ in range(500):
                    if response.headers:
                        break
                    await asyncio.sleep(0.01)
                assert response.status == 200
                client.send_body(stream_id, ws.send(wsproto.events.TextMessage("over h3")), False)
                texts: list[str] = []
                for _ in range(500):
                    data = bytes(response.body)
                    response.body.clear()
                    ws.receive_data(data)
                    texts += [e.data for e in ws.events()
                              if isinstance(e, wsproto.events.TextMessage)]
                    if texts:
                        break
                    await asyncio.sleep(0.01)
                return texts

        assert run(main()) == ["over h3"]
