"""Request-head validation and response-head building, for every protocol.

Theory of operation
-------------------
This is the one place that decides whether a request head is acceptable and
what a response head looks like, whatever the wire: HTTP/1.1 (``h11.py``),
HTTP/2 (``h2.py``), HTTP/3 (``h3.py``) and hq (``hq.py``).  The protocol
adapters call it and map the one exception it raises,
:class:`~quicserve.errors.ProtocolError` (its ``status`` is the HTTP status to
answer with: 400, 405, 431, 501), to their own wire behaviour (a 4xx and close
on HTTP/1.1, a 4xx or RST_STREAM on H2/H3).

Request side.  The header lists come straight off the wire, so both validators
are ``_untrusted`` in spirit: they only ever raise ``ProtocolError``.

* :func:`h1_request` takes what h11 parsed (h11 already checked the syntax:
  token method, header-field grammar, one Content-Length, Transfer-Encoding
  ``chunked`` only).  It adds the rules h11 leaves to the server: the
  request-target form, no Content-Length together with Transfer-Encoding
  (request smuggling), a header-count limit, and it classifies the upgrade the
  request asks for (WebSocket, RFC 6455 4.2.1; h2c, RFC 7540 3.2) and the
  connection's persistence (``Connection: close``, HTTP/1.0).  It scans the
  headers once.  :func:`h1_request_head` is the same returning only the head.
* :func:`pseudo_request_head` validates an H2/H3 field section: pseudo-header
  fields first, each at most once, only the defined ones; lowercase names; no
  connection-specific fields (RFC 9113 8.2.2, RFC 9114 4.2); values without
  CR/LF/NUL or surrounding whitespace; CONNECT and extended CONNECT
  (RFC 8441, RFC 9220): ``:protocol`` needs CONNECT; ``websocket`` marks the
  head, any other protocol is refused (never served as if it were one); a
  plain CONNECT is refused (quicserve is not a proxy).  ``:authority`` becomes
  a ``host`` header when there is none, and must match it when there is.

Response side.  :func:`response_headers` validates the application's headers
(names are lowercased tokens, values carry no CR/LF/NUL: header injection is
impossible past this point) and appends the server's defaults (Date, Server,
``--header`` extras, Alt-Svc on TLS over TCP) unless the application set that
header itself.  The Date value is formatted at most once per second.

Never: parse bytes off a socket, keep per-connection state, or log.
"""

from __future__ import annotations

import base64
import binascii
import http
import re
import time
from email.utils import formatdate
from typing import NamedTuple, Sequence

from ..errors import HeaderTooLarge, ProtocolError
from ..interfaces import Headers, RequestHead, ResponseDefaults

#: The most header fields one request may carry (431 beyond).  Generous for
#: browsers (which send 10-30) but bounds the per-request work.
MAX_REQUEST_HEADERS = 256

_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_LOWER_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
#: CR, LF and NUL may never appear in a field value (RFC 9110 5.5).
_BAD_VALUE_RE = re.compile(rb"[\r\n\x00]")
_DIGITS_RE = re.compile(rb"[0-9]+")
#: Header fields that are meaningful only for one HTTP/1.1 hop; forbidden in
#: H2/H3 requests (RFC 9113 8.2.2, RFC 9114 4.2).  ``te`` is checked apart.
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority", b":protocol"})

# --------------------------------------------------------------------------
# Reason phrases


def _build_reason_phrases() -> dict[int, bytes]:
    phrases = {status.value: status.phrase.encode("ascii") for status in http.HTTPStatus}
    # Registered codes the stdlib table lacks (3.10/3.11 differ); RFC 9110 names.
    phrases.setdefault(103, b"Early Hints")
    phrases.setdefault(418, b"I'm a Teapot")
    phrases.setdefault(421, b"Misdirected Request")
    phrases.setdefault(422, b"Unprocessable Content")
    phrases.setdefault(425, b"Too Early")
    return phrases


