"""WebSocketStream driven directly, with a real wsproto client on the other side.

The client's frames go into ``stream.receive_body``; what the stream writes to
the sink is parsed back by the client.  No sockets, no protocol adapter.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

from quicserve.config import Config
from quicserve.errors import ClientDisconnected
from quicserve.interfaces import ConnectionInfo, ResetReason, StreamHandler
from tests.support import apps
from tests.support.sink import RecordingSink
from tests.unit.asgi.helpers import CONN, CONN_H3, Server, head, run

WS_HEADERS = ((b"upgrade", b"websocket"), (b"sec-websocket-version", b"13"))


def ws_head(*extra: tuple[bytes, bytes], target: bytes = b"/ws") -> Any:
    return head("GET", target=target, headers=(*WS_HEADERS, *extra), protocol="websocket")


class Client:
    """A wsproto client wired to one stream and its sink."""

    def __init__(self, stream: StreamHandler, sink: RecordingSink, *, deflate: bool = False) -> None:
        self.stream = stream
        self.sink = sink
        self.deflate = PerMessageDeflate() if deflate else None
        if self.deflate is not None:
            self.deflate.finalize("permessage-deflate")
        self.ws = Connection(ConnectionType.CLIENT, extensions=[self.deflate] if self.deflate else [])
        self.read = 0

    def send(self, event: Event, more: bool = True) -> None:
        self.stream.receive_body(self.ws.send(event), more)

    def events(self) -> list[Event]:
        data = b"".join(self.sink.chunks)[self.read:]
        self.read += len(data)
        self.ws.receive_data(data)
        return list(self.ws.events())

    async def next_events(self, timeout: float = 2.0) -> list[Event]:
        await self.sink.wait_for(
            lambda: len(b"".join(self.sink.chunks)) > self.read or self.sink.ended, timeout)
        return self.events()


async def connect(server: Server, request: Any = None, conn: ConnectionInfo = CONN,
                  deflate: bool = False) -> Client:
    stream, sink = server.open(request or ws_head(), conn)
    await sink.wait_for(lambda: bool(sink.heads))
    return Client(stream, sink, deflate=deflate)


def options(**kw: Any) -> Config:
    kw.setdefault("ws_ping_interval", 0)
    return Config(**kw)


# -- handshake ------------------------------------------------------------------------


def test_accept_with_subprotocol_and_scope() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", "subprotocol": "chat",
                    "headers": [(b"x-app", b"1")]})

    async def main() -> None:
        server = Server(app, options())
        client = await connect(server, ws_head((b"sec-websocket-protocol", b"chat, superchat"),
                                               target=b"/ws?room=1"))
        assert client.sink.heads[0] == (200, [(b"x-app", b"1"), (b"sec-websocket-protocol", b"chat")])
        events = await client.next_events()
        assert events == [CloseConnection(code=1000, reason="")]  # the app returned
        client.send(events[0].response())
        await server.dispatcher.wait_idle()
        assert client.sink.ended

    run(main())
    assert seen["type"] == "websocket"
    assert seen["scheme"] == "ws"
    assert seen["path"] == "/ws" and seen["query_string"] == b"room=1"
    assert seen["subprotocols"] == ["chat", "superchat"]
    assert "method" not in seen
    assert "websocket.http.response" in seen["extensions"]
    assert seen["asgi"]["version"] == "3.0"


def test_close_before_accept_is_403() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})

    async def main() -> None:
        server = Server(app, options())
        _, sink = server.open(ws_head())
        await server.dispatcher.wait_idle()
        assert sink.status == 403 and sink.ended
    run(main())


def test_denial_response_extension() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"entry"})

    async def main() -> None:
        server = Server(app, options())
        _, sink = server.open(ws_head(), CONN_H3)
        await server.dispatcher.wait_idle()
        assert sink.status == 401
        assert sink.body == b"no entry" and sink.ended
    run(main())


def test_app_returning_without_accepting_gives_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    async def main() -> None:
        server = Server(app, options())
        _, sink = server.open(ws_head())
        await server.dispatcher.wait_idle()
        assert sink.status == 500
    run(main())


# -- messages -------------------------------------------------------------------------


def test_text_and_bytes_echo() -> None:
    async def main() -> None:
        server = Server(apps.websocket_echo, options())
        client = await connect(server)
        client.send(TextMessage(data="héllo"))
        assert await client.next_events() == [TextMessage(data="héllo")]
        client.send(BytesMessage(data=b"\x00\x01"))
        events = await client.next_events()
        assert [(type(e), e.data) for e in events] == [(BytesMessage, b"\x00\x01")]
    run(main())


def test_fragmented_message_is_reassembled() -> None:
    async def main() -> None:
        server = Server(apps.websocket_echo, options())
        client = await connect(server)
        client.send(TextMessage(data="frag", message_finished=False))
        client.send(TextMessage(data="mented", message_finished=False))
        await asyncio.sleep(0.01)
        assert client.events() == []  # nothing delivered yet
        client.send(TextMessage(data="!", message_finished=True))
        events = await client.next_events()
        assert [e.data for e in events] == ["fragmented!"]
    run(main())


def test_byte_by_byte_delivery() -> None:
    async def main() -> None:
        server = Server(apps.websocket_echo, options())
        client = await connect(server)
        frame = client.ws.send(BytesMessage(data=b"x" * 300))
        for i in range(len(frame)):
            client.stream.receive_body(frame[i:i + 1], True)
        events = await client.next_events()
        assert [e.data for e in events] == [b"x" * 300]
    run(main())


def test_peer_ping_is_answered_with_pong() -> None:
    async def main() -> None:
        server = Server(apps.websocket_echo, options())
        client = await connect(server)
        client.send(Ping(payload=b"are you there"))
        assert await client.next_events() == [Pong(payload=b"are you there")]
    run(main())


# -- closing ----------------------------------------------------------------------------


def test_app_close_code_and_reason_reach_the_client() -> None:
    async def main() -> None:
        server = Server(apps.websocket_echo, options())
        client = await connect(server)
        client.send(TextMessage(data="close:4001:bye now"))
        events = await client.next_events()
        assert events == [CloseConnection(code=4001, reason="bye now")]
        client.send(events[0].response())  # the client completes the closing handshake
        await server.dispatcher.wait_idle()
        assert client.sink.ended and client.sink.resets == []
    run(main())


def test_client_close_code_and_reason_reach_the_app() -> None:
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async def main() -> None:
        server = Server(app, options())
        client = await connect(server)
        client.send(CloseConnection(code=4002, reason="leaving"))
        await server.dispatcher.wait_idle()
        assert client.events() == [CloseConnection(code=4002, reason="leaving")]  # echoed back
        assert client.sink.ended

    run(main())
    assert got == [{"type": "websocket.disconnect", "code": 4002, "reason": "leaving"}]


def test_close_without_code_is_1005_and_lost_connection_is_1006() -> None:
    got: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append((await receive())["code"])

    async def main() -> None:
        server = Server(app, options())
        client = await connect(server)
        client.send(CloseConnection(code=CloseReason.NO_STATUS_RCVD))  # no status code
        await server.dispatcher.wait_idle()
        client = await connect(server)
        client.stream.abort("connection lost")
        await server.dispatcher.wait_idle()
        client = await connect(server)
        client.stream.receive_body(b"", False)  # stream ended without a close frame
        await server.dispatcher.wait_idle()

    run(main())
    assert got == [1005, 1006, 1006]


def test_send_after_the_client_left_raises_client_disconnected() -> None:
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except OSError as exc:
            raised.append(exc)

    async def main() -> None:
        server = Server(app, options())
        client = await connect(server)
        client.stream.abort("gone")
        await server.dispatcher.wait_idle()

    run(main())
    assert len(raised) == 1 and isinstance(raised[0], ClientDisconnected)


def test_app_exception_after_accept_closes_with_1011(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise RuntimeError("ws boom")

    async def main() -> None:
        server = Server(app, options())
        client = await connect(server)
        events = await client.next_events()
        assert events == [CloseConnection(code=1011, reason="")]
        client.send(events[0].response())
        await server.dispatcher.wait_idle()
        assert client.sink.ended

    run(main())
    assert "ws boom" in caplog.text


def test_invalid_message_is_logged_with_state(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.send", "text": "too early"})

    async def main() -> None:
        server = Server(app, options())
        _, sink = server.open(ws_head())
        await server.dispatcher.wait_idle()
        assert sink.status == 500

    run(main())
    assert "CONNECTING" in caplog.text and "websocket.send" in caplog.text


# -- limits -------------------------------------------------------------------------------


def test_message_over_the_limit_closes_with_1009() -> None:
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async def main() -> None:
        server = Server(app, options(ws_max_message_size=1000))
        client = await connect(server)
        client.send(BytesMessage(data=b"a" * 600, message_finished=False))
        client.send(BytesMessage(data=b"a" * 600, message_finished=True))
        events = await client.next_events()
        assert [e.code for e in events if isinstance(e, CloseConnection)] == [1009]
        await server.dispatcher.wait_idle()

    run(main())
    assert got[0]["type"] == "websocket.disconnect" and got[0]["code"] == 1009


def test_message_at_the_limit_passes() -> None:
    async def main() -> None:
        server = Server(apps.websocket_echo, options(ws_max_message_size=1000))
        client = await connect(server)
        client.send(TextMessage(data="é" * 500))  # 1000 bytes of UTF-8
        events = await client.next_events()
        assert [e.data for e in events] == ["é" * 500]
        client.send(TextMessage(data="é" * 501))
        events = await client.next_events()
        assert [e.code for e in events if isinstance(e, CloseConnection)] == [1009]
    run(main())


# -- permessage-deflate -----------------------------------------------------------------------


DEFLATE_OFFER = (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits")


def test_deflate_negotiated_on_http1_and_messages_round_trip() -> None:
    async def main() -> None:
        server = Server(apps.websocket_echo, options())
        client = await connect(server, ws_head(DEFLATE_OFFER), deflate=True)
        accepted = dict(client.sink.heads[0][1])[b"sec-websocket-extensions"]
        assert accepted.startswith(b"permessage-deflate")
        text = "compress me " * 200
        client.send(TextMessage(data=text))
        events = await client.next_events()
        assert [e.data for e in events] == [text]
        assert client.read < len(text)  # it really was compressed on the way back
    run(main())


def test_deflate_not_negotiated_over_http3_or_when_disabled() -> None:
    async def main() -> None:
        for conn, opts in ((CONN_H3, options()), (CONN, options(ws_per_message_deflate=False))):
            server = Server(apps.websocket_echo, opts)
            client = await connect(server, ws_head(DEFLATE_OFFER), conn=conn)
            assert b"sec-websocket-extensions" not in dict(client.sink.heads[0][1])
    run(main())


def test_decompression_bomb_closes_with_1009() -> None:
    """A small compressed frame that inflates far beyond the limit is stopped
    while inflating, not after: the limit applies to the inflated size."""
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async def main() -> None:
        server = Server(app, options(ws_max_message_size=64 * 1024))
        client = await connect(server, ws_head(DEFLATE_OFFER), deflate=True)
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = compressor.compress(b"\0" * (64 * 1024 * 1024)) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert len(bomb) < 128 * 1024
        # Frame the precompressed payload by hand: FIN + RSV1 + binary, masked,
        # with the shortest length encoding (RFC 6455 5.2).
        payload = bomb[:-4]
        mask = b"\x01\x02\x03\x04"
        if len(payload) < 65536:
            length = bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
        else:
            length = bytes([0x80 | 127]) + len(payload).to_bytes(8, "big")
        header = bytes([0xC2]) + length + mask
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        client.stream.receive_body(header + masked, True)
        await server.dispatcher.wait_idle()
        codes = [e.code for e in client.events() if isinstance(e, CloseConnection)]
        assert codes == [1009]

    run(main())
    assert got[0]["code"] == 1009


# -- keepalive --------------------------------------------------------------------------------


def test_ping_timeout_resets_the_stream() -> None:
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    async def main() -> None:
        server = Server(app, options(ws_ping_interval=0.02, ws_ping_timeout=0.05))
        client = await connect(server)
        events = await client.next_events()
        assert [type(e) for e in events] == [Ping]  # not answered
        await server.dispatcher.wait_idle()
        assert client.sink.resets == [ResetReason.CANCELLED]

    run(main())
    assert got == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


def test_answered_pings_keep_the_connection_open() -> None:
    async def main() -> None:
        server = Server(apps.websocket_echo, options(ws_ping_interval=0.02, ws_ping_timeout=0.05))
        client = await connect(server)
        for _ in range(4):
            events = await client.next_events()
            for event in events:
                if isinstance(event, Ping):
                    client.send(event.response())
        assert client.sink.resets == []
        client.send(TextMessage(data="still here"))
        for _ in range(5):
            events = await client.next_events()
            if any(isinstance(e, TextMessage) for e in events):
                break
            for event in events:
                if isinstance(event, Ping):
                    client.send(event.response())
        assert [e.data for e in events if isinstance(e, TextMessage)] == ["still here"]
    run(main())


# -- backpressure --------------------------------------------------------------------------------


def test_credit_withheld_while_unread_messages_exceed_the_high_water_mark() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        received: list[Any] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            await gate.wait()
            for _ in range(3):
                received.append(await receive())

        server = Server(app, options(stream_high_water=1000))
        client = await connect(server)
        frames = [client.ws.send(BytesMessage(data=b"m" * 800)) for _ in range(3)]
        client.stream.receive_body(frames[0], True)
        assert client.sink.credited == len(frames[0])  # 800 unread: under the mark
        client.stream.receive_body(frames[1], True)
        client.stream.receive_body(frames[2], True)
        assert client.sink.credited == len(frames[0])  # 2400 unread: withheld
        gate.set()
        await client.sink.wait_for(lambda: len(received) == 3)
        assert client.sink.credited == sum(len(f) for f in frames)

    run(main())


def test_send_waits_for_the_sink() -> None:
    async def main() -> None:
        server = Server(apps.websocket_echo, options())
        client = await connect(server)
        client.sink.paused = True
        client.send(TextMessage(data="held"))
        await asyncio.sleep(0.01)
        assert client.events() == []
        client.sink.resume()
        assert [e.data for e in await client.next_events()] == ["held"]
    run(main())


def test_bytes_sent_before_accept_are_held_then_processed() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await asyncio.sleep(0.01)
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "got " + message["text"]})

    async def main() -> None:
        server = Server(app, options())
        stream, sink = server.open(ws_head())
        early = Connection(ConnectionType.CLIENT).send(TextMessage(data="early"))
        stream.receive_body(early, True)
        assert sink.credited == 0
        await sink.wait_for(lambda: len(sink.chunks) >= 1)
        client = Client(stream, sink)
        assert [e.data for e in client.events() if isinstance(e, TextMessage)] == ["got early"]
        assert sink.credited == len(early)
    run(main())


def test_unread_messages_do_not_block_the_closing_handshake() -> None:
    """The app returns with messages still queued and credit withheld: the
    queue is dropped, credit returned, so the peer's close frame gets in."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(0.01)  # never reads

    async def main() -> None:
        server = Server(app, options(stream_high_water=100))
        client = await connect(server)
        frames = [client.ws.send(BytesMessage(data=b"u" * 200)) for _ in range(2)]
        for frame in frames:
            client.stream.receive_body(frame, True)
        assert client.sink.credited < sum(len(f) for f in frames)
        events = await client.next_events()
        assert events == [CloseConnection(code=1000, reason="")]
        assert client.sink.credited == sum(len(f) for f in frames)
        client.send(events[0].response())
        await asyncio.wait_for(server.dispatcher.wait_idle(), 1.0)
        assert client.sink.ended
    run(main())


