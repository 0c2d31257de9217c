"""The UDP fast path: GSO sends, GRO receives, socket buffer sizing.

Theory of operation
-------------------
A QUIC flush produces runs of datagrams of one size (full packets) to one
peer.  Sending each with ``sendto`` costs one system call and one trip down
the network stack per datagram, which dominates a Python server's send path.
Linux's UDP generic segmentation offload takes a whole run in one ``sendmsg``:
the payloads are passed as one scatter/gather list, a control message
``(SOL_UDP, UDP_SEGMENT, <segment size as uint16>)`` tells the kernel where to
cut, and it emits one datagram per segment (the last may be shorter).  On the
receive side ``UDP_GRO`` asks the kernel to hand over a train of same-size
datagrams from one sender as one buffer, with a ``UDP_GRO`` control message
carrying the segment size; :class:`UdpReceiver` cuts it back into datagrams.

Both features are detected once per socket at start-up
(:func:`detect_capabilities`) and fall back cleanly to plain ``sendto`` /
``recvfrom``: a kernel without them, or a test forcing them off, gets the same
datagrams through the slow path.  A GSO send the device refuses (``EIO``: no
checksum offload) turns GSO off for that sender for good; one the route refuses
(``EINVAL``/``EMSGSIZE``: a segment above the path MTU) is resent datagram by
datagram.

Who calls it: ``transport/udp_socket.py`` (the endpoint's socket I/O), which
owns the socket and the event-loop registration.  :class:`UdpSender` and
:class:`UdpReceiver` only move bytes, never wait and never block:
``send_batch`` stops at the first ``EAGAIN`` and says how far it got, so the
caller keeps the rest and waits until the socket is writable.

Addresses are whatever the socket family uses (``(host, port)`` for IPv4,
``(host, port, flowinfo, scope_id)`` for IPv6) and are compared for equality
to form runs; the endpoint passes back the address it received from.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass
from typing import Any, Sequence

from ..log import error_logger

#: ``<linux/udp.h>``; not exported by the socket module.
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)

#: ``UDP_MAX_SEGMENTS`` of Linux 4.18 to 6.x: most segments in one GSO send.
MAX_GSO_SEGMENTS = 64
#: The payload of one GSO send must fit one (unsegmented) IP datagram.
MAX_GSO_BYTES = 65000
#: Largest buffer the kernel may hand over: a GRO train or one datagram.
RECEIVE_BUFFER_SIZE = 1 << 16
#: Socket buffers asked for (the kernel caps them at net.core.[rw]mem_max).
DEFAULT_SOCKET_BUFFER = 4 * 1024 * 1024
#: Receive system calls per ``recv_batch`` at most, so one busy socket cannot
#: starve the event loop.
DEFAULT_MAX_READS = 64

_SEGMENT_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")

Address = Any  # tuple[str, int] or tuple[str, int, int, int]
Datagram = tuple[bytes, Address]


@dataclass(frozen=True, slots=True)
class UdpCapabilities:
    """What one UDP socket can do, found out once at start-up."""

    gso: bool
    gro: bool
    #: Effective buffer sizes in bytes, as the kernel reports them.
    rcvbuf: int
    sndbuf: int


def size_buffers(sock: socket.socket, size: int = DEFAULT_SOCKET_BUFFER) -> tuple[int, int]:
    """Ask for ``size``-byte receive and send buffers; return what the kernel
    granted (Linux reports twice the value it accounts, capped by rmem_max)."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError as exc:
            error_logger.debug("cannot size UDP socket buffer: %s", exc)
    rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    if rcvbuf < size:
        error_logger.debug(
            "UDP receive buffer is %d bytes, asked for %d (raise net.core.rmem_max)", rcvbuf, size
        )
    return rcvbuf, sndbuf