#: Status code -> standard reason phrase.
REASON_PHRASES: dict[int, bytes] = _build_reason_phrases()
_CLASS_PHRASES = {1: b"Informational", 2: b"Success", 3: b"Redirection",
                  4: b"Client Error", 5: b"Server Error"}


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase; a class name for unregistered codes.

    Never empty: load tools such as h2load count an empty phrase as a failure.
    """
    phrase = REASON_PHRASES.get(status)
    if phrase is None:
        phrase = _CLASS_PHRASES.get(status // 100, b"Unknown")
    return phrase


# --------------------------------------------------------------------------
# HTTP/1.x requests


class H1Request(NamedTuple):
    """What an HTTP/1.x adapter needs besides the head itself.

    An immutable NamedTuple rather than a frozen dataclass: it is built once
    per request, and a frozen dataclass's ``__init__`` (one
    ``object.__setattr__`` per field) costs ten times as much.
    """

    head: RequestHead
    #: b"1.0" or b"1.1".
    http_version: bytes
    #: The connection may carry another request after this one.
    keep_alive: bool
    #: ``Expect: 100-continue`` on HTTP/1.1.
    expect_continue: bool
    #: The request has a body (Content-Length > 0 or chunked).
    has_body: bool
    #: The declared Content-Length, or None (chunked or no body).
    content_length: int | None
    #: For ``Upgrade: h2c``: the decoded HTTP2-Settings payload.
    h2_settings: bytes | None = None
    #: For a WebSocket upgrade: the Sec-WebSocket-Key value.
    websocket_key: bytes | None = None


def h1_request_head(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], http_version: bytes
) -> RequestHead:
    """Validate an HTTP/1.x request head that h11 parsed.

    ``headers`` have lowercase names.  Raises :class:`ProtocolError` (400, 405,
    431) for a head quicserve will not serve.
    """
    return h1_request(method, target, headers, http_version).head


#: The only header fields h1_request looks into; most requests carry none
#: but ``connection``, so the common case costs one set lookup per field.
_H1_SPECIAL = frozenset({
    b"connection", b"content-length", b"transfer-encoding", b"upgrade", b"expect",
    b"sec-websocket-key", b"sec-websocket-version", b"http2-settings",
})


class _H1Scan:
    """The header fields :func:`h1_request` looks at, gathered in one pass."""

    __slots__ = ("connection", "upgrade", "content_length", "chunked",
                 "expect", "ws_key", "ws_version", "h2_settings", "h2_settings_count")

    def __init__(self) -> None:
        self.connection: list[bytes] = []
        self.upgrade: bytes | None = None
        self.content_length: bytes | None = None
        self.chunked = False
        self.expect: bytes | None = None
        self.ws_key: bytes | None = None
        self.ws_version: bytes | None = None
        self.h2_settings: bytes | None = None
        self.h2_settings_count = 0

    def feed(self, name: bytes, value: bytes) -> None:
        if name == b"connection":
            self.connection.extend(t.strip().lower() for t in value.split(b","))
        elif name == b"content-length":
            self.content_length = value
        elif name == b"transfer-encoding":
            self.chunked = True
        elif name == b"upgrade":
            self.upgrade = value.lower()
        elif name == b"expect":
            self.expect = value.lower()
        elif name == b"sec-websocket-key":
            self.ws_key = value.strip()
        elif name == b"sec-websocket-version":
            self.ws_version = value.strip()
        elif name == b"http2-settings":
            self.h2_settings = value.strip()
            self.h2_settings_count += 1


_NO_SPECIAL_FIELDS = _H1Scan()


def h1_request(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], http_version: bytes
) -> H1Request:
    """Validate an HTTP/1.x request head and classify it (see module docstring).

    Raises :class:`ProtocolError` only.
    """
    if len(headers) > MAX_REQUEST_HEADERS:
        raise HeaderTooLarge(f"more than {MAX_REQUEST_HEADERS} header fields")
    scan: _H1Scan | None = None
    for name, value in headers:
        if name in _H1_SPECIAL:
            if scan is None:
                scan = _H1Scan()
            scan.feed(name, value)
    if scan is None:
        scan = _NO_SPECIAL_FIELDS  # read-only below
    if scan.chunked and scan.content_length is not None:
        raise ProtocolError("both Content-Length and Transfer-Encoding")
    target, headers = _h1_target(method, target, headers)
    content_length = int(scan.content_length) if scan.content_length is not None else None
    keep_alive = http_version == b"1.1" and b"close" not in scan.connection
    protocol, ws_key, h2_settings = _h1_upgrade(method, http_version, scan)
    head = RequestHead(
        method=method.decode("ascii"),
        target=target,
        headers=tuple(headers),
        protocol=protocol,
    )
    return H1Request(
        head=head,
        http_version=http_version,
        keep_alive=keep_alive,
        expect_continue=http_version == b"1.1" and scan.expect == b"100-continue",
        has_body=scan.chunked or bool(content_length),
        content_length=content_length,
        h2_settings=h2_settings,
        websocket_key=ws_key,
    )


def _h1_target(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Check the request-target form (RFC 9112 3.2); absolute-form becomes
    origin-form and its authority replaces the Host header (RFC 9112 3.2.2)."""
    if target[:1] == b"/":
        return target, headers
    if target == b"*":
        if method != b"OPTIONS":
            raise ProtocolError("asterisk-form target is only for OPTIONS")
        return target, headers
    if method == b"CONNECT":
        raise ProtocolError("CONNECT is not supported", status=405)
    lowered = target[:8].lower()
    for prefix in (b"http://", b"https://"):
        if lowered.startswith(prefix):
            rest = target[len(prefix):]
            slash = rest.find(b"/")
            query = rest.find(b"?")
            cut = min(i for i in (slash, query, len(rest)) if i >= 0)
            authority, path = rest[:cut], rest[cut:]
            if not authority:
                raise ProtocolError("absolute-form target without authority")
            if path[:1] != b"/":
                path = b"/" + path
            headers = [(n, v) for n, v in headers if n != b"host"]
            headers.append((b"host", authority))
            return path, headers
    raise ProtocolError(f"bad request-target {target[:64]!r}")


