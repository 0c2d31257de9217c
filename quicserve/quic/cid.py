"""Connection IDs that say which worker owns them, and stateless-reset tokens.

Theory of operation
-------------------
With ``--workers N`` every worker has its own UDP socket in one SO_REUSEPORT
group, and a classic BPF program (``transport/sockets.py``) picks the socket
for each datagram from **the first byte of the destination connection ID**,
modulo N (:func:`worker_for`).  A worker must therefore issue only connection
IDs whose first byte maps back to itself; :class:`CidIssuer` does exactly
that, so every packet of a connection reaches the worker that owns it even
after the client's address or port changes.  The first Initial carries a DCID
the *client* chose, so it lands on an arbitrary worker; that worker creates
the connection and from then on the client switches to connection IDs the
worker issued.

Layout of an issued connection ID (``length`` bytes, 8 to 20)::

    byte 0              random, with byte % worker_count == worker_id
    bytes 1-2           server_id, big-endian (only when server_id is given)
    remaining bytes     random (at least 5 bytes of entropy)

The optional ``server_id`` is the QUIC-LB idea in its plainest form: an L4
load balancer in front of several machines can route on it without state.

Stateless-reset tokens (RFC 9000 section 10.3) are a keyed HMAC of the
connection ID (:class:`StatelessResetKeys`).  Every process holding the same
key computes the same token for a connection ID, so a worker that never saw
a connection (a restarted one, or another machine behind the same load
balancer) can still reset it, and nothing has to be remembered per
connection.

Everything here is pure: no I/O, no clock.  Randomness comes from
:mod:`secrets`, because connection IDs and reset packets must be
unpredictable to an off-path attacker.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: RFC 9000 section 17.2: connection IDs are at most 20 bytes.
MAX_CID_LENGTH = 20
#: RFC 9000 section 7.2 asks clients for at least 8 unpredictable bytes in
#: their first DCID; quicserve holds itself to the same floor.
MIN_CID_LENGTH = 8
#: Random bytes every issued connection ID keeps after the fixed parts.
MIN_RANDOM_BYTES = 5
#: Length of a stateless-reset token (RFC 9000 section 10.3).
RESET_TOKEN_LENGTH = 16
#: The widest server id the two-byte field can carry.
MAX_SERVER_ID = 0xFFFF
#: Most workers the one-byte steering can tell apart.
MAX_WORKERS = 256


def worker_for(first_byte: int, worker_count: int) -> int:
    """The worker a datagram goes to, given the first byte of its DCID.

    This is the rule the CBPF steering program applies in the kernel
    (``byte % worker_count``); both must agree, so both use this function's
    definition.
    """
    if not 1 <= worker_count <= MAX_WORKERS:
        raise ValueError(f"worker_count must be between 1 and {MAX_WORKERS}, got {worker_count}")
    if not 0 <= first_byte <= 0xFF:
        raise ValueError(f"first_byte must be one byte, got {first_byte}")
    return first_byte % worker_count


class CidIssuer:
    """Issues connection IDs whose first byte steers packets to one worker.

    Error handling: the constructor raises :class:`ValueError` for a worker
    id outside ``0..worker_count-1``, a length outside 8..20, a server id
    that does not fit two bytes, or a length too short to keep five random
    bytes next to the fixed parts.

    Resource handling: none; the issuer keeps no record of what it issued
    (the router does).
    """

    __slots__ = ("worker_id", "worker_count", "length", "server_id", "_server_bytes",
                 "_first_byte_choices")

    def __init__(
        self,
        *,
        worker_id: int = 0,
        worker_count: int = 1,
        length: int = 8,
        server_id: int | None = None,
    ) -> None:
        if not 1 <= worker_count <= MAX_WORKERS:
            raise ValueError(f"worker_count must be between 1 and {MAX_WORKERS}, got {worker_count}")
        if not 0 <= worker_id < worker_count:
            raise ValueError(f"worker_id must be in 0..{worker_count - 1}, got {worker_id}")
        if not MIN_CID_LENGTH <= length <= MAX_CID_LENGTH:
            raise ValueError(f"connection ID length must be {MIN_CID_LENGTH}..{MAX_CID_LENGTH}, "
                             f"got {length}")
        if server_id is not None and not 0 <= server_id <= MAX_SERVER_ID:
            raise ValueError(f"server_id must be in 0..{MAX_SERVER_ID}, got {server_id}")
        self._server_bytes = b"" if server_id is None else server_id.to_bytes(2, "big")
        if length - 1 - len(self._server_bytes) < MIN_RANDOM_BYTES:
            raise ValueError(f"connection ID length {length} leaves fewer than "
                             f"{MIN_RANDOM_BYTES} random bytes")
        self.worker_id = worker_id
        self.worker_count = worker_count
        self.length = length
        self.server_id = server_id
        # How many first-byte values map to this worker: worker_id,
        # worker_id + N, worker_id + 2N, ... below 256.
        self._first_byte_choices = (0xFF - worker_id) // worker_count + 1

    def new_cid(self) -> bytes:
        """A fresh, unpredictable connection ID owned by this worker."""
        first = secrets.randbelow(self._first_byte_choices) * self.worker_count + self.worker_id
        rest = self.length - 1 - len(self._server_bytes)
        return bytes((first,)) + self._server_bytes + secrets.token_bytes(rest)

    def owns(self, cid: bytes) -> bool:
        """True when ``cid`` has the shape this issuer gives its IDs: the
        right length, the right worker in the first byte and the right
        server id.  (It cannot tell whether the ID was actually issued.)"""
        if len(cid) != self.length:
            return False
        if cid[0] % self.worker_count != self.worker_id:
            return False
        return cid[1:1 + len(self._server_bytes)] == self._server_bytes

    def __repr__(self) -> str:
        return (f"CidIssuer(worker_id={self.worker_id}, worker_count={self.worker_count}, "
                f"length={self.length}, server_id={self.server_id})")


class StatelessResetKeys:
    """Computes the stateless-reset token of a connection ID.

    ``token(cid) = HMAC-SHA256(key, cid)[:16]`` -- deterministic, so the
    token a connection announced in NEW_CONNECTION_ID (or its transport
    parameters) can be recomputed later by any process holding ``key``
    without per-connection state, yet unpredictable without the key.

    Error handling: a key shorter than 16 bytes raises :class:`ValueError`.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("stateless-reset key must be at least 16 bytes")
        self._key = bytes(key)

    def token(self, cid: bytes) -> bytes:
        return hmac.new(self._key, cid, hashlib.sha256).digest()[:RESET_TOKEN_LENGTH]

    def __repr__(self) -> str:
        return "StatelessResetKeys(<secret>)"
