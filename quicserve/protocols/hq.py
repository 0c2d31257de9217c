"""hq-interop: HTTP/0.9 over QUIC, the protocol of the QUIC interop runner.

Theory of operation
-------------------
The interop runner (and any client that offers ALPN ``hq-interop``) asks for
a file by opening a client-initiated bidirectional stream and writing one
line, ``GET /path\\r\\n``, then FIN.  The answer is the file's bytes, then
FIN; there is no status, no header and no trailer.  :class:`HqAdapter` maps
that onto the same stream contract every other protocol uses
(:mod:`quicserve.interfaces`), so any ASGI application, the static-files app
included, serves hq unchanged.

Who calls it: ``quic/connection.py`` (``QuicSession``) builds one
``HqAdapter(ctx=..., quic=..., session=...)`` per connection whose ALPN is
``hq-interop`` and feeds it every aioquic event through :meth:`handle_event`;
after each flush and ACK it calls :meth:`on_send_capacity`.  The adapter
writes with ``quic.send_stream_data`` / ``reset_stream`` / ``stop_stream`` and
then ``session.mark_dirty()``; it never touches a socket, a timer or a clock.

The request line (:func:`parse_request_line_untrusted`, the only code that
reads peer bytes, raising only :class:`HqRequestError`) is accepted leniently:
``GET /path\\r\\n``, ``GET /path\\n``, or ``GET /path`` ended by FIN, with an
optional trailing ``HTTP/x.y`` token.  The method must be GET (HTTP/0.9 has
nothing else) and the target an origin-form path of visible ASCII.  Bytes
after the line are discarded and their flow-control credit returned at once.
A line longer than ``options.h11_max_incomplete_size`` is refused.

Mapping onto the ASGI side:

* The head is built by ``protocols/head.py`` from synthesized pseudo-headers
  (``:method GET``, ``:scheme https``, ``:path``, and ``:authority`` from the
  local address the request arrived on, since HTTP/0.9 sends no Host; it
  reaches the app as the ``host`` header).  The request body is always empty.
* ``ConnectionInfo`` comes from the session (current client path, 0-RTT
  flag) with ``http_version="1.1"`` (ASGI has no 0.9; 1.1 is the closest
  version an app understands) and ``protocol="hq-interop"`` for the access log.
  No extensions are offered (no trailers, no early hints).
* The response head is discarded.  A 1xx is ignored; a 2xx lets the body
  through; **any other status resets the stream with the HTTP status as the
  application error code** (404 -> RESET_STREAM 404), so a client never
  stores an error page as the file it asked for.  The app's body for such a
  response is accepted and dropped, so the app sees no error.
* ``send_body`` waits while the stream's bytes not yet sent even once
  (``session.stream_send_pending``) are at or above
  ``options.stream_high_water``: a response is never buffered whole, while
  the bytes in flight are left to congestion and flow control (counting them
  too would cap throughput at high_water / RTT).  The waiter is woken by
  :meth:`on_send_capacity`.  A graceful close waits until every finished
  stream's bytes are acknowledged (``session.stream_send_buffered``).
* Trailers cannot be expressed: ``send_trailers`` just ends the stream.
* Client RESET_STREAM before the request line is complete drops the stream;
  STOP_SENDING or a lost connection aborts the app's stream
  (``http.disconnect``) and makes a waiting ``send_body`` raise
  :class:`~quicserve.errors.StreamClosed`.

Per-stream state is an Enum moved only through :meth:`_HqStream._transition`
with the table ``_TRANSITIONS``::

    READING_REQUEST --line--> RESPONDING --body(end)/trailers--> CLOSED
          |                      |  \\--status not 2xx--> DISCARDING --body(end)--> CLOSED
          +--bad line/reset-->  CLOSED  <--reset/stop-sending/lost/app reset--+

Graceful shutdown (:meth:`HqAdapter.shutdown`): hq has no GOAWAY, so new
request streams are refused with H3_REQUEST_REJECTED while in-flight ones
finish; once the last one ends the adapter closes the connection with
H3_NO_ERROR (as ``H3Adapter`` does after GOAWAY).

Error codes: hq-interop defines none, so the HTTP/3 codes are reused
(:class:`HqErrorCode`), plus the HTTP status for non-2xx responses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from typing import Any

from aioquic.quic.events import StopSendingReceived, StreamDataReceived, StreamReset

from ..errors import ProtocolError, QuicserveError, StreamClosed
from ..interfaces import (
    ConnectionContext,
    ConnectionInfo,
    Headers,
    RequestHead,
    ResetReason,
    StateEnum,
    StreamHandler,
)
from .base import QuicSessionHandle
from .head import pseudo_request_head

#: The ALPN this adapter speaks.
HQ_ALPN = "hq-interop"


class HqErrorCode(enum.IntEnum):
    """Application error codes on RESET_STREAM / STOP_SENDING (HTTP/3's)."""

    NO_ERROR = 0x100
    GENERAL_PROTOCOL_ERROR = 0x101
    INTERNAL_ERROR = 0x102
    EXCESSIVE_LOAD = 0x107
    REQUEST_REJECTED = 0x10B
    REQUEST_CANCELLED = 0x10C


_RESET_CODES = {
    ResetReason.APP_ERROR: HqErrorCode.INTERNAL_ERROR,
    ResetReason.CANCELLED: HqErrorCode.REQUEST_CANCELLED,
    ResetReason.REFUSED: HqErrorCode.REQUEST_REJECTED,
}


class HqRequestError(QuicserveError):
    """The peer's request line is not a valid hq-interop request."""

    def __init__(self, message: str, code: HqErrorCode) -> None:
        super().__init__(message)
        self.code = code


def parse_request_line_untrusted(line: bytes) -> bytes:
    """The request-target of one hq request line (without its line ending).

    Raises only :class:`HqRequestError`.
    """
    parts = line.split(b" ")
    if len(parts) == 3 and parts[2].startswith(b"HTTP/"):
        parts = parts[:2]
    if len(parts) != 2:
        raise HqRequestError("expected 'GET /path'", HqErrorCode.GENERAL_PROTOCOL_ERROR)
    method, target = parts
    if method != b"GET":
        raise HqRequestError("hq-interop only knows GET", HqErrorCode.GENERAL_PROTOCOL_ERROR)
    if not target.startswith(b"/") or any(b < 0x21 or b > 0x7E for b in target):
        raise HqRequestError("bad request target", HqErrorCode.GENERAL_PROTOCOL_ERROR)
    return target


def _split_line(buffer: bytes, ended: bool) -> bytes | None:
    """The request line if the buffer holds a whole one, else None."""
    newline = buffer.find(b"\n")
    if newline >= 0:
        return buffer[:newline].rstrip(b"\r")
    if ended:
        return buffer.rstrip(b"\r")
    return None


def build_head(target: bytes, authority: bytes, *, early_data: bool) -> RequestHead:
    """The RequestHead of an hq GET, validated by ``protocols/head.py``."""
    pseudo = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority),
              (b":path", target)]
    try:
        return pseudo_request_head(pseudo, early_data=early_data, allow_connect_protocol=False)
    except ProtocolError as exc:
        raise HqRequestError(str(exc), HqErrorCode.GENERAL_PROTOCOL_ERROR) from exc


