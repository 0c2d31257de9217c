"""One small client driver per protocol, all with the same methods.

Theory of operation
-------------------
The conformance suite runs every behaviour against quicserve's real protocol
adapters and the real ASGI layer (``asgi/dispatch.py``), with a real client
state machine on the other end, entirely in memory:

* ``h1`` -- :class:`~quicserve.protocols.h11.H11Adapter` on an in-memory
  :class:`~tests.support.bytelink.ByteLink`, an ``h11.Connection(CLIENT)``
  per connection (a new connection whenever no idle one is left, so two
  requests in flight use two connections, as browsers do).
* ``h2`` -- :class:`~quicserve.protocols.h2.H2Adapter` on a ByteLink, the
  ``h2`` client of :class:`~tests.support.h2_peers.H2Client`.
* ``h3`` / ``hq`` -- the real UDP endpoint, router and ``QuicSession`` on
  fake time (:class:`~tests.support.quic_peers.QuicHarness`), an aioquic
  client ``QuicConnection`` with ``H3Connection`` / ``H0Connection``.

Every driver offers:

``await open(method, path, headers, body=b"", end=True) -> Exchange``
    send a request head (and optionally the first body bytes).
``send(exchange, data, end)``
    more request body (on a WebSocket: raw bytes on the stream).
``reset(exchange)``
    the client gives up on the request mid-way: RST_STREAM (h2),
    RESET_STREAM + STOP_SENDING (h3), STOP_SENDING (hq, whose requests have
    no body to reset), or the TCP connection is dropped (h1).
``await request(method, path, headers, body_chunks) -> Response``
    a whole request; body chunks are sent one at a time with the network
    pumped in between, so the app sees them as separate messages.
``await wait(predicate, what)``
    move bytes (and fake time, for QUIC) until ``predicate()`` holds;
    bounded in rounds and in fake time, raises ``AssertionError`` naming
    ``what`` otherwise.
``await websocket(path, subprotocols) -> WebSocketClient | Response``
    the protocol's WebSocket handshake (H1 Upgrade, H2/H3 extended CONNECT);
    a :class:`WebSocketClient` when accepted, else the denial response.
``await settle()``
    pump until no stream and no app task is left (``Statistics``), then
    assert both counters are zero.

A :class:`Response` is the same for every protocol.  hq has no status line:
its adapter resets the stream with the HTTP status as the error code for any
non-2xx answer, so an hq response's ``status`` is 200 when the stream ended
cleanly, or that reset code when it is an HTTP status.

Bounded everywhere: each ``wait`` runs at most ``rounds`` rounds, stops after
``idle_rounds`` rounds in which nothing moved, and (QUIC) never advances the
fake clock by more than ``time_budget`` seconds, far below the idle timeout,
so a server that fails to react is not rescued by a connection timeout.
"""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import h11
import h2.errors
import wsproto.connection
import wsproto.events
from aioquic.h3.connection import ErrorCode as H3ErrorCode

from quicserve.asgi.dispatch import Dispatcher
from quicserve.config import Config
from quicserve.interfaces import Statistics
from quicserve.protocols.h11 import H11Adapter
from quicserve.protocols.h2 import H2Adapter
from tests.support.bytelink import ByteLink, FakeClock, make_conn
from tests.support.certs import CertSet
from tests.support.h2_peers import H2Client
from tests.support.quic_peers import H3Client, QuicHarness, make_context

Header = tuple[bytes, bytes]


@dataclass
class Response:
    """What the client saw for one request, the same for every protocol."""

    status: int | None = None
    #: Response fields without pseudo-headers.
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    #: None when no trailer section arrived.
    trailers: list[Header] | None = None
    #: Informational (1xx) responses before the final one: (status, fields).
    interim: list[tuple[int, list[Header]]] = field(default_factory=list)
    #: The response arrived complete (END_STREAM / FIN / end of message).
    ended: bool = False
    #: The response was cut short: a stream reset, or on HTTP/1.1 the
    #: connection closed before the message was complete.
    reset: bool = False
    reset_code: int | None = None
    #: HTTP/1.1: the server closed the connection after (or instead of) this response.
    connection_closed: bool = False

    @property
    def done(self) -> bool:
        return self.ended or self.reset

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _split_status(fields: Iterable[Header]) -> tuple[int | None, list[Header]]:
    status: int | None = None
    regular: list[Header] = []
    for name, value in fields:
        if name == b":status":
            status = int(value)
        elif not name.startswith(b":"):
            regular.append((name, value))
    return status, regular


