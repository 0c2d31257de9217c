"""SocketIO: the UDP socket under a ``UdpEndpoint``, with GRO receives and GSO sends.

Theory of operation
-------------------
``transport/udp.py`` decides what to send and what a datagram means; this
module only moves datagrams between it and one non-blocking UDP socket,
through ``transport/batch.py``:

* **receive** -- the socket is registered with ``loop.add_reader``; each time
  it is readable, :class:`~quicserve.transport.batch.UdpReceiver` reads every
  datagram waiting (a bounded number of system calls, GRO trains split back
  into datagrams) and each is handed to ``on_datagram`` in arrival order.
  The endpoint's one flush per loop turn then answers the whole batch.
* **send** -- :meth:`SocketIO.send` gives a flush's datagrams to
  :class:`~quicserve.transport.batch.UdpSender`, which sends runs of equal-size
  datagrams to one peer in one GSO ``sendmsg``.  When the socket buffer is
  full (``EAGAIN``) the rest waits in a bounded backlog, sent in order once
  ``loop.add_writer`` reports the socket writable; datagrams beyond the bound
  are dropped (and counted), as a full network queue would: QUIC recovers.

Never: await, parse QUIC, or hold more than :data:`MAX_BACKLOG` datagrams.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable

from ..log import error_logger
from .batch import UdpReceiver, UdpSender, detect_capabilities

Datagram = tuple[bytes, Any]
#: Datagrams kept while the socket is not writable; beyond this they are dropped.
MAX_BACKLOG = 4096


class SocketIO:
    """Moves datagrams between one UDP socket and its endpoint.

    Error handling: receive errors other than ``EAGAIN`` and ICMP reports are
    logged and the wake-up ends; send errors are handled by ``UdpSender``
    (counted, skipped).  Resource handling: owns ``sock`` from construction;
    :meth:`close` unregisters it from the loop and closes it.
    """

    def __init__(self, sock: socket.socket, *, loop: asyncio.AbstractEventLoop,
                 on_datagram: Callable[[bytes, Any], None]) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = loop
        self._on_datagram = on_datagram
        self.capabilities = detect_capabilities(sock)
        self._sender = UdpSender(sock, self.capabilities)
        self._receiver = UdpReceiver(sock, self.capabilities)
        self._backlog: list[Datagram] = []
        self._closed = False
        #: Datagrams dropped because the backlog was full.
        self.dropped = 0
        name = sock.getsockname()
        self.address: tuple[str, int] = (name[0], name[1])
        loop.add_reader(sock.fileno(), self._readable)

    def send(self, datagrams: list[Datagram]) -> int:
        """Send (or queue) ``datagrams`` in order; how many were accepted."""
        if self._closed or not datagrams:
            return 0
        if self._backlog:
            return self._queue(datagrams)
        sent = self._sender.send_batch(datagrams)
        if sent < len(datagrams):
            accepted = sent + self._queue(datagrams[sent:])
            self._loop.add_writer(self._sock.fileno(), self._writable)
            return accepted
        return sent

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._backlog.clear()
        fd = self._sock.fileno()
        if fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        self._sock.close()

    @property
    def statistics(self) -> dict[str, int]:
        sender, receiver = self._sender, self._receiver
        return {"send_syscalls": sender.syscalls, "gso_sends": sender.gso_sends,
                "send_errors": sender.errors, "recv_syscalls": receiver.syscalls,
                "gro_coalesced": receiver.coalesced, "backlog_dropped": self.dropped}

    # -- internals -----------------------------------------------------------------

    def _queue(self, datagrams: list[Datagram]) -> int:
        room = MAX_BACKLOG - len(self._backlog)
        accepted = datagrams[:max(room, 0)]
        self._backlog.extend(accepted)
        self.dropped += len(datagrams) - len(accepted)
        return len(accepted)

    def _readable(self) -> None:
        try:
            batch = self._receiver.recv_batch()
        except OSError as exc:
            error_logger.debug("UDP receive failed: %s", exc)
            return
        on_datagram = self._on_datagram
        for data, addr in batch:
            on_datagram(data, addr)

    def _writable(self) -> None:
        backlog = self._backlog
        sent = self._sender.send_batch(backlog)
        del backlog[:sent]
        if not backlog:
            self._loop.remove_writer(self._sock.fileno())