def _gso_supported(sock: socket.socket) -> bool:
    if not hasattr(socket, "SOL_UDP") or not hasattr(socket.socket, "sendmsg"):
        return False
    try:
        sock.getsockopt(socket.SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def _enable_gro(sock: socket.socket) -> bool:
    if not hasattr(socket, "SOL_UDP") or not hasattr(socket.socket, "recvmsg_into"):
        return False
    try:
        sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def detect_capabilities(
    sock: socket.socket,
    *,
    gso: bool = True,
    gro: bool = True,
    buffer_size: int = DEFAULT_SOCKET_BUFFER,
) -> UdpCapabilities:
    """Size the socket's buffers, turn GRO on and find out whether GSO works.

    ``gso=False`` / ``gro=False`` force the plain path (tests, comparisons).
    Call once per socket, before the first send or receive: GRO changes what
    the socket delivers.

    Error handling: never raises for a missing feature; it is reported as
    ``False`` in the result.
    """
    rcvbuf, sndbuf = size_buffers(sock, buffer_size)
    caps = UdpCapabilities(
        gso=gso and _gso_supported(sock),
        gro=gro and _enable_gro(sock),
        rcvbuf=rcvbuf,
        sndbuf=sndbuf,
    )
    error_logger.debug("UDP socket %s: %s", _name(sock), caps)
    return caps


def _name(sock: socket.socket) -> str:
    try:
        return str(sock.getsockname())
    except OSError:
        return "(unbound)"


class UdpSender:
    """Sends batches of datagrams on one non-blocking socket, GSO when it can.

    Counters (``syscalls``, ``datagrams``, ``gso_sends``, ``errors``) are
    plain integers for statistics and tests.
    """

    __slots__ = ("_sock", "_gso", "syscalls", "datagrams", "gso_sends", "errors")

    def __init__(self, sock: socket.socket, capabilities: UdpCapabilities) -> None:
        self._sock = sock
        self._gso = capabilities.gso
        self.syscalls = 0
        self.datagrams = 0
        self.gso_sends = 0
        self.errors = 0

    @property
    def gso(self) -> bool:
        return self._gso

    def send_batch(self, datagrams: Sequence[Datagram]) -> int:
        """Send ``datagrams`` in order; return how many were consumed.

        Consecutive datagrams to the same address with the same size (the
        last of a run may be shorter) go out in one GSO ``sendmsg``.

        Error handling: stops at the first ``EAGAIN`` (the socket buffer is
        full) and returns the index reached, so the caller resends
        ``datagrams[result:]`` once the socket is writable.  A datagram the
        kernel refuses for any other reason (unreachable, too big) is counted
        in ``errors``, logged at debug level and skipped: UDP is lossy and QUIC
        recovers.
        """
        index = 0
        total = len(datagrams)
        while index < total:
            end = self._run_end(datagrams, index) if self._gso else index + 1
            try:
                if end - index > 1:
                    self._send_gso(datagrams, index, end)
                else:
                    self._send_one(datagrams[index])
            except BlockingIOError:
                return index
            index = end
        return index

    def _run_end(self, datagrams: Sequence[Datagram], start: int) -> int:
        """One past the last datagram of the GSO run starting at ``start``."""
        first, address = datagrams[start]
        size = len(first)
        limit = min(len(datagrams), start + MAX_GSO_SEGMENTS, start + MAX_GSO_BYTES // max(size, 1))
        end = start + 1
        while end < limit:
            data, other = datagrams[end]
            if other != address or len(data) > size:
                break
            end += 1
            if len(data) < size:
                break  # a shorter segment can only be the last
        return end

    def _send_one(self, datagram: Datagram) -> None:
        data, address = datagram
        self.syscalls += 1
        try:
            self._sock.sendto(data, address)
        except BlockingIOError:
            raise
        except OSError as exc:
            self.errors += 1
            error_logger.debug("UDP send to %s failed: %s", address, exc)
            return
        self.datagrams += 1

    def _send_gso(self, datagrams: Sequence[Datagram], start: int, end: int) -> None:
        run = datagrams[start:end]
        segment = _SEGMENT_SIZE.pack(len(run[0][0]))
        self.syscalls += 1
        try:
            self._sock.sendmsg(
                [data for data, _ in run], [(socket.SOL_UDP, UDP_SEGMENT, segment)], 0, run[0][1]
            )
        except BlockingIOError:
            raise
        except OSError as exc:
            self._gso_failed(exc)
            self._send_plain(run)
            return
        self.gso_sends += 1
        self.datagrams += len(run)

    def _gso_failed(self, exc: OSError) -> None:
        if exc.errno in (errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            self._gso = False
            error_logger.info("UDP GSO refused by the device (%s); sending without it", exc)
        else:
            error_logger.debug("UDP GSO send failed (%s); resending datagram by datagram", exc)

    def _send_plain(self, run: Sequence[Datagram]) -> None:
        for number, datagram in enumerate(run):
            try:
                self._send_one(datagram)
            except BlockingIOError:
                # The run is consumed as a whole or not at all by send_batch;
                # dropping its tail here is what a full buffer does anyway.
                self.errors += len(run) - number
                return


class UdpReceiver:
    """Receives batches of datagrams from one non-blocking socket.

    With GRO a single ``recvmsg`` may return a train of segments from one
    sender; it is split by the segment size the kernel reports.  The receive
    buffer is allocated once and reused; each datagram is copied out once.
    """

    __slots__ = ("_sock", "_gro", "_buffer", "_view", "_ancbufsize", "max_reads",
                 "syscalls", "datagrams", "coalesced")

    def __init__(
        self,
        sock: socket.socket,
        capabilities: UdpCapabilities,
        *,
        max_reads: int = DEFAULT_MAX_READS,
    ) -> None:
        self._sock = sock
        self._gro = capabilities.gro
        self._buffer = bytearray(RECEIVE_BUFFER_SIZE)
        self._view = memoryview(self._buffer)
        self._ancbufsize = socket.CMSG_SPACE(_GRO_SIZE.size) if capabilities.gro else 0
        self.max_reads = max_reads
        self.syscalls = 0
        self.datagrams = 0
        #: Receives that carried more than one datagram.
        self.coalesced = 0

    def recv_batch(self) -> list[Datagram]:
        """Every datagram readable now (at most ``max_reads`` system calls).

        Error handling: returns what it has at ``EAGAIN``; an ICMP error
        reported on the socket (``ConnectionError``) is skipped; any other
        ``OSError`` propagates.
        """
        received: list[Datagram] = []
        for _ in range(self.max_reads):
            try:
                if self._gro:
                    self._receive_gro(received)
                else:
                    self._receive_plain(received)
            except BlockingIOError:
                break
            except ConnectionError as exc:
                error_logger.debug("UDP socket reported %s", exc)
        return received

    def _receive_plain(self, received: list[Datagram]) -> None:
        nbytes, address = self._sock.recvfrom_into(self._buffer)
        self.syscalls += 1
        self.datagrams += 1
        received.append((bytes(self._view[:nbytes]), address))

    def _receive_gro(self, received: list[Datagram]) -> None:
        nbytes, ancdata, _flags, address = self._sock.recvmsg_into([self._buffer], self._ancbufsize)
        self.syscalls += 1
        segment = _gro_segment_size(ancdata) or nbytes
        view = self._view
        if segment >= nbytes:
            received.append((bytes(view[:nbytes]), address))
            self.datagrams += 1
            return
        self.coalesced += 1
        for offset in range(0, nbytes, segment):
            received.append((bytes(view[offset:min(offset + segment, nbytes)]), address))
            self.datagrams += 1


def _gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancdata:
        if level == socket.SOL_UDP and kind == UDP_GRO:
            if len(data) >= _GRO_SIZE.size:
                return int(_GRO_SIZE.unpack_from(data)[0])
            if len(data) >= _SEGMENT_SIZE.size:
                return int(_SEGMENT_SIZE.unpack_from(data)[0])
    return 0

