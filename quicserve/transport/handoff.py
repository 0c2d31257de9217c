"""Handing new QUIC connections to the least-loaded worker.

Theory of operation
-------------------
With ``--workers N`` the kernel steers a client's *first* Initial by the
first byte of a destination connection ID the client picked at random
(``transport/steering.py``).  Over many connections that evens out; over a
few long-lived ones it does not: eight connections split 5/3 or 6/2 between
two workers more often than 4/4, and the busier worker then sets the pace
(a benchmark or a proxy multiplexing thousands of requests over a handful of
connections sees exactly this).  Only the first Initials are at the mercy of
the client's choice: from the server's first packet on, the client addresses
the connection by IDs the owning worker issued (``quic/cid.py``).

So before a worker creates a connection it may hand the datagram to another
worker instead, which then owns the connection from its first packet.  The
client notices nothing: the other worker answers from a socket bound to the
same address and port, with connection IDs that steer to itself, and no
round trip is added (a Retry could steer too, at the price of one).

The pieces, made by the supervisor **before it forks** (so every worker
inherits them, and a restarted worker takes back its own):

* a **load board**: one shared anonymous ``mmap`` per ``--quic-bind`` group
  with one signed 64-bit slot per worker, the number of QUIC sessions the
  worker holds on that group, which only that worker writes.  The supervisor
  writes :data:`UNAVAILABLE` into the slot of a worker that exited, and a
  worker that stops accepting (graceful shutdown, recycling, SIGHUP) writes
  it itself, so nobody hands connections to it;
* an **inbox** per worker per group: a non-blocking ``AF_UNIX``
  ``SOCK_DGRAM`` socket pair.  A handed-over datagram travels as one message:
  a small header with the client's address, then the datagram as it was
  received.

The decision (:meth:`Handoff.choose`) is made by the router for a new Initial
only, never for a datagram that was itself handed over: pick the available
worker with the fewest sessions; hand over when this worker holds more than
that plus an eighth of its own (the slack keeps large, nearly even groups
from trading connections back and forth).  A worker that is not accepting
hands every new Initial over.  Sessions handed over but not yet counted by
their new owner are remembered locally until the owner's slot moves, so a
burst of Initials read in one batch does not all go the same way.

Error handling: a message that cannot be sent (the inbox is full because
its worker is gone or stalled) makes :meth:`Handoff.forward` return False,
and the endpoint then serves the connection itself.  A malformed message in
an inbox is dropped.  Resource handling: the supervisor owns every socket and
map; :meth:`HandoffGroup.for_worker` hands a worker its share, and the worker
closes the rest (:meth:`HandoffGroup.close_others`).

Never: parse QUIC, block, or run anywhere but Linux's worker processes (one
worker has nobody to hand to, and no handoff is made).
"""

from __future__ import annotations

import mmap
import socket
import struct
from typing import Any, Iterator

#: The load-board value of a worker that must not be handed connections.
UNAVAILABLE = -1
#: Inbox message header: family (4 or 6), port, scope id, 16 address bytes.
_HEADER = struct.Struct("!BHI16s")
#: A handed-over datagram is at most one UDP payload.
_MAX_MESSAGE = _HEADER.size + 65535
#: Messages read from an inbox per wake-up, so one worker's burst cannot
#: starve its own sockets.
_READ_BUDGET = 256
#: Socket buffer of an inbox: a few hundred Initials in flight.
_INBOX_BUFFER = 1 << 20


class LoadBoard:
    """One signed 64-bit counter per worker in shared memory."""

    __slots__ = ("_map", "slots")

    def __init__(self, count: int) -> None:
        self._map = mmap.mmap(-1, 8 * count)
        self.slots: Any = memoryview(self._map).cast("q")
        for worker in range(count):
            self.slots[worker] = UNAVAILABLE  # (until the worker serves)

    def close(self) -> None:
        self.slots.release()
        self._map.close()


