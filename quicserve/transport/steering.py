"""Steer QUIC packets to worker processes by their destination connection ID.

Theory of operation
-------------------
With ``--workers N`` every worker needs its own UDP socket: if all workers
read one shared socket, the packets of one connection land on whichever
worker happens to be reading, and that worker knows nothing of the
connection.  So the supervisor opens, per ``--quic-bind``, ``N`` sockets with
``SO_REUSEPORT`` on the same address -- one *reuseport group* -- and attaches
one classic BPF program to the group (``SO_ATTACH_REUSEPORT_CBPF``).  For every
datagram the kernel runs the program over the UDP payload; the number it
returns is the index of the socket (in bind order) that receives the datagram.

The program reads the first byte of the destination connection ID::

    A = payload[0]                 # QUIC first byte
    if A & 0x80:  A = payload[6]   # long header: DCID starts after version + length
    else:         A = payload[1]   # short header: DCID starts at once
    return A % N

``quic/cid.py`` issues, in worker ``i``, only connection IDs whose first byte
``b`` has ``b % N == i``, so every packet of a connection -- from the client's
first Initial (whose random DCID already picked a worker) to the close, across
client address and port changes -- reaches the worker that owns it.

Invariants
----------
* The group's order is the bind order, and the kernel fills a hole left by a
  closed socket with the *last* socket, which would reshuffle workers.  The
  supervisor therefore opens the whole group before any worker starts and never
  closes a socket of it; a restarted worker takes back the socket of the same
  index.
* A datagram too short for the program's loads makes classic BPF return 0
  (socket 0); a returned index beyond the group makes the kernel fall back to
  its hash.  Neither can happen to a valid QUIC packet this server accepts.

This module does socket set-up only; it never reads or writes datagrams.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from ..config import BindSpec
from ..errors import UnsupportedPlatform

#: ``<asm-generic/socket.h>``; the socket module does not export it.
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)

# Classic BPF opcodes (<linux/filter.h>, <linux/bpf_common.h>).
_BPF_LD_B_ABS = 0x00 | 0x10 | 0x20  # BPF_LD | BPF_B | BPF_ABS
_BPF_JMP_JSET_K = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
_BPF_JMP_JA = 0x05 | 0x00  # BPF_JMP | BPF_JA
_BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00  # BPF_ALU | BPF_MOD | BPF_K
_BPF_RET_A = 0x06 | 0x10  # BPF_RET | BPF_A

#: ``struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }``
_INSTRUCTION = struct.Struct("=HBBI")

#: Offsets of the DCID's first byte in the UDP payload.
LONG_HEADER_DCID_OFFSET = 6
SHORT_HEADER_DCID_OFFSET = 1
_LONG_HEADER_BIT = 0x80


def make_cbpf_program(count: int) -> bytes:
    """The steering program for a group of ``count`` sockets, as the kernel's
    array of ``struct sock_filter`` (8 bytes per instruction, native order).
    """
    if not 1 <= count <= 255:
        raise ValueError(f"a steering group holds 1 to 255 sockets, not {count}")
    instructions = (
        (_BPF_LD_B_ABS, 0, 0, 0),  # 0: A = payload[0]
        (_BPF_JMP_JSET_K, 0, 2, _LONG_HEADER_BIT),  # 1: long header? 2 : 4
        (_BPF_LD_B_ABS, 0, 0, LONG_HEADER_DCID_OFFSET),  # 2: A = payload[6]
        (_BPF_JMP_JA, 0, 0, 1),  # 3: goto 5
        (_BPF_LD_B_ABS, 0, 0, SHORT_HEADER_DCID_OFFSET),  # 4: A = payload[1]
        (_BPF_ALU_MOD_K, 0, 0, count),  # 5: A %= count
        (_BPF_RET_A, 0, 0, 0),  # 6: return A
    )
    return b"".join(_INSTRUCTION.pack(*ins) for ins in instructions)


def steer(payload: bytes, count: int) -> int:
    """What the program computes, in Python: the socket index a datagram goes
    to.  For tests and for logs; the kernel runs the real thing."""
    if not payload:
        return 0
    offset = LONG_HEADER_DCID_OFFSET if payload[0] & _LONG_HEADER_BIT else SHORT_HEADER_DCID_OFFSET
    if len(payload) <= offset:
        return 0
    return payload[offset] % count


def attach_steering(sock: socket.socket, count: int) -> None:
    """Attach the steering program to the reuseport group ``sock`` belongs to.

    Error handling: raises :class:`UnsupportedPlatform` when the kernel does
    not know ``SO_ATTACH_REUSEPORT_CBPF`` (Linux < 4.5, other systems).
    """
    program = make_cbpf_program(count)
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }:
    # the kernel copies the instructions during setsockopt, so the buffer only
    # has to outlive this call.
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // _INSTRUCTION.size, ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        raise UnsupportedPlatform(
            f"cannot attach the QUIC steering program (SO_ATTACH_REUSEPORT_CBPF): {exc.strerror}; "
            "--workers > 1 with --quic-bind needs Linux 4.5 or later"
        ) from exc


def _resolve(bind: BindSpec) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    if bind.kind != "inet":
        raise ValueError(f"a QUIC socket group needs host:port, not {bind}")
    infos = socket.getaddrinfo(
        bind.host, bind.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
    )
    family, _, _, _, address = infos[0]
    return family, address


def _reuseport_socket(family: socket.AddressFamily) -> socket.socket:
    reuseport = getattr(socket, "SO_REUSEPORT", None)
    if reuseport is None:
        raise UnsupportedPlatform("this platform has no SO_REUSEPORT; use --workers 1 for QUIC")
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, reuseport, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    except OSError as exc:
        sock.close()
        raise UnsupportedPlatform(f"cannot set SO_REUSEPORT: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def open_udp_group(bind: BindSpec, count: int) -> list[socket.socket]:
    """Open ``count`` UDP sockets on ``bind`` in one steered reuseport group.

    Socket ``i`` of the result receives exactly the datagrams whose DCID's
    first byte ``b`` has ``b % count == i``.  Port 0 picks one free port for
    the whole group.  The sockets are non-blocking.

    Error handling: :class:`UnsupportedPlatform` when SO_REUSEPORT or CBPF
    steering is missing; ``OSError`` when the address cannot be bound.

    Resource handling: the caller owns the sockets and must keep every one
    open for as long as the group serves (closing one reorders the group).
    On error, every socket opened so far is closed.
    """
    family, address = _resolve(bind)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = _reuseport_socket(family)
            sockets.append(sock)
            sock.bind(address)
            if not sockets[1:]:
                # Bind the rest to the port the first one got (port 0 case).
                address = (address[0], sock.getsockname()[1], *address[2:])
        attach_steering(sockets[0], count)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