def authority_of(conn: ConnectionInfo) -> bytes:
    """``host:port`` of the local address the request arrived on."""
    if conn.server is None:
        return b"localhost"
    host, port = conn.server
    text = f"[{host}]" if ":" in host else host
    if port is not None:
        text += f":{port}"
    return text.encode("ascii", "replace")


class StreamState(StateEnum):
    READING_REQUEST = "reading request line"
    RESPONDING = "responding"
    DISCARDING = "discarding a non-2xx body"
    CLOSED = "closed"


class StreamEvent(StateEnum):
    LINE = "request line complete"
    STATUS_NOT_OK = "status not 2xx"
    END = "response ended"
    RESET = "reset"


_TRANSITIONS: dict[tuple[StreamState, StreamEvent], StreamState] = {
    (StreamState.READING_REQUEST, StreamEvent.LINE): StreamState.RESPONDING,
    (StreamState.READING_REQUEST, StreamEvent.RESET): StreamState.CLOSED,
    (StreamState.RESPONDING, StreamEvent.STATUS_NOT_OK): StreamState.DISCARDING,
    (StreamState.RESPONDING, StreamEvent.END): StreamState.CLOSED,
    (StreamState.RESPONDING, StreamEvent.RESET): StreamState.CLOSED,
    (StreamState.DISCARDING, StreamEvent.END): StreamState.CLOSED,
    (StreamState.DISCARDING, StreamEvent.RESET): StreamState.CLOSED,
}


class HqStateError(QuicserveError):
    def __init__(self, state: StreamState, event: StreamEvent) -> None:
        super().__init__(f"hq stream: {event.value!r} is not valid in state {state.value!r}")