class Exchange:
    """One request stream; ``response`` is a fresh snapshot on every read."""

    def __init__(self, driver: Driver, key: Any) -> None:
        self.driver = driver
        self.key = key

    @property
    def response(self) -> Response:
        return self.driver.snapshot(self)

    @property
    def done(self) -> bool:
        return self.response.done


# --------------------------------------------------------------------------
# The common part


class Driver:
    """Pumping, waiting and the whole-request helpers shared by every protocol."""

    name = ""
    dispatcher: Dispatcher

    def __init__(self, config: Config, stats: Statistics) -> None:
        self.config = config
        self.stats = stats
        #: Fake seconds the current wait has advanced the clock by (QUIC).
        self._time_spent = 0.0

    # -- per protocol --------------------------------------------------------------

    async def open(self, method: str, path: str, headers: Sequence[Header] = (), *,
                   body: bytes = b"", end: bool = True) -> Exchange:
        raise NotImplementedError

    def send(self, exchange: Exchange, data: bytes, end: bool = False) -> None:
        raise NotImplementedError

    def reset(self, exchange: Exchange) -> None:
        raise NotImplementedError

    def send_trailers(self, exchange: Exchange, fields: Sequence[Header]) -> None:
        """End the request body with a trailer section."""
        raise NotImplementedError

    def snapshot(self, exchange: Exchange) -> Response:
        raise NotImplementedError

    async def open_websocket(self, path: str, headers: Sequence[Header]) -> Exchange:
        raise NotImplementedError(f"{self.name} carries no WebSocket")

    def websocket_accepted(self, response: Response) -> bool:
        return response.status == 200

    def shutdown(self) -> None:
        """Graceful shutdown of the server side (what server.py does on SIGTERM)."""
        raise NotImplementedError

    def stall(self) -> None:
        """The client stops reading: the server's sends soon block (h1: the
        socket buffer is full; h2: no WINDOW_UPDATE; QUIC: nothing reaches
        the client, so nothing is acknowledged)."""
        raise NotImplementedError

    def drop_connection(self) -> None:
        """The client's whole connection goes away (h1/h2: TCP lost; QUIC:
        the client closes the connection)."""
        raise NotImplementedError

    def closed_by_server(self) -> bool:
        """The server ended the connection (every connection, on h1)."""
        raise NotImplementedError

    def unsent(self, exchange: Exchange) -> int:
        """Request bytes the client holds back because the server gives no
        credit (TCP: not read; H2: stream window; QUIC: MAX_STREAM_DATA)."""
        raise NotImplementedError

    def _step(self) -> bool:
        """Move bytes both ways once; True if anything moved."""
        raise NotImplementedError

    def _advance(self) -> bool:
        """Move fake time to the next timer; False if there is none (or no budget)."""
        return False

    def close(self) -> None:
        """Drop everything (end of the scenario)."""

    def cancel_apps(self) -> None:
        """What the graceful-shutdown deadline does: cancel every stream's task."""
        self.dispatcher.cancel_all()

    # -- common ----------------------------------------------------------------------

    async def pump(self, until: Callable[[], bool], *, rounds: int = 5000,
                   idle_rounds: int = 12) -> bool:
        """Move bytes, let the app tasks run, advance fake time when idle;
        True once ``until()`` holds, False when the bounds ran out."""
        idle = 0
        self._time_spent = 0.0
        for _ in range(rounds):
            moved = self._step()
            for _ in range(5):
                await asyncio.sleep(0)
            moved = self._step() or moved
            if until():
                return True
            if moved:
                idle = 0
                continue
            if self._advance():
                idle = 0
                continue
            idle += 1
            if idle >= idle_rounds:
                break
        return until()

    async def wait(self, until: Callable[[], bool], what: str, **bounds: Any) -> None:
        if not await self.pump(until, **bounds):
            raise AssertionError(f"{self.name}: never saw {what}; stats {self.stats.snapshot()}")

    async def quiesce(self) -> None:
        """Pump until nothing moves any more."""
        await self.pump(lambda: False, idle_rounds=4)

    async def request(self, method: str = "GET", path: str = "/",
                      headers: Sequence[Header] = (),
                      body_chunks: Sequence[bytes] = ()) -> Response:
        chunks = list(body_chunks)
        if len(chunks) <= 1:
            exchange = await self.open(method, path, headers,
                                       body=chunks[0] if chunks else b"", end=True)
        else:
            exchange = await self.open(method, path, headers, body=chunks[0], end=False)
            for index, chunk in enumerate(chunks[1:], start=2):
                await self.quiesce()
                self.send(exchange, chunk, end=index == len(chunks))
        await self.wait(lambda: exchange.done, f"the response to {method} {path}")
        return exchange.response

    async def websocket(self, path: str = "/ws", subprotocols: Sequence[str] = (),
                        headers: Sequence[Header] = ()) -> WebSocketClient | Response:
        extra = list(headers)
        if subprotocols:
            extra.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode()))
        exchange = await self.open_websocket(path, extra)
        await self.wait(lambda: exchange.response.status is not None or exchange.done,
                        f"the WebSocket handshake answer for {path}")
        response = exchange.response
        if self.websocket_accepted(response):
            return WebSocketClient(self, exchange, response)
        await self.wait(lambda: exchange.done, "the end of the WebSocket denial")
        return exchange.response

    async def settle(self) -> None:
        """Every stream and app task ends, and the counters say so."""
        stats = self.stats
        await self.pump(lambda: stats.streams == 0 and stats.app_tasks == 0, idle_rounds=30)
        snapshot = stats.snapshot()
        assert (snapshot["streams"], snapshot["app_tasks"]) == (0, 0), (
            f"{self.name}: streams/app tasks left after the scenario: {snapshot}")


