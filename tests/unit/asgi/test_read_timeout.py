"""``read_timeout`` on request bodies, as HTTPStream enforces it for H2, H3 and hq.

Real time on a short timeout (the stream's timer is a loop timer); every wait
is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from quicserve.config import Config
from quicserve.interfaces import ResetReason
from tests.unit.asgi.helpers import CONN, CONN_H3, Server, head, run

TIMEOUT = 0.2
#: Scheduling slack allowed on a loaded machine.
SLACK = 0.5

CONN_H2 = dataclasses.replace(CONN, http_version="2", protocol="HTTP/2")
CONN_HQ = dataclasses.replace(CONN_H3, http_version="1.1", protocol="hq-interop")


class Reader:
    """An app that reads the whole body, records every message, then answers."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.send_error: BaseException | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            self.messages.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})
        except OSError as exc:
            self.send_error = exc

    @property
    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]


def server(app: Any, timeout: float = TIMEOUT) -> Server:
    return Server(app, options=Config(read_timeout=timeout))


def test_no_body_within_read_timeout_resets_the_stream_and_disconnects_the_app() -> None:
    async def main() -> None:
        app = Reader()
        srv = server(app)
        started = time.monotonic()
        stream, sink = srv.open(head("POST"), CONN_H2)
        await asyncio.wait_for(srv.dispatcher.wait_idle(), TIMEOUT + SLACK)
        elapsed = time.monotonic() - started
        assert TIMEOUT - 0.01 <= elapsed <= TIMEOUT + SLACK
        assert sink.resets == [ResetReason.CANCELLED]
        assert sink.heads == []  # nothing went out before the reset
        assert app.types == ["http.disconnect"]
        assert isinstance(app.send_error, OSError)  # ClientDisconnected
        assert (srv.stats.streams, srv.stats.app_tasks) == (0, 0)
        # A late chunk is dropped and its credit returned at once.
        stream.receive_body(b"late", True)
        assert sink.credited == 4
    run(main())


def test_h3_and_hq_streams_time_out_too() -> None:
    async def main() -> None:
        for conn in (CONN_H3, CONN_HQ):
            app = Reader()
            srv = server(app)
            _, sink = srv.open(head("POST"), conn)
            await asyncio.wait_for(srv.dispatcher.wait_idle(), TIMEOUT + SLACK)
            assert sink.resets == [ResetReason.CANCELLED], conn.protocol
            assert app.types == ["http.disconnect"]
    run(main())


def test_chunks_arriving_within_the_timeout_keep_the_stream_alive() -> None:
    """Six chunks 0.1 s apart (0.6 s in all) under a 0.2 s timeout: each wait
    is shorter than the timeout, so the request completes."""
    async def main() -> None:
        app = Reader()
        srv = server(app)
        stream, sink = srv.open(head("POST"), CONN_H2)
        for _ in range(6):
            await asyncio.sleep(TIMEOUT / 2)
            stream.receive_body(b"x", True)
        stream.receive_body(b"", False)
        await asyncio.wait_for(srv.dispatcher.wait_idle(), 2.0)
        assert sink.resets == []
        assert sink.status == 200 and sink.body == b"done"
        assert app.types[-1] == "http.request" and app.messages[-1]["more_body"] is False
    run(main())


def test_timer_armed_early_waits_for_the_full_timeout_of_the_latest_wait() -> None:
    """A chunk at 0.6 x timeout; the app waits again at once.  The timer armed
    by the first wait fires at 1.0 x and must re-arm, so the reset comes
    about one full timeout after the chunk, not at 1.0 x."""
    async def main() -> None:
        app = Reader()
        srv = server(app)
        stream, sink = srv.open(head("POST"), CONN_H2)
        await asyncio.sleep(TIMEOUT * 0.6)
        stream.receive_body(b"x", True)
        chunk_at = time.monotonic()
        await asyncio.wait_for(srv.dispatcher.wait_idle(), TIMEOUT + SLACK)
        elapsed = time.monotonic() - chunk_at
        assert TIMEOUT - 0.01 <= elapsed <= TIMEOUT + SLACK
        assert sink.resets == [ResetReason.CANCELLED]
        assert app.types == ["http.request", "http.disconnect"]
    run(main())


def test_no_timeout_once_the_body_is_complete() -> None:
    """After the whole body, an app waiting in receive() waits for a
    disconnect: the client owes nothing, so the stream is not reset."""
    async def main() -> None:
        waited: list[str] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            try:
                await asyncio.wait_for(receive(), TIMEOUT * 3)
            except asyncio.TimeoutError:
                waited.append("still connected")
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        srv = server(app)
        stream, sink = srv.open(head("POST"), CONN_H2)
        stream.receive_body(b"all", False)
        await asyncio.wait_for(srv.dispatcher.wait_idle(), 2.0)
        assert waited == ["still connected"]
        assert sink.resets == [] and sink.status == 204
    run(main())


def test_no_timeout_while_the_app_does_not_read() -> None:
    """The timer runs only while the app waits in receive(): an app busy
    elsewhere for longer than the timeout is not the client's fault."""
    async def main() -> None:
        app = Reader()

        async def busy_then_read(scope: Any, receive: Any, send: Any) -> None:
            await asyncio.sleep(TIMEOUT * 2)
            await app(scope, receive, send)

        srv = server(busy_then_read)
        stream, sink = srv.open(head("POST"), CONN_H2)
        await asyncio.sleep(TIMEOUT * 1.5)
        stream.receive_body(b"body", False)
        await asyncio.wait_for(srv.dispatcher.wait_idle(), 2.0)
        assert sink.resets == [] and sink.status == 200
    run(main())


def test_http1_streams_are_left_to_the_h11_adapter() -> None:
    """HTTP/1.x enforces read_timeout in its adapter; the ASGI layer must
    not reset an H1 stream itself (that would turn its 408 into a 500)."""
    async def main() -> None:
        for conn in (CONN, dataclasses.replace(CONN, http_version="1.0", protocol="HTTP/1.0")):
            app = Reader()
            srv = server(app)
            stream, sink = srv.open(head("POST"), conn)
            await asyncio.sleep(TIMEOUT * 2)
            assert sink.resets == [] and app.messages == []
            stream.abort("test over")
            await asyncio.wait_for(srv.dispatcher.wait_idle(), 2.0)
    run(main())


def test_timeout_after_the_app_started_its_response_resets_without_a_head() -> None:
    """The app sent http.response.start (held until the first body) and then
    reads the body: the reset replaces the response."""
    async def main() -> None:
        got: list[str] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            got.append((await receive())["type"])

        srv = server(app)
        _, sink = srv.open(head("POST"), CONN_H2)
        await asyncio.wait_for(srv.dispatcher.wait_idle(), TIMEOUT + SLACK)
        assert got == ["http.disconnect"]
        assert sink.resets == [ResetReason.CANCELLED] and sink.heads == []
    run(main())