def test_end_of_the_upgrade_request_does_not_end_an_http1_websocket() -> None:
    """HTTP/1.1 adapters report the end of the GET that asked for the upgrade;
    on H2/H3 an end before the accept is the client half-closing."""
    codes: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        codes.append(message.get("code", message.get("text")))
        if message["type"] == "websocket.receive":
            await send({"type": "websocket.close"})

    async def main() -> None:
        server = Server(app, options())
        stream, sink = server.open(ws_head(), CONN)
        stream.receive_body(b"", False)
        await sink.wait_for(lambda: bool(sink.heads))
        client = Client(stream, sink)
        client.send(TextMessage(data="still open"))
        events = await client.next_events()
        client.send(events[0].response())
        await server.dispatcher.wait_idle()

        stream, sink = server.open(ws_head(), CONN_H3)
        stream.receive_body(b"", False)
        await server.dispatcher.wait_idle()

    run(main())
    assert codes == ["still open", 1006]


@pytest.mark.parametrize(("offer", "accepted"), [
    (b"permessage-deflate", b"permessage-deflate"),
    (b"x-webkit-deflate-frame, permessage-deflate; client_max_window_bits",
     b"permessage-deflate; client_max_window_bits=15"),
    (b"permessage-deflate; client_max_window_bits=abc", b""),
    (b"permessage-deflate; server_max_window_bits=99", b""),
    (b"permessage-deflate; server_max_window_bits=99, permessage-deflate", b"permessage-deflate"),
    (b"gzip", b""),
])
def test_deflate_offers(offer: bytes, accepted: bytes) -> None:
    from quicserve.asgi.ws_deflate import negotiate_deflate
    extension, header = negotiate_deflate([(b"sec-websocket-extensions", offer)], 1024)
    assert header == accepted
    assert (extension is None) == (accepted == b"")
