"""HTTP/1.1 over a byte stream: :class:`H11Adapter`.

Theory of operation
-------------------
``transport/tcp.py`` feeds the adapter bytes (``data_received``) and tells it
about EOF, loss, its one timer and graceful shutdown; the adapter answers with
writes, read pauses and timer settings on the :class:`ByteTransport`.  It never
touches a socket, a clock (time comes from ``ctx.clock``) or the event loop,
so the unit tests drive it with plain calls over ``tests/support/bytelink.py``.

Parsing: each request cycle starts on the fast path,
:class:`~quicserve.protocols.h1parse.SimpleParser`, which takes a whole,
well-formed head with at most a Content-Length body (nearly every request)
and yields what h11 would.  Anything else it declines before yielding an
event, and the cycle falls back to one ``h11.Connection(SERVER)`` fed every
byte from the start (through ``h1parse.ScreenedH11``, which keeps the lines
that would make h11's regexes backtrack quadratically away from h11), which parses the head and body (chunked or
Content-Length), bounds the head size and decides every 400/431/501, as
before.  Both yield the same sequence (head, body chunks, end), which
:meth:`H11Adapter._process` handles alike.

The *response* side is written here, not with ``h11.Connection.send``: h11's
send path re-validates headers that :func:`head.response_headers` already
validated and costs ~40 us per response on the reference machine, as much as
parsing the request.  Our writer is small because the framing rules are few
(RFC 9112 6.3): no body for HEAD, 1xx, 204 and 304; Content-Length when the
application gives it; otherwise chunked for HTTP/1.1 and close-delimited for
HTTP/1.0.  Since h11 never sees our responses, the parser is replaced by a
fresh one (fed the pipelined bytes the old one had buffered) at each new
cycle rather than cycled with ``start_next_cycle``.

The connection moves through :class:`Phase` by :meth:`H11Adapter._transition`
and the table ``_PHASES``; the phase alone decides what the one timer means::

    IDLE --data--> HEAD --request--> BODY --end--> RESPONDING --response done--> IDLE
                                      |                 \\--upgrade (101)--> SWITCHED
                                      +--response done--> DRAINING --end--> IDLE
    any --close--> CLOSED

* IDLE: between requests; the timer is ``keep_alive``.
* HEAD: part of a head arrived; ``read_timeout`` is armed once for the *whole*
  head, so a client dribbling bytes (slowloris) gets 408 and is closed.
* BODY: the request body is arriving; ``read_timeout`` between chunks, and no
  timer while reading is paused because the app has not consumed the body.
* RESPONDING: the request is complete; no timer (the app takes its time).
  Pipelined bytes wait in the adapter's backlog; reading pauses once they
  exceed ``h11_max_incomplete_size``.  Requests are answered strictly in order.
  h11 is given head bytes in slices of 8 KiB, because it copies whatever it
  still buffers at each new cycle (a big read of small pipelined requests
  would otherwise cost quadratic time).
* DRAINING: the response finished before the request body did; the rest of
  the body is read and discarded (bounded), then the next cycle starts.
* SWITCHED: a WebSocket was accepted (101): raw bytes both ways.

Each request gets one :class:`H11Exchange`, the :class:`StreamSink` of its
stream; its response side is the small state machine :class:`ResponseState`.
A final head is held until the first ``send_body``/``send_trailers`` so that
a small response leaves in one ``transport.write`` (``send_body(b"", False)``
flushes the head alone, for streams that want the head out before any body).

Backpressure.  Read: the bytes given to the stream and not yet credited back
(``sink.credit``) are counted; above ``stream_high_water`` reading pauses.
Write: ``send_body`` awaits ``transport.wait_writable()`` (the only await).

Switching.  h2c prior knowledge (the HTTP/2 preface as the first bytes) and
h2c ``Upgrade`` (on the first request, body at most ``stream_high_water``)
return :class:`SwitchTo` from ``data_received``; only when the adapter was
built with ``h2c=True`` (``server.py`` does so when it has an HTTP/2 adapter).

Never: await anywhere but ``send_body``; block the receive path on the app;
raise out of ``data_received`` for hostile bytes (they become 400/431 and a
close).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from typing import cast

import h11

from ..errors import ASGIProtocolError, ProtocolError, StreamClosed
from ..interfaces import (
    ConnectionContext,
    ConnectionInfo,
    Headers,
    ResetReason,
    StateEnum,
    StreamHandler,
)
from .base import ByteTransport, SwitchTo
from .h1parse import END, FALLBACK, ScreenedH11, SimpleParser, SimpleRequest
from .head import H1Request, h1_request, reason_phrase, response_headers, trailer_fields

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_H2C_SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
#: Headers of an h2c upgrade request that belong to the HTTP/1.1 hop only.
_H2C_HOP_HEADERS = frozenset({b"connection", b"upgrade", b"http2-settings"})
#: Headers the 101 of a WebSocket handshake sets itself.
_WS_OWN_HEADERS = frozenset({b"connection", b"upgrade", b"sec-websocket-accept",
                             b"content-length", b"transfer-encoding"})


class Phase(StateEnum):
    IDLE = "idle"
    HEAD = "receiving a head"
    BODY = "receiving a body"
    RESPONDING = "responding"
    DRAINING = "draining a body"
    SWITCHED = "switched protocol"
    CLOSED = "closed"


class _Event(StateEnum):
    DATA = "data"
    REQUEST = "request"
    END = "end of request"
    RESPONSE_DONE = "response done"
    UPGRADE = "upgrade"


_PHASES: dict[tuple[Phase, _Event], Phase] = {
    (Phase.IDLE, _Event.DATA): Phase.HEAD,
    (Phase.HEAD, _Event.REQUEST): Phase.BODY,
    (Phase.BODY, _Event.END): Phase.RESPONDING,
    (Phase.BODY, _Event.RESPONSE_DONE): Phase.DRAINING,
    (Phase.RESPONDING, _Event.RESPONSE_DONE): Phase.IDLE,
    (Phase.RESPONDING, _Event.UPGRADE): Phase.SWITCHED,
    (Phase.DRAINING, _Event.END): Phase.IDLE,
}


class ResponseState(StateEnum):
    #: Nothing final sent (1xx heads may have gone out).
    PENDING = "pending"
    #: A final head was given; it leaves with the first body bytes.
    HEAD = "head held"
    #: The head is on the wire; body bytes follow.
    BODY = "body"
    #: 101 sent: the body is the raw upgraded byte stream.
    UPGRADED = "upgraded"
    DONE = "done"
    #: Reset by the app, or the connection is gone.
    CLOSED = "closed"


class _Action(StateEnum):
    HEAD = "send_head"
    UPGRADE = "send_head (accept)"
    WRITE = "send_body"
    END = "send_body (end)"
    TRAILERS = "send_trailers"


_RESPONSES: dict[tuple[ResponseState, _Action], ResponseState] = {
    (ResponseState.PENDING, _Action.HEAD): ResponseState.HEAD,
    (ResponseState.PENDING, _Action.UPGRADE): ResponseState.UPGRADED,
    (ResponseState.HEAD, _Action.WRITE): ResponseState.BODY,
    (ResponseState.HEAD, _Action.END): ResponseState.DONE,
    (ResponseState.HEAD, _Action.TRAILERS): ResponseState.DONE,
    (ResponseState.BODY, _Action.WRITE): ResponseState.BODY,
    (ResponseState.BODY, _Action.END): ResponseState.DONE,
    (ResponseState.BODY, _Action.TRAILERS): ResponseState.DONE,
    (ResponseState.UPGRADED, _Action.WRITE): ResponseState.UPGRADED,
    (ResponseState.UPGRADED, _Action.END): ResponseState.DONE,
}


# Why reading is paused: independent reasons, as bits; reading resumes when
# none is left.  (Plain ints: IntFlag arithmetic is slow on this path.)
#: The stream holds more than stream_high_water uncredited bytes.
_PAUSE_CREDIT = 1
#: Pipelined bytes beyond h11_max_incomplete_size wait for their turn.
_PAUSE_PIPELINE = 2


#: ASGI extensions HTTP/1.1 supports: trailers (chunked responses only; dropped
#: otherwise) and 103 Early Hints (dropped for HTTP/1.0 clients).
_EXTENSIONS = ("http.response.trailers", "http.response.early_hint")
#: Response fields whose meaning is the framing: the writer decides them.
_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_STATUS_LINES: dict[int, bytes] = {}
#: Bytes given to h11 at a time when requests are read in bulk (see _feed).
_SLICE = 8192


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))
        if len(_STATUS_LINES) < 1000:
            _STATUS_LINES[status] = line
    return line


def _websocket_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())


class H11Exchange:
    """The sink of one request's stream: turns its calls into HTTP/1.1 bytes.

    Error handling: calls on an exchange whose connection is gone, or that
    was reset, raise :class:`StreamClosed` (``send_body``) or are ignored
    (the synchronous calls); a call that is not valid in the response state
    raises :class:`ASGIProtocolError` naming the state and the call; bad
    application headers raise :class:`ProtocolError` (status 500).

    Resource handling: holds at most the head until the first body write.
    """

    __slots__ = (
        "_adapter", "request", "stream", "state", "keep_alive", "_expect_continue",
        "_head", "_no_body", "_chunked", "_remaining",
    )

    def __init__(self, adapter: H11Adapter, request: H1Request) -> None:
        self._adapter = adapter
        self.request = request
        self.stream: StreamHandler | None = None
        self.state = ResponseState.PENDING
        self.keep_alive = request.keep_alive
        self._expect_continue = request.expect_continue and request.has_body
        self._head = b""
        self._no_body = request.head.method == "HEAD"
        self._chunked = False
        #: Body bytes still owed under the app's Content-Length, or None.
        self._remaining: int | None = None

    # -- StreamSink ---------------------------------------------------------------

    def send_head(self, status: int, headers: Headers) -> None:
        if self.state is ResponseState.CLOSED or self._adapter.phase is Phase.CLOSED:
            return
        if status < 200:
            self._informational(status, headers)
        elif self.request.head.protocol == "websocket" and status == 200:
            self._transition(_Action.UPGRADE)
            self._adapter.upgrade(self, self._render_101(headers))
        else:
            self._transition(_Action.HEAD)
            self._head = self._render_head(status, headers)

    async def send_body(self, data: bytes, end: bool) -> None:
        adapter = self._adapter
        if self.state is ResponseState.CLOSED or adapter.phase is Phase.CLOSED:
            raise StreamClosed("the connection is closed")
        previous = self._transition(_Action.END if end else _Action.WRITE)
        if previous is ResponseState.UPGRADED:
            out = data
        else:
            out = self._frame(data, end)
            if previous is ResponseState.HEAD:
                out = self._head + out
                self._head = b""
        if out:
            adapter.transport.write(out)
        if end:
            adapter.response_done(self)
        else:
            await adapter.transport.wait_writable()

    def send_trailers(self, headers: Headers) -> None:
        if self.state is ResponseState.CLOSED or self._adapter.phase is Phase.CLOSED:
            return
        previous = self._transition(_Action.TRAILERS)
        fields = trailer_fields(headers)
        out = self._head if previous is ResponseState.HEAD else b""
        if self._chunked:
            out += b"0\r\n" + b"".join(b"%s: %s\r\n" % pair for pair in fields) + b"\r\n"
        else:
            # Trailers need chunked framing (RFC 9112 7.1.2); dropped otherwise.
            out += self._frame(b"", True)
        self._head = b""
        if out:
            self._adapter.transport.write(out)
        self._adapter.response_done(self)

    def reset(self, reason: ResetReason) -> None:
        state = self.state
        if state is ResponseState.DONE or state is ResponseState.CLOSED:
            return
        self.state = ResponseState.CLOSED
        adapter = self._adapter
        if state is ResponseState.PENDING or state is ResponseState.HEAD:
            # Nothing final is on the wire: a clean error response is still possible.
            adapter.fail(503 if reason is ResetReason.REFUSED else 500)
        else:
            adapter.close()

    def credit(self, n: int) -> None:
        if self._adapter.exchange is self:
            self._adapter.credit(n)

    # -- internals ----------------------------------------------------------------

    def _transition(self, action: _Action) -> ResponseState:
        previous = self.state
        try:
            self.state = _RESPONSES[previous, action]
        except KeyError:
            raise ASGIProtocolError(previous.value, action.value) from None
        return previous

    def _informational(self, status: int, headers: Headers) -> None:
        if self.state is not ResponseState.PENDING:
            return
        if status == 100:
            if self._expect_continue:
                self._expect_continue = False
                self._adapter.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self._adapter.continue_sent()
            return
        if status == 101 or self.request.http_version != b"1.1":
            return  # 101 is the adapter's to send; HTTP/1.0 clients take no 1xx
        fields = response_headers(status, headers, self._adapter.ctx.response_defaults,
                                  now=0.0, alt_svc=False)
        self._adapter.transport.write(self._serialize(status, fields))

    @property
    def awaiting_continue(self) -> bool:
        """The client waits for 100 Continue before it sends the body."""
        return self._expect_continue

    def body_started(self) -> None:
        """Body bytes arrived: the client no longer waits for 100 Continue."""
        self._expect_continue = False

    def _render_head(self, status: int, headers: Headers) -> bytes:
        adapter = self._adapter
        ctx = adapter.ctx
        fields = response_headers(status, headers, ctx.response_defaults,
                                  now=ctx.clock(), alt_svc=adapter.secure)
        content_length: bytes | None = None
        lines: list[bytes] = []
        for pair in fields:
            name = pair[0]
            if name in _FRAMING_FIELDS:
                if name == b"content-length":
                    content_length = pair[1]
                    continue
                if name == b"transfer-encoding":
                    continue  # the framing is ours to choose
                if b"close" in pair[1].lower():  # connection
                    self.keep_alive = False
            lines.append(b": ".join(pair))
        self._choose_framing(status, content_length, lines)
        if self._expect_continue or adapter.shutting_down:
            # The client may never send the body it announced: no reuse.
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"connection: close")
        if not lines:
            return _status_line(status) + b"\r\n"
        return b"%s%s\r\n\r\n" % (_status_line(status), b"\r\n".join(lines))

    def _choose_framing(self, status: int, content_length: bytes | None,
                        lines: list[bytes]) -> None:
        """RFC 9112 6.3: decide how the body is delimited; emit its header."""
        if status == 204 or status == 304:
            self._no_body = True
        if content_length is not None:
            if not content_length.isdigit():
                raise ProtocolError(f"bad response Content-Length {content_length[:32]!r}",
                                    status=500)
            if status != 204:
                lines.append(b"content-length: " + content_length)
            self._remaining = int(content_length)
        elif self._no_body:
            pass
        elif self.request.http_version == b"1.1":
            self._chunked = True
            lines.append(b"transfer-encoding: chunked")
        else:
            self.keep_alive = False  # HTTP/1.0: the close delimits the body

    def _frame(self, data: bytes, end: bool) -> bytes:
        if self._no_body:
            return b""
        if self._chunked:
            if data:
                if end:
                    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
                return b"%x\r\n%s\r\n" % (len(data), data)
            return b"0\r\n\r\n" if end else b""
        remaining = self._remaining
        if remaining is not None:
            remaining -= len(data)
            if remaining < 0:
                self._adapter.close()
                raise ProtocolError("response body longer than its Content-Length", status=500)
            if end and remaining:
                # Short body: the client must not mistake it for complete.
                self.keep_alive = False
                self._adapter.close_after_write()
            self._remaining = remaining
        return data

    def _render_101(self, headers: Headers) -> bytes:
        key = self.request.websocket_key or b""
        fields = response_headers(101, headers, self._adapter.ctx.response_defaults,
                                  now=0.0, alt_svc=False)
        fields = [pair for pair in fields if pair[0] not in _WS_OWN_HEADERS]
        fields[:0] = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                      (b"sec-websocket-accept", _websocket_accept(key))]
        return self._serialize(101, fields)

    @staticmethod
    def _serialize(status: int, fields: list[tuple[bytes, bytes]]) -> bytes:
        return (_status_line(status) + b"".join(b"%s: %s\r\n" % pair for pair in fields)
                + b"\r\n")


class H11Adapter:
    """HTTP/1.1 (and 1.0) on one connection; implements ``ByteProtocol``.

    Built by the transport as ``H11Adapter(ctx=..., transport=..., conn=...)``.
    ``h2c`` says whether switching to HTTP/2 (prior knowledge or Upgrade) is
    possible, i.e. whether the transport has an ``"h2"`` adapter.

    Error handling: hostile or malformed bytes never raise out of
    ``data_received``; they are answered 400/431/501 and the connection is
    closed.  A client that goes away aborts the current stream
    (``http.disconnect``).

    Resource handling: per connection at most one head
    (``h11_max_incomplete_size``), ``stream_high_water`` uncredited body bytes
    and ``h11_max_incomplete_size`` pipelined bytes are buffered; the one timer
    is re-armed, never multiplied.
    """

    __slots__ = (
        "ctx", "transport", "_conn", "_conn10", "_h2c", "phase", "exchange", "_parser",
        "_max_head", "_high_water", "_held", "_unconsumed", "_paused",
        "_backlog", "_drained", "_preface", "_first", "_upgrade", "_upgrade_body",
        "shutting_down", "_close_after_write", "_fed", "_head_timer",
    )

    def __init__(
        self,
        *,
        ctx: ConnectionContext,
        transport: ByteTransport,
        conn: ConnectionInfo,
        switch: SwitchTo | None = None,
        h2c: bool = True,
    ) -> None:
        self.ctx = ctx
        self.transport = transport
        missing = tuple(name for name in _EXTENSIONS if name not in conn.extensions)
        if missing:
            conn = dataclasses.replace(conn, extensions=conn.extensions + missing)
        self._conn = dataclasses.replace(conn, http_version="1.1", protocol="HTTP/1.1")
        self._conn10 = dataclasses.replace(conn, http_version="1.0", protocol="HTTP/1.0")
        self._h2c = h2c
        self.phase = Phase.IDLE
        self.exchange: H11Exchange | None = None
        options = ctx.options
        self._max_head = options.h11_max_incomplete_size
        self._high_water = options.stream_high_water
        self._parser: ScreenedH11 | SimpleParser = self._new_parser()
        #: Bytes fed to the current parser (bounds the head size, see _on_request).
        self._fed = 0
        self._held: bytes | None = None
        self._unconsumed = 0
        self._paused = 0
        #: Bytes read but not yet given to h11: pipelined requests wait here,
        #: and h11 gets them in slices (see _feed).
        self._backlog = bytearray()
        self._drained = 0
        #: The first bytes while they could still be the HTTP/2 preface.
        self._preface: bytes | None = b"" if h2c else None
        self._first = True
        self._upgrade: H1Request | None = None
        self._upgrade_body = b""
        self.shutting_down = False
        self._close_after_write = False
        #: The read timeout of the current head is armed.
        self._head_timer = False
        transport.set_timeout(options.keep_alive)

    @property
    def secure(self) -> bool:
        return self._conn.secure

    # -- ByteProtocol -------------------------------------------------------------

    def data_received(self, data: bytes) -> SwitchTo | None:
        phase = self.phase
        if phase is Phase.SWITCHED:
            self._deliver(data, True)
            return None
        if phase is Phase.CLOSED:
            return None
        if self._preface is not None:
            data = self._check_preface(data)
            if not data:
                return None
            if data.startswith(_PREFACE):
                self._transition_close()
                return SwitchTo("h2", data=data)
        if phase is Phase.RESPONDING:
            # A pipelined request: it waits for its turn, bounded.
            self._backlog += data
            if len(self._backlog) > self._max_head:
                self._pause(_PAUSE_PIPELINE)
            return None
        if phase is Phase.IDLE:
            self._transition(_Event.DATA)
            self._feed(data)
        elif phase is Phase.HEAD or self._backlog:  # (the backlog keeps the order)
            self._feed(data)
        else:  # body bytes: all at once, for big reads
            self._parser.receive_data(data)
            self._fed += len(data)
        return self._process()

    def eof_received(self) -> None:
        if self.phase is Phase.SWITCHED and self.exchange is not None \
                and self.exchange.stream is not None:
            self.exchange.stream.receive_body(b"", False)
            return
        self._lost("the client closed the connection")

    def connection_lost(self) -> None:
        self._lost("connection lost")

    def timeout(self) -> None:
        phase = self.phase
        if phase is Phase.IDLE or phase is Phase.DRAINING:
            self.close()
        elif phase is Phase.HEAD or phase is Phase.BODY:
            self._bad_request(408, "read timeout")

    def shutdown(self) -> None:
        self.shutting_down = True
        if self.phase in (Phase.IDLE, Phase.HEAD, Phase.DRAINING):
            self.close()

    # -- called by H11Exchange ------------------------------------------------------

    def credit(self, n: int) -> None:
        self._unconsumed -= n
        if self._paused & _PAUSE_CREDIT and self._unconsumed <= self._high_water:
            self._resume(_PAUSE_CREDIT)
            if self.phase is Phase.BODY:
                self._arm_body_timer()

    def continue_sent(self) -> None:
        """100 Continue went out: the body is due now, within read_timeout."""
        if self.phase is Phase.BODY:
            self._arm_body_timer()

    def response_done(self, exchange: H11Exchange) -> None:
        """The exchange's response is complete: next cycle, drain, or close."""
        if self.exchange is not exchange or self.phase is Phase.CLOSED:
            return
        if not exchange.keep_alive or self.shutting_down or self._close_after_write:
            self.close()
            return
        if self.phase is Phase.SWITCHED:
            self.close()
            return
        self._transition(_Event.RESPONSE_DONE)
        self._unconsumed = 0
        self._resume(_PAUSE_CREDIT)
        if self.phase is Phase.IDLE:
            self._next_cycle()
        else:
            self._held = None

    def upgrade(self, exchange: H11Exchange, head: bytes) -> None:
        """Accept a WebSocket: 101, then raw bytes both ways."""
        if self.phase is not Phase.RESPONDING or self.exchange is not exchange:
            exchange.state = ResponseState.CLOSED
            self.close()
            return
        self.transport.write(head)
        self._transition(_Event.UPGRADE)
        raw = self._parser.trailing_data[0] + self._backlog
        self._backlog = bytearray()
        self._resume(_PAUSE_PIPELINE)
        if raw:
            self._deliver(bytes(raw), True)

    def fail(self, status: int) -> None:
        """Answer ``status`` with a short body and close (nothing final was sent)."""
        if self.phase is Phase.CLOSED:
            return
        defaults = self.ctx.response_defaults
        body = reason_phrase(status)
        fields = response_headers(
            status,
            [(b"content-type", b"text/plain; charset=utf-8"),
             (b"content-length", b"%d" % len(body)), (b"connection", b"close")],
            defaults, now=self.ctx.clock(), alt_svc=self.secure)
        self.transport.write(H11Exchange._serialize(status, fields) + body)
        self.close()

    def close(self) -> None:
        if self.phase is not Phase.CLOSED:
            self._transition_close()
            self.transport.close()

    def close_after_write(self) -> None:
        self._close_after_write = True

    # -- receive path ---------------------------------------------------------------

    def _new_parser(self) -> SimpleParser:
        """Each cycle starts on the fast path; see :meth:`_fall_back`."""
        return SimpleParser(self._max_head)

    def _fall_back(self, fast: SimpleParser) -> None:
        """The request is not simple: h11 parses it from the first byte."""
        parser = ScreenedH11(self._max_head)  # (h11 with its quadratic regexes screened)
        data = fast.buffered
        if data:  # (h11 reads b"" as EOF)
            parser.receive_data(data)
        self._parser = parser

    def _check_preface(self, data: bytes) -> bytes:
        """Hold the first bytes while they may be the HTTP/2 preface."""
        buffered = (self._preface or b"") + data
        if len(buffered) < len(_PREFACE) and _PREFACE.startswith(buffered):
            self._preface = buffered
            return b""
        self._preface = None
        return buffered

    def _process(self) -> SwitchTo | None:
        """Run h11's events until it needs data or pauses."""
        while self.phase is not Phase.CLOSED:
            try:
                # Re-read each turn: an exchange ending in here starts a new parser.
                event = self._parser.next_event()
            except h11.RemoteProtocolError as exc:
                self._bad_request(exc.error_status_hint, str(exc))
                return None
            kind = type(event)
            if kind is SimpleRequest:
                request = cast(SimpleRequest, event)
                self._on_request(request.method, request.target, request.headers,
                                 request.http_version)
            elif kind is bytes:
                self._on_data(cast(bytes, event))
            elif event is END:
                return self._on_end()
            elif kind is h11.Data:
                self._on_data(bytes(cast(h11.Data, event).data))
            elif kind is h11.Request:
                h11_request = cast(h11.Request, event)
                # raw_items() is h11's cheap public accessor; names are lowercased here.
                self._on_request(
                    h11_request.method, h11_request.target,
                    [(name.lower(), value) for name, value in h11_request.headers.raw_items()],
                    h11_request.http_version)
            elif event is FALLBACK:
                self._fall_back(cast(SimpleParser, self._parser))
            elif kind is h11.EndOfMessage:
                # The request is complete: what follows (pipelined requests)
                # waits in h11's buffer and the backlog for the next cycle,
                # so stop here rather than ask h11 again.  A drained request
                # already started the next cycle inside _on_end.
                return self._on_end()
            elif event is h11.NEED_DATA:
                if not self._backlog:
                    break
                self._feed_slice()
            elif event is h11.PAUSED:
                break
            elif kind is h11.ConnectionClosed:
                self._lost("the client closed the connection")
                break
        held = self._held
        if held is not None:
            self._held = None
            self._deliver(held, True)
        phase = self.phase
        if phase is Phase.BODY:
            self._arm_body_timer()
        elif phase is Phase.HEAD and not self._head_timer:
            # Once per head, from its first byte: dribbling does not extend it.
            self._head_timer = True
            self.transport.set_timeout(self.ctx.options.read_timeout)
        return None

    def _arm_body_timer(self) -> None:
        """``read_timeout`` between body chunks, unless the client is not at
        fault: reading is paused for the app, or it waits for 100 Continue."""
        exchange = self.exchange
        if self._paused & _PAUSE_CREDIT or (exchange is not None and exchange.awaiting_continue):
            self.transport.set_timeout(None)
        else:
            self.transport.set_timeout(self.ctx.options.read_timeout)

    def _on_request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                    http_version: bytes) -> None:
        """A parsed head (lowercase names), from either parser."""
        if self._fed > self._max_head and self._head_size() > self._max_head:
            # h11 checks its limit only while a head is incomplete; a whole
            # oversized head in one segment is caught here.
            self._bad_request(431, "request head too large")
            return
        try:
            request = h1_request(method, target, headers, http_version)
        except ProtocolError as exc:
            self._bad_request(exc.status, str(exc))
            return
        self._transition(_Event.REQUEST)
        first, self._first = self._first, False
        head = request.head
        if head.protocol == "h2c":
            if self._h2c and first and self._h2c_body_fits(request):
                self._upgrade = request
                return
            request = request._replace(head=dataclasses.replace(head, protocol=None))
            head = request.head
        exchange = H11Exchange(self, request)
        self.exchange = exchange
        stream = self.ctx.stream_factory(head, exchange)
        exchange.stream = stream
        stream.start(head, self._conn if http_version == b"1.1" else self._conn10)

    def _head_size(self) -> int:
        """Bytes of the head just parsed: fed to this cycle's parser minus what
        it still buffers (only computed past the limit: it copies the buffer)."""
        return self._fed - len(self._parser.trailing_data[0])

    def _h2c_body_fits(self, request: H1Request) -> bool:
        if not request.has_body:
            return True
        return request.content_length is not None and request.content_length <= self._high_water

    def _on_data(self, data: bytes) -> None:
        if self.phase is Phase.DRAINING:
            self._drained += len(data)
            if self._drained > max(self._high_water, self._max_head):
                self.close()
            return
        if self._upgrade is not None:
            self._upgrade_body += data
            return
        exchange = self.exchange
        if exchange is not None:
            exchange.body_started()
        held = self._held
        self._held = data
        if held is not None:
            self._deliver(held, True)

    def _on_end(self) -> SwitchTo | None:
        if self._upgrade is not None:
            return self._switch_h2c(self._upgrade)
        phase = self.phase
        self._transition(_Event.END)
        if phase is Phase.DRAINING:
            self._next_cycle()
            return None
        held = self._held or b""
        self._held = None
        self._deliver(held, False)
        self.transport.set_timeout(None)
        return None

    def _deliver(self, data: bytes, more: bool) -> None:
        exchange = self.exchange
        if exchange is None or exchange.stream is None:
            return
        self._unconsumed += len(data)
        exchange.stream.receive_body(data, more)
        if self._unconsumed > self._high_water and self.phase is not Phase.CLOSED:
            self._pause(_PAUSE_CREDIT)
            self.transport.set_timeout(None)

    def _next_cycle(self) -> None:
        """Start the next request cycle with the bytes already read: what the
        old parser still buffered, then the backlog."""
        trailing = self._parser.trailing_data[0]
        self._parser = self._new_parser()
        self._fed = 0
        self._release_exchange()
        self._held = None
        self._unconsumed = 0
        self._drained = 0
        self._resume(_PAUSE_PIPELINE | _PAUSE_CREDIT)
        self.transport.set_timeout(self.ctx.options.keep_alive)
        if trailing and len(trailing) > _SLICE:
            # A big read (body and requests) left a long tail: slice it too.
            self._backlog[:0] = trailing
            trailing = b""
        if not trailing and not self._backlog:
            return
        self._transition(_Event.DATA)
        if trailing:
            self._parser.receive_data(trailing)
            self._fed = len(trailing)
        else:
            self._feed_slice()
        self._process()

    def _feed(self, data: bytes) -> None:
        """Give h11 head bytes.  Large reads go through the backlog in slices
        of ``_SLICE``: h11 copies what it still buffers at every cycle
        (``trailing_data``), so feeding it a 256 KiB read of small pipelined
        requests whole would cost quadratic time."""
        if len(data) <= _SLICE and not self._backlog:
            self._parser.receive_data(data)
            self._fed += len(data)
        else:
            self._backlog += data
            self._feed_slice()

    def _feed_slice(self) -> None:
        backlog = self._backlog
        chunk = bytes(backlog[:_SLICE])
        del backlog[:_SLICE]  # O(1): bytearray drops a prefix without moving
        self._parser.receive_data(chunk)
        self._fed += len(chunk)

    def _switch_h2c(self, request: H1Request) -> SwitchTo:
        self.transport.write(_H2C_SWITCH)
        leftover = self._parser.trailing_data[0] + bytes(self._backlog)
        head = request.head
        head = dataclasses.replace(
            head, protocol=None,
            headers=tuple(p for p in head.headers if p[0] not in _H2C_HOP_HEADERS))
        self._transition_close()
        return SwitchTo("h2", data=leftover, upgrade_head=head,
                        upgrade_settings=request.h2_settings, upgrade_body=self._upgrade_body)

    def _bad_request(self, status: int, reason: str) -> None:
        """Malformed input or a timeout: answer ``status`` if nothing final went
        out, abort the stream, close."""
        exchange = self.exchange
        if exchange is not None:
            answered = exchange.state not in (ResponseState.PENDING, ResponseState.HEAD)
            self._abort_stream(reason)
            if answered:
                self.close()
                return
        self.fail(status)

    def _lost(self, reason: str) -> None:
        self._abort_stream(reason)
        self._transition_close()
        self._release_exchange()

    def _release_exchange(self) -> None:
        """Let go of the current exchange and break its link to its stream:
        the stream holds the exchange as its sink, and the pair should be
        freed by reference counting, not left to the cycle collector."""
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.stream = None

    def _abort_stream(self, reason: str) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        state = exchange.state
        if state is ResponseState.DONE or state is ResponseState.CLOSED:
            return
        exchange.state = ResponseState.CLOSED
        if exchange.stream is not None:
            exchange.stream.abort(reason)

    # -- state ------------------------------------------------------------------------

    def _transition(self, event: _Event) -> None:
        try:
            phase = _PHASES[self.phase, event]
        except KeyError:
            raise ProtocolError(f"HTTP/1.1 adapter: {event.value} in phase {self.phase.value}",
                                status=500) from None
        self.phase = phase
        if phase is Phase.IDLE:
            return  # the caller arms keep-alive once the cycle is set up
        if phase is Phase.HEAD:
            self._head_timer = False  # armed by _process if the head is incomplete
        elif phase is Phase.DRAINING:
            self.transport.set_timeout(self.ctx.options.read_timeout)
        elif phase is Phase.SWITCHED:
            self.transport.set_timeout(None)

    def _transition_close(self) -> None:
        self.phase = Phase.CLOSED
        self.transport.set_timeout(None)

    def _pause(self, reason: int) -> None:
        if not self._paused:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reasons: int) -> None:
        if not self._paused:
            return
        self._paused &= ~reasons
        if not self._paused and self.phase is not Phase.CLOSED:
            self.transport.resume_reading()
