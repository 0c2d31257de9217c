"""An in-memory datagram link with loss and reorder hooks, and a fake UDP transport.

:class:`DatagramLink` carries datagrams between addresses and holds them
until a test delivers them, so the test decides the interleaving.  Hooks:

* ``lose`` -- a predicate ``(data, src, dst) -> bool``; True drops the
  datagram (counted in ``lost``).
* ``reorder`` -- when True, each delivery hands queued datagrams over in
  reverse order.
* ``rewrite_source`` -- maps a source address to the one the receiver sees
  (a NAT rebinding the client's port).

:class:`MemoryDatagramTransport` is the endpoint's ``DatagramIO``
(``send`` a flush's datagrams, ``close``), writing into a link.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

Address = tuple[str, int]
Datagram = tuple[bytes, Address]


class DatagramLink:
    def __init__(self) -> None:
        self._queues: dict[Address, deque[Datagram]] = {}
        self.lose: Callable[[bytes, Address, Address], bool] | None = None
        self.reorder = False
        self.rewrite_source: dict[Address, Address] = {}
        self.sent = 0
        self.lost = 0
        #: Every datagram that made it onto the link: (data, src, dst).
        self.log: list[tuple[bytes, Address, Address]] = []

    def send(self, data: bytes, src: Address, dst: Address) -> None:
        self.sent += 1
        if self.lose is not None and self.lose(data, src, dst):
            self.lost += 1
            return
        src = self.rewrite_source.get(src, src)
        self.log.append((data, src, dst))
        self._queues.setdefault(dst, deque()).append((data, src))

    def receive(self, dst: Address) -> list[Datagram]:
        """Take every datagram queued for ``dst``."""
        queue = self._queues.get(dst)
        if not queue:
            return []
        items = list(queue)
        queue.clear()
        if self.reorder:
            items.reverse()
        return items

    def pending(self, dst: Address | None = None) -> int:
        if dst is not None:
            return len(self._queues.get(dst, ()))
        return sum(len(q) for q in self._queues.values())


class MemoryDatagramTransport:
    """A ``DatagramIO`` (``transport/udp.py``) writing into a link."""

    def __init__(self, link: DatagramLink, address: Address) -> None:
        self._link = link
        self.address = address
        self.closed = False
        #: How many send() calls (one per flush with something to send).
        self.batches = 0

    def send(self, datagrams: list[tuple[bytes, Any]]) -> int:
        """What ``UdpEndpoint`` hands its DatagramIO: one flush's datagrams."""
        if self.closed:
            return 0
        for data, addr in datagrams:
            self._link.send(data, self.address, (addr[0], addr[1]))
        self.batches += 1
        return len(datagrams)

    def close(self) -> None:
        self.closed = True
