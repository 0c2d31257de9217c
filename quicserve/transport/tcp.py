"""TCP listener and connections: TLS + ALPN -> the HTTP/1.1 or HTTP/2 adapter.

Theory of operation
-------------------
:class:`TcpListener` serves one listening socket (opened by ``server.py`` or
the supervisor).  On uvloop it uses ``loop.create_server``; libuv accepts and,
out of file descriptors, sheds connections with its reserve descriptor.  On
asyncio's stock loop, whose accept loop spins on EMFILE, :class:`_Acceptor`
accepts instead and backs off for a second.  Either way the TLS handshake must
finish within ``tls_handshake_timeout`` (a client that connects and says
nothing is dropped then).

Each accepted connection gets one :class:`TcpConnection`: the
``asyncio.Protocol`` for the loop and, for the adapter, the
:class:`~quicserve.protocols.base.ByteTransport`.  It picks the adapter from
the negotiated ALPN (``"h2"`` -> ``adapters["h2"]``, anything else, or
cleartext -> ``adapters["http/1.1"]``) and builds the connection's
:class:`ConnectionInfo` once.  When ``data_received`` returns
:class:`SwitchTo` (h2c), it builds ``adapters[switch.protocol]`` and feeds it
``switch.data``.

What the transport owns:

* Write backpressure: asyncio calls ``pause_writing``/``resume_writing``
  around its buffer's high/low-water marks; ``wait_writable`` waits on one
  future per waiting writer (no polling) and raises ``StreamClosed`` when the
  connection is lost.  A writer left waiting ``--write-timeout`` seconds (the
  client reads nothing) has the connection reset (SO_LINGER 0, so the kernel
  drops what it still holds for that client).
* Read backpressure: ``pause_reading``/``resume_reading`` on the transport.
* One send per loop turn: ``write`` gathers what the adapters write in a turn
  and a ``call_soon`` callback hands it to asyncio at once (a WebSocket echo
  of a read full of messages costs one send, not one per message:
  42 -> 29 us of server CPU per message; HTTP/1.1 request/response is
  unchanged).  Past 64 KiB gathered it goes out at once, so asyncio's
  buffer, and so ``pause_writing``, sees big writes without delay;
  ``close`` sends what was gathered first.
* The one timer of the connection.  ``set_timeout`` only moves a deadline;
  the loop timer is rescheduled only when the deadline comes *earlier*, and
  on expiry a deadline that moved later re-arms it.  Keep-alive traffic
  therefore costs no timer churn per request.
* ``Statistics.tcp_connections``: +1 in ``connection_made``, -1 in
  ``connection_lost``, so it is exact (a connection that fails its TLS
  handshake is never made and never counted).

Never: parse HTTP, import ``asgi/``, or await on the receive path.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import itertools
import socket
import ssl
import struct
from typing import Any, Callable, cast

from .. import log
from ..errors import StreamClosed
from ..interfaces import ConnectionContext, ConnectionInfo
from ..protocols.base import AdapterFactories, ByteProtocol, SwitchTo
from .tlsinfo import ssl_tls_info

#: ConnectionInfo (http_version, protocol label) by adapter key.
_VERSIONS = {"h2": ("2", "HTTP/2"), "http/1.1": ("1.1", "HTTP/1.1")}
_ids = itertools.count(1)
#: A timer that fires this close to its deadline counts as expired.
_TIMER_SLACK = 0.001
#: Bytes gathered for one end-of-turn write before they go out at once.
_COALESCE_LIMIT = 65536


class TcpListener:
    """Serves one listening TCP (or unix) socket.

    Error handling: errors of one connection never reach the listener; a
    failed TLS handshake or an accept error is logged by the loop and the
    listener keeps serving.

    Resource handling: the socket is owned by the server once ``start`` ran
    (``stop_accepting`` closes it in this process); connections are tracked
    until ``connection_lost`` so ``wait_closed`` and ``abort`` reach them all.
    """

    def __init__(
        self,
        *,
        sock: socket.socket,
        ctx: ConnectionContext,
        adapters: AdapterFactories,
        ssl_context: ssl.SSLContext | None,
        tls_handshake_timeout: float,
        keep_alive: float,
        backlog: int = 2048,
        server_cert: str | None = None,
    ) -> None:
        if "http/1.1" not in adapters:
            raise ValueError("TcpListener needs an 'http/1.1' adapter")
        self.ctx = ctx
        self.adapters = adapters
        self.ssl_context = ssl_context
        #: The PEM certificate ``ssl_context`` presents (the "tls" extension's
        #: ``server_cert``), or None when unknown.
        self.server_cert = server_cert
        #: Kept for the server's logs; HTTP keep-alive is enforced by the
        #: adapters (``ctx.options.keep_alive``), which arm the idle timer as
        #: soon as a connection is made.
        self.keep_alive = keep_alive
        self._sock = sock
        self._tls_handshake_timeout = tls_handshake_timeout
        self._backlog = backlog
        self._server: asyncio.base_events.Server | None = None
        self._acceptor: _Acceptor | None = None
        #: Accepted sockets being set up (TLS handshake) on the stock loop.
        self._handshakes: set[asyncio.Task[None]] = set()
        self._connections: set[TcpConnection] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._addresses = [_address(sock)]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
            # The stock loop's accept loop mishandles EMFILE (see _Acceptor).
            self._acceptor = _Acceptor(loop=loop, sock=self._sock, on_accept=self._accepted)
            self._acceptor.start()
            return
        kwargs: dict[str, Any] = {}
        if self.ssl_context is not None:
            kwargs["ssl"] = self.ssl_context
            kwargs["ssl_handshake_timeout"] = self._tls_handshake_timeout
        self._server = await loop.create_server(
            self._new_connection, sock=self._sock, backlog=self._backlog, **kwargs)

    # -- Listener -----------------------------------------------------------------

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._acceptor is not None:
            self._acceptor.close()

    def shutdown(self) -> None:
        for connection in list(self._connections):
            connection.shutdown()

    async def wait_closed(self) -> None:
        await self._all_closed.wait()

    def abort(self) -> None:
        for task in list(self._handshakes):
            task.cancel()
        for connection in list(self._connections):
            connection.abort()

    @property
    def addresses(self) -> list[tuple[str, int] | str]:
        return list(self._addresses)

    @property
    def connections(self) -> int:
        return len(self._connections)

    # -- connection bookkeeping ----------------------------------------------------

    def _new_connection(self) -> TcpConnection:
        return TcpConnection(self)

    def _accepted(self, sock: socket.socket) -> None:
        """A socket from :class:`_Acceptor`: set it up (TLS handshake) as a task,
        as ``create_server`` would."""
        task = asyncio.get_running_loop().create_task(self._set_up(sock))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _set_up(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.ssl_context is None:
                await loop.connect_accepted_socket(self._new_connection, sock)
            else:
                await loop.connect_accepted_socket(
                    self._new_connection, sock, ssl=self.ssl_context,
                    ssl_handshake_timeout=self._tls_handshake_timeout)
        except OSError as exc:  # includes ssl.SSLError and the handshake timeout
            log.error_logger.debug("TCP connection setup failed: %s", exc)
            sock.close()

    def connection_made(self, connection: TcpConnection) -> None:
        self._connections.add(connection)
        self._all_closed.clear()
        self.ctx.stats.tcp_connections += 1

    def connection_lost(self, connection: TcpConnection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self.ctx.stats.tcp_connections -= 1
            if not self._connections:
                self._all_closed.set()


class _Acceptor:
    """Accepts connections on asyncio's stock (selector) loop, backing off
    when the process runs out of file descriptors.

    asyncio's own accept loop (CPython 3.10-3.12) does not stop after EMFILE:
    within one readiness event it calls ``accept()`` up to ``backlog`` times,
    logging and scheduling a retry for each failure, which starves the loop
    (measured: 20,000 log records and no request served within 5 s).  Here
    the first EMFILE/ENFILE/ENOBUFS/ENOMEM stops accepting for
    ``ACCEPT_RETRY_DELAY`` seconds with one warning; pending connections wait
    in the kernel backlog meanwhile.  (uvloop is fine as it is: libuv sheds
    connections with a reserve descriptor, so ``create_server`` is used there.)
    """

    #: Connections accepted per readiness event, so one listener cannot
    #: monopolise the loop.
    BATCH = 64
    ACCEPT_RETRY_DELAY = 1.0
    _RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

    def __init__(self, *, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 on_accept: Callable[[socket.socket], None]) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._on_accept = on_accept
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        sock.setblocking(False)

    def start(self) -> None:
        self._retry = None
        if not self._closed:
            self._loop.add_reader(self._fd, self._accept)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        self._loop.remove_reader(self._fd)
        self._sock.close()

    def _accept(self) -> None:
        for _ in range(self.BATCH):
            try:
                conn, _address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._failed(exc)
                return
            conn.setblocking(False)
            self._on_accept(conn)

    def _failed(self, exc: OSError) -> None:
        if exc.errno in self._RESOURCE_ERRORS:
            log.error_logger.warning(
                "accept() failed (%s); not accepting for %.1f s", exc.strerror,
                self.ACCEPT_RETRY_DELAY)
        else:
            log.error_logger.error("accept() failed: %s", exc)
        self._loop.remove_reader(self._fd)
        self._retry = self._loop.call_later(self.ACCEPT_RETRY_DELAY, self.start)


def _address(sock: socket.socket) -> tuple[str, int] | str:
    name = sock.getsockname()
    if isinstance(name, (str, bytes)):
        return name.decode() if isinstance(name, bytes) else name
    return (name[0], name[1])


class TcpConnection(asyncio.Protocol):
    """One TCP connection: the loop's protocol and the adapter's transport."""

    __slots__ = (
        "_listener", "_loop", "_transport", "_adapter", "_info", "_closed",
        "_write_paused", "_waiters", "_timer", "_deadline", "_pending", "_pending_size",
    )

    def __init__(self, listener: TcpListener) -> None:
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._adapter: ByteProtocol | None = None
        self._info: ConnectionInfo | None = None
        self._closed = False
        self._write_paused = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # stream server
        self._listener.connection_made(self)
        key = "http/1.1"
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2" \
                and "h2" in self._listener.adapters:
            key = "h2"
        self._info = _connection_info(transport, ssl_object, self._listener.server_cert)
        self._adapter = self._build(key, None)

    def data_received(self, data: bytes) -> None:
        adapter = self._adapter
        if adapter is None:
            return
        switch = adapter.data_received(data)
        if switch is not None:
            self._switch(switch)

    def eof_received(self) -> bool | None:
        if self._adapter is not None:
            self._adapter.eof_received()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = None
        self._fail_waiters()
        try:
            if self._adapter is not None:
                self._adapter.connection_lost()  # streams hear http.disconnect first
        finally:
            self._listener.connection_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # -- ByteTransport ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not self._closed and not transport.is_closing():
            pending = self._pending
            if not pending:
                self._loop.call_soon(self._write_pending)
            pending.append(data)
            self._pending_size += len(data)
            if self._pending_size >= _COALESCE_LIMIT:
                self._write_pending()  # big writes reach asyncio now: backpressure stays exact

    def _write_pending(self) -> None:
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._pending_size = 0
        transport = self._transport
        if transport is not None and not self._closed and not transport.is_closing():
            transport.write(data)

    def close(self) -> None:
        self._write_pending()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    async def wait_writable(self) -> None:
        if self._closed:
            raise StreamClosed("the connection is closed")
        if not self._write_paused:
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        timeout = self._listener.ctx.options.write_timeout
        # (one timer per blocked write, never on the fast path above)
        expiry = self._loop.call_later(timeout, self._write_timed_out, waiter)
        try:
            await waiter
        finally:
            expiry.cancel()

    def _write_timed_out(self, waiter: asyncio.Future[None]) -> None:
        """The client has not read for ``--write-timeout`` seconds while a
        write waits: drop the connection (its streams hear a disconnect)."""
        if waiter.done() or self._closed:
            return
        log.error_logger.info("closing a TCP connection from %s: the client read nothing "
                              "for %g s (--write-timeout)",
                              self._info.client if self._info is not None else "?",
                              self._listener.ctx.options.write_timeout)
        # An RST now, not a FIN queued behind megabytes the kernel would go
        # on offering to a client that does not read.
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except (OSError, AttributeError):  # (a loop's socket stand-in may refuse)
                pass
        self.abort()

    def set_timeout(self, seconds: float | None) -> None:
        if seconds is None:
            self._deadline = None
            return
        deadline = self._loop.time() + seconds
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline + _TIMER_SLACK:
            if timer is not None:
                timer.cancel()
            if not self._closed:
                self._timer = self._loop.call_at(deadline, self._on_timer)

    @property
    def closing(self) -> bool:
        return self._closed or self._transport is None or self._transport.is_closing()

    # -- for the listener ---------------------------------------------------------------

    def shutdown(self) -> None:
        if self._adapter is not None:
            self._adapter.shutdown()

    # -- internals ------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._closed:
            return
        if deadline - self._loop.time() > _TIMER_SLACK:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        self._deadline = None
        if self._adapter is not None:
            self._adapter.timeout()

    def _build(self, key: str, switch: SwitchTo | None) -> ByteProtocol:
        info = self._info
        assert info is not None  # set in connection_made, before any build
        version, label = _VERSIONS.get(key, ("1.1", key))
        if info.http_version != version:
            info = _with_version(info, version, label)
        factory = self._listener.adapters[key]
        return factory(ctx=self._listener.ctx, transport=self, conn=info, switch=switch)

    def _switch(self, switch: SwitchTo) -> None:
        """Hand the connection to the adapter the switch names (h2c)."""
        if switch.protocol not in self._listener.adapters:
            log.error_logger.warning("no %r adapter for a protocol switch; closing", switch.protocol)
            self.abort()
            return
        self._adapter = adapter = self._build(switch.protocol, switch)
        self.resume_reading()
        if switch.data and adapter.data_received(switch.data) is not None:
            log.error_logger.warning("nested protocol switch refused; closing")
            self.abort()

    def _fail_waiters(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_exception(StreamClosed("the connection was lost"))
                # Nobody may be awaiting it any more (cancelled writer).
                waiter.exception()


def _with_version(info: ConnectionInfo, version: str, label: str) -> ConnectionInfo:
    return ConnectionInfo(
        http_version=version, protocol=label, scheme=info.scheme, client=info.client,
        server=info.server, secure=info.secure, connection_id=info.connection_id,
        client_cert=info.client_cert, extensions=info.extensions, tls=info.tls,
    )


def _connection_info(transport: asyncio.Transport, ssl_object: Any,
                     server_cert: str | None = None) -> ConnectionInfo:
    sockname = transport.get_extra_info("sockname")
    peername = transport.get_extra_info("peername")
    client: tuple[str, int] | None = None
    server: tuple[str, int | None] | None
    if isinstance(sockname, (str, bytes)) or sockname is None:
        # A unix socket: the peer has no address; the server is its path.
        path = sockname.decode() if isinstance(sockname, bytes) else sockname
        server = (path, None) if path else None
    else:
        server = (sockname[0], sockname[1])
        if isinstance(peername, tuple) and len(peername) >= 2:
            client = (peername[0], peername[1])
    secure = ssl_object is not None
    return ConnectionInfo(
        http_version="1.1",
        protocol="HTTP/1.1",
        scheme="https" if secure else "http",
        client=client,
        server=server,
        secure=secure,
        connection_id=f"tcp-{next(_ids)}",
        client_cert=_client_cert(ssl_object),
        extensions=("http.response.trailers",),
        tls=ssl_tls_info(ssl_object, server_cert=server_cert) if ssl_object is not None else None,
    )


def _client_cert(ssl_object: Any) -> tuple[tuple[tuple[str, str], ...], ...] | None:
    """The verified peer certificate's subject, or None."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None  # no certificate, or not verified (CERT_NONE)
    subject = cert.get("subject")
    return tuple(subject) if subject else None
