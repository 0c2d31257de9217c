"""HTTP/2 test peers: an h2 client driven in memory, a recording stream handler,
and an RFC 8441 WebSocket-over-HTTP/2 client for real sockets.

In memory (sans-IO unit tests of ``H2Adapter``):

* :class:`H2Client` is a real ``h2`` client state machine wired to an adapter
  through :class:`~tests.support.bytelink.ByteLink`.  ``exchange()`` moves bytes
  both ways until both sides are quiet (bounded in rounds), optionally one byte
  at a time, and files every event into a per-stream :class:`Response`.
* :class:`RecordingHandler` is a real :class:`~quicserve.interfaces.StreamHandler`
  (no app behind it): it records what the adapter delivered and hands the test
  the adapter's sink, so a test decides when body bytes are credited and what
  is sent back.

Over sockets (integration tests):

* :class:`H2WebSocket` opens an HTTP/2 connection (TLS with ALPN ``h2``, or
  h2c by prior knowledge), sends an extended CONNECT (``:protocol websocket``,
  RFC 8441) and, once accepted, frames messages with wsproto on the stream.
  It honours both flow-control directions, so megabyte messages work.
* :class:`RawH2` is a bare h2 client on a socket for flood tests: it sends
  whatever frames the test builds and reports whether the server sent GOAWAY
  or closed.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import wsproto.connection
import wsproto.events
import wsproto.frame_protocol

from quicserve.interfaces import ConnectionInfo, RequestHead, StreamHandler, StreamSink
from tests.support.bytelink import ByteLink

Header = tuple[bytes, bytes]


# --------------------------------------------------------------------------
# In memory


@dataclass
class Response:
    """What the client saw on one stream."""

    informational: list[list[Header]] = field(default_factory=list)
    headers: list[Header] | None = None
    data: bytearray = field(default_factory=bytearray)
    trailers: list[Header] | None = None
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> int | None:
        if self.headers is None:
            return None
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers or ()).get(name)


class H2Client:
    """An h2 client state machine talking to one adapter through a ByteLink.

    ``auto_ack`` acknowledges received DATA at once (reopening the server's
    send window); turn it off to make the server stall on a zero window.
    """

    def __init__(self, link: ByteLink, *, auto_ack: bool = True,
                 settings: dict[int, int] | None = None) -> None:
        self.link = link
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.auto_ack = auto_ack
        self.responses: dict[int, Response] = {}
        #: Body bytes waiting for window, per stream: (bytes, end after them).
        self.pending: dict[int, tuple[bytearray, bool]] = {}
        self.events: list[h2.events.Event] = []
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)

    # -- sending --------------------------------------------------------------------------

    def request(self, method: str = "GET", path: str = "/", *, headers: Sequence[Header] = (),
                body: bytes = b"", end: bool = True, authority: bytes = b"example.com",
                scheme: bytes = b"https", extra_pseudo: Sequence[Header] = ()) -> int:
        """Queue a request; returns its stream id (nothing is sent until exchange)."""
        stream_id = self.conn.get_next_available_stream_id()
        fields = [(b":method", method.encode()), (b":scheme", scheme),
                  (b":authority", authority), (b":path", path.encode()), *extra_pseudo,
                  *headers]
        self.conn.send_headers(stream_id, fields, end_stream=end and not body)
        self.responses[stream_id] = Response()
        if body:
            self.send_data(stream_id, body, end=end)
        return stream_id

    def send_data(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Queue body bytes; they go out as the server's windows allow."""
        if not data and stream_id not in self.pending:
            if end:
                self.conn.end_stream(stream_id)
            return
        buffered, _ = self.pending.get(stream_id, (bytearray(), False))
        buffered += data
        self.pending[stream_id] = (buffered, end)
        self._push_pending()

    def _push_pending(self) -> None:
        for stream_id, (buffered, end) in list(self.pending.items()):
            try:
                self._push_stream(stream_id, buffered, end)
            except h2.exceptions.ProtocolError:
                del self.pending[stream_id]  # reset or connection closed: drop it

    def _push_stream(self, stream_id: int, buffered: bytearray, end: bool) -> None:
        while buffered:
            size = min(len(buffered), self.conn.max_outbound_frame_size,
                       self.conn.local_flow_control_window(stream_id))
            if size <= 0:
                return
            self.conn.send_data(stream_id, bytes(buffered[:size]),
                                end_stream=end and size == len(buffered))
            del buffered[:size]
        del self.pending[stream_id]

    def raw(self, data: bytes) -> None:
        """Bytes the h2 state machine would never send (floods, bad frames)."""
        self.link.feed(self.conn.data_to_send() + data)

    # -- moving bytes ---------------------------------------------------------------------

    def exchange(self, *, bytewise: bool = False, rounds: int = 50) -> None:
        """Move bytes both ways until neither side has anything to say."""
        for _ in range(rounds):
            self._push_pending()
            outgoing = self.conn.data_to_send()
            if outgoing and not self.link.closed:
                self.link.feed(outgoing, bytewise=bytewise)
            incoming = self.link.take()
            if incoming:
                self.receive(incoming)
            if not outgoing and not incoming:
                return
        raise AssertionError(f"no quiescence after {rounds} rounds")

    def receive(self, data: bytes) -> list[h2.events.Event]:
        events = self.conn.receive_data(data)
        self.events.extend(events)
        for event in events:
            self._file(event)
        return events

    def _file(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
            return
        stream_id = getattr(event, "stream_id", 0)
        response = self.responses.get(stream_id)
        if response is None:
            return
        if isinstance(event, h2.events.InformationalResponseReceived):
            response.informational.append(list(event.headers or ()))
        elif isinstance(event, h2.events.ResponseReceived):
            response.headers = list(event.headers or ())
        elif isinstance(event, h2.events.DataReceived):
            response.data += event.data or b""
            if self.auto_ack and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            response.trailers = list(event.headers or ())
        elif isinstance(event, h2.events.StreamEnded):
            response.ended = True
        elif isinstance(event, h2.events.StreamReset):
            response.reset = int(event.error_code or 0)


class RecordingHandler:
    """A StreamHandler that records deliveries and exposes the adapter's sink."""

    def __init__(self, head: RequestHead, sink: StreamSink) -> None:
        self.head = head
        self.sink = sink
        self.conn: ConnectionInfo | None = None
        self.body = bytearray()
        self.chunks: list[bytes] = []
        self.ended = False
        self.aborted: str | None = None
        self.credit_on_receive = False

    def start(self, head: RequestHead, conn: ConnectionInfo) -> None:
        self.conn = conn

    def receive_body(self, data: bytes, more: bool) -> None:
        if data:
            self.chunks.append(data)
            self.body += data
            if self.credit_on_receive:
                self.sink.credit(len(data))
        if not more:
            self.ended = True

    def abort(self, reason: str) -> None:
        self.aborted = reason


class RecordingFactory:
    """The StreamFactory for :class:`RecordingHandler`: keeps every stream, in order."""

    def __init__(self, *, credit_on_receive: bool = False) -> None:
        self.handlers: list[RecordingHandler] = []
        self.credit_on_receive = credit_on_receive

    def __call__(self, head: RequestHead, sink: StreamSink) -> StreamHandler:
        handler = RecordingHandler(head, sink)
        handler.credit_on_receive = self.credit_on_receive
        self.handlers.append(handler)
        return handler

    @property
    def last(self) -> RecordingHandler:
        return self.handlers[-1]


# --------------------------------------------------------------------------
# Over sockets


def client_ssl_context(ca: str, alpn: Sequence[str] = ("h2",)) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(list(alpn))
    return context


class _H2Socket:
    """An h2 client connection on an asyncio stream, pumped by one reader task."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.changed = asyncio.Event()
        self.closed = False
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.settings_received = asyncio.Event()
        self.handlers: list[Callable[[h2.events.Event], None]] = []
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, host: str, port: int, *, ssl_context: ssl.SSLContext | None,
                   server_hostname: str | None = "localhost") -> _H2Socket:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context,
            server_hostname=server_hostname if ssl_context is not None else None)
        if ssl_context is not None:
            alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            if alpn != "h2":
                writer.close()
                raise ConnectionError(f"server chose ALPN {alpn!r}, not h2")
        self = cls(reader, writer)
        self.conn.initiate_connection()
        self.flush()
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self._handle(event)
                self.flush()
                self.changed.set()
        except (ConnectionError, h2.exceptions.ProtocolError, ssl.SSLError):
            pass
        finally:
            self.closed = True
            self.changed.set()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_received.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
        for handler in self.handlers:
            handler(event)

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (re-checked on every received chunk)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if self.closed:
                    raise ConnectionError("the connection closed")
                self.changed.clear()
                await self.changed.wait()

    async def send_data(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Send respecting the server's windows (waits for WINDOW_UPDATE)."""
        view = memoryview(data)
        while True:
            window = self.conn.local_flow_control_window(stream_id)
            size = min(len(view), window, self.conn.max_outbound_frame_size)
            if size or not view:
                last = end and size == len(view)
                self.conn.send_data(stream_id, bytes(view[:size]), end_stream=last)
                self.flush()
                view = view[size:]
                if not view:
                    break
                continue
            await self.wait(lambda: self.conn.local_flow_control_window(stream_id) > 0)
        await self.writer.drain()

    async def request(self, method: str = "GET", path: str = "/", *, body: bytes = b"",
                      authority: str = "localhost", timeout: float = 10.0
                      ) -> tuple[int, list[Header], bytes]:
        """One request on a new stream: (status, headers, body)."""
        await self.wait(lambda: self.settings_received.is_set(), timeout)
        stream_id = self.conn.get_next_available_stream_id()
        pending = _PendingResponse(stream_id, acknowledge=self.conn)
        self.handlers.append(pending.handle)
        scheme = b"https" if self.writer.get_extra_info("ssl_object") is not None else b"http"
        self.conn.send_headers(stream_id, [
            (b":method", method.encode()), (b":scheme", scheme),
            (b":authority", authority.encode()), (b":path", path.encode())],
            end_stream=not body)
        self.flush()
        if body:
            await self.send_data(stream_id, body, end=True)
        try:
            await self.wait(lambda: pending.ended or pending.reset is not None, timeout)
        finally:
            self.handlers.remove(pending.handle)
        if pending.reset is not None or pending.headers is None:
            raise ConnectionError(f"stream {stream_id} reset with {pending.reset}")
        return int(dict(pending.headers)[b":status"]), pending.headers, bytes(pending.body)

    async def close(self) -> None:
        if not self.closed and not self.writer.is_closing():
            try:
                self.conn.close_connection()
                self.flush()
            except h2.exceptions.ProtocolError:
                pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


@dataclass
class Denial:
    """A WebSocket handshake answered with something other than acceptance."""

    status: int
    headers: list[Header]
    body: bytes


class WebSocketClosed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


class WebSocketOverStream:
    """A WebSocket framed with wsproto over one HTTP stream (RFC 8441 on H2,
    RFC 9220 on H3).  Subclasses move the bytes: ``_write`` (awaits flow
    control) and ``_write_now`` (small control frames, from the receive path).

    ``recv`` returns a ``str`` or ``bytes`` message, or raises
    :class:`WebSocketClosed` with the close code the server sent.
    """

    def __init__(self, response: list[Header]) -> None:
        self.response_headers = response
        self.subprotocol = dict(response).get(b"sec-websocket-protocol", b"").decode() or None
        self.ws = wsproto.connection.Connection(wsproto.connection.ConnectionType.CLIENT)
        self.messages: asyncio.Queue[str | bytes | WebSocketClosed] = asyncio.Queue()
        self._text: list[str] = []
        self._binary: list[bytes] = []

    # -- transport hooks ----------------------------------------------------------------

    async def _write(self, data: bytes, *, end: bool = False) -> None:
        raise NotImplementedError

    def _write_now(self, data: bytes, *, end: bool = False) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError

    # -- framing ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes of the stream from the server."""
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, wsproto.events.TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    self.messages.put_nowait("".join(self._text))
                    self._text.clear()
            elif isinstance(event, wsproto.events.BytesMessage):
                self._binary.append(bytes(event.data))
                if event.message_finished:
                    self.messages.put_nowait(b"".join(self._binary))
                    self._binary.clear()
            elif isinstance(event, wsproto.events.Ping):
                self._write_now(self.ws.send(event.response()))
            elif isinstance(event, wsproto.events.CloseConnection):
                if self.ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                    self._write_now(self.ws.send(event.response()), end=True)
                self.messages.put_nowait(WebSocketClosed(event.code, event.reason or ""))

    def stream_reset(self, code: int) -> None:
        self.messages.put_nowait(WebSocketClosed(1006, f"stream reset ({code})"))

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            data = self.ws.send(wsproto.events.TextMessage(data=message))
        else:
            data = self.ws.send(wsproto.events.BytesMessage(data=message))
        await self._write(data)

    async def send_fragments(self, fragments: Iterable[str | bytes]) -> None:
        """One message in several frames (message_finished only on the last)."""
        parts = list(fragments)
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if isinstance(part, str):
                event: wsproto.events.Event = wsproto.events.TextMessage(
                    data=part, message_finished=last)
            else:
                event = wsproto.events.BytesMessage(data=part, message_finished=last)
            await self._write(self.ws.send(event))

    async def recv(self, timeout: float = 10.0) -> str | bytes:
        async with asyncio.timeout(timeout):
            item = await self.messages.get()
        if isinstance(item, WebSocketClosed):
            raise item
        return item

    async def close(self, code: int = 1000, reason: str = "",
                    timeout: float = 10.0) -> WebSocketClosed:
        """Close and wait for the server's close frame; returns its code/reason."""
        await self._write(self.ws.send(wsproto.events.CloseConnection(code=code, reason=reason)),
                          end=True)
        async with asyncio.timeout(timeout):
            while True:
                item = await self.messages.get()
                if isinstance(item, WebSocketClosed):
                    break
        await self._shutdown()
        return item

    async def wait_closed(self, timeout: float = 10.0) -> WebSocketClosed:
        """Wait for the server to close (messages before it are dropped)."""
        async with asyncio.timeout(timeout):
            while True:
                item = await self.messages.get()
                if isinstance(item, WebSocketClosed):
                    break
        await self._shutdown()
        return item

    async def abandon(self) -> None:
        await self._shutdown()


class H2WebSocket(WebSocketOverStream):
    """A WebSocket over one HTTP/2 stream: extended CONNECT (RFC 8441)."""

    def __init__(self, sock: _H2Socket, stream_id: int, response: list[Header]) -> None:
        super().__init__(response)
        self.sock = sock
        self.stream_id = stream_id

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/", *,
                      ssl_context: ssl.SSLContext | None = None,
                      subprotocols: Sequence[str] = (),
                      headers: Sequence[Header] = (),
                      authority: str = "localhost") -> H2WebSocket | Denial:
        sock = await _H2Socket.open(host, port, ssl_context=ssl_context)
        await sock.wait(lambda: sock.settings_received.is_set())
        if sock.conn.remote_settings.enable_connect_protocol != 1:
            await sock.close()
            raise ConnectionError("the server did not send SETTINGS_ENABLE_CONNECT_PROTOCOL=1")
        stream_id = sock.conn.get_next_available_stream_id()
        fields = websocket_connect_fields(path, authority, subprotocols, headers,
                                          scheme=b"https" if ssl_context is not None else b"http")
        pending = _PendingResponse(stream_id)
        sock.handlers.append(pending.handle)
        sock.conn.send_headers(stream_id, fields)
        sock.flush()
        await sock.wait(lambda: pending.headers is not None or pending.reset is not None)
        if pending.headers is None:
            await sock.close()
            raise ConnectionError(f"extended CONNECT reset with code {pending.reset}")
        status = int(dict(pending.headers)[b":status"])
        if status != 200:
            await sock.wait(lambda: pending.ended or pending.reset is not None)
            sock.handlers.remove(pending.handle)
            await sock.close()
            return Denial(status, pending.headers, bytes(pending.body))
        sock.handlers.remove(pending.handle)
        socket_ws = cls(sock, stream_id, pending.headers)
        sock.handlers.append(socket_ws._handle)
        if pending.body:
            socket_ws.feed(bytes(pending.body))
        return socket_ws

    def _handle(self, event: h2.events.Event) -> None:
        if getattr(event, "stream_id", None) != self.stream_id:
            return
        if isinstance(event, h2.events.DataReceived):
            self.sock.conn.acknowledge_received_data(event.flow_controlled_length or 0,
                                                     self.stream_id)
            self.feed(event.data or b"")
        elif isinstance(event, h2.events.StreamReset):
            self.stream_reset(int(event.error_code or 0))

    async def _write(self, data: bytes, *, end: bool = False) -> None:
        await self.sock.send_data(self.stream_id, data, end=end)

    def _write_now(self, data: bytes, *, end: bool = False) -> None:
        # Control frames are tiny; the windows always have room for them.
        if not self.sock.closed:
            self.sock.conn.send_data(self.stream_id, data, end_stream=end)
            self.sock.flush()

    async def _shutdown(self) -> None:
        await self.sock.close()


