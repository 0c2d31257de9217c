"""The bulk send path: 1-RTT packets of one stream's data, built without
aioquic's general packet builder.

Theory of operation
-------------------
aioquic builds every packet the same way: ``_write_application`` opens a
packet in a :class:`~aioquic.quic.packet_builder.QuicPacketBuilder`, asks
each of about fifteen frame kinds whether it has something to say (ACK,
path validation, HANDSHAKE_DONE, connection IDs, limits of the connection
and of *every* stream, PING, CRYPTO, DATAGRAM, then each stream in turn),
and the builder seals the packet.  For a large response that is ~40 us of
Python per 1.3 KB packet, and it is most of the server's CPU in a download
(issue 6: the 32 MiB download must reach 2x Hypercorn).

While a connection is in the steady state of a download nothing but one
stream's data (and perhaps an ACK) is due, so :func:`write_bulk` checks that
once per flush and then writes each packet directly: short header, the ACK
in the first packet when one is due, one STREAM frame taken from
aioquic's own stream sender (so retransmission of lost ranges, FIN and
acknowledgement stay aioquic's), AEAD and header protection with the
connection's 1-RTT keys, and a :class:`QuicSentPacket` carrying the same
delivery handler aioquic would register.  The packets go into the builder's
output lists, so ``_flush_builder`` registers them with loss recovery and
congestion control exactly like the ones aioquic builds; pacing and the
congestion window are applied per packet as in ``_write_application``.

Whenever anything else could be due -- an ACK of several ranges (aioquic
may add a PING to it), a control frame, a limit
update, a finished, reset or stopped stream, a second stream with data, a
key update, a qlog trace, an unvalidated path -- :func:`write_bulk` returns
False before touching anything and aioquic's own path builds the packets.
The checks mirror aioquic 1.7's ``_write_application`` and
``_write_connection_limits`` and quicserve's ``_write_stream_limits``;
``tests/unit/quic/test_bulk.py`` pins the private names used here and
proves, against a real aioquic client over a lossy in-memory link, that the
data arrives intact and that the bulk path carried most of it.

This module does no I/O and reads no clock; like ``internals.py`` it is
allowed to touch aioquic's private state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.packet import PACKET_FIXED_BIT, QuicFrameType, QuicPacketType, push_ack_frame
from aioquic.quic.packet_builder import QuicSentPacket

if TYPE_CHECKING:
    from quicserve.quic.internals import ManagedQuicConnection

#: aioquic always writes 2-byte packet numbers (PACKET_NUMBER_SEND_SIZE).
PN_LENGTH = 2
#: Header protection samples 16 bytes starting 4 bytes after the packet
#: number's first byte (RFC 9001 section 5.4.2): with a 2-byte number, at
#: offset 2 of the protected payload.
_SAMPLE_OFFSET = 4 - PN_LENGTH
_ONE_RTT = tls.Epoch.ONE_RTT
_ONE_RTT_TYPE = QuicPacketType.ONE_RTT
#: STREAM frame type with the LEN bit; OFF (4) and FIN (1) are or-ed in.
_STREAM_LEN = 0x08 | 0x02
#: The frame's length field is always 2 bytes, as aioquic writes it.
_MAX_FRAME_DATA = 0x3FFF
#: An ACK frame of one range: its type and four varints of at most 8 bytes.
_ACK_CAPACITY = 1 + 4 * 8


def write_bulk(conn: ManagedQuicConnection, builder: Any, network_path: Any, now: float) -> bool:
    """Build this flush's packets for the one stream with data, if nothing
    else is due; return False (having changed nothing) otherwise."""
    stream = _bulk_stream(conn, builder, network_path, now)
    if stream is None:
        return False
    _write_packets(conn, builder, stream, now)
    return True


def _bulk_stream(conn: ManagedQuicConnection, builder: Any, network_path: Any,
                 now: float) -> Any:
    """The single stream whose data is all there is to send, or None."""
    if (conn._quic_logger is not None or not conn._handshake_confirmed
            or builder._packet is not None or builder._buffer.tell()
            or builder._datagram_needs_padding
            or builder.max_total_bytes is not None or builder.max_flight_bytes is None):
        return None
    crypto = conn._cryptos[_ONE_RTT]
    if not crypto.send.is_valid() or crypto._update_key_requested:
        return None
    space = conn._spaces[_ONE_RTT]
    if space.ack_at is not None and space.ack_at <= now and len(space.ack_queue) != 1:
        return None  # (several ACK ranges: aioquic may add an ACK-of-ACK PING)
    if (conn._handshake_done_pending or conn._retire_connection_ids
            or conn._streams_blocked_pending or conn._ping_pending or conn._probe_pending
            or conn._datagrams_pending or network_path.remote_challenges
            or not network_path.is_validated):
        return None
    if not conn._crypto_streams[_ONE_RTT].sender.buffer_is_empty:
        return None
    for connection_id in conn._host_cids:
        if not connection_id.was_sent:
            return None
    if _connection_limit_due(conn):
        return None
    found = None
    for stream in conn._streams_queue:
        sender = stream.sender
        if (stream.is_finished or stream.receiver.stop_pending or sender.reset_pending
                or conn.stream_limit_due(stream)):
            return None
        if not stream.is_blocked and not sender.buffer_is_empty:
            if found is not None:
                return None
            found = stream
    return found


def _connection_limit_due(conn: ManagedQuicConnection) -> bool:
    """Whether aioquic's ``_write_connection_limits`` would write a frame."""
    max_data = conn._local_max_data
    if max_data.used * 2 > max_data.value or max_data.value != max_data.sent:
        return True
    for limit in (conn._local_max_streams_bidi, conn._local_max_streams_uni):
        if limit.value != limit.sent and limit.sent - limit.used < limit.value - limit.sent:
            return True
    return False