class _HqStream:
    """One request stream; the :class:`~quicserve.interfaces.StreamSink` the
    ASGI stream answers through."""

    __slots__ = ("_adapter", "stream_id", "state", "_buffer", "handler", "_writable",
                 "_peer_gone")

    def __init__(self, adapter: HqAdapter, stream_id: int) -> None:
        self._adapter = adapter
        self.stream_id = stream_id
        self.state = StreamState.READING_REQUEST
        self._buffer = b""
        self.handler: StreamHandler | None = None
        self._writable: asyncio.Event | None = None
        #: The peer stopped our sending side (STOP_SENDING) or the connection is gone.
        self._peer_gone = False

    def _transition(self, event: StreamEvent) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise HqStateError(self.state, event) from None
        if self.state is StreamState.CLOSED:
            self._adapter._forget(self, completed=event is StreamEvent.END)
            if self._writable is not None:
                self._writable.set()

    # -- wire -> stream ---------------------------------------------------------

    def data_received(self, data: bytes, ended: bool) -> None:
        adapter = self._adapter
        if self.state is not StreamState.READING_REQUEST:
            adapter._session.return_credit(self.stream_id, len(data))
            return
        self._buffer += data
        line = _split_line(self._buffer, ended)
        if line is None:
            if len(self._buffer) > adapter._max_line:
                self._refuse(HqRequestError("request line too long", HqErrorCode.EXCESSIVE_LOAD))
            elif ended:
                self._refuse(HqRequestError("empty request", HqErrorCode.GENERAL_PROTOCOL_ERROR))
            return
        consumed = len(self._buffer)
        self._buffer = b""
        adapter._session.return_credit(self.stream_id, consumed)
        early = adapter._session.in_early_data()
        conn = adapter._connection_info(early)
        try:
            target = parse_request_line_untrusted(line)
            head = build_head(target, authority_of(conn), early_data=early)
        except HqRequestError as exc:
            self._refuse(exc)
            return
        self._start(head, conn)

    def _start(self, head: RequestHead, conn: ConnectionInfo) -> None:
        self._transition(StreamEvent.LINE)
        handler = self._adapter._ctx.stream_factory(head, self)
        self.handler = handler
        handler.start(head, conn)
        handler.receive_body(b"", False)

    def _refuse(self, error: HqRequestError) -> None:
        self._adapter._reset_wire(self.stream_id, error.code, stop=True)
        self._transition(StreamEvent.RESET)

    def peer_gone(self, reason: str) -> None:
        """STOP_SENDING, or the connection is lost: the response cannot go out."""
        self._peer_gone = True
        if self.state is StreamState.CLOSED:
            return
        handler = self.handler  # (closing the stream lets go of it)
        self._transition(StreamEvent.RESET)
        if handler is not None:
            handler.abort(reason)

    # -- stream -> wire (StreamSink) ---------------------------------------------

    def send_head(self, status: int, headers: Headers) -> None:
        if status < 200 or self.state is not StreamState.RESPONDING:
            return
        if status >= 300:
            self._adapter._reset_wire(self.stream_id, status)
            self._transition(StreamEvent.STATUS_NOT_OK)

    async def send_body(self, data: bytes, end: bool) -> None:
        if self.state is StreamState.DISCARDING:
            if end:
                self._transition(StreamEvent.END)
            return
        await self._wait_writable()
        if self.state is not StreamState.RESPONDING:
            raise StreamClosed(f"hq stream {self.stream_id} is closed")
        adapter = self._adapter
        adapter._quic.send_stream_data(self.stream_id, data, end)
        adapter._session.mark_dirty()
        if end:
            self._transition(StreamEvent.END)

    async def _wait_writable(self) -> None:
        adapter = self._adapter
        while (self.state is StreamState.RESPONDING
               and adapter._session.stream_send_pending(self.stream_id) >= adapter._high_water):
            if self._writable is None:
                self._writable = asyncio.Event()
            self._writable.clear()
            await self._writable.wait()

    def wake_if_writable(self) -> None:
        writable = self._writable
        if writable is None or writable.is_set():
            return
        adapter = self._adapter
        if adapter._session.stream_send_pending(self.stream_id) < adapter._high_water:
            writable.set()

    def send_trailers(self, headers: Headers) -> None:
        if self.state is StreamState.RESPONDING:
            self._adapter._quic.send_stream_data(self.stream_id, b"", True)
            self._adapter._session.mark_dirty()
            self._transition(StreamEvent.END)
        elif self.state is StreamState.DISCARDING:
            self._transition(StreamEvent.END)

    def reset(self, reason: ResetReason) -> None:
        if self.state is StreamState.CLOSED:
            return
        if self.state is StreamState.RESPONDING and not self._peer_gone:
            self._adapter._reset_wire(self.stream_id, _RESET_CODES[reason])
        self._transition(StreamEvent.RESET)

    def credit(self, n: int) -> None:
        if n > 0:
            self._adapter._session.return_credit(self.stream_id, n)


