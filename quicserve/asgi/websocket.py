"""WebSocketStream: one WebSocket on any protocol, framed with wsproto.

Theory of operation
-------------------
There is one WebSocket adapter for every protocol.  The protocol adapters do
the handshake part that belongs to their wire (HTTP/1.1 ``Upgrade`` plus
``Sec-WebSocket-Accept``; RFC 8441/9220 extended CONNECT on H2/H3) and mark
the head with ``protocol == "websocket"``.  From then on the stream's body,
both ways, is the raw WebSocket byte stream, which this module frames with a
``wsproto.connection.Connection`` in server mode: wsproto never sees an HTTP
handshake here.

Handshake.  The app first receives ``websocket.connect``.  Then:

* ``websocket.accept`` -> ``sink.send_head(200, headers)`` (the H1 adapter
  turns it into ``101`` and adds Upgrade/Connection/Sec-WebSocket-Accept); we
  send only ``sec-websocket-protocol``, ``sec-websocket-extensions`` and the
  app's headers;
* ``websocket.close`` before accepting -> ``403``;
* ``websocket.http.response.start`` / ``.body`` (the denial extension,
  offered in every scope) -> that status and body;
* the app returns or raises before any of these -> ``500``.

permessage-deflate is negotiated at ``start`` from the request's
``Sec-WebSocket-Extensions``, on HTTP/1.x only, by ``asgi/ws_deflate.py``,
which also bounds it against decompression bombs: inflating stops at
``--ws-max-message-size`` (the limit applies to the *inflated* size) and the
connection is closed with 1009.

Once open, the state machine (:class:`WebSocketState`, table ``_TRANSITIONS``)::

    CONNECTING --accept--> OPEN --close (app or server)--> CLOSING --peer close--> CLOSED
        |   \\                 \\--peer close (we answer)--------------------------> CLOSED
        |    +--http.response.start--> DENYING --body(end)--> CLOSED
        +--close / error--> CLOSED                        (connection lost: any -> CLOSED)

Receive path (never awaits).  ``receive_body`` feeds wsproto and turns its
events into ASGI messages in a queue the app's ``receive()`` pops.  Fragments
are reassembled; a message over ``--ws-max-message-size`` closes with 1009.
Credit: raw bytes are credited back at once while the complete-but-unread
messages stay within ``--stream-high-water``; beyond it credit is withheld
until the app catches up (a partial message never counts, so a message larger
than the high-water mark cannot deadlock).  Bytes that arrive before the app
accepts are held, uncredited, and fed in on accept.

Send path.  Every write to the sink goes through one lock, so frames never
interleave: the app's ``websocket.send`` awaits ``sink.send_body`` (write
backpressure); frames the receive path must answer with (pong, the close
reply) and our pings are queued and written by a short flush task under the
same lock, since the receive path cannot await.

Keepalive.  Every ``--ws-ping-interval`` seconds a ping goes out; without a
pong within ``--ws-ping-timeout`` the connection is dead: the stream is reset
(``ResetReason.CANCELLED``) and the app receives ``websocket.disconnect`` with
1006.  The timers are ``loop.call_later`` handles owned by the stream and
cancelled when it closes (asyncio timers, not socket I/O).

Disconnect codes given to the app: the peer's close code (1005 when its close
frame had none), 1006 when the connection was lost without a close frame,
1009/1002/1007 when we failed the connection, and the app's own code after
it closed.
"""

from __future__ import annotations

import asyncio
import collections
import enum
from typing import Any

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message as WsMessage,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from .. import log
from ..errors import ASGIProtocolError, ClientDisconnected, StreamClosed
from ..interfaces import ConnectionInfo, RequestHead, ResetReason, StateEnum, StreamSink
from .context import StreamContext
from .http import response_headers
from .types import Message, Scope
from .ws_deflate import negotiate_deflate

#: How long we wait for the peer's close frame after sending ours.
CLOSE_TIMEOUT = 5.0


