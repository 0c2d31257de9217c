"""Crafted QUIC datagrams for sans-IO router tests.

The router only reads headers, so most helpers build a correct header and
fill the protected payload with random bytes.  :func:`client_initial` builds
a real, decryptable Initial with aioquic's client instead.
"""

from __future__ import annotations

import os

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, encode_long_header_first_byte

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF
CLIENT_ADDR = ("192.0.2.10", 45678)


def encode_varint(value: int) -> bytes:
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def long_header(
    *,
    version: int = VERSION_1,
    packet_type: QuicPacketType = QuicPacketType.INITIAL,
    dcid: bytes | None = None,
    scid: bytes | None = None,
    token: bytes = b"",
    size: int = 1200,
) -> bytes:
    """One long-header packet padded to exactly ``size`` bytes.

    For unknown versions the type bits are encoded as in v1 (they mean
    nothing there).  Initials carry the token; every type carries a Length
    field that covers the rest of the datagram.
    """
    dcid = os.urandom(8) if dcid is None else dcid
    scid = os.urandom(8) if scid is None else scid
    first = encode_long_header_first_byte(version, packet_type, 0x03)
    head = (bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
            + bytes((len(scid),)) + scid)
    if packet_type == QuicPacketType.INITIAL:
        head += encode_varint(len(token)) + token
    # A two-byte Length field covering the rest (any payload below 16 KiB).
    payload_len = size - len(head) - 2
    if not 0 <= payload_len < 1 << 14:
        raise ValueError(f"size {size} does not fit this header")
    length_field = (payload_len | 0x4000).to_bytes(2, "big")
    return head + length_field + os.urandom(payload_len)


def initial(*, version: int = VERSION_1, dcid: bytes | None = None, scid: bytes | None = None,
            token: bytes = b"", size: int = 1200) -> bytes:
    return long_header(version=version, packet_type=QuicPacketType.INITIAL, dcid=dcid,
                       scid=scid, token=token, size=size)


def short_header(dcid: bytes, *, size: int = 60) -> bytes:
    """A 1-RTT packet to ``dcid`` of ``size`` bytes (fixed bit set, random payload)."""
    if size < 1 + len(dcid):
        raise ValueError("size too small for the DCID")
    first = 0x40 | (os.urandom(1)[0] & 0x3F)
    return bytes((first,)) + dcid + os.urandom(size - 1 - len(dcid))


def client_initial(*, version: int = VERSION_1, server_name: str = "localhost",
                   now: float = 0.0) -> tuple[bytes, QuicConnection]:
    """A real client Initial datagram from aioquic (padded to 1200 bytes),
    with the client connection that made it."""
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                      server_name=server_name,
                                      original_version=version)
    client = QuicConnection(configuration=configuration)
    client.connect(("127.0.0.1", 4433), now=now)
    datagrams = client.datagrams_to_send(now=now)
    if not datagrams:
        raise RuntimeError("aioquic client produced no Initial")
    return datagrams[0][0], client
