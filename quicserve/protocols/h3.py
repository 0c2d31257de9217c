"""H3Adapter: HTTP/3 request streams <-> the stream contract of ``interfaces.py``.

Theory of operation
-------------------
A :class:`~quicserve.quic.connection.QuicSession` builds one ``H3Adapter`` when
ALPN settles on ``h3`` and hands it every QUIC event.  The adapter feeds them
to :class:`~quicserve.protocols.h3_wire.ServerH3Connection` (aioquic's
``H3Connection`` with stream-level message errors and GOAWAY) and maps what
comes out onto streams:

* ``HeadersReceived`` (first) -> ``head.pseudo_request_head`` validates ->
  ``ctx.stream_factory(head, sink)`` -> ``stream.start(head, conn)``.  A head
  that aioquic or ``head.py`` rejects resets *that* stream with
  H3_MESSAGE_ERROR (RFC 9114 4.1.2) and nothing else.
* ``DataReceived`` -> ``stream.receive_body``.  Never awaits.
* QUIC ``StreamReset`` / ``StopSendingReceived`` and a lost connection ->
  ``stream.abort``: the app sees ``http.disconnect``, and ``send_body``
  raises ``StreamClosed``.

Each request stream is a :class:`RequestStream`, which is also the
:class:`~quicserve.interfaces.StreamSink` its ASGI stream writes to.

Flow control, receive side.  Every request stream is under the session's
credit accounting (``withhold_credit``/``return_credit``, implemented by
``quic/internals.py``): body bytes handed to the app stay charged against the
stream's receive window until the app has read them (``sink.credit``), and so
do bytes the H3 layer still buffers (a partial HEADERS frame).  H3 framing,
once parsed, is never charged.  So a slow reader holds at most one stream
window of memory.

Flow control, send side.  ``send_body`` cuts a body into pieces of at most
``stream_high_water`` bytes and, after each, waits while the stream holds more
than that many bytes not yet sent (``session.stream_send_pending``); the
session calls :meth:`H3Adapter.on_send_capacity` after every flush and every
received datagram, which wakes the waiters.  A response is therefore never
buffered whole: at most the high-water mark waits to be sent, plus what is in
flight, which congestion and flow control bound.  (Counting in-flight bytes
too would cap them at the high-water mark and throughput at high_water/RTT.)

Response heads.  A final head is encoded at once (QPACK state moves in
order) but its HEADERS frame is held on the stream and written together with
the first DATA frame, so a small response costs one QUIC stream write; the
session calls :meth:`H3Adapter.flush_held` before every flush, so a head
with no body behind it yet (a WebSocket accept, a slow first chunk) still
leaves in the loop turn it was written in.

Graceful shutdown takes RFC 9114's two steps: :meth:`H3Adapter.begin_shutdown`
sends GOAWAY with the largest client stream ID (the client stops opening
streams, and those already on their way are still served); about one round
trip later :meth:`H3Adapter.shutdown` sends GOAWAY naming the first stream
not yet seen; later streams are refused (H3_REQUEST_REJECTED); once the last
stream ends the connection is closed with H3_NO_ERROR.

The adapter never touches a socket, a timer or a clock (time for the Date
header comes from ``ctx.clock``), and every write is followed by
``session.mark_dirty()`` so the endpoint flushes once per loop turn.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aioquic.h3.connection import ErrorCode
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.events import StopSendingReceived, StreamDataReceived, StreamReset

from .. import log
from ..errors import ProtocolError, QuicserveError, StreamClosed
from ..interfaces import (
    ConnectionContext,
    Headers,
    ResetReason,
    StateEnum,
    StreamHandler,
)
from . import head as heads
from .h3_wire import MessageMalformed, ServerH3Connection

if TYPE_CHECKING:
    from aioquic.quic.connection import QuicConnection

    from .base import QuicSessionHandle

_RESET_CODES = {
    ResetReason.APP_ERROR: ErrorCode.H3_INTERNAL_ERROR,
    ResetReason.CANCELLED: ErrorCode.H3_REQUEST_CANCELLED,
    ResetReason.REFUSED: ErrorCode.H3_REQUEST_REJECTED,
}


def is_request_stream(stream_id: int) -> bool:
    """Client-initiated bidirectional streams carry requests (RFC 9114 6.1)."""
    return stream_id % 4 == 0


class StreamState(StateEnum):
    """A request stream's two halves, as QUIC sees them (RFC 9000 3)."""

    OPEN = "open"
    #: The request's FIN arrived; the response is still going out.
    REQUEST_DONE = "request received"
    #: The response's FIN went out; the request body is still arriving.
    RESPONSE_DONE = "response sent"
    CLOSED = "closed"
    #: Reset either way, or the connection was lost: nothing more goes out.
    RESET = "reset"


