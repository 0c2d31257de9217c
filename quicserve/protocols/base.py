"""The contract between ``transport/tcp.py`` and the byte-stream protocol adapters.

Theory of operation
-------------------
A TCP connection carries bytes; an adapter (``H11Adapter``, ``H2Adapter``)
turns them into streams.  The transport owns the socket, the one timer of the
connection and write buffering; the adapter owns the protocol state.  They talk
through two small interfaces:

``transport -> adapter`` (:class:`ByteProtocol`): ``data_received``,
``eof_received``, ``connection_lost``, ``timeout`` (the timer the adapter armed
expired) and ``shutdown`` (graceful: stop taking new requests, finish the
in-flight ones, then close).

``adapter -> transport`` (:class:`ByteTransport`): ``write``, ``close``,
``abort``, ``pause_reading`` / ``resume_reading`` (read backpressure),
``wait_writable`` (write backpressure: the only awaiting call), ``set_timeout``.

Switching protocol is a return value, never an exception: ``data_received``
returns :class:`SwitchTo` and the transport builds the next adapter from it
(h2c prior knowledge, h2c ``Upgrade``).

Adapters never touch a socket, a clock or the event loop directly: time comes
from ``ConnectionContext.clock``, timers through ``set_timeout``.  So they are
driven by plain calls in unit tests with an in-memory transport.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ..interfaces import ConnectionContext, ConnectionInfo, RequestHead


@dataclass(frozen=True, slots=True)
class SwitchTo:
    """Returned by ``data_received`` to hand the connection to another adapter."""

    #: The next adapter's key: "h2".
    protocol: str
    #: Bytes already read that belong to the next protocol.
    data: bytes = b""
    #: For an HTTP/1.1 ``Upgrade: h2c``: the request that asked (it becomes stream 1).
    upgrade_head: RequestHead | None = None
    #: For an HTTP/1.1 ``Upgrade: h2c``: the decoded ``HTTP2-Settings`` header value.
    upgrade_settings: bytes | None = None
    #: For an HTTP/1.1 ``Upgrade: h2c``: the request body already received (if any).
    upgrade_body: bytes = b""


class ByteTransport(Protocol):
    """Implemented by ``transport/tcp.py``; used by byte-stream adapters."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """Flush what is buffered, then close."""

    def abort(self) -> None:
        """Close now, dropping what is buffered."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    async def wait_writable(self) -> None:
        """Return once the write buffer is below its low-water mark.

        Raises ``errors.StreamClosed`` if the connection is lost meanwhile.
        """

    def set_timeout(self, seconds: float | None) -> None:
        """(Re)arm the connection's one timer; ``None`` disarms it.  On expiry
        the transport calls the adapter's ``timeout()``."""

    @property
    def closing(self) -> bool: ...


class ByteProtocol(Protocol):
    """Implemented by ``H11Adapter`` and ``H2Adapter``."""

    def data_received(self, data: bytes) -> SwitchTo | None: ...

    def eof_received(self) -> None: ...

    def connection_lost(self) -> None: ...

    def timeout(self) -> None: ...

    def shutdown(self) -> None: ...


class AdapterFactory(Protocol):
    """How ``transport/tcp.py`` builds an adapter (``server.py`` passes a
    mapping ALPN/key -> factory, so the transport never imports a protocol)."""

    def __call__(
        self,
        *,
        ctx: ConnectionContext,
        transport: ByteTransport,
        conn: ConnectionInfo,
        switch: SwitchTo | None = None,
    ) -> ByteProtocol: ...


AdapterFactories = dict[str, AdapterFactory]


# --------------------------------------------------------------------------
# The contract between ``quic/connection.py`` (QuicSession) and the QUIC
# application adapters (``H3Adapter`` in h3.py, ``HqAdapter`` in hq.py).
#
# The session owns the aioquic ``QuicConnection``, the clock and the flush;
# the adapter owns the HTTP mapping.  The session picks the adapter from the
# negotiated ALPN and feeds it every QUIC event; the adapter writes through
# the QuicConnection it is given (``send_stream_data``/``reset_stream``) and
# then calls ``session.mark_dirty()`` so the endpoint flushes once per loop
# turn.  The adapter never touches a socket, a timer or a clock.


class QuicSessionHandle(Protocol):
    """What a QUIC adapter may ask of the session that owns it."""

    def mark_dirty(self) -> None:
        """Data was queued on the QuicConnection: flush it this loop turn."""

    def connection_info(self, *, early_data: bool = False) -> ConnectionInfo:
        """A fresh ConnectionInfo for a new request (current client path)."""

    def withhold_credit(self, stream_id: int, n: int) -> None:
        """``n`` received bytes of ``stream_id`` now wait in memory (handed to
        the app, or buffered by the adapter): keep them charged against the
        stream's receive window until :meth:`return_credit`.  The first call
        (``n`` may be 0) puts the stream under this accounting; streams never
        withheld get aioquic's automatic window growth."""

    def return_credit(self, stream_id: int, n: int) -> None:
        """The app consumed ``n`` withheld bytes of ``stream_id``: reopen that
        much receive window (QUIC MAX_STREAM_DATA)."""

    def stream_send_buffered(self, stream_id: int) -> int:
        """Bytes written to ``stream_id`` that the peer has not yet
        acknowledged (a graceful close waits for these to drain)."""

    def stream_send_pending(self, stream_id: int) -> int:
        """Bytes written to ``stream_id`` and not yet sent even once: the
        measure for ``send_body`` backpressure.  (Sent but unacknowledged
        bytes are bounded by congestion and flow control already; counting
        them too would cap the bytes in flight at the high-water mark and
        with it the throughput, to high_water / RTT.)"""

    def in_early_data(self) -> bool:
        """True while the handshake is incomplete and 0-RTT data is accepted."""


class QuicAdapter(Protocol):
    """Implemented by ``H3Adapter`` and ``HqAdapter``.

    Constructed by the session as ``Adapter(ctx=..., quic=..., session=...)``
    where ``quic`` is the aioquic ``QuicConnection``.
    """

    def handle_event(self, event: object) -> None:
        """One aioquic ``QuicEvent`` (StreamDataReceived, StreamReset, ...)."""

    def on_send_capacity(self) -> None:
        """Called after each flush and each received datagram (ACKs): wake
        ``send_body`` waiters whose stream's pending data fell below the
        high-water mark."""

    def begin_shutdown(self) -> None:
        """The first step of a graceful shutdown, about one round trip
        before :meth:`shutdown`: H3 sends GOAWAY with the largest stream ID
        (RFC 9114 section 5.2), so requests already on their way are still
        served; nothing else changes."""

    def shutdown(self) -> None:
        """Graceful: H3 sends GOAWAY; in-flight streams go on."""

    def connection_lost(self) -> None:
        """The connection is gone: abort every stream (``http.disconnect``)."""

    def active_streams(self) -> int: ...
