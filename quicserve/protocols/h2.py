"""HTTP/2 over TCP (TLS with ALPN ``h2``, or cleartext h2c) on top of h2.

Theory of operation
-------------------
:class:`H2Adapter` is the :class:`~quicserve.protocols.base.ByteProtocol` of one
HTTP/2 connection; ``transport/tcp.py`` builds it on ALPN ``h2`` or when the
HTTP/1.1 adapter returns ``SwitchTo("h2", ...)`` (prior-knowledge h2c: the
preface onward is in ``switch.data``; ``Upgrade: h2c``: the 101 is already
written and the upgraded request becomes stream 1).  The constructor writes
the server preface (and serves stream 1 of an upgrade); the transport then
feeds ``switch.data`` through ``data_received`` like any later bytes.

Receive path.  ``data_received`` first lets :class:`~.h2_flood.FloodGuard`
count the frames (rapid reset, control-frame and CONTINUATION floods are
refused before h2 parses a byte of them), then feeds h2 and maps its events
to stream calls: a validated head (``head.pseudo_request_head``; a malformed
one is answered RST_STREAM PROTOCOL_ERROR, never validated here) becomes
``ctx.stream_factory(head, sink)`` + ``start``; DATA becomes
``receive_body``; RST_STREAM becomes ``abort``.  A stream opened and reset
within the same read (rapid reset) is never dispatched.  Writes produced
meanwhile (SETTINGS and PING ACKs, WINDOW_UPDATEs, RST_STREAMs) are written
once, at the end of the call, after counting the RST_STREAMs among them
against the reset budget.  The receive path never awaits.

Send path.  Sink calls queue frames in h2 and ask for one write at the end of
the loop turn (``schedule``: the running loop's ``call_soon``), so every
stream that answered in a turn leaves in one ``transport.write``; past
``stream_high_water`` queued bytes the write happens at once, so transport
backpressure stays exact.  A head that declares Content-Length waits for its
first DATA frame (the body follows at once); other heads are written at once.

Flow control, both ways.

* Inbound: a stream's receive window reopens only when the application
  consumes body bytes (``sink.credit(n)`` -> ``acknowledge_received_data``).
  A stream that stops reading therefore stops the client, and what a
  connection buffers is bounded by its windows.  Bytes that nobody will
  credit any more (a finished or refused stream, padding) are acknowledged at
  once, so a dead stream never holds the connection window.
* Outbound: ``send_body`` sends what the stream and connection windows allow,
  at most ``stream_high_water`` bytes at a time, waits for WINDOW_UPDATE (or a
  SETTINGS change) for the rest, and between steps waits until the transport
  is writable.  A response that sits on a
  zero window for ``h2_stalled_window_timeout`` is reset; if the connection
  window is the one that is stuck, the connection is closed.

Concurrency.  ``h2_max_concurrent_streams`` is advertised; a stream counts
until its response is complete *and* written out (``send_body`` returned), so
a client that never reads cannot make the server run unbounded applications.
Streams beyond the limit are refused with RST_STREAM REFUSED_STREAM (a stream
error, as RFC 9113 5.1.2 allows); h2's own, connection-fatal check is set
above ours so it only trips for grossly misbehaving clients.

Connection lifetime.  One timer (``transport.set_timeout``) covers the
keep-alive idle timeout (armed while no stream is open; the connection is
closed with GOAWAY NO_ERROR) and the stalled-window deadlines.  It is re-armed
only when an earlier deadline appears.  ``shutdown()`` writes GOAWAY with the
last stream id, lets those streams finish and refuses newer ones, then closes.
A client GOAWAY, EOF or a lost connection aborts every stream
(``http.disconnect``).

Errors.  h2 exceptions are mapped here and only here: a connection error from
``receive_data`` becomes GOAWAY (h2 queues it with the right code) and close;
an h2 error on a stream operation becomes :class:`~quicserve.errors.StreamClosed`
for the caller.  Nothing escapes as a traceback.

Never: touch a socket or a clock (time is ``ctx.clock``), or use the event
loop beyond the end-of-turn write (without a running loop, as in sans-IO
tests, writes happen at once).
"""

from __future__ import annotations

import asyncio
import base64
import enum
from dataclasses import replace
from typing import Callable

