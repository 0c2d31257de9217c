"""The dispatcher: adapter choice, 425, 503, counters, idle waiting."""

from __future__ import annotations

import asyncio
from typing import Any

from quicserve.asgi.http import HTTPStream
from quicserve.asgi.websocket import WebSocketStream
from quicserve.config import Config
from tests.support import apps
from tests.support.sink import RecordingSink
from tests.unit.asgi.helpers import CONN_H3, Server, head, run


def test_picks_the_adapter_from_the_head() -> None:
    async def main() -> None:
        server = Server(apps.hello)
        assert isinstance(server.dispatcher(head(), RecordingSink()), HTTPStream)
        ws = server.dispatcher(head(protocol="websocket"), RecordingSink())
        assert isinstance(ws, WebSocketStream)
    run(main())


def test_limit_concurrency_answers_503_without_running_the_app() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        calls: list[str] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            calls.append(scope["path"])
            await gate.wait()
            await apps.respond(send, 200, b"ok")

        server = Server(app, Config(limit_concurrency=2))
        first = [server.open(head(target=b"/%d" % i)) for i in range(2)]
        await asyncio.sleep(0)
        stream, refused = server.open(head(target=b"/third"))
        stream.receive_body(b"ignored", False)
        await refused.wait_for(lambda: refused.ended)
        assert refused.status == 503
        assert refused.credited == 7  # its body is dropped, the window reopened
        assert calls == ["/0", "/1"]
        gate.set()
        await server.dispatcher.wait_idle()
        assert [sink.status for _, sink in first] == [200, 200]
        _, later = server.open(head(target=b"/later"))  # capacity is back
        await server.dispatcher.wait_idle()
        assert later.status == 200
    run(main())


def test_unsafe_method_in_0rtt_gets_425() -> None:
    async def main() -> None:
        server = Server(apps.echo)
        sink = await server.request(head("POST", early_data=True), [b"x"], conn=CONN_H3)
        assert sink.status == 425
        sink = await server.request(head("GET", early_data=True), conn=CONN_H3)
        assert sink.status == 200
        server = Server(apps.echo, Config(quic_0rtt_unsafe=True))
        sink = await server.request(head("POST", early_data=True), [b"x"], conn=CONN_H3)
        assert sink.status == 200 and sink.body == b"x"
    run(main())


def test_counters_return_to_zero_and_requests_count_up() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        server = Server(apps.slow_reader(gate))
        for _ in range(3):
            stream, _ = server.open(head("POST"))
            stream.receive_body(b"a", False)
        await asyncio.sleep(0)
        assert server.dispatcher.active == 3
        assert server.stats.streams == 3 and server.stats.app_tasks == 3
        gate.set()
        await server.dispatcher.wait_idle()
        assert server.dispatcher.active == 0
        assert server.stats.streams == 0 and server.stats.app_tasks == 0
        assert server.stats.requests == 3
    run(main())


def test_wait_idle_returns_at_once_when_idle() -> None:
    async def main() -> None:
        server = Server(apps.hello)
        await asyncio.wait_for(server.dispatcher.wait_idle(), 0.5)
    run(main())


def test_fixed_responses_do_not_count_as_app_tasks() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        server = Server(apps.slow_reader(gate), Config(limit_concurrency=1))
        stream, _ = server.open(head())
        stream.receive_body(b"", False)
        await asyncio.sleep(0)
        _, refused = server.open(head())
        await refused.wait_for(lambda: refused.ended)
        assert server.stats.app_tasks == 1
        gate.set()
        await server.dispatcher.wait_idle()
        assert server.stats.streams == 0 and server.stats.app_tasks == 0
    run(main())
