"""The bulk send path: 1-RTT packets of stream data, built without
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
(issue 6: the 32 MiB download must reach 2x Hypercorn); for many small
responses at once, every packet walks every open stream twice.

In the steady state of a server nothing but stream data, perhaps an ACK and
now and then a MAX_DATA/MAX_STREAMS update is due, so :func:`write_bulk`
checks that once per flush and then writes each packet directly: short
header; in the first packet the ACK and the connection-limit frames
(decided exactly as aioquic's ``_write_connection_limits`` decides them);
then STREAM frames taken from aioquic's own stream senders (so
retransmission of lost ranges, FIN and acknowledgement stay aioquic's), the
streams in aioquic's service order, each filling what is left of the packet
before the next starts; AEAD and header protection with the connection's
1-RTT keys; and a :class:`QuicSentPacket` carrying the same delivery
handlers aioquic would register.  Finished streams are discarded first, as
aioquic does on its way through the queue, and the streams that sent move
to the back of it.  The packets go into the builder's output lists, so
``_flush_builder`` registers them with loss recovery and congestion control
exactly like the ones aioquic builds; pacing, the congestion window and the
peer's MAX_DATA/MAX_STREAM_DATA are applied per packet as in
``_write_application``.

Whenever anything else could be due -- an ACK of several ranges (aioquic
may add a PING to it), another control frame, a stream's MAX_STREAM_DATA, a
reset or stopped stream, a key update, a qlog trace, an unvalidated path --
:func:`write_bulk` returns False before touching anything and aioquic's own
path builds the packets.  The checks mirror aioquic 1.7's
``_write_application`` and ``_write_connection_limits`` and quicserve's
``_write_stream_limits``; ``tests/unit/quic/test_bulk.py`` pins the private
names used here and proves, against a real aioquic client over a lossy
in-memory link, that the data arrives intact, that streams are recycled
and that the bulk path carried most of it.

This module does no I/O and reads no clock; like ``internals.py`` it is
allowed to touch aioquic's private state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.connection import stream_is_client_initiated
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
#: The encoded frame type for each OFF|FIN combination, made once.
_STREAM_TYPES = [(_STREAM_LEN | bits).to_bytes(1, "big") for bits in range(8)]
#: The frame's length field is always 2 bytes, as aioquic writes it.
_MAX_FRAME_DATA = 0x3FFF
#: An ACK frame of one range: its type and four varints of at most 8 bytes.
_ACK_CAPACITY = 1 + 4 * 8


def write_bulk(conn: ManagedQuicConnection, builder: Any, network_path: Any, now: float) -> bool:
    """Build this flush's packets when only stream data (and perhaps an ACK
    or a connection-level limit) is due; return False, having changed
    nothing, otherwise."""
    ready = _ready_streams(conn, builder, network_path, now)
    if ready is None:
        return False
    _write_packets(conn, builder, ready, _connection_limit_frames(conn), now)
    return True


def _ready_streams(conn: ManagedQuicConnection, builder: Any, network_path: Any,
                   now: float) -> list[Any] | None:
    """The streams with data to send, in aioquic's service order, once the
    finished ones are discarded; None (nothing changed) when anything this
    path does not write is due."""
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
    ready = []
    finished = []
    stream_limit_due = conn.stream_limit_due
    for stream in conn._streams_queue:
        sender = stream.sender
        if stream.receiver.stop_pending or sender.reset_pending or stream_limit_due(stream):
            return None
        if stream.is_finished:
            finished.append(stream)
        elif not stream.is_blocked and not sender.buffer_is_empty:
            ready.append(stream)
    if finished:
        _discard(conn, finished)
    return ready


def _discard(conn: ManagedQuicConnection, finished: list[Any]) -> None:
    """Forget finished streams, as ``_write_application`` does on its way
    through the queue; each one the peer opened lets it open another (the
    MAX_STREAMS frame follows from :func:`_connection_limit_frames`)."""
    streams = conn._streams
    is_client = conn._is_client
    for stream in finished:
        stream_id = stream.stream_id
        del streams[stream_id]
        if stream_is_client_initiated(stream_id) != is_client:
            conn._stream_limit(stream_id).value += 1
    gone = set(finished)
    conn._streams_queue = [stream for stream in conn._streams_queue if stream not in gone]


def _connection_limit_frames(conn: ManagedQuicConnection) -> list[tuple[bytes, Any]]:
    """MAX_DATA / MAX_STREAMS frames due now, with their delivery handlers,
    exactly as aioquic's ``_write_connection_limits`` decides them (marking
    them sent)."""
    max_data = conn._local_max_data
    if max_data.used * 2 > max_data.value:
        max_data.value *= 2
    frames = []
    for limit in (max_data, conn._local_max_streams_bidi, conn._local_max_streams_uni):
        if limit is not max_data and limit.sent - limit.used >= limit.value - limit.sent:
            continue  # (aioquic batches MAX_STREAMS: not due yet)
        if limit.value != limit.sent:
            frames.append((_varint(limit.frame_type) + _varint(limit.value),
                           (conn._on_connection_limit_delivery, (limit,))))
            limit.sent = limit.value
    return frames


def _write_packets(conn: ManagedQuicConnection, builder: Any, ready: list[Any],
                   limits: list[tuple[bytes, Any]], now: float) -> None:
    """The packets: the ACK and limit frames in the first, then the ready
    streams' data in service order, as many STREAM frames per packet as fit
    (each stream fills what is left before the next one starts)."""
    crypto = conn._cryptos[_ONE_RTT]
    space = conn._spaces[_ONE_RTT]
    send: Any = crypto.send  # (its aead and hp are set: is_valid() was checked)
    # aioquic's AEAD.encrypt, without its two Python calls per packet: the
    # cipher's own encrypt, with the nonce made as AEAD._nonce makes it.
    aead_encrypt = send.aead._aead.encrypt
    iv = send.aead._iv
    tag_size = crypto.aead_tag_size
    first_byte = (PACKET_FIXED_BIT | (builder._spin_bit << 5) | (crypto.key_phase << 2)
                  | (PN_LENGTH - 1)).to_bytes(1, "big")
    peer_cid = builder._peer_cid
    header_size = 1 + len(peer_cid) + PN_LENGTH
    # The pacer's token bucket, as QuicPacketPacer.next_send_time and
    # update_after_send move it.  ``now`` is the same for every packet of
    # this flush, so the bucket is refilled once, here, and the per-packet
    # test and charge are done on a local (written back at the end).
    pacer = conn._loss._pacer
    packet_time = pacer.packet_time
    if packet_time is not None:
        pacer.update_bucket(now=now)
    bucket = pacer.bucket_time
    packets = builder._packets
    capacity = builder._buffer_capacity
    flight_left = builder.max_flight_bytes - builder._flight_bytes
    packet_number = builder._packet_number
    ack_due = space.ack_at is not None and space.ack_at <= now
    sealed: list[tuple[bytes, bytes]] = []  # (plain header, protected payload)
    sent: list[Any] = []
    index = 0  # the stream in ``ready`` being served
    serving: Any = None
    sender: Any = None
    stream_id = b""
    while True:
        parts: list[bytes] = []
        handlers: list[tuple[Any, Any]] = []
        if ack_due:
            # An ACK is due: it rides in this packet, which is not paced
            # (as in aioquic), and goes out even without stream data.
            parts.append(_ack_frame(conn, space, now))
            handlers.append((conn._on_ack_delivery, (space, space.largest_received_packet)))
        elif packet_time is not None and bucket <= 0:
            conn._pacing_at = now + packet_time
            break
        else:
            conn._pacing_at = None
        eliciting = bool(limits)
        for frame_bytes, handler in limits:
            parts.append(frame_bytes)
            handlers.append(handler)
        limits = []
        room = min(capacity, flight_left) - header_size - tag_size - sum(map(len, parts))
        while index < len(ready):
            stream = ready[index]
            if stream is not serving:
                # (the stream ID's encoding is made once per stream, not per frame)
                serving = stream
                sender = stream.sender
                stream_id = _varint(stream.stream_id)
            next_offset = sender.next_offset
            offset_bytes = _varint(next_offset) if next_offset else b""
            overhead = 3 + len(stream_id) + len(offset_bytes)
            size = room - overhead
            if size <= 0:
                break  # (this packet is full; the stream goes on in the next)
            if size > _MAX_FRAME_DATA:
                size = _MAX_FRAME_DATA
            previous_high = sender.highest_offset
            credit = previous_high + conn._remote_max_data - conn._remote_max_data_used
            stream_credit = stream.max_stream_data_remote
            frame = sender.get_frame(size, credit if credit < stream_credit else stream_credit)
            if frame is None:
                index += 1  # (all sent, or flow control stops it)
                continue
            data = frame.data
            offset = frame.offset
            if offset != next_offset:  # (a lost range sent again, further back)
                offset_bytes = _varint(offset) if offset else b""
            parts.append(b"".join((
                _STREAM_TYPES[(4 if offset else 0) | (1 if frame.fin else 0)], stream_id,
                offset_bytes, (len(data) | 0x4000).to_bytes(2, "big"), data)))
            handlers.append((sender.on_data_delivery, (offset, offset + len(data), frame.fin)))
            conn._remote_max_data_used += sender.highest_offset - previous_high
            room -= overhead + len(data)
            eliciting = True
            if not sent or sent[-1] is not stream:
                sent.append(stream)
            if len(data) < size and not len(sender._pending) and not sender._pending_eof:
                index += 1  # (nothing left: no lost range to resend, no FIN)
        if not parts:
            break
        header = first_byte + peer_cid + (packet_number & 0xFFFF).to_bytes(2, "big")
        protected = aead_encrypt((iv ^ packet_number).to_bytes(12, "big"), b"".join(parts),
                                 header)
        sealed.append((header, protected))
        packet_size = len(header) + len(protected)
        packets.append(QuicSentPacket(
            epoch=_ONE_RTT, in_flight=eliciting, is_ack_eliciting=eliciting,
            is_crypto_packet=False, packet_number=packet_number, packet_type=_ONE_RTT_TYPE,
            sent_bytes=packet_size, delivery_handlers=handlers))
        builder._total_bytes += packet_size
        if eliciting:
            builder._flight_bytes += packet_size
            flight_left -= packet_size
        packet_number += 1
        if packet_time is not None:
            bucket = 0.0 if bucket < packet_time else bucket - packet_time
        ack_due = False
        if index >= len(ready):
            break
    pacer.bucket_time = bucket
    builder._packet_number = packet_number
    if sealed:
        builder._datagrams.extend(_protect_headers(send.hp, sealed))
    if sent:
        # aioquic's service order: the streams that sent move to the back.
        moved = set(sent)
        queue = [stream for stream in conn._streams_queue if stream not in moved]
        queue.extend(sent)
        conn._streams_queue = queue


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