# --------------------------------------------------------------------------
# HTTP/1.1


#: Bytes per ``data_received`` call, like one read of the TCP transport.
READ_SIZE = 65536


class _H1Connection:
    """One TCP connection: the server's H11Adapter and an h11 client."""

    def __init__(self, driver: H1Driver) -> None:
        self.link = ByteLink(FakeClock())
        self.adapter = H11Adapter(ctx=driver.ctx, transport=self.link, conn=make_conn(),
                                  h2c=False)
        self.link.attach(self.adapter)
        self.client = h11.Connection(h11.CLIENT)
        self.outbox = bytearray()
        self.response: Response | None = None
        self.switched = False
        self.eof_delivered = False
        self.dropped = False

    @property
    def idle(self) -> bool:
        client = self.client
        if self.link.closed or self.dropped or self.switched:
            return False
        if client.our_state is h11.DONE and client.their_state is h11.DONE:
            client.start_next_cycle()
        return client.our_state is h11.IDLE and client.their_state is h11.IDLE

    def step(self) -> bool:
        moved = False
        link = self.link
        if link.closed and self.outbox:
            self.outbox.clear()  # the socket is gone: writes fail, nothing is delivered
        while self.outbox and not link.reading_paused and not link.closed and not self.dropped:
            # One socket read at a time, as the TCP transport delivers them.
            data = bytes(self.outbox[:READ_SIZE])
            del self.outbox[:READ_SIZE]
            switch = link.feed(data)
            if switch is not None:
                raise AssertionError(f"unexpected protocol switch {switch}")
            moved = True
        incoming = link.take()
        if incoming:
            moved = True
            self._receive(incoming)
        elif link.closed and not self.eof_delivered and not self.dropped:
            self.eof_delivered = True
            moved = True
            self._receive(b"")
        return moved

    def _receive(self, data: bytes) -> None:
        response = self.response
        if response is None:
            return
        if self.switched:
            response.body += data
            if not data:
                response.connection_closed = True
            return
        self.client.receive_data(data)
        for _ in range(10_000):  # h11 yields a bounded number of events per input
            try:
                event = self.client.next_event()
            except h11.RemoteProtocolError:
                response.reset = True
                response.connection_closed = True
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if self.client.their_state is h11.SWITCHED_PROTOCOL:
                    self.switched = True
                    response.body += self.client.trailing_data[0]
                return
            self._event(response, event)
            if isinstance(event, h11.ConnectionClosed):
                return

    def _event(self, response: Response, event: Any) -> None:
        if isinstance(event, h11.InformationalResponse):
            fields = [(bytes(n), bytes(v)) for n, v in event.headers]
            response.interim.append((event.status_code, fields))
            if event.status_code == 101:
                response.status = 101
                response.headers = fields
        elif isinstance(event, h11.Response):
            response.status = event.status_code
            response.headers = [(bytes(n), bytes(v)) for n, v in event.headers]
        elif isinstance(event, h11.Data):
            response.body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            trailers = [(bytes(n), bytes(v)) for n, v in event.headers]
            response.trailers = trailers or None
            response.ended = True
        elif isinstance(event, h11.ConnectionClosed):
            response.connection_closed = True
            if not response.ended:
                response.reset = True


