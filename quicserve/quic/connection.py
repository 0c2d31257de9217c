"""QuicSession: one server-side QUIC connection, driven by calls, time passed in.

Theory of operation
-------------------
``transport/udp.py`` owns sockets and timers; a ``QuicSession`` owns one
aioquic connection (``quic/internals.py``'s ``ManagedQuicConnection``, whose
connection IDs and stateless-reset tokens come from quicserve) and the
application adapter on top of it.  The endpoint drives it with four calls,
all synchronous, all taking ``now`` from the endpoint's clock:

``receive(data, addr, now)``
    one datagram the router delivered; events are processed at once.
``handle_timer(now)``
    the session's one timer fired.
``datagrams_to_send(now)``
    the endpoint's once-per-loop-turn flush.
``deadline()``
    when the timer must fire next (aioquic's ``get_timer()``); the endpoint
    re-arms its one timer handle only when this changes.
``datagrams_due(now)``
    within a flush: the next pacer burst if its time has already come.

Upward, the session tells its :class:`SessionOwner` (the endpoint) what the
router and the flush need to know: ``session_dirty`` (flush me this turn),
``cid_issued``/``cid_retired`` (keep the router's CID table in step with
aioquic's ConnectionIdIssued/ConnectionIdRetired events) and
``session_closed`` (ConnectionTerminated: idle timeout, peer close, or the
end of our own closing period).

Events are handled in the order aioquic queued them: ProtocolNegotiated
builds the adapter from the ALPN (``h3`` -> :class:`H3Adapter`,
``hq-interop`` -> ``HqAdapter``); HandshakeCompleted ends the 0-RTT window
(stream data queued before it arrived in 0-RTT, which is what
:meth:`in_early_data` reports to the adapter); the connection-ID events go to
the owner; everything else goes to the adapter.

The session is also the adapter's :class:`~quicserve.protocols.base.QuicSessionHandle`.

Never: await, read a clock, touch a socket, or raise for peer input (aioquic
turns peer errors into CONNECTION_CLOSE).  Debug logs carry the connection ID
in hex.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Callable, Protocol

from aioquic.h3.connection import ErrorCode as H3ErrorCode
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    QuicEvent,
)
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from ..interfaces import Address, ConnectionContext, ConnectionInfo
from ..log import error_logger
from ..protocols.h3 import H3Adapter
from ..protocols.hq import HqAdapter
from .client_auth import ClientAuth, ClientAuthQuicConnection, Subject, peer_subject
from .internals import ManagedQuicConnection
from .router import Create
from .settings import QuicSettings
from .tlsinfo import quic_tls_info

if TYPE_CHECKING:
    from ..protocols.base import QuicAdapter
    from .cid import CidIssuer, StatelessResetKeys
    from .tokens import NewTokens, SessionTicketStore

NetworkAddress = tuple[str, int] | tuple[str, int, int, int]

#: What a ConnectionInfo says about HTTP/3 (HqAdapter replaces these for hq).
_H3_INFO = ("3", "HTTP/3", ("http.response.trailers",))


def stream_send_buffered(quic: ManagedQuicConnection, stream_id: int) -> int:
    """Bytes written to ``stream_id`` and not yet acknowledged by the peer.

    aioquic keeps exactly those in ``QuicStreamSender._buffer`` (acknowledged
    bytes are cut from its front).  This and ``_buffer_stop`` below are the
    private aioquic names this module reads;
    ``tests/unit/quic/test_connection.py`` pins them.
    """
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    return len(stream.sender._buffer)


def stream_send_pending(quic: ManagedQuicConnection, stream_id: int) -> int:
    """Bytes written to ``stream_id`` that were never sent: the end of the
    written data (``_buffer_stop``) minus the highest offset sent."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    sender = stream.sender
    return max(0, sender._buffer_stop - sender.highest_offset)


class SessionOwner(Protocol):
    """What a session reports to the endpoint that owns it."""

    def session_dirty(self, session: QuicSession) -> None: ...

    def cid_issued(self, session: QuicSession, cid: bytes) -> None: ...

    def cid_retired(self, session: QuicSession, cid: bytes) -> None: ...

    def session_closed(self, session: QuicSession) -> None: ...