class HqAdapter:
    """The hq-interop side of one QUIC connection.

    Error handling: peer input never raises out of :meth:`handle_event`; a bad
    request resets its own stream only.  The connection is never closed here.

    Resource handling: one small object per open request stream, dropped when
    the stream closes; the request line buffer is bounded by
    ``options.h11_max_incomplete_size``; unsent response bytes queued on a
    stream are bounded by ``options.stream_high_water`` plus one chunk.
    """

    def __init__(self, *, ctx: ConnectionContext, quic: Any, session: QuicSessionHandle) -> None:
        self._ctx = ctx
        self._quic = quic
        self._session = session
        self._streams: dict[int, _HqStream] = {}
        #: Highest client bidi stream ID seen, and the lower IDs not seen yet
        #: (streams may arrive out of order).  Together they tell a new stream
        #: from late bytes on a finished one, in memory bounded by the
        #: stream limit rather than by the number of streams ever opened.
        #: Streams whose response is complete but not yet acknowledged; a
        #: graceful close waits for them, or their tail would be lost.
        self._flushing: set[int] = set()
        self._highest_id = -4
        self._unseen_ids: set[int] = set()
        self._high_water = ctx.options.stream_high_water
        self._max_line = ctx.options.h11_max_incomplete_size
        self._draining = False
        self._lost = False

    # -- QuicAdapter ---------------------------------------------------------------

    def handle_event(self, event: object) -> None:
        if isinstance(event, StreamDataReceived):
            self._data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, StreamReset):
            self._peer_reset(event.stream_id)
        elif isinstance(event, StopSendingReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.peer_gone("stop sending")

    def on_send_capacity(self) -> None:
        for stream in list(self._streams.values()):
            stream.wake_if_writable()
        if self._flushing:
            buffered = self._session.stream_send_buffered
            self._flushing = {sid for sid in self._flushing if buffered(sid) > 0}
            self._close_if_done()

    def begin_shutdown(self) -> None:
        pass  # (hq has no GOAWAY: nothing to announce)

    def shutdown(self) -> None:
        self._draining = True
        self._close_if_done()

    def connection_lost(self) -> None:
        self._lost = True
        self._flushing.clear()
        for stream in list(self._streams.values()):
            stream.peer_gone("connection lost")

    def active_streams(self) -> int:
        """Open streams, plus finished ones whose tail is not yet acknowledged."""
        return len(self._streams) + len(self._flushing)

    # -- internals --------------------------------------------------------------------

    def _data(self, stream_id: int, data: bytes, ended: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id % 4 != 0 or self._lost or not self._claim_new_id(stream_id):
                # A stream hq does not use, or late bytes on a finished one.
                self._session.return_credit(stream_id, len(data))
                return
            if self._draining:
                self._session.return_credit(stream_id, len(data))
                self._reset_wire(stream_id, HqErrorCode.REQUEST_REJECTED, stop=not ended)
                return
            stream = self._streams[stream_id] = _HqStream(self, stream_id)
        stream.data_received(data, ended)

    def _claim_new_id(self, stream_id: int) -> bool:
        """True (once) for a client bidi stream ID never seen before."""
        if stream_id > self._highest_id:
            self._unseen_ids.update(range(self._highest_id + 4, stream_id, 4))
            self._highest_id = stream_id
            return True
        if stream_id in self._unseen_ids:
            self._unseen_ids.discard(stream_id)
            return True
        return False

    def _peer_reset(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and stream.state is StreamState.READING_REQUEST:
            # The request never completed: nothing was started; stop our side too.
            self._reset_wire(stream_id, HqErrorCode.REQUEST_CANCELLED)
            stream.peer_gone("reset")
        # A reset after the request line changes nothing: hq has no request body.

    def _reset_wire(self, stream_id: int, code: int, *, stop: bool = False) -> None:
        self._quic.reset_stream(stream_id, code)
        if stop:
            try:
                self._quic.stop_stream(stream_id, code)
            except ValueError:
                pass  # the receiving side is already finished: nothing to stop
        self._session.mark_dirty()

    def _forget(self, stream: _HqStream, *, completed: bool) -> None:
        self._streams.pop(stream.stream_id, None)
        # The handler holds the stream as its sink: break the cycle, so both
        # are freed by reference counting rather than by the cycle collector.
        stream.handler = None
        if completed and self._session.stream_send_buffered(stream.stream_id) > 0:
            self._flushing.add(stream.stream_id)
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._draining and not self._streams and not self._flushing and not self._lost:
            self._lost = True
            self._quic.close(error_code=HqErrorCode.NO_ERROR, reason_phrase="shutdown")
            self._session.mark_dirty()

    def _connection_info(self, early: bool) -> ConnectionInfo:
        conn = self._session.connection_info(early_data=early)
        return dataclasses.replace(conn, http_version="1.1", protocol="hq-interop",
                                   extensions=())