class H1Driver(Driver):
    name = "h1"

    def __init__(self, config: Config, app: Any) -> None:
        self.ctx, self.dispatcher = make_context(config, app, FakeClock())
        super().__init__(config, self.ctx.stats)
        self.connections: list[_H1Connection] = []

    def _connection(self) -> _H1Connection:
        for conn in self.connections:
            if conn.idle:
                return conn
        conn = _H1Connection(self)
        self.connections.append(conn)
        return conn

    async def open(self, method: str, path: str, headers: Sequence[Header] = (), *,
                   body: bytes = b"", end: bool = True) -> Exchange:
        conn = self._connection()
        fields = list(headers)
        names = {name for name, _ in fields}
        if b"host" not in names:
            fields.insert(0, (b"host", b"localhost"))
        if b"content-length" not in names and b"transfer-encoding" not in names:
            if not end:
                fields.append((b"transfer-encoding", b"chunked"))
            elif body or method in ("POST", "PUT", "PATCH"):
                fields.append((b"content-length", str(len(body)).encode()))
        conn.response = Response()
        conn.outbox += conn.client.send(h11.Request(method=method, target=path, headers=fields))
        exchange = Exchange(self, conn)
        if body or end:
            self.send(exchange, body, end)
        return exchange

    def send(self, exchange: Exchange, data: bytes, end: bool = False) -> None:
        conn: _H1Connection = exchange.key
        if conn.switched:
            conn.outbox += data
            return
        if data:
            conn.outbox += conn.client.send(h11.Data(data=data)) or b""
        if end:
            conn.outbox += conn.client.send(h11.EndOfMessage()) or b""

    def send_trailers(self, exchange: Exchange, fields: Sequence[Header]) -> None:
        conn: _H1Connection = exchange.key
        conn.outbox += conn.client.send(h11.EndOfMessage(headers=list(fields))) or b""

    def reset(self, exchange: Exchange) -> None:
        """HTTP/1.1 has no stream reset: the client drops the connection."""
        conn: _H1Connection = exchange.key
        if not conn.link.lost:
            conn.dropped = True
            conn.link.lose()

    def unsent(self, exchange: Exchange) -> int:
        conn: _H1Connection = exchange.key
        return len(conn.outbox)

    def shutdown(self) -> None:
        for conn in self.connections:
            conn.adapter.shutdown()

    def stall(self) -> None:
        for conn in self.connections:
            conn.link.block_writes()

    def drop_connection(self) -> None:
        for conn in self.connections:
            if not conn.link.lost:
                conn.dropped = True
                conn.link.lose()

    def closed_by_server(self) -> bool:
        return all(conn.link.closed and not conn.dropped for conn in self.connections)

    def snapshot(self, exchange: Exchange) -> Response:
        conn: _H1Connection = exchange.key
        assert conn.response is not None
        return replace(conn.response, headers=list(conn.response.headers),
                       interim=list(conn.response.interim))

    async def open_websocket(self, path: str, headers: Sequence[Header]) -> Exchange:
        key = base64.b64encode(os.urandom(16))
        fields = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                  (b"sec-websocket-key", key), (b"sec-websocket-version", b"13"), *headers]
        return await self.open("GET", path, fields)

    def websocket_accepted(self, response: Response) -> bool:
        return response.status == 101

    def _step(self) -> bool:
        moved = False
        for conn in self.connections:
            moved = conn.step() or moved
        return moved

    def close(self) -> None:
        for conn in self.connections:
            if not conn.link.lost:
                conn.link.lose()


