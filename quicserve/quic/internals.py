"""The place that touches aioquic's private internals (with ``quic/bulk.py``,
the bulk send path it calls).

Theory of operation
-------------------
aioquic's :class:`~aioquic.quic.connection.QuicConnection` is sans-IO and
good, but seven things quicserve needs are not configurable through its
public API.  :class:`ManagedQuicConnection` (a server-side subclass) adds
them, and ``tests/unit/quic/test_internals.py`` pins every private name used
here so an aioquic upgrade that moves one fails loudly, naming it.

1. **Connection IDs from the issuer.**  aioquic draws host connection IDs
   and their stateless-reset tokens from ``os.urandom`` in ``__init__``
   (``_host_cids[0]``, ``host_cid``, ``_local_initial_source_connection_id``)
   and in ``_replenish_connection_ids``.  We overwrite the initial one right
   after ``__init__`` (nothing has been sent or serialized yet) and every
   new one right after ``_replenish_connection_ids`` appends it (before it
   is announced in NEW_CONNECTION_ID).  So every CID comes from
   :class:`~quicserve.quic.cid.CidIssuer` -- its first byte steers packets
   to this worker -- and every reset token is ``reset_keys.token(cid)``,
   which any worker can recompute for a stateless reset.

2. **The initial bidirectional stream limit.**  aioquic hard-codes 128 in
   ``_local_max_streams_bidi`` (a ``Limit`` with ``value``/``sent``/``used``).
   We set ``value`` and ``sent`` from ``max_streams_bidi`` before the
   transport parameters are serialized.  Raising the limit as streams close
   is already aioquic's behaviour (1.7): when a peer-initiated stream is
   discarded, ``_write_application`` does ``limit.value += 1`` and
   ``_write_connection_limits`` sends MAX_STREAMS once the peer has fewer
   streams left than the update would grant.  Nothing to wrap there.

3. **Receive credit returned only as the application reads.**  aioquic
   raises a stream's MAX_STREAM_DATA by itself in ``_write_stream_limits``
   (doubling the limit once half of it has *arrived*), so a slow
   application would let a client push unbounded data into memory.  A
   stream becomes *managed* the first time the adapter calls
   :meth:`ManagedQuicConnection.withhold_stream_credit`; from then on its
   limit is::

       delivered_in_order - held + max_stream_data

   where ``held`` counts body bytes handed to the application and not yet
   consumed (``withhold_stream_credit(sid, n)`` adds, ``grant_stream_credit
   (sid, n)`` subtracts).  HTTP/3 framing bytes are never held, so they
   never eat the window.  MAX_STREAM_DATA goes out when the peer's remaining
   credit falls below half a window.  Connection-level MAX_DATA is left to
   aioquic (it grows as data arrives); per-connection memory is bounded by
   ``max_streams_bidi * max_stream_data``.

4. **Stateless session tickets.**  aioquic's TLS layer gives each ticket a
   random 64-byte label and pushes the NewSessionTicket message before
   telling us about it.  With a :class:`~quicserve.quic.tokens.SessionTicketStore`
   we seal the ticket into a label that carries its own state and rewrite
   the NewSessionTicket still sitting in the 1-RTT crypto buffer
   (``_crypto_buffers``) before ``_push_crypto_data`` hands it to the crypto
   stream.  The rewrite first re-encodes the original message and checks it
   byte for byte; if aioquic ever encodes it differently, the ticket is left
   alone (that client just cannot resume) and a warning is logged.  The
   TLS transcript does not cover NewSessionTicket, and the resumption
   secret depends on the ticket *nonce*, not the label, so replacing the
   label is safe.  With ``early_data=False`` the rewritten ticket omits the
   early_data extension, so compliant clients resume without 0-RTT.

5. **The bulk send path.**  ``_write_application`` hands a flush to
   :func:`quicserve.quic.bulk.write_bulk` first; when only stream data (and
   perhaps an ACK or a connection-level limit) is due, it builds the 1-RTT
   packets directly, else aioquic's own method runs.  See that module.

6. **NEW_TOKEN.**  aioquic's server never sends one.  Given ``new_token``
   (``--quic-retry``), the frame is written in the packet that carries
   HANDSHAKE_DONE (:meth:`ManagedQuicConnection._write_handshake_done_frame`),
   so it is sent again exactly when that packet is lost.

7. **Whether the pacer held the last flush back** (``_pacing_at``), so the
   endpoint can take the next burst in the same loop turn once its time has
   come (:attr:`ManagedQuicConnection.pacing_blocked`).

8. **Memory an idle connection does not need** (issue 6: at most 64 KiB per
   idle connection; aioquic alone keeps ~85).  Three leftovers go: the three
   16 KiB TLS output buffers (``_crypto_buffers``), released once the server
   TLS state is SERVER_POST_HANDSHAKE, in which aioquic refuses every message
   before writing a byte; the Initial and Handshake crypto streams
   (``_crypto_streams``), whose send buffer keeps our handshake flight when
   the epoch is discarded before its ACK -- replaced by one empty stream once
   the handshake is confirmed (:meth:`release_handshake_streams`); and the
   ~30 frozensets aioquic's frame table (``_QuicConnection__frame_handlers``)
   allocates per connection, shared instead.

API for ``quic/connection.py`` (QuicSession)::

    quic = ManagedQuicConnection(
        configuration=cfg,                      # connection_id_length == issuer.length
        original_destination_connection_id=create.original_dcid,
        retry_source_connection_id=create.retry_source_cid,
        cid_issuer=issuer, reset_keys=reset_keys,
        ticket_store=store,                     # optional; do not pass ticket callbacks too
        early_data=config.quic_0rtt, max_streams_bidi=config.quic_max_streams)
    router.add(quic.host_cid, session); router.add(create.original_dcid, session)
    ... ConnectionIdIssued(cid) -> router.add; ConnectionIdRetired(cid) -> router.remove
    quic.withhold_stream_credit(stream_id, n)   # n body bytes handed to the app
    quic.grant_stream_credit(stream_id, n)      # the app consumed n of them
    quic.stream_send_buffered(stream_id)        # unacknowledged bytes (send backpressure)

(also as module functions taking the connection first:
``withhold_stream_credit(quic, sid, n)``, ``grant_stream_credit(quic, sid, n)``,
``stream_send_buffered(quic, sid)``.)

This module does no I/O and reads no clock.
"""

