"""Requests leave nothing to Python's cycle collector.

A request's objects -- the protocol's stream (the sink), the ASGI stream (the
handler), the request head and the scope -- must be freed by reference
counting the moment the request is over.  If they form a reference cycle they
wait for a collector pass instead, and on a busy server those passes cost
every request CPU time (about a fifth of it on HTTP/3 small responses before
this was fixed) and hold memory in the meantime.

Each test runs real clients against an in-process server with the collector
off and ``gc.DEBUG_SAVEALL`` on, then collects once by hand and looks at
what the collector found: no object of quicserve's own per-request types may
be among it.  (What the clients themselves leave behind in this process, and
the few objects of a whole connection, are not counted.)
"""

from __future__ import annotations

import asyncio
import collections
import gc
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest

from tests.support.certs import CertSet
from tests.support.h2_peers import H2WebSocket, client_ssl_context
from tests.support.h3_ws import H3WebSocket
from tests.support.quic_peers import GTLSCLIENT, gtlsclient
from tests.support.server import ThreadedServer

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from interop.client import ClientOptions, fetch  # noqa: E402

CURL = shutil.which("curl")
REQUESTS = 40
SOCKETS = 5
#: quicserve's per-request types: one of each (or more) lives per request.
PER_REQUEST = {
    "HTTPStream", "WebSocketStream", "FixedResponseStream", "RequestHead",
    "RequestStream", "H2Stream", "_HqStream",
}


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """HTTP: 200 "ok"; WebSocket: accept, echo one message, close."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"ok\n"})
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        if message["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text") or ""})
            await send({"type": "websocket.close", "code": 1000})


@pytest.fixture(scope="module")
def server(certs: CertSet) -> Iterator[ThreadedServer]:
    with ThreadedServer(app, bind=["127.0.0.1:0"], quic_bind=["127.0.0.1:0"],
                        quic_alpn=("h3", "hq-interop"), certfile=str(certs.cert),
                        keyfile=str(certs.key), access_log=False, lifespan="off") as running:
        yield running


class Garbage:
    """The collector off and saving what it finds, for the ``with`` body."""

    def __init__(self) -> None:
        self.per_request: collections.Counter[str] = collections.Counter()
        self.total = 0

    def __enter__(self) -> Garbage:
        gc.collect()
        gc.garbage.clear()
        self._debug = gc.get_debug()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            gc.collect()
            self.total = len(gc.garbage)
            for obj in gc.garbage:
                kind = type(obj)
                if kind.__module__.startswith("quicserve") and kind.__name__ in PER_REQUEST:
                    self.per_request[kind.__name__] += 1
        finally:
            gc.garbage.clear()
            gc.set_debug(self._debug)
            gc.enable()


def settle(server: ThreadedServer) -> None:
    """Until every stream task of the server has ended (bounded)."""
    server.wait_statistics(lambda stats: stats["streams"] == 0)


def curl(server: ThreadedServer, certs: CertSet, version: str) -> None:
    host, port = server.address(secure=True, family=socket.AF_INET)
    urls = [f"https://localhost:{port}/{i}" for i in range(REQUESTS)]
    result = subprocess.run(
        [str(CURL), "-sS", version, "--cacert", str(certs.ca), "--resolve",
         f"localhost:{port}:{host}", "--max-time", "30", *urls],
        capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == b"ok\n" * REQUESTS


@pytest.mark.skipif(CURL is None, reason="curl missing")
@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_http_over_tcp_leaves_no_request_cycles(server: ThreadedServer, certs: CertSet,
                                                version: str) -> None:
    with Garbage() as garbage:
        curl(server, certs, version)
        settle(server)
    assert not garbage.per_request, dict(garbage.per_request)


@pytest.mark.skipif(GTLSCLIENT is None, reason="gtlsclient (ngtcp2-client) missing")
def test_http3_leaves_no_request_cycles(server: ThreadedServer, tmp_path: Any) -> None:
    host, port = server.address(transport="udp")
    with Garbage() as garbage:
        result = gtlsclient(str(host), int(port), [f"/{i}" for i in range(REQUESTS)],
                            "--download", str(tmp_path))
        settle(server)
    assert result.returncode == 0, result.stdout[-2000:]
    assert sorted(p.read_bytes() for p in tmp_path.iterdir()) == [b"ok\n"] * REQUESTS
    assert not garbage.per_request, dict(garbage.per_request)


def test_hq_interop_leaves_no_request_cycles(server: ThreadedServer, certs: CertSet) -> None:
    host, port = server.address(transport="udp")
    options = ClientOptions(host=str(host), port=int(port), cafile=str(certs.ca),
                            alpn="hq-interop", timeout=30)
    paths = [f"/{i}" for i in range(REQUESTS)]
    with Garbage() as garbage:
        report = asyncio.run(fetch(options, paths))
        settle(server)
    assert not report.errors and len(report.files) == REQUESTS, report.errors
    assert not garbage.per_request, dict(garbage.per_request)


@pytest.mark.parametrize("protocol", ["h2", "h3"])
def test_websockets_leave_no_request_cycles(server: ThreadedServer, certs: CertSet,
                                            protocol: str) -> None:
    async def one() -> None:
        if protocol == "h2":
            host, port = server.address(secure=True, family=socket.AF_INET)
            ws: Any = await H2WebSocket.connect(host, port, "/ws",
                                                ssl_context=client_ssl_context(str(certs.ca)))
        else:
            host, port = server.address(transport="udp")
            ws = await H3WebSocket.connect(host, port, "/ws", ca=str(certs.ca))
        await ws.send("hello")
        assert await ws.recv() == "hello"
        closed = await ws.wait_closed()
        assert closed.code == 1000

    async def all_of_them() -> None:
        for _ in range(SOCKETS):
            await asyncio.wait_for(one(), 20)

    with Garbage() as garbage:
        asyncio.run(all_of_them())
        settle(server)
    assert not garbage.per_request, dict(garbage.per_request)
