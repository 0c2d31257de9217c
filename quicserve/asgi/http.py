"""HTTPStream: one HTTP request/response exchanged with an ASGI application.

Theory of operation
-------------------
One ``HTTPStream`` serves one request on any protocol (HTTP/1.x, HTTP/2,
HTTP/3, hq).  The protocol adapter drives it with three plain calls
(``start``, ``receive_body``, ``abort``) and the stream answers through the
:class:`~quicserve.interfaces.StreamSink` it was built with.  The stream runs
exactly one task: the application (spawned by ``start`` through the
dispatcher, which counts it).

Request side (protocol -> app).  ``receive_body`` never awaits: it appends the
chunk to a buffer and wakes the app if it waits in ``receive()``.  The buffer is
bounded by the protocol, which grants flow-control credit (TCP reading, H2
WINDOW_UPDATE, QUIC MAX_STREAM_DATA) only as the app consumes: ``receive()``
returns everything buffered as one ``http.request`` message and calls
``sink.credit(n)`` for it.  Once the app can no longer read the body (the
response is complete, the app returned), buffered and later chunks are
dropped and credited at once, so a stream that stopped reading cannot hold a
connection-wide window hostage.  ``Expect: 100-continue`` is answered with an
interim ``100`` on the app's first ``receive()``, and only if the body has not
started arriving and no response has begun.  After ``abort`` (peer reset,
connection lost) or once the response is complete, ``receive()`` returns
``http.disconnect``.

Read timeout.  While the app waits in ``receive()`` for more of a body that
has not ended, the client must send some within ``read_timeout`` seconds, or
the stream gives up: ``sink.reset(CANCELLED)`` (H2 RST_STREAM CANCEL, H3
H3_REQUEST_CANCELLED in both directions) and the app gets ``http.disconnect``.
It is enforced here once for H2, H3 and hq; the HTTP/1.x adapter enforces
``read_timeout`` itself (and answers 408 before the app saw the head), so
streams of the protocols in ``_OWN_READ_TIMEOUT`` are left alone.  There is
at most one TimerHandle per stream, armed when the app starts waiting and
nothing earlier is pending, and never cancelled and re-armed per chunk: each
wait only records when it began (``_waiting_since``), and a timer that fires
early (the app woke and waited again since it was armed) re-arms for the
rest, or lapses when the app is no longer waiting.  A request whose body is
already complete when the app reads it never touches the timer.

Response side (app -> protocol) is a state machine, :class:`ResponseState`,
moved only by :meth:`HTTPStream._transition` with the table
``_TRANSITIONS``::

    AWAITING_START --start--> STARTED --body(more)--> STREAMING --body(end)--> DONE
          |  ^                   |                                  \\
          early hint              +--body(end)--> DONE                +--body(end), trailers
                                  +--body(end), trailers--> AWAITING_TRAILERS --trailers(end)--> DONE

``http.response.start`` is held back until the first body message (ASGI
requires it), so an app that fails between the two still gets a clean 500.
Any message that is not valid in the current state raises
:class:`~quicserve.errors.ASGIProtocolError` (naming the state and the
message type) into the app, is logged on ``quicserve.error``, and ends the
exchange: 500 if no head went out yet, ``sink.reset(APP_ERROR)`` otherwise.

Failure handling, in one place (:meth:`HTTPStream._run`):

* the app raises before the head went out -> 500 with a short body;
* the app raises after -> ``sink.reset(APP_ERROR)`` (the protocol closes the
  H1 connection or resets the H2/H3 stream);
* the app returns without a response -> 500; returns mid-body -> reset;
* the client is gone -> ``send()`` raises ``ClientDisconnected`` (an
  ``OSError``, ASGI spec 2.4) and whatever the app raises afterwards is
  logged at debug level only;
* the task is cancelled (graceful-shutdown deadline) -> ``reset(CANCELLED)``.

One access-log line is written when the task ends.

Never: await in ``receive_body``/``abort``; touch the wire; poll.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any, Iterable

from .. import log
from ..errors import ASGIProtocolError, ClientDisconnected, StreamClosed
from ..interfaces import ConnectionInfo, RequestHead, ResetReason, StateEnum, StreamSink
from .context import StreamContext
from .types import Message, Scope

_ERROR_BODY = b"Internal Server Error"
#: ``ConnectionInfo.protocol`` labels whose adapter enforces ``read_timeout``
#: on the request body itself (``protocols/h11.py``).
_OWN_READ_TIMEOUT = frozenset({"HTTP/1.0", "HTTP/1.1"})
#: A read timer that fires this close to its deadline counts as expired.
_TIMER_SLACK = 0.001


class ResponseState(StateEnum):
    AWAITING_START = "awaiting http.response.start"
    #: ``http.response.start`` received; the head waits for the first body message.
    STARTED = "started"
    #: The head went out; more body to come.
    STREAMING = "streaming"
    #: The body is complete; ``http.response.trailers`` were announced.
    AWAITING_TRAILERS = "awaiting trailers"
    DONE = "done"


class _Event(StateEnum):
    START = enum.auto()
    EARLY_HINT = enum.auto()
    BODY_MORE = enum.auto()
    BODY_END = enum.auto()
    BODY_END_BEFORE_TRAILERS = enum.auto()
    TRAILERS_MORE = enum.auto()
    TRAILERS_END = enum.auto()
    #: The server answers 500 itself (no head went out yet).
    SERVER_ERROR = enum.auto()
    #: The server resets the stream (the head went out).
    RESET = enum.auto()


_S = ResponseState
_TRANSITIONS: dict[tuple[ResponseState, _Event], ResponseState] = {
    (_S.AWAITING_START, _Event.START): _S.STARTED,
    (_S.AWAITING_START, _Event.EARLY_HINT): _S.AWAITING_START,
    (_S.AWAITING_START, _Event.SERVER_ERROR): _S.DONE,
    (_S.AWAITING_START, _Event.RESET): _S.DONE,
    (_S.STARTED, _Event.BODY_MORE): _S.STREAMING,
    (_S.STARTED, _Event.BODY_END): _S.DONE,
    (_S.STARTED, _Event.BODY_END_BEFORE_TRAILERS): _S.AWAITING_TRAILERS,
    (_S.STARTED, _Event.SERVER_ERROR): _S.DONE,
    (_S.STARTED, _Event.RESET): _S.DONE,
    (_S.STREAMING, _Event.BODY_MORE): _S.STREAMING,
    (_S.STREAMING, _Event.BODY_END): _S.DONE,
    (_S.STREAMING, _Event.BODY_END_BEFORE_TRAILERS): _S.AWAITING_TRAILERS,
    (_S.STREAMING, _Event.RESET): _S.DONE,
    (_S.AWAITING_TRAILERS, _Event.TRAILERS_MORE): _S.AWAITING_TRAILERS,
    (_S.AWAITING_TRAILERS, _Event.TRAILERS_END): _S.DONE,
    (_S.AWAITING_TRAILERS, _Event.RESET): _S.DONE,
}


def response_headers(raw: Iterable[Any], state: str, message_type: str) -> list[tuple[bytes, bytes]]:
    """Validate an app's header list into lowercase ``(bytes, bytes)`` pairs."""
    headers: list[tuple[bytes, bytes]] = []
    try:
        for name, value in raw:
            if type(name) is not bytes or type(value) is not bytes:
                raise TypeError("header names and values must be bytes")
            headers.append((name.lower(), value))
    except (TypeError, ValueError) as exc:
        raise ASGIProtocolError(state, f"{message_type} ({exc})") from None
    return headers