class StreamEvent(StateEnum):
    REQUEST_END = "request end"
    RESPONSE_END = "response end"
    RESET = "reset"


_TRANSITIONS: dict[tuple[StreamState, StreamEvent], StreamState] = {
    (StreamState.OPEN, StreamEvent.REQUEST_END): StreamState.REQUEST_DONE,
    (StreamState.OPEN, StreamEvent.RESPONSE_END): StreamState.RESPONSE_DONE,
    (StreamState.REQUEST_DONE, StreamEvent.RESPONSE_END): StreamState.CLOSED,
    (StreamState.RESPONSE_DONE, StreamEvent.REQUEST_END): StreamState.CLOSED,
    (StreamState.OPEN, StreamEvent.RESET): StreamState.RESET,
    (StreamState.REQUEST_DONE, StreamEvent.RESET): StreamState.RESET,
    (StreamState.RESPONSE_DONE, StreamEvent.RESET): StreamState.RESET,
}
#: ``:status`` values, encoded once.
_STATUS = {code: str(code).encode() for code in range(100, 600)}
#: The largest client-initiated bidirectional stream ID: a GOAWAY naming it
#: announces a shutdown without refusing any stream (RFC 9114 section 5.2).
MAX_GOAWAY_STREAM_ID = 2 ** 62 - 4

_RECEIVING = frozenset({StreamState.OPEN, StreamState.RESPONSE_DONE})
_SENDING = frozenset({StreamState.OPEN, StreamState.REQUEST_DONE})
_FINISHED = frozenset({StreamState.CLOSED, StreamState.RESET})


class StreamStateError(QuicserveError):
    """A request stream was moved in a way its state does not allow (a bug)."""

    def __init__(self, stream_id: int, state: StreamState, event: StreamEvent) -> None:
        super().__init__(f"HTTP/3 stream {stream_id}: {event.value} in state {state.value}")


class RequestStream:
    """One request stream: the adapter's bookkeeping and the app's sink.

    Its :class:`StreamState` moves only through :meth:`transition`, with the
    table ``_TRANSITIONS``::

        OPEN --request end--> REQUEST_DONE --response end--> CLOSED
          |  --response end--> RESPONSE_DONE --request end--> CLOSED
          +--reset (from OPEN, REQUEST_DONE or RESPONSE_DONE)--> RESET

    The stream leaves the adapter in CLOSED or RESET.  In RESET the response
    can no longer be delivered and ``send_body`` raises ``StreamClosed``.
    """

    __slots__ = ("stream_id", "handler", "state", "framing_held", "held_head", "_adapter",
                 "_writable")

    def __init__(self, adapter: H3Adapter, stream_id: int) -> None:
        self._adapter = adapter
        self.stream_id = stream_id
        self.handler: StreamHandler | None = None
        self.state = StreamState.OPEN
        #: Bytes aioquic's H3 layer buffers for this stream (a partial HEADERS
        #: frame), charged against the stream's receive window.
        self.framing_held = 0
        #: The response's HEADERS frame, held to go out with the first DATA frame.
        self.held_head: bytes | None = None
        self._writable: asyncio.Event | None = None

    @property
    def receiving(self) -> bool:
        return self.state in _RECEIVING

    @property
    def sending(self) -> bool:
        return self.state in _SENDING

    @property
    def finished(self) -> bool:
        return self.state in _FINISHED

    def transition(self, event: StreamEvent) -> None:
        state = _TRANSITIONS.get((self.state, event))
        if state is None:
            raise StreamStateError(self.stream_id, self.state, event)
        self.state = state

    # -- StreamSink ---------------------------------------------------------

    def send_head(self, status: int, headers: Headers) -> None:
        if self.sending:
            self._adapter.write_head(self, status, headers)

    async def send_body(self, data: bytes, end: bool) -> None:
        adapter = self._adapter
        limit = adapter.high_water
        if len(data) <= limit:
            adapter.write_body(self, data, end)
            # The usual case needs no wait: skip building the coroutine.
            if self.state is StreamState.RESET or adapter.must_wait(self):
                await self._wait_writable()
            return
        for offset in range(0, len(data), limit):
            last = offset + limit >= len(data)
            adapter.write_body(self, data[offset:offset + limit], end and last)
            await self._wait_writable()

    def send_trailers(self, headers: Headers) -> None:
        if self.sending:
            self._adapter.write_trailers(self, headers)

    def reset(self, reason: ResetReason) -> None:
        self._adapter.reset_stream(self, _RESET_CODES[reason])

    def credit(self, n: int) -> None:
        self._adapter.return_credit(self, n)

    # -- adapter side ---------------------------------------------------------

    def wake(self) -> None:
        if self._writable is not None:
            self._writable.set()

    async def _wait_writable(self) -> None:
        while self._adapter.must_wait(self):
            if self._writable is None:
                self._writable = asyncio.Event()
            self._writable.clear()
            self._adapter.blocked.add(self)
            await self._writable.wait()
        if self.state is StreamState.RESET:
            raise StreamClosed(f"HTTP/3 stream {self.stream_id} was closed")