def _h1_upgrade(
    method: bytes, http_version: bytes, scan: _H1Scan
) -> tuple[str | None, bytes | None, bytes | None]:
    """(protocol, websocket key, h2 settings) for an upgrade request, else Nones.

    The head's ``protocol`` is ``"websocket"`` for a valid WebSocket upgrade and
    ``"h2c"`` for a valid h2c upgrade; the H1 adapter drops ``"h2c"`` when it
    does not switch.  An upgrade to anything else is ignored (RFC 9110 7.8: the
    server may ignore Upgrade), except an invalid WebSocket handshake: 400.
    """
    if scan.upgrade is None or http_version != b"1.1" or b"upgrade" not in scan.connection:
        return None, None, None
    tokens = [t.strip() for t in scan.upgrade.split(b",")]
    if b"websocket" in tokens:
        return "websocket", _websocket_key(method, scan), None
    if b"h2c" in tokens and scan.h2_settings_count == 1 and b"http2-settings" in scan.connection:
        return "h2c", None, _decode_h2_settings(scan.h2_settings or b"")
    return None, None, None


def _websocket_key(method: bytes, scan: _H1Scan) -> bytes:
    if method != b"GET":
        raise ProtocolError("a WebSocket handshake must be a GET")
    if scan.ws_version != b"13":
        raise ProtocolError("unsupported Sec-WebSocket-Version (13 only)")
    key = scan.ws_key
    if key is None:
        raise ProtocolError("missing Sec-WebSocket-Key")
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad Sec-WebSocket-Key") from None
    if len(decoded) != 16:
        raise ProtocolError("bad Sec-WebSocket-Key")
    return key