from __future__ import annotations

import logging
from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
from aioquic.quic import connection as _aioquic_connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.stream import QuicStream

from quicserve.errors import QuicserveError
from quicserve.log import error_logger
from quicserve.quic.bulk import write_bulk
from quicserve.quic.cid import CidIssuer, StatelessResetKeys
from quicserve.quic.tokens import SessionTicketStore

#: One shared frozenset per distinct set of epochs a frame type is allowed in.
_EPOCH_SETS: dict[frozenset[tls.Epoch], frozenset[tls.Epoch]] = {}

#: aioquic's own default for the initial bidirectional stream limit.
AIOQUIC_DEFAULT_MAX_STREAMS_BIDI = 128


def _unmanaged_limit_due(stream: Any) -> bool:
    """aioquic's own two conditions for writing MAX_STREAM_DATA: the limit
    differs from what was sent, or half of it has arrived (it then doubles)."""
    local = stream.max_stream_data_local
    return bool(local != stream.max_stream_data_local_sent
                or (local and stream.receiver.highest_offset * 2 > local))


class _NoDebugAdapter(_aioquic_connection.QuicConnectionAdapter):
    """aioquic's per-connection log adapter, with ``debug`` a no-op."""

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        pass


class AioquicInternalsChanged(QuicserveError):
    """An aioquic private attribute quicserve relies on is gone or changed."""


