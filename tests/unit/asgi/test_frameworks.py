"""Real frameworks (Starlette) and the demo app, driven through the ASGI layer."""

from __future__ import annotations

import contextlib
import json
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from wsproto.events import CloseConnection, TextMessage

from quicserve.asgi.lifespan import Lifespan
from quicserve.demo import app as demo_app
from tests.unit.asgi.helpers import CONN_H3, Server, head, run
from tests.unit.asgi.test_websocket import Client, connect, options, ws_head


def starlette_app() -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hi from lifespan"}

    async def item(request: Request) -> JSONResponse:
        payload = await request.json()
        return JSONResponse({"id": request.path_params["id"], "got": payload,
                             "q": request.query_params.get("q")})

    async def greeting(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.state.greeting)

    async def numbers(request: Request) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"{i}\n".encode()
        return StreamingResponse(gen(), media_type="text/plain")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(text.upper())
        await websocket.close(code=4000)

    return Starlette(lifespan=lifespan, routes=[
        Route("/items/{id:int}", item, methods=["POST"]),
        Route("/greeting", greeting),
        Route("/numbers", numbers),
        WebSocketRoute("/ws", ws),
    ])


def test_starlette_routing_json_streaming_and_state() -> None:
    async def main() -> None:
        app = starlette_app()
        state: dict[str, Any] = {}
        lifespan = Lifespan(app, mode="on", state=state)
        await lifespan.startup()
        server = Server(app, state=state)

        sink = await server.request(
            head("POST", b"/items/7?q=x", headers=[(b"content-type", b"application/json")]),
            [b'{"a": ', b"1}"])
        assert sink.status == 200
        assert json.loads(sink.body) == {"id": 7, "got": {"a": 1}, "q": "x"}

        sink = await server.request(head("GET", b"/greeting"))
        assert sink.body == b"hi from lifespan"

        sink = await server.request(head("GET", b"/numbers"), conn=CONN_H3)
        assert sink.status == 200 and sink.body == b"0\n1\n2\n3\n4\n" and sink.ended

        sink = await server.request(head("GET", b"/nowhere"))
        assert sink.status == 404

        await lifespan.shutdown()
        assert server.stats.streams == 0
    run(main())


def test_starlette_websocket() -> None:
    async def main() -> None:
        server = Server(starlette_app(), options())
        client = await connect(server, ws_head())
        client.send(TextMessage(data="shout"))
        events = await client.next_events()
        while not any(isinstance(e, CloseConnection) for e in events):
            events += await client.next_events()
        assert events[0] == TextMessage(data="SHOUT")
        close = events[-1]
        assert isinstance(close, CloseConnection) and close.code == 4000
        client.send(close.response())
        await server.dispatcher.wait_idle()
    run(main())


def test_demo_routes() -> None:
    async def main() -> None:
        state: dict[str, Any] = {}
        lifespan = Lifespan(demo_app, mode="on", state=state)
        await lifespan.startup()
        assert "demo_started_at" in state
        server = Server(demo_app, state=state)

        page = await server.request(head("GET", b"/"), conn=CONN_H3)
        assert page.status == 200 and b"HTTP/3" in page.body
        page = await server.request(head("GET", b"/"))
        assert b"HTTP/1.1" in page.body

        echo = await server.request(head("PUT", b"/echo"), [b"abc", b"def"])
        assert echo.body == b"abcdef"
        small = await server.request(head("POST", b"/echo"), [b"one piece"])
        assert small.body == b"one piece" and small.headers[b"content-length"] == b"9"

        stream = await server.request(head("GET", b"/stream?n=3&size=5"))
        assert stream.body == b"x" * 15
        bad = await server.request(head("GET", b"/stream?n=zz"))
        assert bad.status == 400

        assert (await server.request(head("GET", b"/health"))).body == b"ok\n"
        assert (await server.request(head("GET", b"/missing"))).status == 404
        await lifespan.shutdown()
    run(main())


def test_demo_websocket_echo() -> None:
    async def main() -> None:
        server = Server(demo_app, options())
        client: Client = await connect(server, ws_head())
        client.send(TextMessage(data="ping?"))
        assert await client.next_events() == [TextMessage(data="ping?")]
        client.send(CloseConnection(code=1000))
        await server.dispatcher.wait_idle()
        assert client.sink.ended
    run(main())
