"""WebSocket over HTTP/1.1 (Upgrade), HTTP/2 (RFC 8441) and HTTP/3 (RFC 9220),
all framed by the same ``asgi/websocket.py``."""

from __future__ import annotations

import pytest

from tests.conformance import apps as capps
from tests.conformance.cases import WEBSOCKET, on
from tests.conformance.drivers import Driver, Response, WebSocketClient

pytestmark = pytest.mark.timeout(60)


async def connect(c: Driver, **kwargs) -> WebSocketClient:
    ws = await c.websocket("/ws", **kwargs)
    assert isinstance(ws, WebSocketClient), f"handshake denied: {ws}"
    return ws


@on(*WEBSOCKET)
def test_echo_text_and_bytes(serve, protocol):
    log: list = []

    async def scenario(c: Driver) -> None:
        ws = await connect(c)
        ws.send("hello")
        assert await ws.receive() == "hello"
        ws.send(b"\x00\x01\xff")
        assert await ws.receive() == b"\x00\x01\xff"
        ws.send("ü" * 3000)
        assert await ws.receive() == "ü" * 3000
        closed = await ws.close(1000)
        assert closed.code == 1000
    serve(capps.websocket_recorder(log), scenario)
    assert log == [("disconnect", 1000, "")]


@on(*WEBSOCKET)
def test_server_close_code_reaches_the_client(serve, protocol):
    log: list = []

    async def scenario(c: Driver) -> None:
        ws = await connect(c)
        ws.send("close:4001:bye now")
        closed = await ws.wait_closed()
        assert (closed.code, closed.reason) == (4001, "bye now")
    serve(capps.websocket_recorder(log), scenario)
    assert log == [("closed", 4001)]


@on(*WEBSOCKET)
def test_client_close_code_reaches_the_app(serve, protocol):
    log: list = []

    async def scenario(c: Driver) -> None:
        ws = await connect(c)
        closed = await ws.close(4002, "leaving")
        assert closed.code == 4002
    serve(capps.websocket_recorder(log), scenario)
    assert log == [("disconnect", 4002, "leaving")]


@on(*WEBSOCKET)
def test_subprotocol_negotiation(serve, protocol):
    log: list = []

    async def scenario(c: Driver) -> None:
        ws = await connect(c, subprotocols=["chat.v2", "chat.v1"])
        assert ws.subprotocol == "chat.v2"
        await ws.close()
    serve(capps.websocket_recorder(log), scenario)


@on(*WEBSOCKET)
def test_close_before_accept_is_403(serve, protocol):
    async def scenario(c: Driver) -> None:
        denied = await c.websocket("/ws")
        assert isinstance(denied, Response)
        assert denied.status == 403
    serve(capps.websocket_reject, scenario)


@on(*WEBSOCKET)
def test_client_vanishes(serve, protocol):
    """The stream is reset (h1: the connection drops) without a close frame:
    the app gets websocket.disconnect with 1006."""
    log: list = []

    async def scenario(c: Driver) -> None:
        ws = await connect(c)
        ws.send("still here")
        assert await ws.receive() == "still here"
        c.reset(ws.exchange)
        await c.wait(lambda: bool(log), "websocket.disconnect at the app")
    serve(capps.websocket_recorder(log), scenario)
    assert log == [("disconnect", 1006, "")]


@on(*WEBSOCKET)
def test_large_messages_both_ways(serve, protocol):
    """Messages well beyond the stream windows and the high-water mark: the
    WebSocket stream must return credit as it frames, both ways."""
    log: list = []
    big = bytes(range(256)) * 1024  # 256 KiB

    async def scenario(c: Driver) -> None:
        ws = await connect(c)
        for i in range(3):
            ws.send(big[i:] + big[:i])
            assert await ws.receive() == big[i:] + big[:i]
        await ws.close()
    serve(capps.websocket_recorder(log), scenario, h2_initial_window_size=65536,
          quic_max_stream_data=65536, stream_high_water=16384)
    assert log == [("disconnect", 1000, "")]


@on(*WEBSOCKET)
def test_limit_concurrency_refuses_the_handshake(serve, protocol):
    """Over --limit-concurrency a WebSocket handshake gets 503, like any request."""
    log: list = []

    async def scenario(c: Driver) -> None:
        first = await connect(c)
        denied = await c.websocket("/ws")
        assert isinstance(denied, Response) and denied.status == 503
        first.send("still served")
        assert await first.receive() == "still served"
        await first.close()
    serve(capps.websocket_recorder(log), scenario, limit_concurrency=1)


@on(*WEBSOCKET)
def test_fragmented_message_and_ping(serve, protocol):
    """A message sent in three frames reaches the app whole; a client ping
    is answered with a pong carrying the same payload."""
    log: list = []

    async def scenario(c: Driver) -> None:
        ws = await connect(c)
        await ws.ping(b"are you there")
        ws.send_fragments(["frag", "men", "ted"])
        assert await ws.receive() == "fragmented"
        ws.send_fragments([b"\x01", b"\x02\x03"])
        assert await ws.receive() == b"\x01\x02\x03"
        await ws.close()
    serve(capps.websocket_recorder(log), scenario)
    assert log == [("disconnect", 1000, "")]


@on(*WEBSOCKET)
def test_app_raises_before_accept_is_500(serve, protocol):
    async def app(scope, receive, send) -> None:
        await receive()
        raise RuntimeError("boom before accept")

    async def scenario(c: Driver) -> None:
        denied = await c.websocket("/ws")
        assert isinstance(denied, Response) and denied.status == 500
    serve(app, scenario)


@on(*WEBSOCKET)
def test_app_raises_after_accept_closes_with_1011(serve, protocol):
    async def app(scope, receive, send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        raise RuntimeError(f"boom on {message.get('text')}")

    async def scenario(c: Driver) -> None:
        ws = await connect(c)
        ws.send("trigger")
        closed = await ws.wait_closed()
        assert closed.code == 1011
    serve(app, scenario)
