"""Session tickets accepted once per host, not once per process.

Theory of operation
-------------------
A session ticket quicserve issues is stateless (``quic/tokens.py``): any
process with the ticket key can open it.  What stops a captured 0-RTT flight
from being replayed is remembering each ticket's nonce once it was used and
refusing it the second time.  Kept per process, that memory let a replay
succeed once in every *other* process.  With ``--workers`` that mattered once
connections could move between workers (``transport/handoff.py``): a replay
no longer has to reach the worker that saw the original.

:class:`SharedReplayCache` is the supervisor's answer: a table in a memory
file (``memfd``) made before the workers are forked, so every worker, and
every worker restarted later, checks and records nonces in the same table.
The check-and-record is one critical section under a POSIX record lock
(``fcntl.lockf``) on that file: the kernel drops such a lock when its
holder dies, so a worker killed mid-check cannot wedge the others, and
record locks are per process, so the processes sharing the file exclude
each other.

Layout: :data:`BUCKETS` buckets of :data:`WAYS` nonces; a nonce goes to
the bucket named by its first four bytes (nonces are random) and, when not
already there, replaces the bucket's oldest entry.  The table holds
``BUCKETS * WAYS`` nonces; an entry is forgotten only after that many later
ones reached its bucket, as the per-process cache forgets its oldest.

Beyond one host (several machines sharing ``--quic-secret-file``) a ticket
can still be used once per host; unsafe methods in 0-RTT are answered 425
for that reason (RFC 8470).

Error handling: :meth:`SharedReplayCache.first_use` returns False (treat as
a replay: the client does a full handshake) if the lock cannot be taken.
Resource handling: one file descriptor and one mapping, closed by
:meth:`close`; workers inherit both.
"""

from __future__ import annotations

import collections
import fcntl
import mmap
import os
from typing import Protocol

#: Buckets and nonces per bucket: 131,072 nonces of 12 bytes, 1.6 MB.
BUCKETS = 16384
WAYS = 8
NONCE_LENGTH = 12
_BUCKET_SIZE = 1 + WAYS * NONCE_LENGTH


class ReplayCache(Protocol):
    def first_use(self, nonce: bytes) -> bool:
        """Record ``nonce``; True if it was not recorded before."""


class LocalReplayCache:
    """The per-process cache: the ``max_entries`` newest nonces."""

    def __init__(self, max_entries: int = 65536) -> None:
        self._max_entries = max_entries
        self._used: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def first_use(self, nonce: bytes) -> bool:
        if nonce in self._used:
            return False
        self._used[nonce] = None
        while len(self._used) > self._max_entries:
            self._used.popitem(last=False)
        return True


class SharedReplayCache:
    """One table for every process forked after it was made (see the module
    docstring)."""

    def __init__(self) -> None:
        self._fd = os.memfd_create("quicserve-ticket-replay", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, BUCKETS * _BUCKET_SIZE)
            self._map = mmap.mmap(self._fd, BUCKETS * _BUCKET_SIZE)
        except BaseException:
            os.close(self._fd)
            raise

    def first_use(self, nonce: bytes) -> bool:
        if len(nonce) != NONCE_LENGTH:
            raise ValueError(f"nonce must be {NONCE_LENGTH} bytes")
        start = (int.from_bytes(nonce[:4], "big") % BUCKETS) * _BUCKET_SIZE
        table = self._map
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
        except OSError:
            return False
        try:
            entries = table[start + 1:start + _BUCKET_SIZE]
            for way in range(WAYS):
                if entries[way * NONCE_LENGTH:(way + 1) * NONCE_LENGTH] == nonce:
                    return False
            cursor = table[start] % WAYS
            at = start + 1 + cursor * NONCE_LENGTH
            table[at:at + NONCE_LENGTH] = nonce
            table[start] = (cursor + 1) % WAYS
            return True
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