# --------------------------------------------------------------------------
# HTTP/2


class CountingLink(ByteLink):
    """A ByteLink that counts the bytes moved each way, so a pump can tell
    whether anything happened."""

    moved = 0

    def feed(self, data: bytes, *, bytewise: bool = False) -> Any:
        self.moved += len(data)
        return super().feed(data, bytewise=bytewise)

    def take(self) -> bytes:
        data = super().take()
        self.moved += len(data)
        return data


class GoawayTolerantClient(H2Client):
    """An H2Client that goes on reading the streams a GOAWAY still covers.

    The ``h2`` library moves a client connection to CLOSED on GOAWAY and
    then rejects every frame, although RFC 9113 6.8 lets streams up to the
    last stream id finish (real clients do).  So GOAWAY frames are taken out
    of the byte stream here, recorded (``goaways``), and everything
    else goes to h2.
    """

    def __init__(self, link: ByteLink) -> None:
        super().__init__(link)
        self._frames = bytearray()
        #: (last stream id, error code) of every GOAWAY received.
        self.goaways: list[tuple[int, int]] = []

    def receive(self, data: bytes) -> list[Any]:
        self._frames += data
        keep = bytearray()
        frames = self._frames
        while len(frames) >= 9:
            size = 9 + int.from_bytes(frames[:3], "big")
            if len(frames) < size:
                break
            frame = bytes(frames[:size])
            del frames[:size]
            if frame[3] == 0x7:  # GOAWAY
                self.goaways.append((int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF,
                                     int.from_bytes(frame[13:17], "big")))
            else:
                keep += frame
        return super().receive(bytes(keep)) if keep else []