def websocket_connect_fields(path: str, authority: str, subprotocols: Sequence[str],
                             headers: Sequence[Header], *, scheme: bytes) -> list[Header]:
    """The extended CONNECT request of RFC 8441 / RFC 9220."""
    fields: list[Header] = [
        (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", scheme),
        (b":path", path.encode()), (b":authority", authority.encode()),
        (b"sec-websocket-version", b"13"),
    ]
    if subprotocols:
        fields.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode()))
    fields.extend(headers)
    return fields


class _PendingResponse:
    def __init__(self, stream_id: int,
                 acknowledge: h2.connection.H2Connection | None = None) -> None:
        self.stream_id = stream_id
        self.acknowledge = acknowledge
        self.headers: list[Header] | None = None
        self.body = bytearray()
        self.ended = False
        self.reset: int | None = None

    def handle(self, event: h2.events.Event) -> None:
        if getattr(event, "stream_id", None) != self.stream_id:
            return
        if isinstance(event, h2.events.ResponseReceived):
            self.headers = list(event.headers or ())
        elif isinstance(event, h2.events.DataReceived):
            self.body += event.data or b""
            if self.acknowledge is not None and event.flow_controlled_length:
                self.acknowledge.acknowledge_received_data(event.flow_controlled_length,
                                                           self.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.reset = int(event.error_code or 0)


# --------------------------------------------------------------------------
# Raw frames for flood tests


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame, built by hand (RFC 9113 4.1)."""
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags))
            + (stream_id & 0x7FFFFFFF).to_bytes(4, "big") + payload)


PING = 0x6
SETTINGS = 0x4
RST_STREAM = 0x3
HEADERS = 0x1
CONTINUATION = 0x9
PRIORITY = 0x2
DATA = 0x0
GOAWAY = 0x7
END_STREAM = 0x1
END_HEADERS = 0x4


def ping_frame(n: int = 0) -> bytes:
    return frame(PING, 0, 0, n.to_bytes(8, "big"))


def rst_frame(stream_id: int, code: int = 0x8) -> bytes:
    return frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))


def settings_frame() -> bytes:
    return frame(SETTINGS, 0, 0, b"")


def goaway_code(data: bytes) -> int | None:
    """The error code of the first GOAWAY frame in ``data`` (server output)."""
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] == GOAWAY and pos + 9 + length <= len(data):
            return int.from_bytes(data[pos + 13:pos + 17], "big")
        pos += 9 + length
    return None


class RawH2:
    """A socket that speaks just enough HTTP/2 to attack: the test writes frames.

    A real h2 client state machine encodes the header blocks (so requests are
    well-formed); the bytes the test sends bypass its checks.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.received = bytearray()
        self.eof = False

    @classmethod
    async def open(cls, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> RawH2:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context,
            server_hostname="localhost" if ssl_context is not None else None)
        self = cls(reader, writer)
        self.conn.initiate_connection()
        writer.write(self.conn.data_to_send())
        return self

    def header_block(self, stream_id: int, path: str = "/", authority: bytes = b"localhost",
                     scheme: bytes = b"http") -> bytes:
        """An HPACK-encoded request header block (from a throwaway encoder state)."""
        fields = [(b":method", b"GET"), (b":scheme", scheme), (b":authority", authority),
                  (b":path", path.encode())]
        return self.conn.encoder.encode(fields)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self, timeout: float = 10.0) -> bool:
        """Send what is queued; False if the server already closed."""
        try:
            async with asyncio.timeout(timeout):
                await self.writer.drain()
            return True
        except (ConnectionError, ssl.SSLError):
            return False

    async def read_until_closed(self, timeout: float = 10.0, limit: int = 1 << 24) -> bytes:
        """Read until EOF (or ``limit`` bytes or the timeout); returns what came.

        ``eof`` is set when the server closed, by FIN or by reset (a server
        that closes with our flood unread in its buffer makes the kernel send
        RST, which may also discard the GOAWAY it wrote before).
        """
        try:
            async with asyncio.timeout(timeout):
                while len(self.received) < limit:
                    chunk = await self.reader.read(65536)
                    if not chunk:
                        self.eof = True
                        break
                    self.received += chunk
        except (ConnectionError, ssl.SSLError):
            self.eof = True
        except TimeoutError:
            pass
        return bytes(self.received)

    def close(self) -> None:
        self.writer.close()


def make_settings(**values: int) -> dict[int, int]:
    """h2 SETTINGS keyed by code from friendly names (``initial_window_size=...``)."""
    return {getattr(h2.settings.SettingCodes, name.upper()): value for name, value in values.items()}