AdapterFactory = Callable[..., "QuicAdapter"]

#: ALPN -> the adapter serving it.
_ADAPTERS: dict[str, AdapterFactory] = {"h3": H3Adapter, "hq-interop": HqAdapter}


class QuicSession:
    """One QUIC connection and its HTTP/3 (or hq) adapter.

    Error handling: peer errors close the connection inside aioquic and end
    in ``session_closed``.  A Retry token that failed validation closes the
    connection with INVALID_TOKEN as soon as the first Initial is processed.

    Resource handling: the session holds the aioquic connection, its adapter
    and nothing else; the owner forgets it on ``session_closed``.
    """

    __slots__ = (
        "_ctx", "_quic", "_owner", "_server", "_adapter", "_handshake_done",
        "_close_on_first_receive", "_client_dcid", "_client_auth", "_client_cert", "_refused",
        "host_cid", "cid_hex", "_log", "_info", "_flush_held",
    )

    def __init__(
        self,
        *,
        ctx: ConnectionContext,
        quic: ManagedQuicConnection,
        owner: SessionOwner,
        server: Address | None,
        client_dcid: bytes,
        token_invalid: bool = False,
        client_auth: ClientAuth | None = None,
    ) -> None:
        self._ctx = ctx
        self._quic = quic
        self._owner = owner
        self._server = server
        self._adapter: QuicAdapter | None = None
        self._handshake_done = False
        self._close_on_first_receive = token_invalid
        #: The DCID the client picked for its first Initials; routed until
        #: the handshake completes (the client then uses our CIDs).
        self._client_dcid = client_dcid
        self._client_auth = client_auth
        self._client_cert: Subject | None = None
        #: The client certificate was refused: nothing more reaches the adapter.
        self._refused = False
        #: The connection ID quicserve issued first (sequence 0).
        self.host_cid: bytes = quic.host_cid
        self.cid_hex = self.host_cid.hex()
        self._log = error_logger
        #: The last ConnectionInfo built; reused while the client path is the same.
        self._info: ConnectionInfo | None = None
        #: The adapter's hook for what it holds back until the flush (H3's
        #: response heads, see H3Adapter.flush_held); None for other adapters.
        self._flush_held: Callable[[], None] | None = None

    # -- driven by the endpoint ---------------------------------------------------

    def receive(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        """Feed one datagram; never awaits, never raises for hostile bytes."""
        self._quic.receive_datagram(data, addr, now)
        if self._close_on_first_receive:
            self._close_on_first_receive = False
            self._log.debug("[%s] invalid Retry token: INVALID_TOKEN", self.cid_hex)
            self._transport_close(QuicErrorCode.INVALID_TOKEN, "invalid token")
        self._process_events()
        if self._adapter is not None:
            self._adapter.on_send_capacity()
        self._owner.session_dirty(self)

    def handle_timer(self, now: float) -> None:
        self._quic.handle_timer(now)
        self._process_events()
        self._owner.session_dirty(self)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        if self._flush_held is not None:
            self._flush_held()
        datagrams = self._quic.datagrams_to_send(now)
        # Connection IDs are issued while packets are written: drain those events.
        self._process_events()
        if datagrams and self._adapter is not None:
            # Stream data just left the send buffers: writers may go on.
            self._adapter.on_send_capacity()
        return datagrams

    def deadline(self) -> float | None:
        return self._quic.get_timer()

    def datagrams_due(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """The next burst, if the pacer held the last one back and its time
        has already come (building the last burst took longer than the
        pacer's gap): what the session's timer would do, without the loop
        round trip.  Empty otherwise."""
        quic = self._quic
        if not quic.pacing_blocked:
            return []
        deadline = quic.get_timer()
        if deadline is None or deadline > now:
            return []
        quic.handle_timer(now)
        self._process_events()
        return self.datagrams_to_send(now)

    def begin_shutdown(self) -> None:
        """Announce a graceful shutdown (H3: GOAWAY with the largest stream
        ID); :meth:`shutdown` follows about one round trip later."""
        if self._adapter is not None:
            self._adapter.begin_shutdown()
            self._owner.session_dirty(self)

    def smoothed_rtt(self) -> float:
        """The connection's smoothed RTT estimate (the initial RTT until the
        first sample), in seconds."""
        return self._quic.smoothed_rtt()

    def shutdown(self) -> None:
        """Graceful: GOAWAY (H3); the adapter closes once its streams are done."""
        if self._adapter is not None:
            self._adapter.shutdown()
        else:
            self._transport_close(QuicErrorCode.NO_ERROR, "shutdown")
        self._owner.session_dirty(self)

    def abort(self) -> None:
        """CONNECTION_CLOSE now; in-flight streams are aborted."""
        if self._adapter is not None:
            self._quic.close(error_code=H3ErrorCode.H3_NO_ERROR,
                             reason_phrase="server shutting down")
            self._adapter.connection_lost()
        else:
            self._transport_close(QuicErrorCode.NO_ERROR, "server shutting down")
        self._owner.session_dirty(self)

    @property
    def active_streams(self) -> int:
        return self._adapter.active_streams() if self._adapter is not None else 0

    def _transport_close(self, code: int, reason: str) -> None:
        # A transport-level CONNECTION_CLOSE (0x1c); aioquic sends an
        # application close (0x1d) when frame_type is None, and replaces the
        # code by APPLICATION_ERROR during the handshake.
        self._quic.close(error_code=code, frame_type=QuicFrameType.PADDING, reason_phrase=reason)

    # -- QuicSessionHandle ------------------------------------------------------------

    def mark_dirty(self) -> None:
        self._owner.session_dirty(self)

    def connection_info(self, *, early_data: bool = False) -> ConnectionInfo:
        # ConnectionInfo is frozen, so requests share one; it is rebuilt when
        # the client's path (migration, NAT rebinding) or certificate changes.
        peer = self._quic.get_peer_address()
        client = (peer[0], peer[1]) if peer is not None else None
        info = self._info
        if info is not None and info.client == client and info.client_cert is self._client_cert:
            return info
        http_version, label, extensions = _H3_INFO
        # The TLS facts are computed once; only a newly verified client
        # certificate (right after the handshake) asks for them again.
        tls = info.tls if info is not None and info.client_cert is self._client_cert else None
        if tls is None:
            tls = quic_tls_info(self._quic, verified=self._client_cert is not None)
        info = self._info = ConnectionInfo(
            http_version=http_version,
            protocol=label,
            scheme="https",
            client=client,
            server=self._server,
            secure=True,
            connection_id=self.cid_hex,
            client_cert=self._client_cert,
            extensions=extensions,
            tls=tls,
        )
        return info

    def withhold_credit(self, stream_id: int, n: int) -> None:
        self._quic.withhold_stream_credit(stream_id, n)

    def return_credit(self, stream_id: int, n: int) -> None:
        self._quic.grant_stream_credit(stream_id, n)

    def stream_send_buffered(self, stream_id: int) -> int:
        return stream_send_buffered(self._quic, stream_id)

    def stream_send_pending(self, stream_id: int) -> int:
        return stream_send_pending(self._quic, stream_id)

    def in_early_data(self) -> bool:
        return not self._handshake_done

    # -- events ------------------------------------------------------------------------

    def _process_events(self) -> None:
        quic = self._quic
        event = quic.next_event()
        while event is not None:
            handler = _HANDLERS.get(type(event))
            if handler is not None:
                handler(self, event)
            elif self._adapter is not None and not self._refused:
                self._adapter.handle_event(event)
            event = quic.next_event()

    def _on_protocol(self, event: ProtocolNegotiated) -> None:
        alpn = event.alpn_protocol
        factory = _ADAPTERS.get(alpn or "")
        if factory is None:
            self._log.debug("[%s] no adapter for ALPN %r", self.cid_hex, alpn)
            self._transport_close(QuicErrorCode.INTERNAL_ERROR, "no adapter for ALPN")
            return
        self._adapter = factory(ctx=self._ctx, quic=self._quic, session=self)
        self._flush_held = getattr(self._adapter, "flush_held", None)
        self._log.debug("[%s] ALPN %s", self.cid_hex, alpn)

    def _on_handshake(self, event: HandshakeCompleted) -> None:
        self._handshake_done = True
        self._log.debug("[%s] handshake completed (resumed=%s, 0-RTT=%s)", self.cid_hex,
                        event.session_resumed, event.early_data_accepted)
        self._owner.cid_retired(self, self._client_dcid)
        self._quic.release_handshake_streams()
        if self._client_auth is not None:
            self._check_client_certificate(self._client_auth)

    def _check_client_certificate(self, auth: ClientAuth) -> None:
        refusal = auth.check(self._quic)
        if refusal is None:
            self._client_cert = peer_subject(self._quic)
            return
        self._log.debug("[%s] %s", self.cid_hex, refusal.reason)
        self._refused = True
        self._transport_close(refusal.error_code, refusal.reason)

    def _on_cid_issued(self, event: ConnectionIdIssued) -> None:
        self._owner.cid_issued(self, event.connection_id)

    def _on_cid_retired(self, event: ConnectionIdRetired) -> None:
        self._owner.cid_retired(self, event.connection_id)

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("[%s] connection terminated (code 0x%x, %s)", self.cid_hex,
                            event.error_code, event.reason_phrase)
        if self._adapter is not None:
            self._adapter.connection_lost()
        self._owner.session_closed(self)


_HANDLERS: dict[type[QuicEvent], Callable[[QuicSession, QuicEvent], None]] = {
    ProtocolNegotiated: QuicSession._on_protocol,  # type: ignore[dict-item]
    HandshakeCompleted: QuicSession._on_handshake,  # type: ignore[dict-item]
    ConnectionIdIssued: QuicSession._on_cid_issued,  # type: ignore[dict-item]
    ConnectionIdRetired: QuicSession._on_cid_retired,  # type: ignore[dict-item]
    ConnectionTerminated: QuicSession._on_terminated,  # type: ignore[dict-item]
}


class SessionFactory:
    """Builds a :class:`QuicSession` for each ``Create`` decision of the router.

    Holds what every session of one endpoint shares: the settings, the CID
    issuer, the stateless-reset keys and the session-ticket store.
    """

    def __init__(self, *, ctx: ConnectionContext, settings: QuicSettings, issuer: CidIssuer,
                 reset_keys: StatelessResetKeys, tickets: SessionTicketStore,
                 server: Address | None, new_tokens: NewTokens | None = None) -> None:
        self._ctx = ctx
        self._settings = settings
        self._issuer = issuer
        self._reset_keys = reset_keys
        self._tickets = tickets
        self._server = server
        self._new_tokens = new_tokens
        self._client_auth = (ClientAuth(settings.verify_client, settings.ca_certs)
                             if settings.verify_client != ssl.CERT_NONE else None)

    def create(self, action: Create, *, owner: SessionOwner,
               addr: NetworkAddress | None = None) -> QuicSession:
        """The session for ``action``; ``addr`` is the client's address (the
        NEW_TOKEN token it is given is bound to its IP)."""
        settings = self._settings
        auth = self._client_auth
        new_tokens = self._new_tokens
        # With client certificates, no tickets: a resumed (PSK) handshake
        # would carry no certificate (see quic/client_auth.py).
        quic = (ManagedQuicConnection if auth is None else ClientAuthQuicConnection)(
            configuration=settings.configuration,
            cid_issuer=self._issuer,
            reset_keys=self._reset_keys,
            original_destination_connection_id=action.original_dcid,
            retry_source_connection_id=action.retry_source_cid,
            ticket_store=self._tickets if auth is None else None,
            early_data=settings.early_data,
            max_streams_bidi=settings.max_streams,
            new_token=(new_tokens.create(addr[0])
                       if new_tokens is not None and addr is not None else None),
        )
        session = QuicSession(ctx=self._ctx, quic=quic, owner=owner, server=self._server,
                              client_dcid=action.dcid, token_invalid=action.token_invalid,
                              client_auth=auth)
        error_logger.debug("[%s] new QUIC connection (version 0x%x, retry=%s)", session.cid_hex,
                           action.version, action.retry_source_cid is not None)
        return session