class H2Driver(Driver):
    name = "h2"

    def __init__(self, config: Config, app: Any) -> None:
        self.ctx, self.dispatcher = make_context(config, app, FakeClock())
        super().__init__(config, self.ctx.stats)
        self.link = CountingLink(FakeClock())
        self.adapter = H2Adapter(ctx=self.ctx, transport=self.link, conn=make_conn(secure=True))
        self.link.attach(self.adapter)
        self.client = GoawayTolerantClient(self.link)

    async def open(self, method: str, path: str, headers: Sequence[Header] = (), *,
                   body: bytes = b"", end: bool = True,
                   extra_pseudo: Sequence[Header] = ()) -> Exchange:
        stream_id = self.client.request(method, path, headers=headers, body=body, end=end,
                                        authority=b"localhost", extra_pseudo=extra_pseudo)
        return Exchange(self, stream_id)

    def send(self, exchange: Exchange, data: bytes, end: bool = False) -> None:
        self.client.send_data(exchange.key, data, end=end)

    def send_trailers(self, exchange: Exchange, fields: Sequence[Header]) -> None:
        if exchange.key in self.client.pending:
            raise AssertionError("trailers would overtake body bytes still waiting for window")
        self.client.conn.send_headers(exchange.key, list(fields), end_stream=True)

    def reset(self, exchange: Exchange) -> None:
        self.client.pending.pop(exchange.key, None)
        self.client.conn.reset_stream(exchange.key, h2.errors.ErrorCodes.CANCEL)

    def unsent(self, exchange: Exchange) -> int:
        pending = self.client.pending.get(exchange.key)
        return len(pending[0]) if pending is not None else 0

    def shutdown(self) -> None:
        self.adapter.shutdown()

    def stall(self) -> None:
        self.client.auto_ack = False

    def drop_connection(self) -> None:
        if not self.link.lost:
            self.link.lose()

    def closed_by_server(self) -> bool:
        return self.link.closed and not self.link.lost

    def _drop_reset_streams(self) -> None:
        """A client stops sending on a stream the server reset (h2 would only
        notice when the window reopens, which it never does then)."""
        client = self.client
        for stream_id in list(client.pending):
            if client.responses[stream_id].reset is not None:
                del client.pending[stream_id]

    def snapshot(self, exchange: Exchange) -> Response:
        raw = self.client.responses[exchange.key]
        status, headers = _split_status(raw.headers or ())
        trailers = None if raw.trailers is None else [
            (n, v) for n, v in raw.trailers if not n.startswith(b":")]
        interim = [_split_status(fields) for fields in raw.informational]
        return Response(
            status=status, headers=headers, body=bytes(raw.data), trailers=trailers,
            interim=[(s, f) for s, f in interim if s is not None],
            # RST_STREAM(NO_ERROR) after a complete response (RFC 9113 8.1)
            # only stops the request body: the response is not cut short.
            ended=raw.ended, reset=raw.reset is not None and not raw.ended,
            reset_code=raw.reset, connection_closed=self.link.closed,
        )

    async def open_websocket(self, path: str, headers: Sequence[Header]) -> Exchange:
        fields = [(b"sec-websocket-version", b"13"), *headers]
        return await self.open("CONNECT", path, fields, end=False,
                               extra_pseudo=[(b":protocol", b"websocket")])

    def _step(self) -> bool:
        link = self.link
        before = link.moved
        if link.closed:
            incoming = link.take()
            if incoming:
                self.client.receive(incoming)
        else:
            self.client.exchange(rounds=200)
        self._drop_reset_streams()
        return link.moved != before

    def close(self) -> None:
        if not self.link.lost:
            self.link.lose()


# --------------------------------------------------------------------------
# HTTP/3 and hq-interop over QUIC


class QuicDriver(Driver):
    """The real UDP endpoint on fake time with one aioquic client."""

    h0 = False
    #: Fake seconds a single wait may move the clock.
    time_budget = 2.0

    def __init__(self, config: Config, app: Any, certs: CertSet) -> None:
        config = replace(config, certfile=str(certs.cert), keyfile=str(certs.key),
                         quic_alpn=("h3", "hq-interop"))
        self.harness = QuicHarness(config=config, app=app, ca=str(certs.ca))
        self.dispatcher = self.harness.dispatcher
        super().__init__(config, self.harness.stats)
        self.client: H3Client = self.harness.client(h0=self.h0)

    async def connect(self) -> None:
        await self.wait(lambda: self.client.handshake is not None, "the QUIC handshake")

    def _step(self) -> bool:
        return self.harness.exchange()

    def _advance(self) -> bool:
        harness = self.harness
        before = harness.clock.now
        deadlines = [t for t in (c.quic.get_timer() for c in harness.clients) if t is not None]
        server = harness.clock.next_deadline()
        if server is not None:
            deadlines.append(server)
        if not deadlines or min(deadlines) - before + self._time_spent > self.time_budget:
            return False
        if not harness.advance():
            return False
        self._time_spent += harness.clock.now - before
        return True

    def shutdown(self) -> None:
        self.expect_close = True
        self.harness.endpoint.shutdown()

    def stall(self) -> None:
        address = self.client.address
        self.harness.link.lose = lambda data, src, dst: dst == address

    def drop_connection(self) -> None:
        self.expect_close = True
        self.client.quic.close()

    def closed_by_server(self) -> bool:
        return self.client.terminated is not None

    expect_close = False

    async def settle(self) -> None:
        await super().settle()
        terminated = self.client.terminated
        assert terminated is None or self.expect_close, (
            f"{self.name}: the QUIC connection was closed during the scenario "
            f"(0x{terminated.error_code:x} {terminated.reason_phrase!r})")

    def unsent(self, exchange: Exchange) -> int:
        # aioquic keeps written-but-unsent bytes between the highest offset
        # sent and the end of its send buffer (a test-only look inside).
        stream = self.client.quic._streams.get(exchange.key)
        if stream is None:
            return 0
        return int(stream.sender._buffer_stop - stream.sender.highest_offset)

    def reset(self, exchange: Exchange) -> None:
        quic = self.client.quic
        code = int(H3ErrorCode.H3_REQUEST_CANCELLED)
        quic.reset_stream(exchange.key, code)
        quic.stop_stream(exchange.key, code)

    def close(self) -> None:
        self.client.quic.close()


