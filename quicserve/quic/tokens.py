"""Shared QUIC secrets, Retry tokens and stateless session tickets.

Theory of operation
-------------------
One 32-byte **master secret** (:class:`QuicSecrets`) is the only thing the
supervisor hands to workers, or that ``--quic-secret-file`` holds.  HKDF
derives an independent subkey per purpose from it (Retry tokens, NEW_TOKEN
tokens, session tickets, stateless resets), so no key is ever used for two
things.  Every process holding the same master therefore accepts what any
other issued: a Retry token minted by worker 0 validates on worker 1, a
session ticket from yesterday's process resumes on today's.

**Retry tokens** (:class:`RetryTokens`, RFC 9000 section 8.1.2) are
AES-256-GCM sealed boxes::

    token = 0x52 'R' | nonce (12) | AEAD(expiry, original DCID, retry SCID) | tag (16)
    additional data = 'R' | client IP (16 bytes, v4 mapped) | client port

so a token replayed from another address fails authentication, and nothing
is remembered per token.  The expiry is on the ``now`` clock the caller
passes in; every process that validates must use the same clock
(``time.monotonic``/``loop.time()`` on one host).  :meth:`RetryTokens.validate`
parses hostile bytes and can raise only :class:`InvalidToken`.

**NEW_TOKEN tokens** (:class:`NewTokens`, RFC 9000 section 8.1.3) are
given, with ``--quic-retry``, to a client whose address is validated, for
its next connection: the same kind of box with its own key, bound to the
client's IP only and valid for a day of wall-clock time.

**Session tickets** (:class:`SessionTicketStore`) are stateless the same way:
the ticket *label* the client stores and sends back is an AEAD box holding
the whole resumption state (cipher suite, resumption secret, validity,
early-data limit, extensions).  aioquic generates a random label itself, so
``quic/internals.py`` replaces the label on the wire with :meth:`seal`'s
output; :meth:`pop` opens any label sealed with the same key, in any process.
A label is accepted once per replay cache (``quic/replay.py``): one per
process, or, under the supervisor, one shared by every worker, so 0-RTT
replay is limited to one per host.  Across hosts sharing a secret file
0-RTT replay is possible, which is why unsafe methods in 0-RTT are answered
425 (RFC 8470).

This module does no I/O except :meth:`QuicSecrets.load` reading the secret
file once at start-up.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime
import ipaddress
import os
import secrets
import stat
import struct
import time
from dataclasses import dataclass
from typing import Callable

from aioquic import tls
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from quicserve.errors import QuicserveError
from quicserve.log import error_logger
from quicserve.quic.replay import LocalReplayCache, ReplayCache

MASTER_SECRET_LENGTH = 32
_SUBKEY_LENGTH = 32
_NONCE_LENGTH = 12
_TAG_LENGTH = 16

RETRY_TOKEN_MARKER = 0x52  # "R"
NEW_TOKEN_MARKER = 0x4E  # "N"
TICKET_MARKER = 0x54  # "T"


class SecretFileError(QuicserveError, ValueError):
    """The ``--quic-secret-file`` is missing, unreadable, or holds no usable key."""


class InvalidToken(QuicserveError):
    """A Retry token failed validation (malformed, forged, wrong address, expired)."""


# --------------------------------------------------------------------------
# Secrets


def _derive(master: bytes, purpose: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=_SUBKEY_LENGTH, salt=None,
                info=b"quicserve v1 " + purpose)
    return hkdf.derive(master)


@dataclass(frozen=True, slots=True, repr=False)
class QuicSecrets:
    """The per-purpose keys derived from one master secret."""

    retry_key: bytes
    ticket_key: bytes
    reset_key: bytes
    new_token_key: bytes
    _master: bytes

    @classmethod
    def generate(cls) -> QuicSecrets:
        """Fresh random secrets (tickets and tokens die with the server)."""
        return cls.from_master(secrets.token_bytes(MASTER_SECRET_LENGTH))

    @classmethod
    def from_master(cls, master: bytes) -> QuicSecrets:
        if len(master) < MASTER_SECRET_LENGTH:
            raise ValueError(f"master secret must be at least {MASTER_SECRET_LENGTH} bytes, "
                             f"got {len(master)}")
        return cls(retry_key=_derive(master, b"retry"), ticket_key=_derive(master, b"ticket"),
                   reset_key=_derive(master, b"stateless reset"),
                   new_token_key=_derive(master, b"new token"), _master=bytes(master))

    @classmethod
    def load(cls, path: str | None) -> QuicSecrets:
        """Secrets from ``--quic-secret-file``; ``None`` generates fresh ones.

        The file holds the master secret as hex or base64 text (at least 32
        bytes once decoded), e.g. made with ``head -c32 /dev/urandom | base64``.

        Error handling: raises :class:`SecretFileError` naming the file when
        it is missing, unreadable, undecodable or too short.  The file is
        never created: a missing file is an operator error, because a
        silently generated key would not be shared with the other servers.
        A file readable by group or others is accepted with a warning.
        """
        if path is None:
            return cls.generate()
        try:
            with open(path, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                text = f.read(4096)
        except OSError as exc:
            raise SecretFileError(f"cannot read QUIC secret file {path}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            error_logger.warning("QUIC secret file %s is accessible by group or others; "
                                 "chmod 600 it", path)
        master = _decode_secret_text(text, path)
        return cls.from_master(master)

    def to_master(self) -> bytes:
        """The master secret, for the supervisor to hand to its workers."""
        return self._master

    def __repr__(self) -> str:
        return "QuicSecrets(<secret>)"


def _decode_secret_text(text: bytes, path: str) -> bytes:
    stripped = b"".join(text.split())
    if not stripped:
        raise SecretFileError(f"QUIC secret file {path} is empty")
    master: bytes | None = None
    try:
        master = bytes.fromhex(stripped.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        try:
            master = base64.b64decode(stripped, validate=True)
        except (binascii.Error, ValueError):
            master = None
    if master is None:
        raise SecretFileError(f"QUIC secret file {path} must hold the secret as hex or base64")
    if len(master) < MASTER_SECRET_LENGTH:
        raise SecretFileError(f"QUIC secret file {path} holds {len(master)} bytes; "
                              f"at least {MASTER_SECRET_LENGTH} are needed")
    return master


# --------------------------------------------------------------------------
# Retry tokens


@dataclass(frozen=True, slots=True)
class RetryTokenInfo:
    """What a valid Retry token vouches for."""

    original_dcid: bytes
    retry_scid: bytes


def _address_bytes(addr: tuple[str, int]) -> bytes:
    """The client address as 18 bytes (IPv4 as v4-mapped IPv6), so
    ``1.2.3.4`` and ``::ffff:1.2.3.4`` bind the same token."""
    host = addr[0].split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        packed = host.encode("utf-8", "surrogateescape")
    else:
        if isinstance(ip, ipaddress.IPv4Address):
            packed = ipaddress.IPv6Address("::ffff:" + str(ip)).packed
        else:
            packed = ip.packed
    return packed + struct.pack("!H", addr[1] & 0xFFFF)


def _host_bytes(host: str) -> bytes:
    """The client's IP alone (a NEW_TOKEN token outlives the client's port)."""
    return _address_bytes((host, 0))[:-2]


def _token_aead(key: bytes, lifetime: float, what: str) -> AESGCM:
    """The AES-GCM sealer of a kind of token, once its key and lifetime pass."""
    if len(key) not in (16, 24, 32):
        raise ValueError(f"{what} key must be 16, 24 or 32 bytes")
    if lifetime <= 0:
        raise ValueError(f"{what} lifetime must be positive")
    return AESGCM(key)


class RetryTokens:
    """Mint and validate Retry tokens bound to the client address.

    Error handling: :meth:`validate` raises :class:`InvalidToken` and nothing
    else for any token that is not one of ours, for this address, unexpired.

    Resource handling: stateless; nothing is kept per token.
    """

    __slots__ = ("_aead", "lifetime")

    def __init__(self, key: bytes, *, lifetime: float = 10.0) -> None:
        self._aead = _token_aead(key, lifetime, "Retry token")
        self.lifetime = lifetime

    @staticmethod
    def is_retry_token(token: bytes) -> bool:
        """Cheap shape check: could this be a Retry token of ours?  Tokens
        that are not (a NEW_TOKEN token from another server, say) are treated
        by the router as if the client had sent none."""
        return len(token) >= 1 + _NONCE_LENGTH + _TAG_LENGTH and token[0] == RETRY_TOKEN_MARKER

    def create(self, *, addr: tuple[str, int], original_dcid: bytes, retry_scid: bytes,
               now: float) -> bytes:
        plaintext = (struct.pack("!dB", now + self.lifetime, len(original_dcid)) + original_dcid
                     + bytes((len(retry_scid),)) + retry_scid)
        nonce = secrets.token_bytes(_NONCE_LENGTH)
        aad = bytes((RETRY_TOKEN_MARKER,)) + _address_bytes(addr)
        return bytes((RETRY_TOKEN_MARKER,)) + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def validate(self, token: bytes, *, addr: tuple[str, int], now: float) -> RetryTokenInfo:
        if not self.is_retry_token(token):
            raise InvalidToken("not a Retry token")
        nonce = token[1:1 + _NONCE_LENGTH]
        aad = bytes((RETRY_TOKEN_MARKER,)) + _address_bytes(addr)
        try:
            plaintext = self._aead.decrypt(nonce, token[1 + _NONCE_LENGTH:], aad)
        except InvalidTag:
            raise InvalidToken("Retry token failed authentication (forged or other address)") from None
        expiry, info = _untrusted_retry_plaintext(plaintext)
        if now > expiry:
            raise InvalidToken("Retry token expired")
        return info


class NewTokens:
    """Mint and validate the tokens quicserve gives clients in NEW_TOKEN frames.

    With ``--quic-retry`` a client must prove its address before the server
    spends anything on it; RFC 9000 section 8.1.3 lets the server hand a
    validated client a token for its *next* connection, so a returning
    client skips the Retry round trip.  The token is an AES-GCM box like a
    Retry token, with its own key and marker::

        token = 0x4E 'N' | nonce (12) | AEAD(expiry as wall-clock seconds) | tag (16)
        additional data = 'N' | client IP (16 bytes, v4 mapped)

    Bound to the client's IP, not its port (the next connection comes from
    another port), and valid for ``lifetime`` seconds (default one day) of
    wall-clock time, so it survives a restart of the server.  ``clock`` is
    ``time.time`` unless a test gives its own.

    Error handling: :meth:`validate` raises :class:`InvalidToken` and nothing
    else.  Resource handling: stateless.
    """

    __slots__ = ("_aead", "lifetime", "_clock")

    def __init__(self, key: bytes, *, lifetime: float = 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._aead = _token_aead(key, lifetime, "NEW_TOKEN token")
        self.lifetime = lifetime
        self._clock = clock

    @staticmethod
    def is_new_token(token: bytes) -> bool:
        """Cheap shape check: could this be a NEW_TOKEN token of ours?"""
        return len(token) == _NEW_TOKEN_LENGTH and token[0] == NEW_TOKEN_MARKER

    def create(self, host: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_LENGTH)
        marker = bytes((NEW_TOKEN_MARKER,))
        expiry = struct.pack("!d", self._clock() + self.lifetime)
        return marker + nonce + self._aead.encrypt(nonce, expiry, marker + _host_bytes(host))

    def validate(self, token: bytes, host: str) -> None:
        """Return if ``token`` is ours, for ``host``, unexpired; else raise."""
        if not self.is_new_token(token):
            raise InvalidToken("not a NEW_TOKEN token")
        marker = token[:1]
        try:
            plaintext = self._aead.decrypt(token[1:1 + _NONCE_LENGTH],
                                           token[1 + _NONCE_LENGTH:], marker + _host_bytes(host))
        except InvalidTag:
            raise InvalidToken("NEW_TOKEN token failed authentication (forged or other address)") \
                from None
        (expiry,) = struct.unpack("!d", plaintext)
        if self._clock() > expiry:
            raise InvalidToken("NEW_TOKEN token expired")


#: marker + nonce + 8-byte expiry + tag.
_NEW_TOKEN_LENGTH = 1 + 12 + 8 + 16


def _untrusted_retry_plaintext(data: bytes) -> tuple[float, RetryTokenInfo]:
    """Parse the inside of a Retry token; raises only :class:`InvalidToken`.

    The AEAD already vouched for these bytes, but a key shared with a newer
    or older format must still fail cleanly, never with IndexError."""
    if len(data) < 10:
        raise InvalidToken("Retry token too short")
    (expiry, odcid_len) = struct.unpack_from("!dB", data, 0)
    end = 9 + odcid_len
    if odcid_len > 20 or end >= len(data):
        raise InvalidToken("Retry token malformed")
    rscid_len = data[end]
    if rscid_len > 20 or end + 1 + rscid_len != len(data):
        raise InvalidToken("Retry token malformed")
    return float(expiry), RetryTokenInfo(original_dcid=data[9:end],
                                         retry_scid=data[end + 1:end + 1 + rscid_len])


# --------------------------------------------------------------------------
# Session tickets


class _TicketFormatError(Exception):
    pass


class SessionTicketStore:
    """Stateless TLS session tickets: any process with ``key`` accepts them.

    * :meth:`seal` turns aioquic's :class:`aioquic.tls.SessionTicket` into the
      label the client is given (``quic/internals.py`` puts it on the wire).
    * :meth:`pop` is aioquic's ``session_ticket_fetcher``: it opens a sealed
      label (from any process with the key) and returns the ticket, once per
      process, while it is valid.
    * :meth:`add` is aioquic's ``session_ticket_handler`` for a plain
      ``QuicConnection`` whose labels stay random: those tickets are kept in
      memory (bounded) and resume only in this process.

    Error handling: :meth:`pop` never raises for a hostile label; it returns
    ``None`` and aioquic falls back to a full handshake.

    Resource handling: at most ``max_entries`` remembered labels (replay
    cache) and locally added tickets; the oldest are forgotten first.
    """

    def __init__(self, key: bytes, *, lifetime: float = 86400, max_entries: int = 65536,
                 replay: ReplayCache | None = None) -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError("session ticket key must be 16, 24 or 32 bytes")
        if not 0 < lifetime <= 7 * 86400:
            raise ValueError("ticket lifetime must be between 0 and 7 days (RFC 8446)")
        self._aead = AESGCM(key)
        self.lifetime = lifetime
        self._max_entries = max_entries
        self._replay = replay if replay is not None else LocalReplayCache(max_entries)
        self._local: collections.OrderedDict[bytes, tls.SessionTicket] = collections.OrderedDict()

    def seal(self, ticket: tls.SessionTicket) -> bytes:
        """The stateless label for ``ticket`` (its own ``.ticket`` is ignored)."""
        nonce = secrets.token_bytes(_NONCE_LENGTH)
        marker = bytes((TICKET_MARKER,))
        return marker + nonce + self._aead.encrypt(nonce, _encode_ticket(ticket, self.lifetime),
                                                   marker)

    def add(self, ticket: tls.SessionTicket) -> None:
        self._local[ticket.ticket] = ticket
        while len(self._local) > self._max_entries:
            self._local.popitem(last=False)

    def pop(self, label: bytes) -> tls.SessionTicket | None:
        local = self._local.pop(label, None)
        if local is not None:
            return local if local.is_valid else None
        ticket = self._open(label)
        if ticket is None or not ticket.is_valid:
            return None
        if not self._replay.first_use(label[1:1 + _NONCE_LENGTH]):
            return None
        return ticket

    def _open(self, label: bytes) -> tls.SessionTicket | None:
        if len(label) < 1 + _NONCE_LENGTH + _TAG_LENGTH or label[0] != TICKET_MARKER:
            return None
        nonce = label[1:1 + _NONCE_LENGTH]
        try:
            plaintext = self._aead.decrypt(nonce, label[1 + _NONCE_LENGTH:], label[:1])
            return _untrusted_decode_ticket(plaintext, label)
        except (InvalidTag, _TicketFormatError):
            return None


_TICKET_FORMAT = 1


def _timestamp(value: datetime.datetime) -> float:
    return value.timestamp()


def _encode_ticket(ticket: tls.SessionTicket, lifetime: float) -> bytes:
    not_after = min(_timestamp(ticket.not_valid_after),
                    _timestamp(ticket.not_valid_before) + lifetime)
    server_name = (ticket.server_name or "").encode("utf-8")
    early = ticket.max_early_data_size
    parts = [
        struct.pack("!BIHddB", _TICKET_FORMAT, ticket.age_add, int(ticket.cipher_suite),
                    _timestamp(ticket.not_valid_before), not_after, early is not None),
        struct.pack("!I", early or 0),
        struct.pack("!B", len(ticket.resumption_secret)), ticket.resumption_secret,
        struct.pack("!BH", ticket.server_name is not None, len(server_name)), server_name,
        struct.pack("!H", len(ticket.other_extensions)),
    ]
    for ext_type, ext_data in ticket.other_extensions:
        parts.append(struct.pack("!HH", ext_type, len(ext_data)))
        parts.append(ext_data)
    return b"".join(parts)


class _Reader:
    """Bounds-checked reads; raises only :class:`_TicketFormatError`."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _TicketFormatError("truncated")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple[int | float, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def _untrusted_decode_ticket(data: bytes, label: bytes) -> tls.SessionTicket:
    """Rebuild a SessionTicket; raises only :class:`_TicketFormatError`."""
    r = _Reader(data)
    fmt, age_add, suite, not_before, not_after, has_early = r.unpack("!BIHddB")
    if fmt != _TICKET_FORMAT:
        raise _TicketFormatError(f"ticket format {fmt}")
    (early,) = r.unpack("!I")
    resumption_secret = r.take(int(r.unpack("!B")[0]))
    has_name, name_len = r.unpack("!BH")
    name = r.take(int(name_len))
    extensions = []
    for _ in range(int(r.unpack("!H")[0])):
        ext_type, ext_len = r.unpack("!HH")
        extensions.append((int(ext_type), r.take(int(ext_len))))
    if r.pos != len(data):
        raise _TicketFormatError("trailing bytes")
    try:
        cipher_suite = tls.CipherSuite(int(suite))
        server_name = name.decode("utf-8") if has_name else None
        valid_from = datetime.datetime.fromtimestamp(float(not_before), datetime.timezone.utc)
        valid_to = datetime.datetime.fromtimestamp(float(not_after), datetime.timezone.utc)
    except (ValueError, OverflowError, OSError) as exc:
        raise _TicketFormatError(str(exc)) from exc
    return tls.SessionTicket(
        age_add=int(age_add), cipher_suite=cipher_suite, not_valid_after=valid_to,
        not_valid_before=valid_from, resumption_secret=resumption_secret,
        # aioquic annotates str, but a server-side ticket holds None.
        server_name=server_name,  # type: ignore[arg-type]
        ticket=label, max_early_data_size=int(early) if has_early else None,
        other_extensions=extensions)
