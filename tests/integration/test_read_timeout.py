"""``--read-timeout`` on HTTP/2 and HTTP/3 request bodies, with real clients.

A client sends a POST's headers without END_STREAM and then nothing.  With
``read_timeout=1`` the server must give the stream up about a second later
(H2 RST_STREAM CANCEL, H3 H3_REQUEST_CANCELLED), the app must see
``http.disconnect``, the counters must return to zero, and the connection
must still serve the next request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

import h2.errors
import h2.events
import pytest
from aioquic.h3.connection import ErrorCode

from tests.support.certs import CertSet
from tests.support.h2_peers import _H2Socket
from tests.support.quic_peers import aioquic_configuration, aioquic_connect
from tests.support.server import ThreadedServer

READ_TIMEOUT = 1.0
#: How late the reset may come on a loaded machine.
SLACK = 2.0


class UploadApp:
    """``/upload`` reads until the end or a disconnect (recorded); anything
    else answers "hello"."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/upload":
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.events.append(f"{scope['http_version']}: http.disconnect")
                    return
                if not message.get("more_body", False):
                    break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})


@pytest.fixture
def app() -> UploadApp:
    return UploadApp()


@pytest.fixture
def server(certs: CertSet, app: UploadApp) -> Iterator[ThreadedServer]:
    with ThreadedServer(app, insecure_bind=["127.0.0.1:0"], quic_bind=["127.0.0.1:0"],
                        certfile=str(certs.cert), keyfile=str(certs.key), lifespan="off",
                        access_log=False, read_timeout=READ_TIMEOUT, keep_alive=1.0) as running:
        yield running


def idle(stats: dict[str, int]) -> bool:
    return stats["streams"] == 0 and stats["app_tasks"] == 0


def test_h2c_stalled_request_body_is_reset(server: ThreadedServer, app: UploadApp) -> None:
    host, port = server.address(transport="tcp", secure=False)
    resets: list[h2.events.StreamReset] = []

    async def main() -> tuple[float, int, bytes]:
        sock = await _H2Socket.open(host, port, ssl_context=None)
        try:
            sock.handlers.append(
                lambda e: resets.append(e) if isinstance(e, h2.events.StreamReset) else None)
            await sock.wait(lambda: sock.settings_received.is_set())
            stream_id = sock.conn.get_next_available_stream_id()
            sock.conn.send_headers(stream_id, [
                (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"localhost"),
                (b":path", b"/upload")], end_stream=False)
            sock.flush()
            sent = time.monotonic()
            await sock.wait(lambda: bool(resets), READ_TIMEOUT + SLACK)
            elapsed = time.monotonic() - sent
            # The connection lives on: the next request is served.
            status, _, body = await sock.request("GET", "/hello", timeout=5)
            return elapsed, status, body
        finally:
            await sock.close()

    elapsed, status, body = asyncio.run(asyncio.wait_for(main(), 20))
    assert READ_TIMEOUT - 0.05 <= elapsed <= READ_TIMEOUT + SLACK, elapsed
    assert [(r.stream_id, r.error_code) for r in resets] == [(1, h2.errors.ErrorCodes.CANCEL)]
    assert (status, body) == (200, b"hello")
    assert app.events == ["2: http.disconnect"]
    stats = server.wait_statistics(idle, timeout=10)
    assert stats["requests"] == 2


def test_h3_stalled_request_body_is_reset(server: ThreadedServer, app: UploadApp,
                                          certs: CertSet) -> None:
    host, port = server.address(transport="udp")

    async def main() -> tuple[float, int | None, int | None, bytes]:
        async with aioquic_connect(host, port, aioquic_configuration(str(certs.ca))) as client:
            stream_id = client.start_request("POST", "/upload", f"{host}:{port}", end=False)
            sent = time.monotonic()
            stalled = await asyncio.wait_for(client.waiters[stream_id], READ_TIMEOUT + SLACK)
            elapsed = time.monotonic() - sent
            hello = await asyncio.wait_for(
                client.request("GET", "/hello", f"{host}:{port}"), 5)
            return elapsed, stalled.reset_code, hello.status, hello.body

    elapsed, reset_code, status, body = asyncio.run(asyncio.wait_for(main(), 20))
    assert READ_TIMEOUT - 0.05 <= elapsed <= READ_TIMEOUT + SLACK, elapsed
    assert reset_code == ErrorCode.H3_REQUEST_CANCELLED
    assert (status, body) == (200, b"hello")
    assert app.events == ["3: http.disconnect"]
    stats = server.wait_statistics(idle, timeout=10)
    assert stats["requests"] == 2


def test_h2c_slow_but_steady_body_is_served(server: ThreadedServer, app: UploadApp) -> None:
    """Chunks every 0.4 s for 2 s in all (twice the timeout) complete normally."""
    host, port = server.address(transport="tcp", secure=False)

    async def main() -> tuple[int, bytes]:
        sock = await _H2Socket.open(host, port, ssl_context=None)
        try:
            await sock.wait(lambda: sock.settings_received.is_set())
            stream_id = sock.conn.get_next_available_stream_id()
            done: list[h2.events.Event] = []
            sock.handlers.append(lambda e: done.append(e) if isinstance(
                e, (h2.events.StreamEnded, h2.events.StreamReset)) else None)
            sock.conn.send_headers(stream_id, [
                (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"localhost"),
                (b":path", b"/upload")], end_stream=False)
            sock.flush()
            for _ in range(5):
                await asyncio.sleep(READ_TIMEOUT * 0.4)
                await sock.send_data(stream_id, b"x" * 100)
            await sock.send_data(stream_id, b"", end=True)
            await sock.wait(lambda: bool(done), 5)
            return (0 if isinstance(done[0], h2.events.StreamReset) else 200), b""
        finally:
            await sock.close()

    outcome, _ = asyncio.run(asyncio.wait_for(main(), 20))
    assert outcome == 200, "the stream was reset"
    assert app.events == []
