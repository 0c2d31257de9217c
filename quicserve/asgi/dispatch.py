"""The stream factory: picks the ASGI adapter for each request and runs it.

Theory of operation
-------------------
:class:`Dispatcher` is the :data:`~quicserve.interfaces.StreamFactory` every
protocol adapter is given.  For each validated request head it returns one
stream object, chosen in this order:

1. ``425 Too Early`` when the request arrived in QUIC 0-RTT data, its method
   is not safe (RFC 9110 9.2.1: anything but GET, HEAD, OPTIONS, TRACE) and
   ``--quic-0rtt-unsafe`` is off (RFC 8470).  The app never sees it.  This is
   decided here, not in the QUIC code, because it is transport-agnostic.
2. ``503 Service Unavailable`` when ``--limit-concurrency`` streams are
   already active.  The app never sees it either.
3. :class:`~quicserve.asgi.websocket.WebSocketStream` for
   ``head.protocol == "websocket"`` (H1 Upgrade, H2/H3 extended CONNECT).
4. :class:`~quicserve.asgi.http.HTTPStream` otherwise.

It never raises for a valid head.  Every stream runs exactly one task, started
by the stream's ``start()`` through :meth:`Dispatcher._spawn`; a stream counts
as *active* from then until its task ends.  The counters in
:class:`~quicserve.interfaces.Statistics` are kept exact: ``streams`` (active
streams) and ``app_tasks`` (active tasks running application code) rise and
fall with the tasks and return to zero when idle; ``requests`` counts every
request dispatched (it only grows; ``--max-requests`` reads it).

Graceful shutdown: ``server.py`` awaits :meth:`wait_idle` (an Event set when
the last task ends, no polling) within ``--graceful-timeout``, then calls
:meth:`cancel_all`; a cancelled stream resets itself with
``ResetReason.CANCELLED``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Coroutine

from .. import log
from ..errors import StreamClosed
from ..interfaces import (
    AppOptions,
    ConnectionInfo,
    RequestHead,
    Statistics,
    StreamHandler,
    StreamSink,
)
from .context import StreamContext
from .http import HTTPStream
from .scope import ProxyPolicy, ScopeBuilder
from .types import ASGIApp
from .websocket import WebSocketStream

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class FixedResponseStream:
    """A stream that answers by itself (503, 425) without running the app.

    The request body is dropped and credited as it arrives so the protocol
    never stalls on it.
    """

    __slots__ = ("_ctx", "_sink", "_status", "_body", "_gone")

    def __init__(self, ctx: StreamContext, sink: StreamSink, *, status: int, body: bytes) -> None:
        self._ctx = ctx
        self._sink = sink
        self._status = status
        self._body = body
        self._gone = False

    def start(self, head: RequestHead, conn: ConnectionInfo) -> None:
        self._ctx.spawn(self._respond(head, conn), False)

    def receive_body(self, data: bytes, more: bool) -> None:
        if data:
            self._sink.credit(len(data))

    def abort(self, reason: str) -> None:
        self._gone = True

    async def _respond(self, head: RequestHead, conn: ConnectionInfo) -> None:
        started = self._ctx.clock()
        if not self._gone:
            self._sink.send_head(self._status, [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(self._body)).encode("ascii")),
            ])
            try:
                await self._sink.send_body(self._body, True)
            except StreamClosed:
                self._gone = True
        access_log = self._ctx.access_log
        if access_log.enabled:
            path, _, query = head.target.partition(b"?")
            access_log.log(
                client=conn.client, method=head.method, path=path.decode("latin-1"),
                query=query, protocol=conn.protocol, status=self._status,
                size=len(self._body), duration=self._ctx.clock() - started,
                headers=dict(head.headers),
            )


class Dispatcher:
    """The :data:`~quicserve.interfaces.StreamFactory` of one server (worker).

    Error handling: ``__call__`` never raises for a valid head.  An exception
    escaping a stream's task (a bug in quicserve, never the app's: streams
    handle those) is logged on ``quicserve.error``.

    Resource handling: one task per active stream, tracked until it ends;
    :meth:`cancel_all` cancels them, :meth:`wait_idle` waits for none to be left.
    """

    def __init__(
        self,
        *,
        app: ASGIApp,
        options: AppOptions,
        state: dict[str, Any],
        stats: Statistics,
        access_log: log.AccessLog,
    ) -> None:
        proxy = ProxyPolicy(options.forwarded_allow_ips) if options.proxy_headers else None
        self._ctx = StreamContext(
            app=app,
            options=options,
            scopes=ScopeBuilder(root_path=options.root_path, proxy=proxy),
            state=state,
            access_log=access_log,
            spawn=self._spawn,
            clock=time.monotonic,
        )
        self._options = options
        self._stats = stats
        self._tasks: set[asyncio.Task[None]] = set()
        self._app_tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __call__(self, head: RequestHead, sink: StreamSink) -> StreamHandler:
        self._stats.requests += 1
        ctx = self._ctx
        if head.early_data and head.method not in SAFE_METHODS and not self._options.quic_0rtt_unsafe:
            return FixedResponseStream(ctx, sink, status=425, body=b"Too Early\n")
        limit = self._options.limit_concurrency
        if limit is not None and len(self._tasks) >= limit:
            return FixedResponseStream(ctx, sink, status=503, body=b"Service Unavailable\n")
        if head.protocol == "websocket":
            return WebSocketStream(ctx, sink)
        return HTTPStream(ctx, sink)

    @property
    def active(self) -> int:
        """Streams whose task is still running."""
        return len(self._tasks)

    @property
    def context(self) -> StreamContext:
        return self._ctx

    async def wait_idle(self) -> None:
        """Return once no stream is active (immediately if none is)."""
        await self._idle.wait()

    def cancel_all(self) -> None:
        """The graceful deadline passed: cancel every stream's task."""
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None], is_app: bool) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        self._stats.streams += 1
        if is_app:
            self._app_tasks.add(task)
            self._stats.app_tasks += 1
        self._idle.clear()
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._stats.streams -= 1
        if task in self._app_tasks:
            self._app_tasks.discard(task)
            self._stats.app_tasks -= 1
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.error_logger.error("stream task failed", exc_info=task.exception())