import h2.connection
import h2.events
import h2.exceptions
from h2.config import H2Configuration
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

from ..errors import ProtocolError, StreamClosed, map_exceptions
from ..interfaces import (
    ConnectionContext,
    ConnectionInfo,
    Headers,
    RequestHead,
    ResetReason,
    ResponseDefaults,
    StateEnum,
    StreamHandler,
)
from ..log import error_logger
from .base import ByteTransport, SwitchTo
from .h2_flood import Flood, FloodGuard, FloodLimits, count_error_resets
from .head import pseudo_request_head, response_headers

#: One configuration for every connection; h2 only reads it.  Outbound headers
#: are neither validated nor normalized by h2: ``head.response_headers``
#: validated and lowercased them, and :func:`_h2_fields` drops what HTTP/2
#: forbids, in one pass instead of h2's chain of generators.
_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_inbound_headers=True,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)

_RESET_CODES = {
    ResetReason.APP_ERROR: ErrorCodes.INTERNAL_ERROR,
    ResetReason.CANCELLED: ErrorCodes.CANCEL,
    ResetReason.REFUSED: ErrorCodes.REFUSED_STREAM,
}

#: Sink operations that hit a stream h2 already considers closed.
_STREAM_ERRORS: dict[type[BaseException], type[StreamClosed]] = {
    h2.exceptions.H2Error: StreamClosed,
}

#: The largest flow-control window (RFC 9113 6.9.1).
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535
#: Request fields h2c's Upgrade request carried for the HTTP/1.1 hop only.
_UPGRADE_ONLY = frozenset({b"connection", b"upgrade", b"http2-settings", b"keep-alive",
                           b"proxy-connection", b"transfer-encoding"})
#: Fields an HTTP/2 message must not carry (RFC 9113 8.2.2).
_CONNECTION_SPECIFIC = frozenset({b"connection", b"upgrade", b"keep-alive", b"proxy-connection",
                                  b"transfer-encoding"})

#: Trailers carry none of the response defaults (Date, Server, Alt-Svc).
_NO_DEFAULTS = ResponseDefaults(server=None, date=False)

_STATUS_BYTES = {status: str(status).encode("ascii") for status in range(100, 600)}


class _Phase(StateEnum):
    """Where a stream's response is."""

    AWAITING_HEAD = "awaiting head"
    SENDING = "sending"
    #: END_STREAM queued: the response is complete.
    ENDED = "ended"
    #: Reset by either side, or the connection is gone.
    RESET = "reset"


class _Input(StateEnum):
    INFORMATIONAL = "send an informational head"
    HEAD = "send the head"
    BODY = "send body"
    END = "end the response"
    RESET = "reset"


_TRANSITIONS: dict[tuple[_Phase, _Input], _Phase] = {
    (_Phase.AWAITING_HEAD, _Input.INFORMATIONAL): _Phase.AWAITING_HEAD,
    (_Phase.AWAITING_HEAD, _Input.HEAD): _Phase.SENDING,
    (_Phase.SENDING, _Input.BODY): _Phase.SENDING,
    (_Phase.SENDING, _Input.END): _Phase.ENDED,
    (_Phase.AWAITING_HEAD, _Input.RESET): _Phase.RESET,
    (_Phase.SENDING, _Input.RESET): _Phase.RESET,
    (_Phase.ENDED, _Input.RESET): _Phase.ENDED,
    (_Phase.RESET, _Input.RESET): _Phase.RESET,
}


class _ConnState(enum.Enum):
    OPEN = "open"
    #: GOAWAY sent: in-flight streams finish, newer ones are refused.
    DRAINING = "draining"
    CLOSED = "closed"


class _Detached:
    """The handler of a stream the adapter has let go of: ignores everything."""

    __slots__ = ()

    def start(self, head: RequestHead, conn: ConnectionInfo) -> None:
        pass

    def receive_body(self, data: bytes, more: bool) -> None:
        pass

    def abort(self, reason: str) -> None:
        pass


_DETACHED = _Detached()