def _decode_h2_settings(value: bytes) -> bytes:
    """HTTP2-Settings is base64url without padding (RFC 7540 3.2.1)."""
    try:
        payload = base64.b64decode(value + b"=" * (-len(value) % 4), altchars=b"-_",
                                   validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad HTTP2-Settings") from None
    if len(payload) % 6:
        raise ProtocolError("bad HTTP2-Settings length")
    return payload


# --------------------------------------------------------------------------
# HTTP/2 and HTTP/3 requests


def pseudo_request_head(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    early_data: bool = False,
    allow_connect_protocol: bool = True,
) -> RequestHead:
    """Validate an H2/H3 request field section into a :class:`RequestHead`.

    ``allow_connect_protocol`` is whether this connection advertised
    SETTINGS_ENABLE_CONNECT_PROTOCOL.  Raises :class:`ProtocolError` only:
    400 for a malformed request, 405 for a plain CONNECT, 431 for too many
    fields, 501 for an extended CONNECT to a protocol other than WebSocket.
    """
    if len(headers) > MAX_REQUEST_HEADERS:
        raise HeaderTooLarge(f"more than {MAX_REQUEST_HEADERS} header fields")
    pseudo, regular, host = _split_pseudo(headers)
    method = pseudo.get(b":method")
    if method is None:
        raise ProtocolError("missing :method")
    if not _TOKEN_RE.fullmatch(method):
        raise ProtocolError("bad :method")
    authority = pseudo.get(b":authority")
    if authority is not None:
        if not authority:
            raise ProtocolError("empty :authority")
        if host is None:
            regular.append((b"host", authority))
        elif host != authority:
            raise ProtocolError(":authority and host differ")
    if method == b"CONNECT":
        return _connect_head(pseudo, regular, early_data, allow_connect_protocol)
    if b":protocol" in pseudo:
        raise ProtocolError(":protocol needs the CONNECT method")
    scheme, path = _scheme_and_path(pseudo, method)
    if authority is None and host is None and scheme in (b"http", b"https"):
        raise ProtocolError("missing :authority and host")
    return RequestHead(
        method=method.decode("ascii"),
        target=path,
        headers=tuple(regular),
        scheme=scheme.decode("ascii"),
        early_data=early_data,
    )


def _split_pseudo(
    headers: Sequence[tuple[bytes, bytes]],
) -> tuple[dict[bytes, bytes], list[tuple[bytes, bytes]], bytes | None]:
    """Separate pseudo-header fields from regular ones, validating both."""
    pseudo: dict[bytes, bytes] = {}
    regular: list[tuple[bytes, bytes]] = []
    host: bytes | None = None
    for name, value in headers:
        if _BAD_VALUE_RE.search(value) or value != value.strip(b" \t"):
            raise ProtocolError(f"bad value for {name[:64]!r}")
        if name[:1] == b":":
            if regular:
                raise ProtocolError("pseudo-header field after a regular field")
            if name not in _PSEUDO:
                raise ProtocolError(f"unknown pseudo-header field {name[:64]!r}")
            if name in pseudo:
                raise ProtocolError(f"duplicate {name.decode('ascii')}")
            pseudo[name] = value
            continue
        if not _LOWER_TOKEN_RE.fullmatch(name):
            raise ProtocolError(f"bad header name {name[:64]!r}")
        if name in _CONNECTION_SPECIFIC:
            raise ProtocolError(f"connection-specific header {name.decode('ascii')}")
        if name == b"te" and value.lower() != b"trailers":
            raise ProtocolError("te other than trailers")
        if name == b"host":
            if host is not None:
                raise ProtocolError("more than one host header")
            host = value
        elif name == b"content-length" and not _DIGITS_RE.fullmatch(value):
            raise ProtocolError("bad content-length")
        regular.append((name, value))
    return pseudo, regular, host


def _scheme_and_path(pseudo: dict[bytes, bytes], method: bytes) -> tuple[bytes, bytes]:
    scheme = pseudo.get(b":scheme")
    path = pseudo.get(b":path")
    if scheme is None or path is None:
        raise ProtocolError("missing :scheme or :path")
    if not scheme:
        raise ProtocolError("empty :scheme")
    if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
        raise ProtocolError("bad :path")
    return scheme, path


def _connect_head(
    pseudo: dict[bytes, bytes],
    regular: list[tuple[bytes, bytes]],
    early_data: bool,
    allow_connect_protocol: bool,
) -> RequestHead:
    protocol = pseudo.get(b":protocol")
    if protocol is None:
        # A plain CONNECT (RFC 9113 8.5) asks for a tunnel: well-formed only
        # with :authority and without :scheme/:path, and never served here.
        if b":scheme" in pseudo or b":path" in pseudo or b":authority" not in pseudo:
            raise ProtocolError("malformed CONNECT")
        raise ProtocolError("CONNECT is not supported", status=405)
    if not allow_connect_protocol:
        raise ProtocolError(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL")
    if b":authority" not in pseudo:
        raise ProtocolError("extended CONNECT without :authority")
    scheme, path = _scheme_and_path(pseudo, b"CONNECT")
    if protocol != b"websocket":
        raise ProtocolError(f"unsupported :protocol {protocol[:64]!r}", status=501)
    return RequestHead(
        method="CONNECT",
        target=path,
        headers=tuple(regular),
        scheme=scheme.decode("ascii"),
        protocol="websocket",
        early_data=early_data,
    )


# --------------------------------------------------------------------------
# Responses


def format_http_date(wall: float) -> bytes:
    """An IMF-fixdate (RFC 9110 5.6.7) for a wall-clock time."""
    return formatdate(wall, usegmt=True).encode("ascii")


class _DateCache:
    """The Date value, formatted once per second.

    ``now`` is whatever clock the caller runs on (usually the loop's monotonic
    clock): the cache maps it to wall time with an offset taken at the last
    refresh, so callers never need a wall clock of their own.  This is the one
    place under ``protocols/`` that reads the wall clock, because the Date
    header is wall time by definition.
    """

    __slots__ = ("_offset", "_second", "_value")

    def __init__(self) -> None:
        self._offset = 0.0
        self._second = -1
        self._value = b""

    def get(self, now: float) -> bytes:
        second = int(now + self._offset)
        if second != self._second:
            wall = time.time()
            self._offset = wall - now
            self._second = int(wall)
            self._value = format_http_date(wall)
        return self._value


_date_cache = _DateCache()


def response_headers(
    status: int,
    headers: Headers,
    defaults: ResponseDefaults,
    *,
    now: float,
    alt_svc: bool,
    multiplexed: bool = False,
) -> list[tuple[bytes, bytes]]:
    """The header list of a response: the app's, validated, plus the defaults.

    Names come back lowercase.  ``alt_svc`` is True only for TLS over TCP
    (HTTP/3 is advertised from there).  ``status`` keeps 1xx heads free of
    defaults.  ``multiplexed`` (H2, H3) drops the connection-specific fields
    an app may set (``connection``, ``keep-alive``, ``transfer-encoding``,
    ``upgrade``...), which those protocols forbid (RFC 9113 8.2.2, RFC 9114
    4.2); HTTP/1.1 keeps them, its writer interprets them.

    Error handling: a name that is not a token, or a value with CR, LF or NUL,
    raises :class:`ProtocolError` (status 500: the application is at fault).
    """
    out: list[tuple[bytes, bytes]] = []
    seen_date = seen_server = seen_alt_svc = False
    for name, value in headers:
        if name not in _GOOD_NAMES:
            name = _check_name(name)
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            raise ProtocolError(f"bad response header value for {name[:64]!r}", status=500)
        if multiplexed and name in _CONNECTION_SPECIFIC:
            continue
        if name == b"date":
            seen_date = True
        elif name == b"server":
            seen_server = True
        elif name == b"alt-svc":
            seen_alt_svc = True
        out.append((name, value))
    if status < 200:
        return out
    if defaults.extra:
        seen = _add_extra(out, defaults.extra)
        seen_date = seen_date or b"date" in seen
        seen_server = seen_server or b"server" in seen
        seen_alt_svc = seen_alt_svc or b"alt-svc" in seen
    if defaults.date and not seen_date:
        out.append((b"date", _date_cache.get(now)))
    if defaults.server is not None and not seen_server:
        out.append((b"server", defaults.server))
    if alt_svc and defaults.alt_svc is not None and not seen_alt_svc:
        out.append((b"alt-svc", defaults.alt_svc))
    return out


#: Response header names already validated (apps repeat the same few): a set
#: lookup instead of a regex match per header.  Bounded.
_GOOD_NAMES: set[bytes] = set()
_GOOD_NAMES_MAX = 4096


def _check_name(name: bytes) -> bytes:
    """Lowercase and validate a response header name (cached when valid)."""
    lowered = name.lower()
    if not _LOWER_TOKEN_RE.fullmatch(lowered):
        raise ProtocolError(f"bad response header name {name[:64]!r}", status=500)
    if lowered == name and len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
        _GOOD_NAMES.add(name)
    return lowered


def trailer_fields(headers: Headers) -> list[tuple[bytes, bytes]]:
    """Validate response trailers like response headers (no defaults added)."""
    return response_headers(100, headers, _NO_DEFAULTS, now=0.0, alt_svc=False)


_NO_DEFAULTS = ResponseDefaults(server=None, date=False)


def _add_extra(
    out: list[tuple[bytes, bytes]], extra: tuple[tuple[bytes, bytes], ...]
) -> set[bytes]:
    """Append the ``--header`` extras the app did not set; return all names."""
    present = {name for name, _ in out}
    for name, value in extra:
        if name not in present:
            out.append((name, value))
    present.update(name for name, _ in extra)
    return present
