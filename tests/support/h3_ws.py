"""A WebSocket-over-HTTP/3 client (RFC 9220) built on aioquic, for integration tests.

:class:`H3WebSocket` opens a QUIC connection (ALPN ``h3``), waits for the
server's SETTINGS, requires ``SETTINGS_ENABLE_CONNECT_PROTOCOL = 1`` (raising
:class:`ExtendedConnectUnsupported` otherwise, so a test can tell "not
implemented" from "broken"), sends an extended CONNECT with
``:protocol websocket`` and then frames messages with wsproto on the request
stream, exactly as the HTTP/2 client in ``h2_peers`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, Sequence

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3Connection, Setting
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamReset

from tests.support.h2_peers import Denial, Header, WebSocketOverStream, websocket_connect_fields


class ExtendedConnectUnsupported(ConnectionError):
    """The server's HTTP/3 SETTINGS do not enable extended CONNECT."""


class _Protocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.changed = asyncio.Event()
        self.listeners: dict[int, _StreamListener] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset):
            listener = self.listeners.get(event.stream_id)
            if listener is not None:
                listener.reset(event.error_code)
        for http_event in self.http.handle_event(event):
            listener = self.listeners.get(getattr(http_event, "stream_id", -1))
            if listener is not None:
                listener.handle(http_event)
        self.changed.set()

    async def wait(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


class _StreamListener:
    """Collects the response of one request stream, then hands data to a WebSocket."""

    def __init__(self) -> None:
        self.headers: list[Header] | None = None
        self.body = bytearray()
        self.ended = False
        self.reset_code: int | None = None
        self.socket: H3WebSocket | None = None

    def handle(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            if self.headers is None and not dict(event.headers).get(b":status", b"").startswith(b"1"):
                self.headers = list(event.headers)
        elif isinstance(event, DataReceived):
            if self.socket is not None:
                self.socket.feed(event.data)
            else:
                self.body += event.data
        if getattr(event, "stream_ended", False):
            self.ended = True

    def reset(self, code: int) -> None:
        self.reset_code = code
        if self.socket is not None:
            self.socket.stream_reset(code)


def h3_configuration(ca: str) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                      server_name="localhost")
    configuration.load_verify_locations(cafile=ca)
    configuration.verify_mode = ssl.CERT_REQUIRED
    return configuration


class H3WebSocket(WebSocketOverStream):
    """A WebSocket over one HTTP/3 request stream: extended CONNECT (RFC 9220)."""

    def __init__(self, stack: contextlib.AsyncExitStack, protocol: _Protocol, stream_id: int,
                 response: list[Header]) -> None:
        super().__init__(response)
        self._stack = stack
        self.protocol = protocol
        self.stream_id = stream_id

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/", *, ca: str,
                      subprotocols: Sequence[str] = (), headers: Sequence[Header] = (),
                      authority: str = "localhost") -> H3WebSocket | Denial:
        stack = contextlib.AsyncExitStack()
        try:
            protocol = await stack.enter_async_context(
                connect(host, port, configuration=h3_configuration(ca), create_protocol=_Protocol))
            assert isinstance(protocol, _Protocol)
            await protocol.wait(lambda: protocol.http.received_settings is not None)
            settings = protocol.http.received_settings or {}
            if settings.get(Setting.ENABLE_CONNECT_PROTOCOL) != 1:
                raise ExtendedConnectUnsupported(
                    "the server's HTTP/3 SETTINGS lack SETTINGS_ENABLE_CONNECT_PROTOCOL=1")
            stream_id = protocol._quic.get_next_available_stream_id()
            listener = _StreamListener()
            protocol.listeners[stream_id] = listener
            protocol.http.send_headers(stream_id, websocket_connect_fields(
                path, authority, subprotocols, headers, scheme=b"https"))
            protocol.transmit()
            await protocol.wait(lambda: listener.headers is not None
                                or listener.reset_code is not None)
            if listener.headers is None:
                raise ConnectionError(f"extended CONNECT reset with code {listener.reset_code}")
            status = int(dict(listener.headers)[b":status"])
            if status != 200:
                await protocol.wait(lambda: listener.ended or listener.reset_code is not None)
                await stack.aclose()
                return Denial(status, listener.headers, bytes(listener.body))
        except BaseException:
            await stack.aclose()
            raise
        socket = cls(stack, protocol, stream_id, listener.headers)
        listener.socket = socket
        if listener.body:
            socket.feed(bytes(listener.body))
        return socket

    async def _write(self, data: bytes, *, end: bool = False) -> None:
        self._write_now(data, end=end)

    def _write_now(self, data: bytes, *, end: bool = False) -> None:
        # aioquic buffers stream data itself and sends it as flow control allows.
        self.protocol.http.send_data(self.stream_id, data, end_stream=end)
        self.protocol.transmit()

    async def _shutdown(self) -> None:
        await self._stack.aclose()