class H2Stream:
    """The :class:`~quicserve.interfaces.StreamSink` of one HTTP/2 stream.

    Built by the adapter for each accepted request; the ASGI stream calls it.
    ``send_body`` is the only awaiting call; every call raises
    :class:`~quicserve.errors.StreamClosed` once the stream was reset or its
    connection is gone.
    """

    __slots__ = ("_adapter", "stream_id", "handler", "websocket", "phase", "request_ended",
                 "unacked", "_wakeup", "_why")

    handler: StreamHandler

    def __init__(self, adapter: H2Adapter, stream_id: int, *, websocket: bool) -> None:
        self._adapter = adapter
        self.stream_id = stream_id
        self.websocket = websocket
        self.phase = _Phase.AWAITING_HEAD
        #: The client sent END_STREAM (or the request body can no longer arrive).
        self.request_ended = False
        #: Body bytes delivered to the handler and not yet credited back.
        self.unacked = 0
        self._wakeup: asyncio.Event | None = None
        self._why = ""

    # -- StreamSink ----------------------------------------------------------------------

    def send_head(self, status: int, headers: Headers) -> None:
        self._check(_Input.INFORMATIONAL if status < 200 else _Input.HEAD)
        self._adapter.write_head(self, status, headers)
        self._move(_Input.INFORMATIONAL if status < 200 else _Input.HEAD)

    async def send_body(self, data: bytes, end: bool) -> None:
        self._move(_Input.BODY)
        adapter = self._adapter
        view = memoryview(data)
        total = len(view)
        step = adapter.write_step
        sent = 0
        while True:
            piece = view[sent:sent + step]
            written = adapter.write_data(self, piece, end and sent + len(piece) == total)
            sent += written
            if sent == total:
                break
            if written < len(piece):
                await self._wait_window()
            else:
                # A high-water mark's worth is out: let the transport drain
                # before the next, so one stream never buffers its whole body.
                await adapter.wait_writable(self)
                self._check(_Input.BODY)
        if end:
            self._move(_Input.END)
        await adapter.wait_writable(self)
        if end:
            adapter.stream_finished(self)

    def send_trailers(self, headers: Headers) -> None:
        self._check(_Input.END)
        self._adapter.write_trailers(self, headers)
        self._move(_Input.END)
        self._adapter.stream_finished(self)

    def reset(self, reason: ResetReason) -> None:
        if self.phase is _Phase.AWAITING_HEAD or self.phase is _Phase.SENDING:
            self._adapter.reset_stream(self, _RESET_CODES[reason])
            self.closed(f"reset by the server ({reason.value})")

    def credit(self, n: int) -> None:
        n = min(n, self.unacked)
        if n > 0:
            self.unacked -= n
            self._adapter.acknowledge(self.stream_id, n)

    # -- called by the adapter -----------------------------------------------------------

    def closed(self, why: str) -> None:
        """The stream can send no more (reset, connection lost): wake the writer."""
        if self.phase is not _Phase.ENDED:
            self._why = why
        self.phase = _TRANSITIONS[(self.phase, _Input.RESET)]
        self.wake()

    def wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def waiting(self) -> bool:
        return self._wakeup is not None and not self._wakeup.is_set()

    # -- internals -----------------------------------------------------------------------

    def _check(self, event: _Input) -> None:
        if (self.phase, event) not in _TRANSITIONS:
            if self.phase is _Phase.RESET:
                raise StreamClosed(f"stream {self.stream_id}: {self._why}")
            raise StreamClosed(f"stream {self.stream_id}: cannot {event.value} "
                               f"in state {self.phase.value}")

    def _move(self, event: _Input) -> None:
        self._check(event)
        self.phase = _TRANSITIONS[(self.phase, event)]

    async def _wait_window(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.clear()
        self._adapter.stalled(self)
        try:
            await self._wakeup.wait()
        finally:
            self._adapter.unstalled(self)
        self._check(_Input.BODY)


class H2Adapter:
    """One HTTP/2 connection: bytes in, streams out (see the module docstring).

    Built as ``H2Adapter(ctx=..., transport=..., conn=..., switch=None)``.

    Error handling: the client's protocol errors and floods end the connection
    with GOAWAY (PROTOCOL_ERROR, ENHANCE_YOUR_CALM, ...) and are logged at
    debug/warning level; nothing is raised to the transport.

    Resource handling: per connection, at most ``h2_max_concurrent_streams``
    streams, receive buffers bounded by the advertised windows, an unfinished
    header block bounded by twice ``h2_max_header_list_size``, and no task:
    waiting happens in the application's own ``send_body``.
    """

    def __init__(
        self,
        *,
        ctx: ConnectionContext,
        transport: ByteTransport,
        conn: ConnectionInfo,
        switch: SwitchTo | None = None,
        schedule: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        options = ctx.options
        self._ctx = ctx
        self._transport = transport
        self._conn = replace(
            conn, http_version="2", protocol="HTTP/2",
            extensions=tuple(dict.fromkeys(
                conn.extensions + ("http.response.trailers", "http.response.early_hint"))),
        )
        self._h2 = h2.connection.H2Connection(config=_CONFIG)
        self._guard = FloodGuard(FloodLimits(
            max_resets=options.h2_max_resets_per_window,
            max_control_frames=options.h2_max_control_frames_per_window,
            window=options.h2_flood_window,
            max_header_block=2 * options.h2_max_header_list_size,
        ), expect_preface=True)
        self._max_streams = options.h2_max_concurrent_streams
        self._streams: dict[int, H2Stream] = {}
        self._state = _ConnState.OPEN
        self._receiving = False
        #: Runs a callback at the end of this loop turn: the running loop's
        #: ``call_soon`` unless given; None (no loop: sans-IO tests) writes at once.
        self._schedule = schedule if schedule is not None else _running_loop_call_soon()
        self._flush_pending = False
        #: DATA bytes queued in h2 since the last write to the transport.
        self._unflushed = 0
        self._high_water = options.stream_high_water
        #: The most body bytes ``send_body`` hands over between two waits.
        self.write_step = options.stream_high_water
        self._idle_since: float | None = ctx.clock()
        self._timer_deadline: float | None = None
        #: Streams waiting on a zero window -> since when.
        self._stalls: dict[int, float] = {}
        #: Streams the current read both opens and resets.
        self._doomed: set[int] = set()
        #: False after an h2c Upgrade until the client's preface and SETTINGS
        #: arrive: until then the client still parses HTTP/1.1 and buffers
        #: what follows the 101 (curl only 32 KiB), so DATA waits.
        self._peer_ready = switch is None or switch.upgrade_head is None
        self._dispatch: dict[type[h2.events.Event], Callable[..., None]] = {
            h2.events.RequestReceived: self._on_request,
            h2.events.DataReceived: self._on_data,
            h2.events.StreamEnded: self._on_stream_ended,
            h2.events.StreamReset: self._on_stream_reset,
            h2.events.WindowUpdated: self._on_window_updated,
            h2.events.RemoteSettingsChanged: self._on_settings,
            h2.events.ConnectionTerminated: self._on_goaway,
        }
        self._begin(switch)

    # -- ByteProtocol ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> SwitchTo | None:
        if self._state is _ConnState.CLOSED:
            return None
        now = self._ctx.clock()
        flood = self._guard.scan_untrusted(data, now)
        if flood is not None:
            self._calm_down(flood)
            return None
        if self._flush_pending:
            # What the streams wrote this turn goes first, so that what h2
            # queues below is exactly what this read made the server say.
            self._flush_now()
        self._receiving = True
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.H2Error as exc:
            self._receiving = False
            error_logger.debug("HTTP/2 connection error from %s: %s", self._conn.client, exc)
            self._close(abort_reason="connection error", goaway=None)
            return None
        # Streams opened and reset within the same read (rapid reset) are
        # never dispatched: the application does no work for them.
        self._doomed = {e.stream_id for e in events if type(e) is h2.events.StreamReset}
        dispatch = self._dispatch
        for event in events:
            if self._is_closed():
                break
            handler = dispatch.get(type(event))
            if handler is not None:
                handler(event)
        self._receiving = False
        self._answer(now)
        return None

    def eof_received(self) -> None:
        self._close(abort_reason="the client closed the connection", goaway=None)

    def connection_lost(self) -> None:
        self._state = _ConnState.CLOSED
        self._abort_all("connection lost")

    def timeout(self) -> None:
        self._timer_deadline = None
        if self._state is _ConnState.CLOSED:
            return
        now = self._ctx.clock()
        if self._expire_stalls(now):
            return
        if self._idle_since is not None and not self._streams:
            deadline = self._idle_since + self._ctx.options.keep_alive
            if deadline <= now:
                self._close(abort_reason="idle", goaway=ErrorCodes.NO_ERROR)
                return
        self._rearm(now)

    def shutdown(self) -> None:
        """Graceful: GOAWAY with the last stream id; in-flight streams finish."""
        if self._state is not _ConnState.OPEN:
            return
        if not self._streams:
            self._close(abort_reason="shutdown", goaway=ErrorCodes.NO_ERROR)
            return
        self._state = _ConnState.DRAINING
        self._flush_now()
        self._write(_goaway_frame(self._h2.highest_inbound_stream_id, ErrorCodes.NO_ERROR))

    # -- sink operations (called by H2Stream) ----------------------------------------------

    def write_head(self, stream: H2Stream, status: int, headers: Headers) -> None:
        self._require_open(stream)
        fields = response_headers(status, headers, self._ctx.response_defaults,
                                  now=self._ctx.clock(), alt_svc=self._conn.secure)
        status_bytes = _STATUS_BYTES.get(status) or str(status).encode("ascii")
        block = [(b":status", status_bytes)]
        block += _h2_fields(fields)
        with map_exceptions(_STREAM_ERRORS):
            self._h2.send_headers(stream.stream_id, block)
        if status < 200 or stream.websocket or not _declares_length(fields):
            self._flush()
        # else the body follows at once (the app knows its length): the head
        # leaves with the first DATA frame, in one write.

    def write_data(self, stream: H2Stream, data: memoryview, end: bool) -> int:
        """Send as much of ``data`` as the windows allow; END_STREAM with the last byte.

        Returns the number of bytes queued.
        """
        self._require_open(stream)
        conn = self._h2
        stream_id = stream.stream_id
        total = len(data)
        with map_exceptions(_STREAM_ERRORS):
            if total == 0:
                if end:
                    conn.send_data(stream_id, b"", end_stream=True)
                self._flush()
                return 0
            window = conn.local_flow_control_window(stream_id) if self._peer_ready else 0
            frame = conn.max_outbound_frame_size
            sent = 0
            while sent < total and window > 0:
                size = min(total - sent, window, frame)
                conn.send_data(stream_id, data[sent:sent + size],
                               end_stream=end and sent + size == total)
                sent += size
                window -= size
        self._unflushed += sent
        if sent:
            self._flush()
        return sent

    def write_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self._require_open(stream)
        fields = response_headers(200, headers, _NO_DEFAULTS, now=0.0, alt_svc=False)
        with map_exceptions(_STREAM_ERRORS):
            self._h2.send_headers(stream.stream_id, _h2_fields(fields), end_stream=True)
        self._flush()

    async def wait_writable(self, stream: H2Stream) -> None:
        if self._state is _ConnState.CLOSED:
            raise StreamClosed("the connection is closed")
        await self._transport.wait_writable()

    def reset_stream(self, stream: H2Stream, code: ErrorCodes) -> None:
        if self._state is not _ConnState.CLOSED:
            self._reset(stream.stream_id, code)
            self._flush()
        self._forget(stream)

    def acknowledge(self, stream_id: int, n: int) -> None:
        if self._state is _ConnState.CLOSED:
            return
        self._ack(n, stream_id)
        self._flush()

    def stream_finished(self, stream: H2Stream) -> None:
        """The response is complete and written: release the stream."""
        if self._streams.get(stream.stream_id) is not stream:
            return
        if not stream.request_ended and self._state is not _ConnState.CLOSED:
            # RFC 9113 8.1: a complete response may stop the rest of the
            # request body with RST_STREAM NO_ERROR.
            self._reset(stream.stream_id, ErrorCodes.NO_ERROR)
            self._flush()
        self._forget(stream)

    def stalled(self, stream: H2Stream) -> None:
        now = self._ctx.clock()
        self._stalls[stream.stream_id] = now
        self._arm(now + self._ctx.options.h2_stalled_window_timeout, now)

    def unstalled(self, stream: H2Stream) -> None:
        self._stalls.pop(stream.stream_id, None)

    # -- h2 events -------------------------------------------------------------------------

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if stream_id in self._doomed:
            return
        if self._state is not _ConnState.OPEN:
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if len(self._streams) >= self._max_streams:
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        try:
            head = pseudo_request_head(event.headers or ())
        except ProtocolError as exc:
            error_logger.debug("HTTP/2 stream %d from %s refused: %s",
                               stream_id, self._conn.client, exc)
            self._reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        self._open_stream(stream_id, head)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        data = event.data or b""
        size = event.flow_controlled_length or 0
        if stream is None or stream.request_ended:
            if size:
                self._ack(size, event.stream_id)
            return
        if size > len(data):
            self._ack(size - len(data), event.stream_id)
        stream.unacked += len(data)
        ended = event.stream_ended is not None
        stream.request_ended = ended
        stream.handler.receive_body(data, not ended)

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None and not stream.request_ended:
            stream.request_ended = True
            stream.handler.receive_body(b"", False)

    def _on_stream_reset(self, event: h2.events.StreamReset) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        handler = stream.handler  # (forgetting the stream lets go of it)
        self._forget(stream)
        stream.closed(f"reset by the client ({_code_name(event.error_code)})")
        handler.abort("stream reset by the client")

    def _on_window_updated(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.wake()
        else:
            self._wake_all()

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        changed = event.changed_settings
        if not self._peer_ready:
            self._peer_ready = True
            self._wake_all()
        elif SettingCodes.INITIAL_WINDOW_SIZE in changed or SettingCodes.MAX_FRAME_SIZE in changed:
            self._wake_all()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        # A client's GOAWAY says it opens no more streams; those already open
        # still get their responses (RFC 9113 section 6.8).  The h2 library
        # moves its state machine to CLOSED on any received GOAWAY and would
        # refuse to send, so after a NO_ERROR GOAWAY with streams open its
        # state goes back to SERVER_OPEN (the transition's only effect; the
        # library also dropped what it had not handed out yet, which
        # data_received flushes before feeding it input) and the connection
        # drains as in shutdown(), without a GOAWAY of ours: the client is
        # the one leaving.  An error GOAWAY ends everything now.
        state_machine = self._h2.state_machine
        if (event.error_code == ErrorCodes.NO_ERROR and self._streams
                and self._state is _ConnState.OPEN
                and state_machine.state is ConnectionState.CLOSED):
            state_machine.state = ConnectionState.SERVER_OPEN
            self._state = _ConnState.DRAINING
            return
        self._close(abort_reason="the client sent GOAWAY", goaway=None)

    # -- internals -------------------------------------------------------------------------

    def _begin(self, switch: SwitchTo | None) -> None:
        options = self._ctx.options
        advertised: dict[SettingCodes, int] = {
            SettingCodes.MAX_CONCURRENT_STREAMS: options.h2_max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: options.h2_initial_window_size,
            SettingCodes.MAX_FRAME_SIZE: options.h2_max_frame_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: options.h2_max_header_list_size,
            SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
        }
        conn = self._h2
        conn.local_settings = Settings(client=False, initial_values=advertised)
        upgrade = switch.upgrade_head if switch is not None else None
        if upgrade is not None and switch is not None:
            settings = base64.urlsafe_b64encode(switch.upgrade_settings or b"")
            conn.initiate_upgrade_connection(settings or None)
        else:
            conn.initiate_connection()
        # h2 treats a stream over its limit as a connection error; ours (a
        # stream error, REFUSED_STREAM) must be the one that applies.
        advertised[SettingCodes.MAX_CONCURRENT_STREAMS] = 2 * self._max_streams + 16
        conn.local_settings = Settings(client=False, initial_values=advertised)
        conn.max_inbound_frame_size = options.h2_max_frame_size
        conn.decoder.max_header_list_size = options.h2_max_header_list_size
        window = min(_MAX_WINDOW, max(_DEFAULT_WINDOW, 4 * options.h2_initial_window_size))
        if window > _DEFAULT_WINDOW:
            conn.increment_flow_control_window(window - _DEFAULT_WINDOW)
        self._flush_now()
        if upgrade is not None and switch is not None:
            self._serve_upgrade(upgrade, switch.upgrade_body)
        self._rearm(self._ctx.clock())

    def _serve_upgrade(self, head: RequestHead, body: bytes) -> None:
        """Stream 1 is the HTTP/1.1 request that asked for h2c (RFC 7540 3.2)."""
        headers = tuple((n, v) for n, v in head.headers if n not in _UPGRADE_ONLY)
        head = replace(head, headers=headers, protocol=None)
        stream = self._open_stream(1, head)
        stream.request_ended = True
        # The body came over HTTP/1.1: no window to reopen for it.
        stream.handler.receive_body(body, False)

    def _open_stream(self, stream_id: int, head: RequestHead) -> H2Stream:
        stream = H2Stream(self, stream_id, websocket=head.protocol == "websocket")
        stream.handler = self._ctx.stream_factory(head, stream)
        self._streams[stream_id] = stream
        self._idle_since = None
        stream.handler.start(head, self._conn)
        return stream

    def _forget(self, stream: H2Stream) -> None:
        """Drop a finished or reset stream; return window nobody will credit."""
        if self._streams.pop(stream.stream_id, None) is None:
            return
        # The handler holds the stream as its sink: break the cycle, so both
        # are freed by reference counting rather than by the cycle collector.
        stream.handler = _DETACHED
        self._stalls.pop(stream.stream_id, None)
        if stream.unacked and self._state is not _ConnState.CLOSED:
            self._ack(stream.unacked, stream.stream_id)
            self._flush()
        stream.unacked = 0
        if not self._streams:
            self._became_idle()

    def _became_idle(self) -> None:
        if self._state is _ConnState.DRAINING:
            self._close(abort_reason="shutdown", goaway=None)
            return
        now = self._ctx.clock()
        self._idle_since = now
        if self._ctx.options.keep_alive > 0:
            self._arm(now + self._ctx.options.keep_alive, now)

    def _reset(self, stream_id: int, code: ErrorCodes) -> None:
        try:
            self._h2.reset_stream(stream_id, code)
        except h2.exceptions.NoSuchStreamError:
            pass  # already closed (or forgotten) on h2's side: nothing to reset

    def _ack(self, n: int, stream_id: int) -> None:
        """Return ``n`` received bytes to the client's windows (only the
        connection's once h2 considers the stream closed)."""
        self._h2.acknowledge_received_data(n, stream_id)

    def _answer(self, now: float) -> None:
        """Write what processing one read queued: SETTINGS and PING ACKs,
        WINDOW_UPDATEs, and RST_STREAMs.  Every stream the client made the
        server reset (refused, malformed, or reset by h2 for a stream error:
        "MadeYouReset") counts against the reset budget, like its own resets."""
        if self._is_closed():
            return
        self._unflushed = 0
        data = self._h2.data_to_send()
        if not data:
            return
        resets = count_error_resets(data)
        if resets:
            flood = self._guard.count_server_resets(resets, now)
            if flood is not None:
                self._calm_down(flood)
                return
        self._transport.write(data)

    def _calm_down(self, flood: Flood) -> None:
        error_logger.warning("HTTP/2 flood from %s (%s): GOAWAY ENHANCE_YOUR_CALM",
                             self._conn.client, flood.describe())
        self._close(abort_reason="flood", goaway=ErrorCodes.ENHANCE_YOUR_CALM,
                    debug=flood.describe().encode("ascii"))

    def _close(self, *, abort_reason: str, goaway: ErrorCodes | None, debug: bytes = b"") -> None:
        """End the connection: optional GOAWAY, flush, close, abort the streams.

        ``goaway=None`` when none is due (h2 already queued one for its own
        protocol errors, or the client is gone).
        """
        if self._state is _ConnState.CLOSED:
            return
        self._state = _ConnState.CLOSED
        self._receiving = False
        if goaway is not None:
            self._h2.close_connection(error_code=goaway, additional_data=debug or None)
        self._write(self._h2.data_to_send())
        self._transport.close()
        self._transport.set_timeout(None)
        self._abort_all(abort_reason)

    def _abort_all(self, reason: str) -> None:
        streams = list(self._streams.values())
        self._streams.clear()
        self._stalls.clear()
        for stream in streams:
            stream.closed(f"connection ended: {reason}")
            stream.handler.abort(reason)
            stream.handler = _DETACHED

    def _wake_all(self) -> None:
        for stream_id in self._stalls:
            stream = self._streams.get(stream_id)
            if stream is not None:
                stream.wake()

    def _expire_stalls(self, now: float) -> bool:
        """Reset the streams stalled too long; True if the connection was closed."""
        limit = self._ctx.options.h2_stalled_window_timeout
        expired = [sid for sid, since in self._stalls.items() if since + limit <= now]
        if not expired:
            return False
        if self._h2.outbound_flow_control_window <= 0:
            error_logger.info("HTTP/2 connection window of %s stalled for %.0f s: closing",
                              self._conn.client, limit)
            self._close(abort_reason="flow-control window stalled",
                        goaway=ErrorCodes.FLOW_CONTROL_ERROR)
            return True
        for stream_id in expired:
            stream = self._streams.get(stream_id)
            if stream is not None:
                handler = stream.handler  # (resetting the stream lets go of it)
                self.reset_stream(stream, ErrorCodes.CANCEL)
                stream.closed("flow-control window stalled")
                handler.abort("flow-control window stalled")
        return False

    def _rearm(self, now: float) -> None:
        deadlines = []
        if self._stalls:
            timeout = self._ctx.options.h2_stalled_window_timeout
            deadlines.append(min(self._stalls.values()) + timeout)
        if self._idle_since is not None and not self._streams and self._ctx.options.keep_alive > 0:
            deadlines.append(self._idle_since + self._ctx.options.keep_alive)
        if deadlines:
            self._arm(min(deadlines), now)

    def _arm(self, deadline: float, now: float) -> None:
        """Make sure the one timer fires no later than ``deadline``."""
        if self._timer_deadline is not None and self._timer_deadline <= deadline:
            return
        self._timer_deadline = deadline
        self._transport.set_timeout(max(0.0, deadline - now))

    def _is_closed(self) -> bool:
        return self._state is _ConnState.CLOSED

    def _require_open(self, stream: H2Stream) -> None:
        if self._state is _ConnState.CLOSED:
            raise StreamClosed("the connection is closed")

    def _flush(self) -> None:
        """Have what h2 queued written: at the end of the current read, once at
        the end of this loop turn (one write for every stream that answered in
        it), or at once when driven without a loop."""
        if self._receiving or self._state is _ConnState.CLOSED:
            return
        if self._schedule is None or self._unflushed >= self._high_water:
            # Past the high-water mark the bytes go to the transport now, so
            # that its backpressure (wait_writable) sees them.
            self._flush_now()
            return
        if self._flush_pending:
            return
        self._flush_pending = True
        self._schedule(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_pending = False
        self._flush_now()

    def _flush_now(self) -> None:
        if self._state is _ConnState.CLOSED:
            return
        self._unflushed = 0
        data = self._h2.data_to_send()
        if data:
            self._transport.write(data)

    def _write(self, data: bytes) -> None:
        if data and not self._transport.closing:
            self._transport.write(data)


def _running_loop_call_soon() -> Callable[[Callable[[], None]], object] | None:
    try:
        return asyncio.get_running_loop().call_soon
    except RuntimeError:
        return None


def _goaway_frame(last_stream_id: int, code: ErrorCodes) -> bytes:
    """A GOAWAY frame written without h2, whose ``close_connection`` would also
    forbid finishing the in-flight streams (RFC 9113 6.8 allows it)."""
    header = (8).to_bytes(3, "big") + bytes((0x7, 0)) + (0).to_bytes(4, "big")
    return header + (last_stream_id & _MAX_WINDOW).to_bytes(4, "big") + int(code).to_bytes(4, "big")


def _h2_fields(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop connection-specific fields and the whitespace HTTP/2 forbids
    around values (RFC 9113 8.2.1)."""
    return [(name, value.strip(b" \t")) for name, value in fields
            if name not in _CONNECTION_SPECIFIC]


def _declares_length(fields: list[tuple[bytes, bytes]]) -> bool:
    for name, _ in fields:
        if name == b"content-length":
            return True
    return False


def _code_name(code: object) -> str:
    return code.name if isinstance(code, ErrorCodes) else str(code)