class H3Adapter:
    """Implements :class:`~quicserve.protocols.base.QuicAdapter` for ALPN ``h3``."""

    def __init__(self, *, ctx: ConnectionContext, quic: QuicConnection,
                 session: QuicSessionHandle) -> None:
        self._ctx = ctx
        self._quic = quic
        self._session = session
        self._h3 = ServerH3Connection(quic)
        self._streams: dict[int, RequestStream] = {}
        #: Streams waiting in ``send_body`` for the buffer to drain.
        self.blocked: set[RequestStream] = set()
        #: Streams whose response head is held (``RequestStream.held_head``).
        self._held_heads: list[RequestStream] = []
        self.high_water = ctx.options.stream_high_water
        #: The lowest request stream ID not seen yet (what GOAWAY names).
        self._next_stream_id = 0
        self._goaway_at: int | None = None
        #: The first, stream-limit-free GOAWAY of a two-step shutdown went out.
        self._goaway_announced = False
        #: After GOAWAY: streams (and the control stream) whose last bytes are
        #: not acknowledged yet.  CONNECTION_CLOSE waits for them, or aioquic
        #: would drop their tail.
        self._flushing: set[int] = set()
        self._closed = False

    # -- QuicAdapter ----------------------------------------------------------------

    def handle_event(self, event: object) -> None:
        if isinstance(event, StreamDataReceived):
            self._stream_data(event)
        elif isinstance(event, StreamReset):
            self._dispatch(self._h3.handle_event(event))
            self._peer_reset(event.stream_id, "stream reset by the client")
        elif isinstance(event, StopSendingReceived):
            self._dispatch(self._h3.handle_event(event))
            self._peer_reset(event.stream_id, "client stopped reading the response")
        else:
            self._dispatch(self._h3.handle_event(event))  # type: ignore[arg-type]

    def on_send_capacity(self) -> None:
        # Called once the events of a received datagram are handled: the QPACK
        # acknowledgements of all its request heads leave in one write.
        self._h3.flush_decoder()
        for stream in list(self.blocked):
            if not self.must_wait(stream):
                self.blocked.discard(stream)
                stream.wake()
        if self._flushing:
            buffered = self._session.stream_send_buffered
            self._flushing = {sid for sid in self._flushing if buffered(sid) > 0}
            self._close_if_done()

    def begin_shutdown(self) -> None:
        if self._goaway_at is not None or self._goaway_announced:
            return
        self._goaway_announced = True
        control = self._h3.send_goaway(MAX_GOAWAY_STREAM_ID)
        if control is not None:
            self._flushing.add(control)
        log.error_logger.debug("HTTP/3 GOAWAY %d sent (shutdown announced)",
                               MAX_GOAWAY_STREAM_ID)
        self._session.mark_dirty()

    def shutdown(self) -> None:
        if self._goaway_at is not None:
            return
        self._goaway_at = self._next_stream_id
        control = self._h3.send_goaway(self._goaway_at)
        if control is not None:
            self._flushing.add(control)
        log.error_logger.debug("HTTP/3 GOAWAY %d sent", self._goaway_at)
        self._close_if_done()
        self._session.mark_dirty()

    def connection_lost(self) -> None:
        self._closed = True
        self._flushing.clear()
        self._held_heads.clear()
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            if not stream.finished:
                stream.transition(StreamEvent.RESET)
            if stream.handler is not None:
                stream.handler.abort("connection lost")
        for stream in list(self.blocked):
            stream.state = StreamState.RESET  # even a finished one: no ACK will come
            stream.wake()
        self.blocked.clear()

    def active_streams(self) -> int:
        return len(self._streams)

    # -- receive path -------------------------------------------------------------

    def _stream_data(self, event: StreamDataReceived) -> None:
        stream_id = event.stream_id
        stream = self._streams.get(stream_id)
        if stream is None and is_request_stream(stream_id) and not self._h3.is_discarded(stream_id):
            stream = self._streams[stream_id] = RequestStream(self, stream_id)
            self._session.withhold_credit(stream_id, 0)
            self._next_stream_id = max(self._next_stream_id, stream_id + 4)
        self._dispatch(self._h3.handle_event(event))
        if stream is None or self._streams.get(stream_id) is not stream:
            return
        if stream.handler is None and event.end_stream:
            # A FIN without a complete head: aioquic has already answered it
            # with H3_REQUEST_INCOMPLETE.
            self._forget(stream)
            return
        self._charge_framing(stream)

    def _dispatch(self, events: list[H3Event]) -> None:
        for event in events:
            if isinstance(event, DataReceived):
                self._body(event)
            elif isinstance(event, HeadersReceived):
                self._headers(event)
            elif isinstance(event, MessageMalformed):
                self._malformed(event.stream_id, event.reason)

    def _headers(self, event: HeadersReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        if stream.handler is not None:
            # Request trailers: ASGI has no place for them; only the end matters.
            if event.stream_ended:
                self._end_of_request(stream)
            return
        if self._goaway_at is not None and event.stream_id >= self._goaway_at:
            self.reset_stream(stream, ErrorCode.H3_REQUEST_REJECTED)
            return
        self._start(stream, event)

    def _start(self, stream: RequestStream, event: HeadersReceived) -> None:
        try:
            head = heads.pseudo_request_head(
                event.headers, early_data=self._session.in_early_data())
        except ProtocolError as exc:
            self._malformed(stream.stream_id, str(exc))
            return
        stream.handler = self._ctx.stream_factory(head, stream)
        stream.handler.start(head, self._session.connection_info())
        if event.stream_ended:
            self._end_of_request(stream)

    def _body(self, event: DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None or stream.handler is None:
            return
        self._session.withhold_credit(stream.stream_id, len(event.data))
        if event.stream_ended:
            stream.transition(StreamEvent.REQUEST_END)
        stream.handler.receive_body(event.data, not event.stream_ended)
        if event.stream_ended:
            self._maybe_done(stream)

    def _end_of_request(self, stream: RequestStream) -> None:
        stream.transition(StreamEvent.REQUEST_END)
        if stream.handler is not None:
            stream.handler.receive_body(b"", False)
        self._maybe_done(stream)

    def _malformed(self, stream_id: int, reason: str) -> None:
        log.error_logger.debug("HTTP/3 stream %d: malformed request: %s", stream_id, reason)
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self.reset_stream(stream, ErrorCode.H3_MESSAGE_ERROR)

    def _peer_reset(self, stream_id: int, reason: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        handler = stream.handler
        self.reset_stream(stream, ErrorCode.H3_REQUEST_CANCELLED)
        if handler is not None:
            handler.abort(reason)

    # -- credit ---------------------------------------------------------------------

    def return_credit(self, stream: RequestStream, n: int) -> None:
        """The app consumed ``n`` body bytes of ``stream``: reopen the window."""
        if n > 0:
            self._session.return_credit(stream.stream_id, n)
            self._session.mark_dirty()

    def _charge_framing(self, stream: RequestStream) -> None:
        """Keep bytes the H3 layer still buffers charged to the stream window."""
        buffered = self._h3.buffered(stream.stream_id)
        delta = buffered - stream.framing_held
        if delta > 0:
            self._session.withhold_credit(stream.stream_id, delta)
        elif delta < 0:
            self._session.return_credit(stream.stream_id, -delta)
        stream.framing_held = buffered

    # -- send path (called by RequestStream) --------------------------------------

    def write_head(self, stream: RequestStream, status: int, headers: Headers) -> None:
        """A final head is held until the first body write (or this loop
        turn's flush, :meth:`flush_held`), so a small response leaves in one
        QUIC stream write; an interim (1xx) head goes out at once."""
        fields = heads.response_headers(status, headers, self._ctx.response_defaults,
                                        now=self._ctx.clock(), alt_svc=False)
        code = _STATUS.get(status) or str(status).encode()
        fields = [(b":status", code), *fields]
        frame = self._h3.final_head_frame(stream.stream_id, fields)
        if frame is None:
            self._h3.send_headers(stream.stream_id, fields)
        else:
            stream.held_head = frame
            self._held_heads.append(stream)
        self._session.mark_dirty()

    def write_body(self, stream: RequestStream, data: bytes, end: bool) -> None:
        if not stream.sending:
            raise StreamClosed(f"HTTP/3 stream {stream.stream_id} was closed")
        head = stream.held_head
        if head is None:
            self._h3.send_data(stream.stream_id, data, end)
        else:
            stream.held_head = None
            self._h3.send_data_after(stream.stream_id, head, data, end)
        self._session.mark_dirty()
        if end:
            stream.transition(StreamEvent.RESPONSE_END)
            self._maybe_done(stream)

    def flush_held(self) -> None:
        """Write every response head still held: called by the session right
        before the flush, so no head waits longer than its loop turn."""
        held, self._held_heads = self._held_heads, []
        for stream in held:
            self._write_held(stream)

    def _write_held(self, stream: RequestStream) -> None:
        head = stream.held_head
        if head is not None:
            stream.held_head = None
            if stream.sending:
                self._quic.send_stream_data(stream.stream_id, head)

    def write_trailers(self, stream: RequestStream, headers: Headers) -> None:
        self._write_held(stream)
        self._h3.send_headers(stream.stream_id, list(headers), end_stream=True)
        stream.transition(StreamEvent.RESPONSE_END)
        self._session.mark_dirty()
        self._maybe_done(stream)

    def must_wait(self, stream: RequestStream) -> bool:
        if stream.state is StreamState.RESET:
            return False
        return self._session.stream_send_pending(stream.stream_id) > self.high_water

    def reset_stream(self, stream: RequestStream, code: int) -> None:
        """Reset both halves of ``stream`` that are still open, and forget it.
        A no-op for a stream that is already closed or reset."""
        if stream.finished:
            return
        stream.held_head = None
        if stream.sending:
            self._quic.reset_stream(stream.stream_id, code)
        if stream.receiving:
            self._stop(stream.stream_id, code)
        self._h3.discard(stream.stream_id)
        stream.transition(StreamEvent.RESET)
        stream.wake()
        self._forget(stream)
        self._session.mark_dirty()

    # -- helpers ----------------------------------------------------------------------

    def _stop(self, stream_id: int, code: int) -> None:
        try:
            self._quic.stop_stream(stream_id, code)
        except ValueError:
            # aioquic has already discarded the stream: nothing left to stop.
            pass

    def _maybe_done(self, stream: RequestStream) -> None:
        if stream.finished:
            self._forget(stream)

    def _forget(self, stream: RequestStream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            # The handler holds the stream as its sink: let go of it, so the
            # pair is freed by reference counting instead of waiting for the
            # cycle collector (whose passes cost every request CPU time).
            stream.handler = None
            if self._goaway_at is not None:
                # Its last bytes may still be unacknowledged: wait for them.
                self._flushing.add(stream.stream_id)
            self._close_if_done()

    def _close_if_done(self) -> None:
        if self._goaway_at is None or self._streams or self._closed:
            return
        buffered = self._session.stream_send_buffered
        self._flushing = {sid for sid in self._flushing if buffered(sid) > 0}
        if not self._flushing:
            self._closed = True
            self._quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="shutdown")
            self._session.mark_dirty()