class H3Driver(QuicDriver):
    name = "h3"

    async def open(self, method: str, path: str, headers: Sequence[Header] = (), *,
                   body: bytes = b"", end: bool = True) -> Exchange:
        return Exchange(self, self.client.request(method, path, body=body or None,
                                                  headers=headers, end=end))

    def send(self, exchange: Exchange, data: bytes, end: bool = False) -> None:
        self.client.send_body(exchange.key, data, end=end)

    def send_trailers(self, exchange: Exchange, fields: Sequence[Header]) -> None:
        self.client.http.send_headers(exchange.key, list(fields), end_stream=True)

    def snapshot(self, exchange: Exchange) -> Response:
        raw = self.client.responses[exchange.key]
        status, headers = _split_status(raw.headers)
        interim = [_split_status(fields) for fields in raw.interim]
        return Response(
            status=status, headers=headers, body=bytes(raw.body),
            trailers=list(raw.trailers) or None,
            interim=[(s, f) for s, f in interim if s is not None],
            ended=raw.ended, reset=raw.reset_code is not None, reset_code=raw.reset_code,
        )

    async def resume_with_early_data(
            self, requests: Sequence[tuple[str, str]]) -> list[Exchange]:
        """Reconnect with the session ticket of the first connection and send
        ``requests`` (method, path) in 0-RTT, before the handshake completes.
        The new connection becomes the driver's client."""
        await self.wait(lambda: bool(self.client.tickets), "a session ticket")
        ticket = self.client.tickets[-1]
        if not ticket.max_early_data_size:
            raise AssertionError("the server's session ticket allows no early data")
        old = self.client
        self.client = self.harness.client(address=("10.0.0.3", 50001), session_ticket=ticket)
        old.quic.close()
        exchanges = [Exchange(self, self.client.request(method, path, body=None))
                     for method, path in requests]
        return exchanges

    def early_data_accepted(self) -> bool:
        handshake = self.client.handshake
        return handshake is not None and handshake.early_data_accepted

    async def open_websocket(self, path: str, headers: Sequence[Header]) -> Exchange:
        client = self.client
        stream_id = client.quic.get_next_available_stream_id()
        client.send_headers(stream_id, [
            (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
            (b":authority", b"localhost"), (b":path", path.encode()),
            (b"sec-websocket-version", b"13"), *headers], end=False)
        return Exchange(self, stream_id)


class HqDriver(QuicDriver):
    """hq-interop: ``GET /path`` and FIN; the answer is the body and FIN."""

    name = "hq"
    h0 = True

    async def open(self, method: str, path: str, headers: Sequence[Header] = (), *,
                   body: bytes = b"", end: bool = True) -> Exchange:
        if method != "GET" or body or not end:
            raise ValueError("hq-interop requests are a GET line with no body")
        stream_id = self.client.request(method, path)
        return Exchange(self, stream_id)

    def send(self, exchange: Exchange, data: bytes, end: bool = False) -> None:
        raise ValueError("hq-interop requests have no body")

    def reset(self, exchange: Exchange) -> None:
        """An hq request has no body to cut short: the client stops reading."""
        self.client.quic.stop_stream(exchange.key, int(H3ErrorCode.H3_REQUEST_CANCELLED))

    def snapshot(self, exchange: Exchange) -> Response:
        raw = self.client.responses[exchange.key]
        code = raw.reset_code
        status: int | None = None
        if raw.ended:
            status = 200
        elif code is not None and 100 <= code < 600:
            status = code
        return Response(status=status, body=bytes(raw.body), ended=raw.ended,
                        reset=code is not None, reset_code=code)


# --------------------------------------------------------------------------
# WebSocket


class WebSocketClient:
    """A wsproto client framing the bytes of one accepted WebSocket stream."""

    def __init__(self, driver: Driver, exchange: Exchange, response: Response) -> None:
        self.driver = driver
        self.exchange = exchange
        self.response = response
        self.subprotocol = (response.header(b"sec-websocket-protocol") or b"").decode() or None
        self.ws = wsproto.connection.Connection(wsproto.connection.ConnectionType.CLIENT)
        self.messages: list[str | bytes] = []
        self.close_event: wsproto.events.CloseConnection | None = None
        self.pongs: list[bytes] = []
        self._offset = 0
        self._text: list[str] = []
        self._binary: list[bytes] = []

    def _poll(self) -> None:
        body = self.exchange.response.body
        if len(body) > self._offset:
            data, self._offset = body[self._offset:], len(body)
            self.ws.receive_data(data)
            for event in self.ws.events():
                self._event(event)

    def _event(self, event: wsproto.events.Event) -> None:
        if isinstance(event, wsproto.events.TextMessage):
            self._text.append(event.data)
            if event.message_finished:
                self.messages.append("".join(self._text))
                self._text.clear()
        elif isinstance(event, wsproto.events.BytesMessage):
            self._binary.append(bytes(event.data))
            if event.message_finished:
                self.messages.append(b"".join(self._binary))
                self._binary.clear()
        elif isinstance(event, wsproto.events.Ping):
            self.driver.send(self.exchange, self.ws.send(event.response()))
        elif isinstance(event, wsproto.events.Pong):
            self.pongs.append(bytes(event.payload))
        elif isinstance(event, wsproto.events.CloseConnection):
            self.close_event = event
            if self.ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                self.driver.send(self.exchange, self.ws.send(event.response()))

    def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            data = self.ws.send(wsproto.events.TextMessage(data=message))
        else:
            data = self.ws.send(wsproto.events.BytesMessage(data=message))
        self.driver.send(self.exchange, data)

    def send_fragments(self, fragments: Sequence[str | bytes]) -> None:
        """One message in several frames (message_finished on the last only)."""
        for index, part in enumerate(fragments):
            last = index == len(fragments) - 1
            event: wsproto.events.Event
            if isinstance(part, str):
                event = wsproto.events.TextMessage(data=part, message_finished=last)
            else:
                event = wsproto.events.BytesMessage(data=part, message_finished=last)
            self.driver.send(self.exchange, self.ws.send(event))

    async def ping(self, payload: bytes) -> None:
        """Ping and wait for the matching pong."""
        self.driver.send(self.exchange, self.ws.send(wsproto.events.Ping(payload=payload)))

        def answered() -> bool:
            self._poll()
            return payload in self.pongs
        await self.driver.wait(answered, "the pong")

    async def receive(self) -> str | bytes:
        def arrived() -> bool:
            self._poll()
            return bool(self.messages) or self.close_event is not None
        await self.driver.wait(arrived, "a WebSocket message")
        if not self.messages:
            raise AssertionError(f"closed instead: {self.close_event}")
        return self.messages.pop(0)

    async def wait_closed(self) -> wsproto.events.CloseConnection:
        def closed() -> bool:
            self._poll()
            return self.close_event is not None
        await self.driver.wait(closed, "the server's close frame")
        assert self.close_event is not None
        return self.close_event

    async def close(self, code: int = 1000, reason: str = "") -> wsproto.events.CloseConnection:
        """Send a close frame; return the server's answer."""
        self.driver.send(self.exchange,
                         self.ws.send(wsproto.events.CloseConnection(code=code, reason=reason)))
        return await self.wait_closed()


# --------------------------------------------------------------------------


async def make_driver(protocol: str, app: Any, config: Config, certs: CertSet) -> Driver:
    if protocol == "h1":
        return H1Driver(config, app)
    if protocol == "h2":
        return H2Driver(config, app)
    quic: QuicDriver = H3Driver(config, app, certs) if protocol == "h3" else \
        HqDriver(config, app, certs)
    await quic.connect()
    return quic
