"""The contract where the wire protocols meet the ASGI adapters.

Theory of operation
-------------------
Every protocol adapter (``protocols/h11.py``, ``h2.py``, ``h3.py``, ``hq.py``)
turns bytes into *streams*: one request, or one WebSocket, at a time.  Every
stream is handed to the same ASGI adapters in ``asgi/`` through two small
interfaces defined here, so that protocol code never speaks ASGI and ASGI code
never knows the wire:

``protocol -> stream`` (:class:`StreamHandler`, implemented in ``asgi/``)::

    stream = ctx.stream_factory(head, sink)
    stream.start(head, conn)            # spawns the application
    stream.receive_body(data, more)     # more=False with (or after) the last chunk
    stream.abort(reason)                # peer reset / connection lost

``stream -> protocol`` (:class:`StreamSink`, implemented in ``protocols/``)::

    sink.send_head(status, headers)     # 1xx informational heads too
    await sink.send_body(data, end)     # returns once the protocol can take more
    sink.send_trailers(headers)         # ends the stream
    sink.reset(reason)                  # the app failed after the head was sent
    sink.credit(n)                      # the app consumed n body bytes

These are plain method calls, not event objects: they sit on the per-chunk hot
path.

Invariants:

* ``receive_body`` never blocks and never awaits.  A stream buffers what it is
  given; the protocol bounds that buffer by withholding flow-control credit
  until ``sink.credit(n)`` reopens it (TCP: stop reading; H2/H3: withhold
  WINDOW_UPDATE / MAX_STREAM_DATA).
* ``send_body`` is the *only* awaiting call.  It waits for write capacity
  (socket buffer, H2 window, QUIC stream buffer below its high-water mark) and
  raises :class:`quicserve.errors.StreamClosed` once the stream is gone.
* WebSockets use the same contract.  The stream's head is marked with
  ``head.protocol == "websocket"`` (H1 ``Upgrade``, or extended CONNECT on
  H2/H3).  ``send_head(200, headers)`` accepts it: the protocol turns that into
  ``101 Switching Protocols`` on HTTP/1.1 and ``200`` on H2/H3.  After that the
  body in both directions is the raw WebSocket byte stream, which
  ``asgi/websocket.py`` frames with wsproto.  Any other status denies it.

This module is a leaf: it imports nothing of quicserve.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

#: Header lists: names are lowercase bytes, values bytes, order preserved.
Headers = Sequence[tuple[bytes, bytes]]
Address = tuple[str, int]


class StateEnum(enum.Enum):
    """Base of the protocols' and ASGI streams' state-machine enums.

    Members are singletons compared by identity, so they hash by identity
    too: Enum's own ``__hash__`` is a Python-level call, paid on every
    transition-table lookup and set membership test of every request.
    """

    __hash__ = object.__hash__


class ResetReason(enum.Enum):
    """Why a stream is cut short; each protocol maps it to its own wire code."""

    #: The application raised, or broke the ASGI protocol, after the head went out.
    APP_ERROR = "app_error"
    #: The server gave up on the stream (timeout, shutdown deadline).
    CANCELLED = "cancelled"
    #: The request was refused before the application saw it.
    REFUSED = "refused"


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsInfo:
    """A connection's TLS session, as the ASGI "tls" extension reports it.

    Computed once per connection by the transport (``transport/tlsinfo.py``
    for TCP, ``quic/tlsinfo.py`` for QUIC) and shared by its requests.
    """

    #: The IANA version number (0x0303 TLS 1.2, 0x0304 TLS 1.3), None if unknown.
    tls_version: int | None
    #: The IANA cipher suite number (0x1301 TLS_AES_128_GCM_SHA256), None if unknown.
    cipher_suite: int | None
    #: The server's own certificate in PEM, None when the transport cannot tell.
    server_cert: str | None = None
    #: The verified client certificate chain in PEM, leaf first; empty without one.
    client_cert_chain: tuple[str, ...] = ()
    #: The client certificate's subject as an RFC 4514 string.
    client_cert_name: str | None = None
    #: Why the client certificate did not verify (None: verified, or none sent).
    client_cert_error: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What a stream knows about the connection that carries it.

    Built per request, so after a QUIC migration a new request sees the path
    the client uses now.
    """

    #: The ASGI ``http_version``: "1.0", "1.1", "2" or "3".
    http_version: str
    #: Label for logs: "HTTP/1.1", "HTTP/2", "HTTP/3", "hq-interop".
    protocol: str
    #: "http" or "https" (WebSocket scopes turn these into "ws"/"wss").
    scheme: str
    client: Address | None
    server: tuple[str, int | None] | None
    #: True when the bytes were protected by TLS (TCP) or QUIC.
    secure: bool = False
    #: An id for logs: the QUIC connection ID in hex, or a TCP connection counter.
    connection_id: str = ""
    #: The peer certificate's subject, when client certificates are verified.
    client_cert: tuple[tuple[tuple[str, str], ...], ...] | None = None
    #: Extra ASGI extensions the protocol offers (e.g. "http.response.trailers").
    extensions: tuple[str, ...] = ()
    #: The TLS session (ASGI "tls" extension), computed once per connection;
    #: None on cleartext connections.
    tls: TlsInfo | None = None


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request head that ``protocols/head.py`` has validated.

    ``target`` is the raw request-target (path and query, as sent, never
    decoded).  ``headers`` carries no pseudo-headers and every name in it is
    lowercase (HTTP/1.x names are lowered by the parser, H2/H3 names are
    rejected unless lowercase), so the ASGI scope takes them as they are; on
    H2/H3 ``:authority`` is surfaced as a ``host`` header when the request
    had none.
    """

    method: str
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    #: ``:scheme`` on H2/H3; None on HTTP/1.x (the connection's scheme applies).
    scheme: str | None = None
    #: "websocket" for a WebSocket request on any protocol, else ``:protocol`` or None.
    protocol: str | None = None
    #: The request arrived (at least partly) in QUIC 0-RTT data.
    early_data: bool = False


class StreamSink(Protocol):
    """Implemented by every protocol adapter; called by the ASGI adapters."""

    def send_head(self, status: int, headers: Headers) -> None: ...

    async def send_body(self, data: bytes, end: bool) -> None: ...

    def send_trailers(self, headers: Headers) -> None: ...

    def reset(self, reason: ResetReason) -> None: ...

    def credit(self, n: int) -> None: ...


class StreamHandler(Protocol):
    """Implemented by ``asgi/http.py`` and ``asgi/websocket.py``."""

    def start(self, head: RequestHead, conn: ConnectionInfo) -> None: ...

    def receive_body(self, data: bytes, more: bool) -> None: ...

    def abort(self, reason: str) -> None: ...


#: Picks and builds the stream for a request (``asgi/dispatch.py``).  It never
#: raises for a valid head: over the concurrency limit it returns a stream that
#: answers 503 by itself.
StreamFactory = Callable[[RequestHead, StreamSink], StreamHandler]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseDefaults:
    """Headers every response gets, computed once by ``server.py``."""

    server: bytes | None = b"quicserve"
    date: bool = True
    #: ``--header NAME:VALUE`` pairs, lowercase names.
    extra: tuple[tuple[bytes, bytes], ...] = ()
    #: The Alt-Svc value for responses over TCP+TLS, from the bound UDP ports.
    alt_svc: bytes | None = None


class ProtocolOptions(Protocol):
    """The knobs protocol adapters read.  ``quicserve.config.Config`` satisfies
    it structurally, so protocols never import ``config``.
    """

    @property
    def keep_alive(self) -> float: ...
    @property
    def read_timeout(self) -> float: ...
    @property
    def h11_max_incomplete_size(self) -> int: ...
    @property
    def h2_max_concurrent_streams(self) -> int: ...
    @property
    def h2_initial_window_size(self) -> int: ...
    @property
    def h2_max_frame_size(self) -> int: ...
    @property
    def h2_max_header_list_size(self) -> int: ...
    @property
    def h2_max_resets_per_window(self) -> int: ...
    @property
    def h2_flood_window(self) -> float: ...
    @property
    def h2_max_control_frames_per_window(self) -> int: ...
    @property
    def h2_stalled_window_timeout(self) -> float: ...
    @property
    def write_timeout(self) -> float: ...
    @property
    def quic_0rtt_unsafe(self) -> bool: ...
    @property
    def stream_high_water(self) -> int: ...


class AppOptions(Protocol):
    """The knobs the ASGI adapters (``asgi/``) read.  ``quicserve.config.Config``
    satisfies it structurally, so ``asgi/`` never imports ``config``.
    """

    @property
    def root_path(self) -> str: ...
    @property
    def limit_concurrency(self) -> int | None: ...
    @property
    def proxy_headers(self) -> bool: ...
    @property
    def forwarded_allow_ips(self) -> tuple[str, ...]: ...
    @property
    def read_timeout(self) -> float: ...
    @property
    def quic_0rtt_unsafe(self) -> bool: ...
    @property
    def stream_high_water(self) -> int: ...
    @property
    def ws_ping_interval(self) -> float | None: ...
    @property
    def ws_ping_timeout(self) -> float: ...
    @property
    def ws_max_message_size(self) -> int: ...
    @property
    def ws_per_message_deflate(self) -> bool: ...


class Statistics:
    """Live counters shared by every layer of one server (one worker).

    Plain integers mutated in place on the hot path; :meth:`snapshot` copies
    them for callers.  Not thread-safe: one event loop owns it.
    """

    __slots__ = (
        "tcp_connections", "quic_sessions", "streams", "app_tasks",
        "requests", "datagrams_received", "datagrams_sent", "datagrams_dropped",
        "stateless_resets", "version_negotiations", "retries",
        "datagrams_handed_off", "datagrams_handed_in",
    )

    def __init__(self) -> None:
        self.tcp_connections = 0
        self.quic_sessions = 0
        self.streams = 0
        self.app_tasks = 0
        self.requests = 0
        self.datagrams_received = 0
        self.datagrams_sent = 0
        self.datagrams_dropped = 0
        self.stateless_resets = 0
        self.version_negotiations = 0
        self.retries = 0
        #: --workers: new connections' datagrams sent to / taken from another
        #: worker (transport/handoff.py).
        self.datagrams_handed_off = 0
        self.datagrams_handed_in = 0

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionContext:
    """Everything a protocol adapter needs, handed in once per connection."""

    options: ProtocolOptions
    stream_factory: StreamFactory
    response_defaults: ResponseDefaults
    stats: Statistics
    #: The loop's clock (``loop.time``); protocols never read a clock themselves
    #: except through this.
    clock: Callable[[], float]
