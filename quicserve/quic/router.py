"""CidRouter: one datagram in, one decision out.

Theory of operation
-------------------
``transport/udp.py`` hands every received datagram to :meth:`CidRouter.route`
and carries out the answer:

* :class:`Deliver` -- the destination connection ID (DCID) belongs to a live
  session: feed it the datagram.
* :class:`Create` -- a valid new Initial: build a ``QuicSession`` with these
  parameters, then :meth:`~CidRouter.add` its connection IDs.
* :class:`Reply` -- send ``data`` back to the source address (Version
  Negotiation, Retry, or a stateless reset).  No session exists.
* :class:`Drop` -- ignore it; ``reason`` says why, and it is counted.
* :class:`Forward` -- with ``--workers`` > 1: hand the datagram to another
  worker, which creates the connection (``transport/handoff.py``).

The decision follows RFC 8999 (version-independent invariants), RFC 9000
and RFC 9369 (QUIC v2), in this order:

1. The DCID is known (long header: the DCID field; short header: the first
   ``issuer.length`` bytes after the first byte) -> Deliver.  This is the
   fast path for every packet of an established connection: one slice, one
   dict lookup, and a cached Deliver object (no allocation).
2. Long header, version 0 (a Version Negotiation packet) -> Drop; a server
   never answers one.
3. Long header, unsupported version: datagram >= 1200 bytes -> Reply(Version
   Negotiation), echoing the client's CIDs swapped; smaller -> Drop (RFC 9000
   section 6.1: no amplification from small packets).
4. Long header, supported version, Initial (type bits 0b00 in v1, 0b01 in
   v2) of a datagram >= 1200 bytes with a DCID of at least 8 bytes:

   * With a :class:`Balancer` (``--workers`` > 1), for an Initial that was
     not itself handed over and carries no Retry token of ours: when the
     balancer names a less-loaded worker (or any accepting one, while this
     one is not accepting or is full) -> Forward(worker).  The DCID is
     remembered for :data:`HANDOFF_TTL` seconds, so the client's further
     Initial and 0-RTT packets under it follow (-> Forward(worker) again,
     checked right after step 1).
   * Not accepting (graceful shutdown) or at ``max_sessions`` -> Drop.
     Without keys there is no way to send CONNECTION_CLOSE
     (CONNECTION_REFUSED), so the client's own timeout ends the attempt.
   * Retry disabled -> Create(original_dcid=DCID).
   * Retry enabled and the token is one of our NEW_TOKEN tokens (given to
     this client's IP in an earlier connection, unexpired) ->
     Create(original_dcid=DCID): the address is already validated, no
     Retry round trip.  A NEW_TOKEN token that fails validation counts as
     no token (RFC 9000 section 8.1.3), so:
   * Retry enabled and the token is empty *or not shaped like one of our
     Retry tokens* -> Reply(Retry) with a new token and a fresh issuer CID as
     the Retry's source CID.  A foreign-looking token is most likely a
     NEW_TOKEN token from another server, and RFC 9000 section 8.1.3 lets a
     server treat those as absent and send a Retry.
   * A valid Retry token, whose retry SCID equals the packet's DCID ->
     Create(original_dcid from the token, retry_source_cid).
   * A Retry-shaped token that fails validation (forged, other address,
     expired, DCID mismatch) -> Create(token_invalid=True): the session
     closes the connection with INVALID_TOKEN as RFC 9000 section 8.1.3 asks
     for a Retry token that cannot be validated.

   An Initial in a smaller datagram -> Drop, with no reply at all (section
   14.1).  0-RTT, Handshake and Retry packets for unknown DCIDs -> Drop.
5. Short header with an unknown DCID -> a stateless reset (RFC 9000 section
   10.3) when the DCID has the shape of one we issue (``issuer.owns``: a reset
   for another worker's connection would kill it), the datagram is at least
   22 bytes so the reset (21 bytes minimum) is strictly shorter than it, and
   the token bucket (``reset_rate`` per second, burst of one second's worth)
   has a token.  Otherwise Drop.

Hostile bytes are parsed only in :func:`_untrusted_long_header`, which can
raise only :class:`MalformedPacket`; the router turns that into a Drop.

The router is pure and synchronous: time arrives as ``now``; it never does
I/O and never awaits.  It holds no reference to sockets, only to the
sessions it is given (opaque ``S`` values, which must be hashable).
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, Literal, Mapping, Protocol, Sequence, TypeVar

from aioquic.quic.packet import encode_quic_retry, encode_quic_version_negotiation

from quicserve.quic.cid import CidIssuer, StatelessResetKeys
from quicserve.quic.tokens import InvalidToken, NewTokens, RetryTokens

S = TypeVar("S")

#: RFC 9000 section 14.1: the smallest datagram that may carry a client Initial,
#: and the smallest that may trigger a Version Negotiation.
MIN_INITIAL_DATAGRAM = 1200
#: RFC 9000 section 7.2: the client's first DCID is at least 8 bytes.
MIN_INITIAL_DCID = 8
#: RFC 9000 section 10.3: 1 header byte + at least 4 unpredictable bytes + 16-byte token.
MIN_STATELESS_RESET = 21
#: Resets are never longer than this; a short reset costs less and still
#: looks like a small 1-RTT packet.
MAX_STATELESS_RESET = 43

#: How long the DCID of a handed-over Initial keeps pointing at the worker it
#: went to: the client uses it only until the first server packet arrives.
HANDOFF_TTL = 10.0
#: Most DCIDs remembered as handed over; beyond it connections stay local.
MAX_HANDOFFS = 4096

VERSION_NEGOTIATION = 0
VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF

_LONG_HEADER = 0x80
_FIXED_BIT = 0x40


class PacketKind(enum.Enum):
    INITIAL = "initial"
    ZERO_RTT = "0rtt"
    HANDSHAKE = "handshake"
    RETRY = "retry"


# Long-header type bits ((first_byte & 0x30) >> 4) per version.
_TYPES_V1 = (PacketKind.INITIAL, PacketKind.ZERO_RTT, PacketKind.HANDSHAKE, PacketKind.RETRY)
_TYPES_V2 = (PacketKind.RETRY, PacketKind.INITIAL, PacketKind.ZERO_RTT, PacketKind.HANDSHAKE)


class DropReason(str, enum.Enum):
    EMPTY = "empty"
    MALFORMED = "malformed"
    VERSION_NEGOTIATION_PACKET = "version_negotiation_packet"
    UNSUPPORTED_VERSION_TOO_SMALL = "unsupported_version_too_small"
    INITIAL_TOO_SMALL = "initial_too_small"
    INITIAL_DCID_TOO_SHORT = "initial_dcid_too_short"
    NOT_ACCEPTING = "not_accepting"
    MAX_SESSIONS = "max_sessions"
    UNKNOWN_CONNECTION_ID = "unknown_connection_id"
    NOT_OWNED = "not_owned"
    TOO_SMALL_FOR_RESET = "too_small_for_reset"
    RESET_RATE_LIMITED = "reset_rate_limited"

    def __str__(self) -> str:
        return self.value


# --------------------------------------------------------------------------
# Actions


@dataclass(frozen=True, slots=True)
class Deliver(Generic[S]):
    """Feed the datagram to this session."""

    session: S


@dataclass(frozen=True, slots=True)
class Create:
    """Build a new session for this Initial.

    ``token_invalid`` means the Initial carried a Retry token that failed
    validation: the session must close the connection with INVALID_TOKEN
    (RFC 9000 section 8.1.3) instead of serving it.
    """

    version: int
    dcid: bytes
    scid: bytes
    original_dcid: bytes
    retry_source_cid: bytes | None
    token_invalid: bool


@dataclass(frozen=True, slots=True)
class Forward:
    """Hand the datagram (a new connection's) to worker ``worker``."""

    worker: int
    dcid: bytes


ReplyKind = Literal["version_negotiation", "retry", "stateless_reset"]


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``data`` back to the datagram's source address."""

    data: bytes
    kind: ReplyKind


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


Action = Deliver[S] | Create | Reply | Drop | Forward


class Balancer(Protocol):
    """Which worker should take a new connection (``transport/handoff.py``)."""

    def choose(self, sessions: int, accepting: bool) -> int | None:
        """Another worker's id, or None to keep the connection here.
        ``sessions``: how many this worker holds; ``accepting``: whether it
        could take one more."""


@dataclass(frozen=True, slots=True)
class RouterStats:
    delivered: int
    created: int
    dropped: Mapping[str, int]
    version_negotiations: int
    retries: int
    stateless_resets: int
    sessions: int
    connection_ids: int
    handed_off: int = 0
    new_tokens_accepted: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


# --------------------------------------------------------------------------
# Parsing hostile bytes


class MalformedPacket(Exception):
    """The datagram does not parse as a QUIC packet header."""


@dataclass(frozen=True, slots=True)
class LongHeader:
    version: int
    dcid: bytes
    scid: bytes
    #: None for versions whose type bits we do not know (unsupported ones).
    kind: PacketKind | None
    token: bytes


def _untrusted_long_header(data: bytes, supported: frozenset[int]) -> LongHeader:
    """Parse a long header; raises only :class:`MalformedPacket`.

    For unsupported versions only the RFC 8999 invariants are read (CIDs may
    then be up to 255 bytes); for v1/v2 Initials also the token, and the
    Length field is checked against the datagram.
    """
    size = len(data)
    if size < 7:
        raise MalformedPacket("long header truncated")
    version = int.from_bytes(data[1:5], "big")
    dcid_len = data[5]
    scid_at = 6 + dcid_len
    if scid_at >= size:
        raise MalformedPacket("DCID truncated")
    scid_len = data[scid_at]
    end = scid_at + 1 + scid_len
    if end > size:
        raise MalformedPacket("SCID truncated")
    dcid, scid = data[6:scid_at], data[scid_at + 1:end]
    if version == VERSION_NEGOTIATION or version not in supported:
        return LongHeader(version=version, dcid=dcid, scid=scid, kind=None, token=b"")
    if dcid_len > 20 or scid_len > 20:
        raise MalformedPacket("connection ID longer than 20 bytes")
    if not data[0] & _FIXED_BIT:
        raise MalformedPacket("fixed bit is zero")
    kind = (_TYPES_V2 if version == VERSION_2 else _TYPES_V1)[(data[0] & 0x30) >> 4]
    token = b""
    if kind is PacketKind.INITIAL:
        token_len, pos = _untrusted_varint(data, end)
        token = data[pos:pos + token_len]
        if len(token) != token_len:
            raise MalformedPacket("token truncated")
        length, pos = _untrusted_varint(data, pos + token_len)
        if pos + length > size:
            raise MalformedPacket("payload truncated")
    return LongHeader(version=version, dcid=dcid, scid=scid, kind=kind, token=token)


def _untrusted_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A QUIC variable-length integer at ``pos``: (value, next position)."""
    if pos >= len(data):
        raise MalformedPacket("varint truncated")
    first = data[pos]
    length = 1 << (first >> 6)
    if pos + length > len(data):
        raise MalformedPacket("varint truncated")
    value = first & 0x3F
    for byte in data[pos + 1:pos + length]:
        value = (value << 8) | byte
    return value, pos + length


# --------------------------------------------------------------------------
# The router


class _TokenBucket:
    """``rate`` tokens per second, holding at most ``rate`` (one second's burst)."""

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.stamp: float | None = None

    def take(self, now: float) -> bool:
        if self.rate <= 0:
            return False
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(float(self.rate), self.tokens + (now - self.stamp) * self.rate)
        if self.stamp is None or now > self.stamp:
            self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class CidRouter(Generic[S]):
    """Routes datagrams by destination connection ID (see the module docstring).

    Error handling: :meth:`route` never raises for hostile input; every
    malformed datagram becomes ``Drop("malformed")``.  :meth:`add` raises
    :class:`ValueError` if the CID already routes to another session.

    Resource handling: the router holds one entry per live connection ID and
    one per session; the endpoint must :meth:`remove` retired IDs and
    :meth:`remove_session` terminated sessions, or entries leak.
    """

    def __init__(
        self,
        *,
        issuer: CidIssuer,
        reset_keys: StatelessResetKeys,
        retry: RetryTokens | None,
        supported_versions: Sequence[int],
        reset_rate: int,
        max_sessions: int,
        accepting: bool = True,
        balancer: Balancer | None = None,
        new_tokens: NewTokens | None = None,
    ) -> None:
        if not supported_versions:
            raise ValueError("supported_versions must not be empty")
        self.issuer = issuer
        self.accepting = accepting
        self._reset_keys = reset_keys
        self._retry = retry
        self._versions = list(supported_versions)
        self._supported = frozenset(supported_versions)
        self._max_sessions = max_sessions
        self._bucket = _TokenBucket(reset_rate)
        self._cid_length = issuer.length
        self._routes: dict[bytes, Deliver[S]] = {}
        # One cached Deliver per session (the hot path allocates nothing) and
        # the CIDs routing to it.
        self._sessions: dict[S, tuple[Deliver[S], set[bytes]]] = {}
        self._delivered = 0
        self._created = 0
        self._dropped: dict[str, int] = {}
        self._replies = {"version_negotiation": 0, "retry": 0, "stateless_reset": 0}
        self._balancer = balancer
        self._new_tokens = new_tokens
        self._new_tokens_accepted = 0
        #: DCID of a handed-over Initial -> (worker, until when).
        self._handed: dict[bytes, tuple[int, float]] = {}
        self._handed_off = 0

    # -- the session table ------------------------------------------------

    def add(self, cid: bytes, session: S) -> None:
        """Route ``cid`` to ``session`` (idempotent for the same session)."""
        current = self._routes.get(cid)
        if current is not None:
            if current.session is session:
                return
            raise ValueError(f"connection ID {cid.hex()} already routes to another session")
        entry = self._sessions.get(session)
        if entry is None:
            entry = self._sessions[session] = (Deliver(session), set())
        entry[1].add(cid)
        self._routes[cid] = entry[0]

    def remove(self, cid: bytes) -> None:
        """Stop routing ``cid`` (retired); a no-op for an unknown CID.

        The session stays counted even with no CID left, until
        :meth:`remove_session`."""
        deliver = self._routes.pop(cid, None)
        if deliver is not None:
            self._sessions[deliver.session][1].discard(cid)

    def remove_session(self, session: S) -> None:
        """Forget ``session`` and every CID routing to it."""
        entry = self._sessions.pop(session, None)
        if entry is not None:
            for cid in entry[1]:
                self._routes.pop(cid, None)

    def session_count(self) -> int:
        return len(self._sessions)

    # -- routing ------------------------------------------------------------

    def route(self, data: bytes, addr: tuple[str, int], now: float,
              handed: bool = False) -> Action[S]:
        """Decide what to do with one datagram from ``addr`` (see the module
        docstring).  ``handed``: another worker handed it over; it is never
        handed on."""
        if not data:
            return self._drop(DropReason.EMPTY)
        if data[0] & _LONG_HEADER:
            return self._route_long(data, addr, now, handed)
        deliver = self._routes.get(data[1:1 + self._cid_length])
        if deliver is not None:
            self._delivered += 1
            return deliver
        return self._route_unknown_short(data, now)

    def _route_long(self, data: bytes, addr: tuple[str, int], now: float,
                    handed: bool) -> Action[S]:
        try:
            header = _untrusted_long_header(data, self._supported)
        except MalformedPacket:
            return self._drop(DropReason.MALFORMED)
        deliver = self._routes.get(header.dcid)
        if deliver is not None:
            self._delivered += 1
            return deliver
        if self._handed and not handed:
            entry = self._handed.get(header.dcid)
            if entry is not None:
                if entry[1] > now and header.kind in (PacketKind.INITIAL, PacketKind.ZERO_RTT):
                    return Forward(entry[0], header.dcid)
                if entry[1] <= now:
                    del self._handed[header.dcid]
        if header.version == VERSION_NEGOTIATION:
            return self._drop(DropReason.VERSION_NEGOTIATION_PACKET)
        if header.kind is None:
            return self._version_negotiation(data, header)
        if header.kind is not PacketKind.INITIAL:
            return self._drop(DropReason.UNKNOWN_CONNECTION_ID)
        return self._route_initial(data, header, addr, now, handed)

    def _version_negotiation(self, data: bytes, header: LongHeader) -> Reply | Drop:
        if len(data) < MIN_INITIAL_DATAGRAM:
            return self._drop(DropReason.UNSUPPORTED_VERSION_TOO_SMALL)
        packet = encode_quic_version_negotiation(
            source_cid=header.dcid, destination_cid=header.scid,
            supported_versions=self._versions)
        return self._reply(packet, "version_negotiation")

    def _route_initial(self, data: bytes, header: LongHeader, addr: tuple[str, int],
                       now: float, handed: bool) -> Create | Reply | Drop | Forward:
        if len(data) < MIN_INITIAL_DATAGRAM:
            return self._drop(DropReason.INITIAL_TOO_SMALL)
        if len(header.dcid) < MIN_INITIAL_DCID:
            return self._drop(DropReason.INITIAL_DCID_TOO_SHORT)
        if self._balancer is not None and not handed:
            forward = self._balance(header, now)
            if forward is not None:
                return forward
        if not self.accepting:
            return self._drop(DropReason.NOT_ACCEPTING)
        if len(self._sessions) >= self._max_sessions:
            return self._drop(DropReason.MAX_SESSIONS)
        if self._retry is None:
            return self._create(header, original_dcid=header.dcid, retry_source_cid=None)
        new_tokens = self._new_tokens
        if new_tokens is not None and new_tokens.is_new_token(header.token):
            try:
                new_tokens.validate(header.token, addr[0])
            except InvalidToken:
                return self._send_retry(header, addr, now)
            self._new_tokens_accepted += 1
            return self._create(header, original_dcid=header.dcid, retry_source_cid=None)
        if not self._retry.is_retry_token(header.token):
            return self._send_retry(header, addr, now)
        try:
            info = self._retry.validate(header.token, addr=addr, now=now)
        except InvalidToken:
            return self._create(header, original_dcid=header.dcid, retry_source_cid=None,
                                token_invalid=True)
        if info.retry_scid != header.dcid:
            return self._create(header, original_dcid=header.dcid, retry_source_cid=None,
                                token_invalid=True)
        return self._create(header, original_dcid=info.original_dcid,
                            retry_source_cid=info.retry_scid)

    def _balance(self, header: LongHeader, now: float) -> Forward | None:
        balancer = self._balancer
        if balancer is None or (self._retry is not None
                                and self._retry.is_retry_token(header.token)):
            return None  # (a Retry already chose the worker: its SCID steers)
        handed = self._handed
        if len(handed) >= MAX_HANDOFFS:
            for dcid in [d for d, (_, until) in handed.items() if until <= now]:
                del handed[dcid]
            if len(handed) >= MAX_HANDOFFS:
                return None
        sessions = len(self._sessions)
        worker = balancer.choose(sessions, self.accepting and sessions < self._max_sessions)
        if worker is None:
            return None
        handed[header.dcid] = (worker, now + HANDOFF_TTL)
        self._handed_off += 1
        return Forward(worker, header.dcid)

    def handoff_failed(self, dcid: bytes) -> None:
        """The Forward for ``dcid`` could not be carried out: its packets are
        routed here again (and its Initial creates the connection here)."""
        self._handed.pop(dcid, None)

    def _send_retry(self, header: LongHeader, addr: tuple[str, int], now: float) -> Reply:
        # Checked by the caller; repeated so the type checker knows.
        retry = self._retry
        if retry is None:
            raise RuntimeError("Retry requested without Retry tokens")
        retry_scid = self.issuer.new_cid()
        token = retry.create(addr=addr, original_dcid=header.dcid, retry_scid=retry_scid, now=now)
        packet = encode_quic_retry(
            version=header.version, source_cid=retry_scid, destination_cid=header.scid,
            original_destination_cid=header.dcid, retry_token=token)
        return self._reply(packet, "retry")

    def _route_unknown_short(self, data: bytes, now: float) -> Reply | Drop:
        if len(data) < 1 + self._cid_length or not data[0] & _FIXED_BIT:
            return self._drop(DropReason.MALFORMED)
        dcid = data[1:1 + self._cid_length]
        if not self.issuer.owns(dcid):
            return self._drop(DropReason.NOT_OWNED)
        size = min(len(data) - 1, MAX_STATELESS_RESET)
        if size < MIN_STATELESS_RESET:
            return self._drop(DropReason.TOO_SMALL_FOR_RESET)
        if not self._bucket.take(now):
            return self._drop(DropReason.RESET_RATE_LIMITED)
        return self._reply(self.stateless_reset(dcid, size), "stateless_reset")

    def stateless_reset(self, dcid: bytes, size: int) -> bytes:
        """A stateless reset of ``size`` bytes for ``dcid``: short-header form
        with the fixed bit, unpredictable bytes, then the 16-byte token."""
        unpredictable = secrets.token_bytes(size - 16)
        first = (unpredictable[0] & 0x3F) | _FIXED_BIT
        return bytes((first,)) + unpredictable[1:] + self._reset_keys.token(dcid)

    # -- bookkeeping ----------------------------------------------------------

    def _create(self, header: LongHeader, *, original_dcid: bytes,
                retry_source_cid: bytes | None, token_invalid: bool = False) -> Create:
        self._created += 1
        return Create(version=header.version, dcid=header.dcid, scid=header.scid,
                      original_dcid=original_dcid, retry_source_cid=retry_source_cid,
                      token_invalid=token_invalid)

    def _reply(self, data: bytes, kind: ReplyKind) -> Reply:
        self._replies[kind] += 1
        return Reply(data=data, kind=kind)

    def _drop(self, reason: DropReason) -> Drop:
        self._dropped[reason.value] = self._dropped.get(reason.value, 0) + 1
        return Drop(reason)

    def statistics(self) -> RouterStats:
        return RouterStats(
            delivered=self._delivered, created=self._created,
            dropped=MappingProxyType(dict(self._dropped)),
            version_negotiations=self._replies["version_negotiation"],
            retries=self._replies["retry"], stateless_resets=self._replies["stateless_reset"],
            sessions=len(self._sessions), connection_ids=len(self._routes),
            handed_off=self._handed_off, new_tokens_accepted=self._new_tokens_accepted)