class Handoff:
    """One worker's side of one group: its inbox, the others' inboxes, the board.

    Error handling: :meth:`forward` returns False instead of raising;
    :meth:`receive` skips malformed messages.  Not thread-safe: one event loop
    owns it.
    """

    def __init__(self, *, worker_id: int, board: LoadBoard, inbox: socket.socket,
                 peers: dict[int, socket.socket]) -> None:
        self.worker_id = worker_id
        self.inbox = inbox
        self._board = board
        self._peers = peers
        self._published = UNAVAILABLE
        #: Per worker j: (the slot value when this worker began handing it
        #: connections, how many it handed since), until the slot moves.
        self._pending: dict[int, tuple[int, int]] = {}

    # -- the board ------------------------------------------------------------

    def publish(self, sessions: int) -> None:
        """This worker now holds ``sessions`` (or is :data:`UNAVAILABLE`)."""
        if sessions != self._published:
            self._published = sessions
            self._board.slots[self.worker_id] = sessions

    def choose(self, sessions: int, accepting: bool) -> int | None:
        """The worker a new connection should go to, or None to keep it.

        ``sessions`` is how many this worker holds now."""
        slots = self._board.slots
        best: int | None = None
        best_load = 0
        for worker in self._peers:
            load = slots[worker]
            if load < 0:
                continue
            pending = self._pending.get(worker)
            if pending is not None:
                if pending[0] == load:
                    load += pending[1]
                else:
                    del self._pending[worker]  # its owner has counted them
            if best is None or load < best_load:
                best, best_load = worker, load
        if best is None:
            return None
        if accepting and sessions <= best_load + (sessions >> 3):
            return None
        seen, count = self._pending.get(best, (slots[best], 0))
        self._pending[best] = (seen, count + 1)
        return best

    # -- the inboxes ----------------------------------------------------------

    def forward(self, worker: int, data: bytes, addr: tuple[Any, ...]) -> bool:
        """Send ``data`` from ``addr`` to ``worker``'s inbox; False if it cannot go."""
        peer = self._peers.get(worker)
        if peer is None:
            return False
        try:
            peer.send(_encode_address(addr) + data)
        except (OSError, ValueError):
            return False
        return True

    def receive(self) -> Iterator[tuple[bytes, tuple[Any, ...]]]:
        """The datagrams waiting in this worker's inbox (a bounded number)."""
        for _ in range(_READ_BUDGET):
            try:
                message = self.inbox.recv(_MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            decoded = _decode(message)
            if decoded is not None:
                yield decoded


class HandoffGroup:
    """The supervisor's side for one ``--quic-bind`` group of ``count`` workers."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.board = LoadBoard(count)
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        try:
            for _ in range(count):
                inbox, door = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._pairs.append((inbox, door))
                for sock in (inbox, door):
                    sock.setblocking(False)
                inbox.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _INBOX_BUFFER)
        except BaseException:
            self.close()
            raise

    def for_worker(self, worker_id: int) -> Handoff:
        """Worker ``worker_id``'s share.  Its slot reads :data:`UNAVAILABLE`
        until its endpoint serves and publishes."""
        return Handoff(worker_id=worker_id, board=self.board, inbox=self._pairs[worker_id][0],
                       peers={j: pair[1] for j, pair in enumerate(self._pairs) if j != worker_id})

    def close_others(self, worker_id: int) -> None:
        """In worker ``worker_id``'s process: close what belongs to the others."""
        for j, (inbox, door) in enumerate(self._pairs):
            if j != worker_id:
                inbox.close()
            else:
                door.close()

    def mark_unavailable(self, worker_id: int) -> None:
        """Worker ``worker_id`` exited: nobody hands it connections until its
        successor publishes."""
        self.board.slots[worker_id] = UNAVAILABLE

    def close(self) -> None:
        for inbox, door in self._pairs:
            inbox.close()
            door.close()
        self._pairs = []


def _encode_address(addr: tuple[Any, ...]) -> bytes:
    host = addr[0]
    if ":" in host:
        return _HEADER.pack(6, addr[1], addr[3] if len(addr) > 3 else 0,
                            socket.inet_pton(socket.AF_INET6, host))
    return _HEADER.pack(4, addr[1], 0, socket.inet_pton(socket.AF_INET, host).ljust(16, b"\0"))


def _decode(message: bytes) -> tuple[bytes, tuple[Any, ...]] | None:
    if len(message) <= _HEADER.size:
        return None
    family, port, scope, raw = _HEADER.unpack_from(message)
    data = message[_HEADER.size:]
    if family == 4:
        return data, (socket.inet_ntop(socket.AF_INET, raw[:4]), port)
    if family == 6:
        return data, (socket.inet_ntop(socket.AF_INET6, raw), port, 0, scope)
    return None