def _promised_length(status: int, length: bytes | None, head_only: bool) -> int | None:
    """The body length the app's (first) Content-Length header promises, when
    it must be honoured (never for HEAD, 204 and 304, whose bodies are empty
    anyway)."""
    if length is None or head_only or status in (204, 304):
        return None
    return int(length) if length.isdigit() else None


def _start_headers(raw: Iterable[Any], state: ResponseState) -> tuple[list[tuple[bytes, bytes]],
                                                                        bytes | None]:
    """:func:`response_headers` for ``http.response.start``, also returning
    the first Content-Length value (one pass over the app's list)."""
    headers: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    try:
        for name, value in raw:
            if type(name) is not bytes or type(value) is not bytes:
                raise TypeError("header names and values must be bytes")
            name = name.lower()
            if name == b"content-length" and length is None:
                length = value
            headers.append((name, value))
    except (TypeError, ValueError) as exc:
        raise ASGIProtocolError(state.name, f"http.response.start ({exc})") from None
    return headers, length


class HTTPStream:
    """One request on any protocol, served by the ASGI app.

    Error handling: see the module docstring; nothing raised by the app
    escapes the stream's task, and ``receive_body``/``abort`` never raise.

    Resource handling: the stream owns one task (counted by the dispatcher)
    and a request-body buffer bounded by the protocol's flow-control credit;
    both end when the app returns or is cancelled.
    """

    __slots__ = (
        "_ctx", "_sink", "_head", "_conn", "_scope", "_state", "_status", "_headers",
        "_trailers", "_pending_trailers", "_body", "_body_complete", "_final_delivered",
        "_disconnected", "_app_done", "_expect_continue", "_event", "_error",
        "_started_at", "_sent_status", "_sent_bytes", "_head_only", "_remaining",
        "_read_timer", "_waiting_since",
    )

    def __init__(self, ctx: StreamContext, sink: StreamSink) -> None:
        self._ctx = ctx
        self._sink = sink
        self._head: RequestHead | None = None
        self._conn: ConnectionInfo | None = None
        self._scope: Scope = {}
        self._state = ResponseState.AWAITING_START
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers = False
        self._pending_trailers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_complete = False
        self._final_delivered = False
        self._disconnected = False
        self._app_done = False
        self._expect_continue = False
        self._event: asyncio.Event | None = None
        #: The ASGIProtocolError already logged and answered, if any.
        self._error: ASGIProtocolError | None = None
        self._started_at = 0.0
        self._sent_status = 0
        self._sent_bytes = 0
        #: A HEAD request: the app's body is counted but never written.
        self._head_only = False
        #: Body bytes the app's Content-Length still promises (None: no promise).
        self._remaining: int | None = None
        #: The read-timeout timer, while one is pending (see the module docstring).
        self._read_timer: asyncio.TimerHandle | None = None
        #: ``loop.time()`` when the app began waiting for body; None when it is not.
        self._waiting_since: float | None = None

    # -- protocol -> stream ----------------------------------------------------

    def start(self, head: RequestHead, conn: ConnectionInfo) -> None:
        self._head = head
        self._conn = conn
        self._started_at = self._ctx.clock()
        self._head_only = head.method == "HEAD"
        self._scope = self._ctx.scopes.http(head, conn, self._ctx.state)
        # HTTP/1.0 clients take no 100; the header is looked for on the first
        # receive() (most GETs never call it).
        self._expect_continue = conn.http_version != "1.0"
        self._ctx.spawn(self._run(), True)

    def receive_body(self, data: bytes, more: bool) -> None:
        if not more:
            self._body_complete = True
        if self._app_done or self._disconnected or self._state is ResponseState.DONE:
            # Nobody will read it: drop it and reopen the window at once.
            if data:
                self._sink.credit(len(data))
            return
        if data:
            self._body.append(data)
        self._wake()

    def abort(self, reason: str) -> None:
        self._disconnected = True
        self._wake()

    # -- the app's receive() and send() --------------------------------------------

    async def receive(self) -> Message:
        if self._expect_continue:
            self._send_continue()
        while True:
            if self._disconnected or self._state is ResponseState.DONE:
                return {"type": "http.disconnect"}
            if self._body:
                return self._pop_body()
            if self._body_complete and not self._final_delivered:
                self._final_delivered = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self._wait()

    async def send(self, message: Message) -> None:
        if self._disconnected:
            raise ClientDisconnected("the client disconnected")
        try:
            kind = message.get("type")
            if kind == "http.response.body":
                await self._send_body(message)
            elif kind == "http.response.start":
                self._start_response(message)
            elif kind == "http.response.trailers":
                self._send_trailers(message)
            elif kind == "http.response.early_hint":
                self._send_early_hint(message)
            else:
                raise ASGIProtocolError(self._state.name, kind)
        except ASGIProtocolError as exc:
            raise await self._fail_protocol(exc) from None

    # -- response side ------------------------------------------------------------------

    def _transition(self, event: _Event, message_type: str) -> ResponseState:
        """Move the response state machine; the previous state is returned."""
        previous = self._state
        try:
            self._state = _TRANSITIONS[previous, event]
        except KeyError:
            raise ASGIProtocolError(previous.name, message_type) from None
        return previous

    def _start_response(self, message: Message) -> None:
        kind = "http.response.start"
        status = message.get("status")
        if type(status) is not int or not 200 <= status <= 599:
            raise ASGIProtocolError(self._state.name, f"{kind} (bad status {status!r})")
        headers, length = _start_headers(message.get("headers", ()), self._state)
        self._transition(_Event.START, kind)
        self._status = status
        self._headers = headers
        self._trailers = bool(message.get("trailers", False))
        self._remaining = _promised_length(status, length, self._head_only)

    async def _send_body(self, message: Message) -> None:
        kind = "http.response.body"
        body = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if more:
            event = _Event.BODY_MORE
        elif self._trailers:
            event = _Event.BODY_END_BEFORE_TRAILERS
        else:
            event = _Event.BODY_END
        if type(body) is not bytes:
            body = self._as_bytes(body, kind)
        if self._remaining is not None:
            self._check_length(len(body), more, kind)
        previous = self._transition(event, kind)
        if previous is ResponseState.STARTED:
            self._sent_status = self._status
            self._sink.send_head(self._status, self._headers)
        if self._head_only:
            body = b""
        if body or event is _Event.BODY_END or previous is ResponseState.STARTED:
            self._sent_bytes += len(body)
            try:  # (inline rather than a helper coroutine: one frame less per body)
                await self._sink.send_body(body, event is _Event.BODY_END)
            except StreamClosed:
                self._disconnected = True
                self._wake()
                raise ClientDisconnected("the client disconnected") from None
        if self._state is ResponseState.DONE:
            self._response_done()

    def _check_length(self, size: int, more: bool, kind: str) -> None:
        """Hold the app to its Content-Length, so that one bad response resets
        its own stream on every protocol instead of breaking the connection."""
        promised = self._remaining if self._remaining is not None else 0
        if size > promised or (not more and size < promised):
            raise ASGIProtocolError(
                self._state.name,
                f"{kind} (body does not match content-length: "
                f"{'more' if size > promised else 'less'} than declared)",
            )
        self._remaining = promised - size

    def _send_trailers(self, message: Message) -> None:
        kind = "http.response.trailers"
        more = bool(message.get("more_trailers", False))
        headers = response_headers(message.get("headers", ()), self._state.name, kind)
        self._transition(_Event.TRAILERS_MORE if more else _Event.TRAILERS_END, kind)
        self._pending_trailers.extend(headers)
        if not more:
            self._sink.send_trailers(self._pending_trailers)
            self._response_done()

    def _send_early_hint(self, message: Message) -> None:
        kind = "http.response.early_hint"
        links = list(message.get("links", ()))
        headers = [(b"link", link) for link in links if type(link) is bytes]
        if len(headers) != len(links):
            raise ASGIProtocolError(self._state.name, f"{kind} (links must be bytes)")
        self._transition(_Event.EARLY_HINT, kind)
        if headers and kind in self._scope["extensions"]:
            self._sink.send_head(103, headers)

    def _as_bytes(self, body: object, kind: str) -> bytes:
        if isinstance(body, (bytearray, memoryview)):
            return bytes(body)
        raise ASGIProtocolError(self._state.name, f"{kind} (body must be bytes)")

    def _response_done(self) -> None:
        """The response is complete: the body can no longer be read."""
        self._drop_body()
        self._wake()

    # -- failure ------------------------------------------------------------------------

    async def _fail_protocol(self, exc: ASGIProtocolError) -> ASGIProtocolError:
        """Log a broken ASGI exchange once, answer it, and return the error to raise."""
        if self._error is None:
            self._error = exc
            log.error_logger.error("ASGI protocol error: %s", exc)
            await self._answer_failure()
        return exc

    async def _answer_failure(self) -> None:
        """500 when no head went out yet, else reset the stream."""
        if self._disconnected:
            return
        state = self._state
        if state in (ResponseState.AWAITING_START, ResponseState.STARTED):
            self._transition(_Event.SERVER_ERROR, "server error")
            await self._send_error_response()
        elif state is not ResponseState.DONE:
            self._transition(_Event.RESET, "server reset")
            self._sink.reset(ResetReason.APP_ERROR)
        self._response_done()

    async def _send_error_response(self) -> None:
        self._sent_status = 500
        self._sent_bytes = len(_ERROR_BODY)
        self._sink.send_head(500, [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(_ERROR_BODY)).encode("ascii")),
        ])
        try:
            await self._sink.send_body(_ERROR_BODY, True)
        except StreamClosed:
            self._disconnected = True

    # -- the task -----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._ctx.app(self._scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._cancelled()
            raise
        except Exception as exc:  # the app's failure: logged and answered below
            await self._app_raised(exc)
        else:
            if self._error is not None or not (
                    self._state is ResponseState.DONE or self._disconnected):
                await self._app_returned()  # (the usual ending needs no coroutine)
        finally:
            self._app_done = True
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None
            self._drop_body()
            self._log_access()

    async def _app_raised(self, exc: Exception) -> None:
        if self._error is not None:
            if exc is not self._error:
                log.error_logger.debug("exception after an ASGI protocol error", exc_info=exc)
            await self._answer_failure()
        elif self._disconnected:
            log.error_logger.debug("exception in ASGI application after disconnect", exc_info=exc)
        else:
            log.error_logger.error("Exception in ASGI application", exc_info=exc)
            await self._answer_failure()

    async def _app_returned(self) -> None:
        if self._error is not None:
            await self._answer_failure()
            return
        if self._state is ResponseState.DONE or self._disconnected:
            return
        if self._state is ResponseState.AWAITING_START:
            log.error_logger.error("ASGI callable returned without starting a response")
        else:
            log.error_logger.error(
                "ASGI callable returned without completing the response (state %s)",
                self._state.name,
            )
        await self._answer_failure()

    def _cancelled(self) -> None:
        if self._state is not ResponseState.DONE and not self._disconnected:
            self._transition(_Event.RESET, "cancelled")
            self._sink.reset(ResetReason.CANCELLED)

    def _log_access(self) -> None:
        access_log = self._ctx.access_log
        head = self._head
        if head is None or self._conn is None or not access_log.enabled:
            return
        access_log.log(
            client=self._scope.get("client"),
            method=head.method,
            path=self._scope.get("path", ""),
            query=self._scope.get("query_string", b""),
            protocol=self._conn.protocol,
            status=self._sent_status,
            size=self._sent_bytes,
            duration=self._ctx.clock() - self._started_at,
            headers=dict(head.headers),
        )

    # -- request body buffer ------------------------------------------------------------

    def _pop_body(self) -> Message:
        chunks = self._body
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        more = not self._body_complete
        if not more:
            self._final_delivered = True
        self._sink.credit(len(data))
        return {"type": "http.request", "body": data, "more_body": more}

    def _drop_body(self) -> None:
        if self._body:
            dropped = sum(len(chunk) for chunk in self._body)
            self._body.clear()
            self._sink.credit(dropped)

    def _send_continue(self) -> None:
        """First receive(): ask for the body if the client waits for a 100
        and none of the body has arrived yet."""
        self._expect_continue = False
        if (self._state is ResponseState.AWAITING_START and not self._body
                and not self._body_complete and not self._disconnected
                and self._head is not None and any(
                    n == b"expect" and v.lower() == b"100-continue"
                    for n, v in self._head.headers)):
            self._sink.send_head(100, [])

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()

    async def _wait(self) -> None:
        """Wait for ``_wake``; under the read timeout while body is due."""
        event = self._event
        if event is None:
            event = self._event = asyncio.Event()
        event.clear()
        conn = self._conn
        timeout = self._ctx.options.read_timeout
        if (self._body_complete or timeout <= 0 or conn is None
                or conn.protocol in _OWN_READ_TIMEOUT):
            await event.wait()
            return
        loop = asyncio.get_running_loop()
        self._waiting_since = loop.time()
        if self._read_timer is None:
            self._read_timer = loop.call_later(timeout, self._read_timer_fired)
        try:
            await event.wait()
        finally:
            self._waiting_since = None

    def _read_timer_fired(self) -> None:
        self._read_timer = None
        since = self._waiting_since
        if since is None or self._disconnected or self._app_done:
            return  # the app is not waiting now; its next wait arms anew
        loop = asyncio.get_running_loop()
        remaining = since + self._ctx.options.read_timeout - loop.time()
        if remaining > _TIMER_SLACK:
            self._read_timer = loop.call_later(remaining, self._read_timer_fired)
            return
        self._read_timed_out()

    def _read_timed_out(self) -> None:
        """No body within read_timeout while the app waited: give the stream up."""
        log.error_logger.debug("request body read timeout (%s s): stream reset",
                               self._ctx.options.read_timeout)
        if self._state is not ResponseState.DONE:
            self._transition(_Event.RESET, "read timeout")
            self._sink.reset(ResetReason.CANCELLED)
        self._disconnected = True
        self._wake()