class WebSocketState(StateEnum):
    CONNECTING = "connecting"
    #: ``websocket.http.response.start`` received; the denial body follows.
    DENYING = "denying"
    OPEN = "open"
    #: Our close frame went out; waiting for the peer's.
    CLOSING = "closing"
    CLOSED = "closed"


class _Event(StateEnum):
    ACCEPT = enum.auto()
    DENY = enum.auto()
    DENY_START = enum.auto()
    DENY_BODY_MORE = enum.auto()
    DENY_BODY_END = enum.auto()
    SEND = enum.auto()
    CLOSE = enum.auto()
    PEER_CLOSE = enum.auto()
    LOST = enum.auto()


_W = WebSocketState
_TRANSITIONS: dict[tuple[WebSocketState, _Event], WebSocketState] = {
    (_W.CONNECTING, _Event.ACCEPT): _W.OPEN,
    (_W.CONNECTING, _Event.DENY): _W.CLOSED,
    (_W.CONNECTING, _Event.DENY_START): _W.DENYING,
    (_W.CONNECTING, _Event.LOST): _W.CLOSED,
    (_W.DENYING, _Event.DENY_BODY_MORE): _W.DENYING,
    (_W.DENYING, _Event.DENY_BODY_END): _W.CLOSED,
    (_W.DENYING, _Event.DENY): _W.CLOSED,
    (_W.DENYING, _Event.LOST): _W.CLOSED,
    (_W.OPEN, _Event.SEND): _W.OPEN,
    (_W.OPEN, _Event.CLOSE): _W.CLOSING,
    (_W.OPEN, _Event.PEER_CLOSE): _W.CLOSED,
    (_W.OPEN, _Event.LOST): _W.CLOSED,
    (_W.CLOSING, _Event.PEER_CLOSE): _W.CLOSED,
    (_W.CLOSING, _Event.LOST): _W.CLOSED,
}