def _require(obj: object, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise AioquicInternalsChanged(
            f"aioquic {type(obj).__name__}.{name} is missing; quic/internals.py needs "
            f"updating for this aioquic version") from None


class ManagedQuicConnection(QuicConnection):
    """A server-side aioquic connection with quicserve's CIDs, stream limit,
    receive-credit control and stateless session tickets.

    Error handling: the constructor raises :class:`ValueError` for a client
    configuration, a ``connection_id_length`` that differs from the
    issuer's, or ticket callbacks passed together with ``ticket_store``; and
    :class:`AioquicInternalsChanged` if aioquic's internals moved.

    Resource handling: per managed stream, one integer, dropped once aioquic
    discards the stream.
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        cid_issuer: CidIssuer,
        reset_keys: StatelessResetKeys,
        original_destination_connection_id: bytes | None = None,
        retry_source_connection_id: bytes | None = None,
        ticket_store: SessionTicketStore | None = None,
        early_data: bool = True,
        max_streams_bidi: int | None = None,
        new_token: bytes | None = None,
        session_ticket_fetcher: tls.SessionTicketFetcher | None = None,
        session_ticket_handler: tls.SessionTicketHandler | None = None,
    ) -> None:
        if configuration.is_client:
            raise ValueError("ManagedQuicConnection is for servers")
        if configuration.connection_id_length != cid_issuer.length:
            raise ValueError(f"configuration.connection_id_length "
                             f"({configuration.connection_id_length}) must equal the issuer's "
                             f"length ({cid_issuer.length})")
        if ticket_store is not None:
            if session_ticket_fetcher is not None or session_ticket_handler is not None:
                raise ValueError("pass either ticket_store or the ticket callbacks, not both")
            session_ticket_fetcher = ticket_store.pop
            session_ticket_handler = self._on_session_ticket
        self._cid_issuer = cid_issuer
        self._reset_keys = reset_keys
        self._ticket_store = ticket_store
        self._early_data = early_data
        self._pending_ticket: tls.SessionTicket | None = None
        self._crypto_buffers_released = False
        self._held: dict[int, int] = {}
        self._new_token = new_token
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
            session_ticket_fetcher=session_ticket_fetcher,
            session_ticket_handler=session_ticket_handler,
        )
        self._quiet_debug_log()
        self._issue_initial_cid()
        if max_streams_bidi is not None:
            self._set_initial_max_streams_bidi(max_streams_bidi)
        self._share_frame_epochs()

    def _quiet_debug_log(self) -> None:
        # aioquic logs a debug line per stream created and discarded, and
        # more; with debug off each call still costs a LoggerAdapter round
        # trip (~3% of a small HTTP/3 request).  Decided per connection:
        # debug logging switched on later applies to new connections.
        adapter = _require(self, "_logger")
        if not adapter.isEnabledFor(logging.DEBUG):
            self._logger = _NoDebugAdapter(adapter.logger, adapter.extra)

    # -- 1. connection IDs ------------------------------------------------------

    def _issue_initial_cid(self) -> None:
        host_cids = _require(self, "_host_cids")
        if len(host_cids) != 1 or host_cids[0].sequence_number != 0:
            raise AioquicInternalsChanged("aioquic QuicConnection._host_cids does not start "
                                          "with exactly the sequence-0 connection ID")
        _require(self, "_local_initial_source_connection_id")
        first = host_cids[0]
        self._assign(first)
        self.host_cid = first.cid
        self._local_initial_source_connection_id = first.cid

    def _assign(self, connection_id: Any) -> None:
        """Give an aioquic QuicConnectionId an issuer CID and its keyed token."""
        connection_id.cid = self._cid_issuer.new_cid()
        connection_id.stateless_reset_token = self._reset_keys.token(connection_id.cid)

    def _replenish_connection_ids(self) -> None:
        host_cids = _require(self, "_host_cids")
        before = len(host_cids)
        super()._replenish_connection_ids()
        for connection_id in host_cids[before:]:
            if connection_id.was_sent:
                raise AioquicInternalsChanged("aioquic announced a connection ID inside "
                                              "_replenish_connection_ids")
            self._assign(connection_id)

    def _share_frame_epochs(self) -> None:
        # aioquic builds a frame-type table per connection whose entries each
        # carry a fresh frozenset of the epochs the frame may appear in: ~30
        # sets, 6 KiB per connection, with a handful of distinct values.
        # Share one set per value across connections (they are immutable).
        handlers = _require(self, "_QuicConnection__frame_handlers")
        for frame_type, (handler, epochs) in handlers.items():
            handlers[frame_type] = (handler, _EPOCH_SETS.setdefault(epochs, epochs))

    # -- 2. the bidirectional stream limit -----------------------------------------

    def _set_initial_max_streams_bidi(self, count: int) -> None:
        if count < 1:
            raise ValueError("max_streams_bidi must be at least 1")
        limit = _require(self, "_local_max_streams_bidi")
        if limit.used != 0 or limit.sent != limit.value:
            raise AioquicInternalsChanged("aioquic _local_max_streams_bidi is not a fresh Limit")
        limit.value = count
        limit.sent = count

    # -- 3. receive credit ----------------------------------------------------------

    def withhold_stream_credit(self, stream_id: int, n: int) -> None:
        """``n`` received body bytes of ``stream_id`` now sit unconsumed in the
        application's buffer: they keep occupying the stream's receive
        window.  The first call (``n`` may be 0) makes the stream managed."""
        if n < 0:
            raise ValueError("n must not be negative")
        self._held[stream_id] = self._held.get(stream_id, 0) + n

    def grant_stream_credit(self, stream_id: int, n: int) -> None:
        """The application consumed ``n`` held bytes of ``stream_id``: their
        window reopens (MAX_STREAM_DATA goes out with the next flush once at
        least half a window is due).  A no-op for unmanaged or gone streams."""
        held = self._held.get(stream_id)
        if held is not None:
            self._held[stream_id] = max(0, held - n)

    def stream_send_buffered(self, stream_id: int) -> int:
        """Bytes written to ``stream_id`` that the peer has not acknowledged
        yet (0 for an unknown or discarded stream)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def stream_credit_held(self, stream_id: int) -> int | None:
        """Held bytes of a managed stream; ``None`` when it is not managed."""
        return self._held.get(stream_id)

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        # aioquic calls this for every stream in every packet it builds.
        held = self._held.get(stream.stream_id)
        if held is None:
            # Unmanaged (HTTP/3's unidirectional streams): aioquic's method acts
            # only when the limit is due to double or differs from what was
            # sent -- its two conditions, pinned in test_internals.py -- so
            # the call is skipped otherwise (~1.3 us per packet with H3's six).
            if _unmanaged_limit_due(stream):
                super()._write_stream_limits(builder, space, stream)
            return
        target = self._raised_limit(stream, held)
        if target is not None:
            stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            self._write_max_stream_data_frame(builder, stream)

    def stream_limit_due(self, stream: Any) -> bool:
        """Whether :meth:`_write_stream_limits` could write a frame for
        ``stream`` now (it may still decide not to); changes nothing."""
        held = self._held.get(stream.stream_id)
        if held is None:
            return _unmanaged_limit_due(stream)
        return (stream.max_stream_data_local != stream.max_stream_data_local_sent
                or self._raised_limit(stream, held) is not None)

    def _raised_limit(self, stream: Any, held: int) -> int | None:
        """A managed stream's new receive limit once at least half a window
        is due (``delivered - held + window``), else None."""
        local = stream.max_stream_data_local
        receiver = stream.receiver
        if not local or receiver.is_finished:
            return None
        window = self._configuration.max_stream_data
        target: int = receiver.starting_offset() - held + window
        return target if (target - local) * 2 >= window else None

    def _write_application(self, builder: Any, network_path: Any, now: float) -> None:
        # Stream data (an ACK, connection limits) and nothing else due:
        # quic/bulk.py builds the packets; anything else is aioquic's.
        if not write_bulk(self, builder, network_path, now):
            super()._write_application(builder, network_path, now)

    # -- 6. NEW_TOKEN ----------------------------------------------------------------

    def _write_handshake_done_frame(self, builder: Any) -> None:
        # The NEW_TOKEN frame rides in the packet of HANDSHAKE_DONE: when that
        # packet is lost aioquic writes HANDSHAKE_DONE again, and the token
        # goes again with it.
        super()._write_handshake_done_frame(builder=builder)
        token = self._new_token
        if token is None:
            return
        capacity = 1 + 8 + len(token)
        if builder.remaining_buffer_space < capacity or builder.remaining_flight_space < capacity:
            return  # (no room: this client goes without a token)
        buf = builder.start_frame(QuicFrameType.NEW_TOKEN, capacity=capacity)
        buf.push_uint_var(len(token))
        buf.push_bytes(token)
        quic_logger = self._quic_logger
        if quic_logger is not None:
            builder.quic_logger_frames.append(quic_logger.encode_new_token_frame(token=token))

    def _write_max_stream_data_frame(self, builder: Any, stream: Any) -> None:
        # The same frame aioquic's _write_stream_limits writes, with its own
        # delivery handler so a lost frame is sent again.
        buf = builder.start_frame(
            QuicFrameType.MAX_STREAM_DATA,
            capacity=_aioquic_connection.MAX_STREAM_DATA_FRAME_CAPACITY,
            handler=self._on_max_stream_data_delivery,
            handler_args=(stream,),
        )
        buf.push_uint_var(stream.stream_id)
        buf.push_uint_var(stream.max_stream_data_local)
        stream.max_stream_data_local_sent = stream.max_stream_data_local
        quic_logger = self._quic_logger
        if quic_logger is not None:
            builder.quic_logger_frames.append(quic_logger.encode_max_stream_data_frame(
                maximum=stream.max_stream_data_local, stream_id=stream.stream_id))

    def smoothed_rtt(self) -> float:
        """aioquic's smoothed RTT, or the configured initial RTT before the
        first sample."""
        loss = _require(self, "_loss")
        if not loss._rtt_initialized:
            return float(self._configuration.initial_rtt)
        return float(loss._rtt_smoothed)

    @property
    def pacing_blocked(self) -> bool:
        """The last ``datagrams_to_send`` stopped because the pacer said wait
        (not for want of data or congestion window): aioquic's
        ``_pacing_at`` is set exactly then."""
        return self._pacing_at is not None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        datagrams: list[tuple[bytes, Any]] = super().datagrams_to_send(now)
        if self._held:
            streams = self._streams
            for stream_id in [sid for sid in self._held if sid not in streams]:
                del self._held[stream_id]
        return datagrams

    # -- 4. stateless session tickets ---------------------------------------------------

    def _on_session_ticket(self, ticket: tls.SessionTicket) -> None:
        # Called by aioquic's TLS layer right after it pushed the
        # NewSessionTicket into the 1-RTT crypto buffer; rewritten below.
        self._pending_ticket = ticket

    def _push_crypto_data(self) -> None:
        ticket = self._pending_ticket
        if ticket is not None:
            self._pending_ticket = None
            self._rewrite_session_ticket(ticket)
        super()._push_crypto_data()
        if not self._crypto_buffers_released and self.tls.state is tls.State.SERVER_POST_HANDSHAKE:
            self._release_crypto_buffers()

    def release_handshake_streams(self) -> None:
        """Call once the handshake is confirmed (aioquic has discarded the
        Initial and Handshake keys): the crypto streams of those two epochs
        can never carry a byte again -- packets of those epochs no longer
        decrypt and aioquic writes handshake data only before confirmation --
        yet one of them may still hold our unacknowledged handshake flight.
        Both entries then point at one empty stream."""
        if not self._handshake_confirmed:
            return
        streams = _require(self, "_crypto_streams")
        spent = QuicStream()
        streams[tls.Epoch.INITIAL] = spent
        streams[tls.Epoch.HANDSHAKE] = spent

    def _release_crypto_buffers(self) -> None:
        # Once the server's handshake is over (its last message, the session
        # ticket, was just pushed), aioquic's TLS layer refuses every further
        # handshake message before writing anything, so the three 16 KiB
        # output buffers it keeps per connection are dead weight.
        buffers = _require(self, "_crypto_buffers")
        for epoch in list(buffers):
            buffers[epoch] = Buffer(capacity=0)
        self._crypto_buffers_released = True

    def _rewrite_session_ticket(self, ticket: tls.SessionTicket) -> None:
        store = self._ticket_store
        if store is None:
            return
        buffers = _require(self, "_crypto_buffers")
        buf = buffers.get(tls.Epoch.ONE_RTT)
        data = b"" if buf is None else buf.data
        original = _encode_new_session_ticket(ticket, label=ticket.ticket,
                                              early=ticket.max_early_data_size)
        if buf is None or not data.endswith(original):
            error_logger.warning("aioquic's NewSessionTicket is not where quicserve expects it; "
                                 "this session ticket stays stateful and will not resume")
            return
        label = store.seal(ticket)
        early = ticket.max_early_data_size if self._early_data else None
        replacement = _encode_new_session_ticket(ticket, label=label, early=early,
                                                 lifetime=store.lifetime)
        buf.seek(len(data) - len(original))
        buf.push_bytes(replacement)


def _encode_new_session_ticket(ticket: tls.SessionTicket, *, label: bytes, early: int | None,
                               lifetime: float | None = None) -> bytes:
    """The NewSessionTicket handshake message aioquic sends for ``ticket``,
    with ``label`` as the ticket and the given early-data limit.  aioquic
    sends an empty nonce and no extensions besides early_data."""
    seconds = int((ticket.not_valid_after - ticket.not_valid_before).total_seconds())
    if lifetime is not None:
        seconds = min(seconds, int(lifetime))
    message = tls.NewSessionTicket(ticket_lifetime=seconds, ticket_age_add=ticket.age_add,
                                   ticket_nonce=b"", ticket=label, max_early_data_size=early)
    buf = Buffer(capacity=len(label) + 64)
    tls.push_new_session_ticket(buf, message)
    return bytes(buf.data)


# -- module-level spellings (what quic/connection.py calls) ---------------------------

def withhold_stream_credit(conn: ManagedQuicConnection, stream_id: int, n: int) -> None:
    """See :meth:`ManagedQuicConnection.withhold_stream_credit`."""
    conn.withhold_stream_credit(stream_id, n)


def grant_stream_credit(conn: ManagedQuicConnection, stream_id: int, n: int) -> None:
    """See :meth:`ManagedQuicConnection.grant_stream_credit`."""
    conn.grant_stream_credit(stream_id, n)


def stream_send_buffered(conn: ManagedQuicConnection, stream_id: int) -> int:
    """See :meth:`ManagedQuicConnection.stream_send_buffered`."""
    return conn.stream_send_buffered(stream_id)