def _write_packets(conn: ManagedQuicConnection, builder: Any, stream: Any, now: float) -> None:
    crypto = conn._cryptos[_ONE_RTT]
    space = conn._spaces[_ONE_RTT]
    send: Any = crypto.send  # (its aead and hp are set: is_valid() was checked)
    aead_encrypt = send.aead.encrypt
    tag_size = crypto.aead_tag_size
    first_byte = (PACKET_FIXED_BIT | (builder._spin_bit << 5) | (crypto.key_phase << 2)
                  | (PN_LENGTH - 1)).to_bytes(1, "big")
    peer_cid = builder._peer_cid
    header_size = 1 + len(peer_cid) + PN_LENGTH
    pacer = conn._loss._pacer
    sender = stream.sender
    stream_id = _varint(stream.stream_id)
    on_delivery = sender.on_data_delivery
    packets = builder._packets
    capacity = builder._buffer_capacity
    flight_left = builder.max_flight_bytes - builder._flight_bytes
    packet_number = builder._packet_number
    ack_due = space.ack_at is not None and space.ack_at <= now
    sealed: list[tuple[bytes, bytes]] = []  # (plain header, protected payload)
    sent_any = False
    while True:
        handlers: list[tuple[Any, Any]] = []
        if ack_due:
            # An ACK is due: it rides in this packet, which is not paced
            # (as in aioquic), and goes out even without stream data.
            ack = _ack_frame(conn, space, now)
            handlers.append((conn._on_ack_delivery, (space, space.largest_received_packet)))
        else:
            ack = b""
            conn._pacing_at = pacer.next_send_time(now=now)
            if conn._pacing_at is not None:
                break
        next_offset = sender.next_offset
        overhead = 3 + len(stream_id) + (len(_varint(next_offset)) if next_offset else 0)
        room = min(capacity, flight_left) - header_size - tag_size - overhead - len(ack)
        if room > _MAX_FRAME_DATA:
            room = _MAX_FRAME_DATA
        previous_high = sender.highest_offset
        frame = sender.get_frame(room, min(
            previous_high + conn._remote_max_data - conn._remote_max_data_used,
            stream.max_stream_data_remote))
        if frame is not None:
            data = frame.data
            offset = frame.offset
            frame_type = _STREAM_LEN | (4 if offset else 0) | (1 if frame.fin else 0)
            payload = b"".join((
                ack, frame_type.to_bytes(1, "big"), stream_id,
                _varint(offset) if offset else b"",
                (len(data) | 0x4000).to_bytes(2, "big"), data))
            handlers.append((on_delivery, (offset, offset + len(data), frame.fin)))
            conn._remote_max_data_used += sender.highest_offset - previous_high
        elif ack_due:
            payload = ack
        else:
            break
        header = first_byte + peer_cid + (packet_number & 0xFFFF).to_bytes(2, "big")
        protected = aead_encrypt(payload, header, packet_number)
        sealed.append((header, protected))
        size = len(header) + len(protected)
        eliciting = frame is not None
        packets.append(QuicSentPacket(
            epoch=_ONE_RTT, in_flight=eliciting, is_ack_eliciting=eliciting,
            is_crypto_packet=False, packet_number=packet_number, packet_type=_ONE_RTT_TYPE,
            sent_bytes=size, delivery_handlers=handlers))
        builder._total_bytes += size
        if eliciting:
            builder._flight_bytes += size
            flight_left -= size
            sent_any = True
        packet_number += 1
        pacer.update_after_send(now=now)
        ack_due = False
    builder._packet_number = packet_number
    if sealed:
        builder._datagrams.extend(_protect_headers(send.hp, sealed))
    if sent_any:
        # aioquic's service order: a stream that sent moves to the back.
        queue = conn._streams_queue
        queue.remove(stream)
        queue.append(stream)


def _ack_frame(conn: ManagedQuicConnection, space: Any, now: float) -> bytes:
    """The ACK frame for ``space`` (one range), marking the ACK as sent."""
    delay = int((now - space.largest_received_time) * 1000000) >> conn._local_ack_delay_exponent
    buf = Buffer(capacity=_ACK_CAPACITY)
    buf.push_uint_var(QuicFrameType.ACK)
    push_ack_frame(buf, space.ack_queue, delay, _ACK_CAPACITY - 1)
    space.ack_at = None
    return bytes(buf.data)


def _protect_headers(hp: Any, sealed: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The datagrams: each header masked with the sample of its payload
    (RFC 9001 section 5.4).  With AES the masks are one ECB pass over all
    the samples, since each 16-byte block is encrypted independently."""
    start, stop = _SAMPLE_OFFSET, _SAMPLE_OFFSET + 16
    if hp._is_chacha20:
        masks = [hp._mask(protected[start:stop]) for _, protected in sealed]
    else:
        joined = hp._mask(b"".join([protected[start:stop] for _, protected in sealed]))
        masks = [joined[i:i + 16] for i in range(0, len(joined), 16)]
    datagrams = []
    for (header, protected), mask in zip(sealed, masks):
        masked = bytearray(header)
        masked[0] ^= mask[0] & 0x1F
        masked[-2] ^= mask[1]
        masked[-1] ^= mask[2]
        datagrams.append(bytes(masked) + protected)
    return datagrams


def _varint(value: int) -> bytes:
    """``value`` as a QUIC variable-length integer (RFC 9000 section 16)."""
    if value < 0x40:
        return value.to_bytes(1, "big")
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")