class WebSocketStream:
    """One WebSocket on HTTP/1.1, HTTP/2 or HTTP/3, served by the ASGI app.

    Error handling: nothing the app raises escapes the stream's task: before
    the handshake it becomes a 500, after it a close with 1011.  An invalid
    ASGI message raises ``ASGIProtocolError`` into the app (logged once).
    ``send()`` after the peer went away raises ``ClientDisconnected``.

    Resource handling: one task (the app's), at most one short flush task at a
    time, two timer handles; memory bounded by the max message size plus the
    high-water mark of unread messages.
    """

    def __init__(self, ctx: StreamContext, sink: StreamSink) -> None:
        self._ctx = ctx
        self._sink = sink
        options = ctx.options
        self._max_message = options.ws_max_message_size
        self._high_water = options.stream_high_water
        self._ping_interval = options.ws_ping_interval or 0.0
        self._ping_timeout = options.ws_ping_timeout
        self._state = WebSocketState.CONNECTING
        self._scope: Scope = {}
        self._head: RequestHead | None = None
        self._conn: ConnectionInfo | None = None
        self._ws: Connection | None = None
        self._deflate: Extension | None = None
        self._deflate_header = b""
        # Inbound: ASGI messages for the app, with their sizes.
        self._inbox: collections.deque[tuple[Message, int]] = collections.deque()
        self._unread = 0
        self._owed_credit = 0
        self._early: list[bytes] = []
        self._peer_ended = False
        self._http1 = False
        self._fragments: list[Any] = []
        self._fragment_size = 0
        self._disconnect: Message | None = None
        self._event: asyncio.Event | None = None
        # Outbound.
        self._lock = asyncio.Lock()
        self._pending = bytearray()
        self._end_requested = False
        self._ended = False
        self._flush_task: asyncio.Task[None] | None = None
        self._peer_gone = False
        self._peer_closed = asyncio.Event()
        self._deny_status = 0
        self._deny_headers: list[tuple[bytes, bytes]] = []
        self._error: ASGIProtocolError | None = None
        # Keepalive.
        self._ping_handle: asyncio.TimerHandle | None = None
        self._pong_deadline: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._status = 0

    # -- protocol -> stream ----------------------------------------------------

    def start(self, head: RequestHead, conn: ConnectionInfo) -> None:
        self._head = head
        self._conn = conn
        self._http1 = conn.http_version in ("1.0", "1.1")
        self._started_at = self._ctx.clock()
        self._scope = self._ctx.scopes.websocket(head, conn, self._ctx.state)
        if self._ctx.options.ws_per_message_deflate and self._http1:
            self._deflate, self._deflate_header = negotiate_deflate(head.headers, self._max_message)
        self._inbox.append(({"type": "websocket.connect"}, 0))
        self._ctx.spawn(self._run(), True)

    def receive_body(self, data: bytes, more: bool) -> None:
        state = self._state
        if state is WebSocketState.CONNECTING or state is WebSocketState.DENYING:
            if data:
                self._early.append(data)
            if not more and not self._http1:
                # On HTTP/1.1 the end before the 101 is only the end of the GET
                # that asked for the upgrade; on H2/H3 the client half-closed.
                self._peer_ended = True
            return
        if self._ws is None or state is WebSocketState.CLOSED:
            if data:
                self._sink.credit(len(data))
            return
        self._feed(data, more)

    def abort(self, reason: str) -> None:
        self._peer_gone = True
        self._stop_keepalive()
        if self._state is not WebSocketState.CLOSED:
            self._state = _TRANSITIONS[self._state, _Event.LOST]
        self._deliver_disconnect(CloseReason.ABNORMAL_CLOSURE, "")
        self._peer_closed.set()

    # -- inbound --------------------------------------------------------------------

    def _feed(self, data: bytes, more: bool) -> None:
        ws = self._ws
        if ws is None:
            return
        if data and ws.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
            ws.receive_data(data)
        if not more:
            # wsproto parses lazily: handle the frames in ``data`` (on H2/H3 a
            # close frame often comes with the end of the stream) before
            # reporting the end, which wsproto would otherwise put first (1006).
            for event in ws.events():
                self._on_event(event)
            if ws.state is not ConnectionState.CLOSED:
                ws.receive_data(None)
        for event in ws.events():
            self._on_event(event)
        self._settle_credit(len(data))

    def _settle_credit(self, consumed: int) -> None:
        """Credit raw bytes back unless too many unread messages wait."""
        self._owed_credit += consumed
        if self._owed_credit and (self._unread <= self._high_water or self._state is _W.CLOSED):
            owed, self._owed_credit = self._owed_credit, 0
            self._sink.credit(owed)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, (TextMessage, BytesMessage)):
            self._on_data(event)
        elif isinstance(event, Ping):
            self._queue(event.response())
        elif isinstance(event, Pong):
            self._on_pong()
        elif isinstance(event, CloseConnection):
            self._on_close(event)

    def _on_data(self, event: WsMessage[Any]) -> None:
        if self._state is not WebSocketState.OPEN:
            return  # after our close frame, data is discarded (RFC 6455 5.5.1)
        data = event.data
        size = len(data)
        if isinstance(data, str) and size * 4 > self._max_message - self._fragment_size:
            size = len(data.encode("utf-8"))
        self._fragment_size += size
        if self._fragment_size > self._max_message:
            self._fail(CloseReason.MESSAGE_TOO_BIG, "message too big")
            return
        self._fragments.append(data)
        if not event.message_finished:
            return
        if isinstance(event, TextMessage):
            message: Message = {"type": "websocket.receive", "text": "".join(self._fragments)}
        else:
            message = {"type": "websocket.receive", "bytes": b"".join(self._fragments)}
        self._inbox.append((message, self._fragment_size))
        self._unread += self._fragment_size
        self._fragments = []
        self._fragment_size = 0
        self._wake()

    def _on_close(self, event: CloseConnection) -> None:
        ws = self._ws
        code, reason = int(event.code), event.reason or ""
        if ws is not None and ws.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
            # wsproto made this event up: the peer's bytes were invalid.
            self._fail(code, reason)
            return
        if ws is not None and ws.state is ConnectionState.REMOTE_CLOSING:
            self._queue(event.response())
        self._stop_keepalive()
        if code == CloseReason.ABNORMAL_CLOSURE:
            self._peer_gone = True
        if self._state is not WebSocketState.CLOSED:
            self._state = _TRANSITIONS[self._state, _Event.PEER_CLOSE]
        self._deliver_disconnect(code, reason)
        self._peer_closed.set()
        self._request_end()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): close frame, then end."""
        if self._state is WebSocketState.OPEN:
            self._queue(CloseConnection(code=code, reason=reason))
        self._stop_keepalive()
        self._state = WebSocketState.CLOSED
        self._deliver_disconnect(code, reason)
        self._peer_closed.set()
        self._request_end()

    def _deliver_disconnect(self, code: int, reason: str) -> None:
        if self._disconnect is None:
            self._disconnect = {"type": "websocket.disconnect", "code": int(code), "reason": reason}
            self._wake()

    # -- the app's receive() and send() --------------------------------------------

    async def receive(self) -> Message:
        while True:
            if self._inbox:
                message, size = self._inbox.popleft()
                if size:
                    self._unread -= size
                    self._settle_credit(0)
                return message
            if self._disconnect is not None:
                return self._disconnect
            await self._wait()

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if self._peer_gone or (kind == "websocket.send" and self._closed_by_peer()):
            raise ClientDisconnected("the client disconnected")
        try:
            await self._dispatch(kind, message)
        except ASGIProtocolError as exc:
            raise self._log_protocol_error(exc) from None

    def _closed_by_peer(self) -> bool:
        """The connection closed while open (peer close, or we failed it)."""
        return self._state is WebSocketState.CLOSED and self._ws is not None

    async def _dispatch(self, kind: object, message: Message) -> None:
        if kind == "websocket.send":
            await self._send_message(message)
        elif kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.close":
            await self._close(message)
        elif kind == "websocket.http.response.start":
            self._deny_start(message)
        elif kind == "websocket.http.response.body":
            await self._deny_body(message)
        else:
            raise ASGIProtocolError(self._state.name, kind)

    def _transition(self, event: _Event, message_type: str) -> None:
        try:
            self._state = _TRANSITIONS[self._state, event]
        except KeyError:
            raise ASGIProtocolError(self._state.name, message_type) from None

    def _accept(self, message: Message) -> None:
        kind = "websocket.accept"
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and not isinstance(subprotocol, str):
            raise ASGIProtocolError(self._state.name, f"{kind} (subprotocol must be a str)")
        headers = [
            (name, value)
            for name, value in response_headers(message.get("headers", ()), self._state.name, kind)
            if name not in (b"sec-websocket-protocol", b"sec-websocket-extensions")
        ]
        self._transition(_Event.ACCEPT, kind)
        if subprotocol:
            headers.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
        extensions = [self._deflate] if self._deflate is not None else []
        if self._deflate is not None:
            headers.append((b"sec-websocket-extensions", self._deflate_header))
        self._ws = Connection(ConnectionType.SERVER, extensions=extensions)
        self._status = 101 if self._http1 else 200
        self._sink.send_head(200, headers)
        self._start_keepalive()
        early, self._early = self._early, []
        if early or self._peer_ended:
            self._feed(b"".join(early), not self._peer_ended)

    async def _send_message(self, message: Message) -> None:
        kind = "websocket.send"
        text, data = message.get("text"), message.get("bytes")
        if (text is None) == (data is None):
            raise ASGIProtocolError(self._state.name, f"{kind} (exactly one of bytes, text)")
        payload: object = text if text is not None else data
        if not isinstance(payload, (str, bytes)):
            raise ASGIProtocolError(self._state.name, f"{kind} (bad payload type)")
        self._transition(_Event.SEND, kind)
        ws = self._ws
        if ws is None or ws.state is not ConnectionState.OPEN:
            raise ClientDisconnected("the WebSocket is closing")
        frame = ws.send(_message_event(payload))
        await self._write(bytes(frame), False)

    async def _close(self, message: Message) -> None:
        kind = "websocket.close"
        code = message.get("code", 1000)
        reason = message.get("reason") or ""
        if type(code) is not int or not _valid_close_code(code) or not isinstance(reason, str):
            raise ASGIProtocolError(self._state.name, f"{kind} (bad code or reason)")
        state = self._state
        if state is WebSocketState.CONNECTING:
            self._transition(_Event.DENY, kind)
            await self._respond(403, b"")
            return
        if state is WebSocketState.CLOSED and self._ws is not None:
            return  # the peer closed first; our close is moot
        self._transition(_Event.CLOSE, kind)
        self._stop_keepalive()
        self._deliver_disconnect(code, reason)
        self._queue(CloseConnection(code=code, reason=reason or None))
        await self._write(b"", False)

    def _deny_start(self, message: Message) -> None:
        kind = "websocket.http.response.start"
        status = message.get("status")
        if type(status) is not int or not 300 <= status <= 599:
            raise ASGIProtocolError(self._state.name, f"{kind} (bad status {status!r})")
        headers = response_headers(message.get("headers", ()), self._state.name, kind)
        self._transition(_Event.DENY_START, kind)
        self._deny_status = status
        self._deny_headers = headers

    async def _deny_body(self, message: Message) -> None:
        kind = "websocket.http.response.body"
        body = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if not isinstance(body, bytes):
            raise ASGIProtocolError(self._state.name, f"{kind} (body must be bytes)")
        first = self._status == 0
        self._transition(_Event.DENY_BODY_MORE if more else _Event.DENY_BODY_END, kind)
        if first:
            self._status = self._deny_status
            self._sink.send_head(self._deny_status, self._deny_headers)
        if body or not more:
            await self._write(body, not more)

    async def _respond(self, status: int, body: bytes) -> None:
        """A plain HTTP response instead of the handshake (403, 500)."""
        self._status = status
        self._sink.send_head(status, [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
        ])
        await self._write(body, True)

    # -- outbound -------------------------------------------------------------------

    def _queue(self, event: Event) -> None:
        """Queue a frame the receive path or a timer must send, and flush it soon."""
        ws = self._ws
        if ws is None or self._ended:
            return
        try:
            self._pending += ws.send(event)
        except LocalProtocolError as exc:  # the connection's state moved on: nothing to send
            log.error_logger.debug("WebSocket frame not sent: %s", exc)
            return
        self._schedule_flush()

    def _request_end(self) -> None:
        self._end_requested = True
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            await self._write(b"", False)
        except ClientDisconnected:
            pass

    async def _write(self, data: bytes, end: bool) -> None:
        """The one way to the sink: pending control frames first, under the lock."""
        async with self._lock:
            if self._ended:
                if self._peer_gone:
                    raise ClientDisconnected("the client disconnected")
                return
            end = end or self._end_requested
            if self._pending:
                data = bytes(self._pending) + data
                self._pending.clear()
            if not data and not end:
                return
            self._ended = end
            try:
                await self._sink.send_body(data, end)
            except StreamClosed:
                self._peer_gone = True
                self._ended = True
                self._deliver_disconnect(CloseReason.ABNORMAL_CLOSURE, "")
                raise ClientDisconnected("the client disconnected") from None

    # -- keepalive --------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        if self._ping_interval > 0:
            loop = asyncio.get_running_loop()
            self._ping_handle = loop.call_later(self._ping_interval, self._send_ping)

    def _send_ping(self) -> None:
        self._ping_handle = None
        if self._state is not WebSocketState.OPEN:
            return
        self._queue(Ping(payload=b"quicserve"))
        loop = asyncio.get_running_loop()
        self._pong_deadline = loop.call_later(self._ping_timeout, self._ping_timed_out)

    def _on_pong(self) -> None:
        if self._pong_deadline is not None:
            self._pong_deadline.cancel()
            self._pong_deadline = None
            self._start_keepalive()

    def _ping_timed_out(self) -> None:
        self._pong_deadline = None
        log.error_logger.info("WebSocket ping timeout: closing %s", self._scope.get("client"))
        if not self._ended:
            self._ended = True
            self._sink.reset(ResetReason.CANCELLED)
        self.abort("ping timeout")

    def _stop_keepalive(self) -> None:
        for handle in (self._ping_handle, self._pong_deadline):
            if handle is not None:
                handle.cancel()
        self._ping_handle = self._pong_deadline = None

    # -- the task -----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._ctx.app(self._scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._cancelled()
            raise
        except Exception as exc:  # the app's failure: logged, then closed below
            self._app_raised(exc)
            await self._finish(CloseReason.INTERNAL_ERROR)
        else:
            await self._finish(CloseReason.NORMAL_CLOSURE)
        finally:
            self._stop_keepalive()
            self._log_access()

    def _app_raised(self, exc: Exception) -> None:
        if exc is self._error:
            return
        if self._peer_gone or isinstance(exc, ClientDisconnected):
            log.error_logger.debug("exception in ASGI application after disconnect", exc_info=exc)
        else:
            log.error_logger.error("Exception in ASGI application", exc_info=exc)

    async def _finish(self, code: int) -> None:
        """The app is done: complete the handshake or the closing handshake."""
        # Nobody reads any more: drop what is queued so that withheld credit
        # cannot keep the peer's close frame from reaching us.
        self._inbox.clear()
        self._unread = 0
        self._settle_credit(0)
        try:
            await self._settle(code)
        except ClientDisconnected:
            pass
        # Bytes held back for an app that is gone are returned to the window.
        self._settle_credit(sum(len(chunk) for chunk in self._early))
        self._early = []

    async def _settle(self, code: int) -> None:
        state = self._state
        if self._peer_gone or self._ended:
            return
        if state is WebSocketState.CONNECTING:
            self._state = WebSocketState.CLOSED
            await self._respond(500, b"Internal Server Error")
        elif state is WebSocketState.DENYING:
            self._state = WebSocketState.CLOSED
            self._ended = True
            self._sink.reset(ResetReason.APP_ERROR)
        else:
            if state is WebSocketState.OPEN:
                await self._close({"type": "websocket.close", "code": int(code)})
            await self._wait_peer_close()
            self._end_requested = True
            await self._write(b"", True)

    async def _wait_peer_close(self) -> None:
        try:
            await asyncio.wait_for(self._peer_closed.wait(), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            log.error_logger.debug("no WebSocket close frame from the peer in time")

    def _cancelled(self) -> None:
        """Graceful deadline passed: going away (1001) if open, else reset."""
        self._stop_keepalive()
        if self._ended or self._peer_gone:
            return
        if self._state is WebSocketState.OPEN:
            self._queue(CloseConnection(code=CloseReason.GOING_AWAY))
            self._state = WebSocketState.CLOSING
            self._request_end()
        else:
            self._ended = True
            self._sink.reset(ResetReason.CANCELLED)

    def _log_protocol_error(self, exc: ASGIProtocolError) -> ASGIProtocolError:
        """Log a broken exchange once; the app's end answers it (500 or 1011)."""
        if self._error is None:
            self._error = exc
            log.error_logger.error("ASGI protocol error: %s", exc)
        return exc

    def _log_access(self) -> None:
        access_log = self._ctx.access_log
        head, conn = self._head, self._conn
        if head is None or conn is None or not access_log.enabled:
            return
        access_log.log(
            client=self._scope.get("client"), method=head.method,
            path=self._scope.get("path", ""), query=self._scope.get("query_string", b""),
            protocol=conn.protocol, status=self._status, size=0,
            duration=self._ctx.clock() - self._started_at, headers=dict(head.headers),
        )

    # -- waiting ------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()

    async def _wait(self) -> None:
        if self._event is None:
            self._event = asyncio.Event()
        self._event.clear()
        await self._event.wait()


def _message_event(payload: str | bytes) -> WsMessage[Any]:
    if isinstance(payload, str):
        return TextMessage(data=payload)
    return BytesMessage(data=payload)


def _valid_close_code(code: int) -> bool:
    """Codes an endpoint may send (RFC 6455 7.4)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )
