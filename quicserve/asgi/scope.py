"""The only place that builds ASGI connection scopes (``http`` and ``websocket``).

Theory of operation
-------------------
A protocol adapter hands the ASGI layer a validated :class:`RequestHead` and a
:class:`ConnectionInfo`.  :class:`ScopeBuilder` turns the pair into the scope
dict of ASGI 3.0 (asgiref's "HTTP & WebSocket" spec), the same way for
HTTP/1.1, HTTP/2, HTTP/3 and hq, so no protocol module ever assembles a scope.

The fields, and where each comes from:

* ``path`` / ``raw_path`` / ``query_string`` — split from ``head.target``, the
  raw request-target.  Origin-form (``/a%20b?x``) is the common case; an
  absolute-form target (``http://host/a``, proxies send these) keeps only its
  path; ``*`` (``OPTIONS *``) is passed through as the path ``*``.  ``path`` is
  percent-decoded and then UTF-8 decoded (invalid sequences become U+FFFD);
  ``raw_path`` keeps the bytes as sent.
* ``root_path`` — from ``--root-path``.  ASGI says ``path`` *includes*
  ``root_path`` (WSGI's ``PATH_INFO`` is derived by stripping it).  A proxy
  in front may or may not have stripped the prefix already, so the prefix is
  added to ``path`` and ``raw_path`` only when the path does not already start
  with it.  Frameworks strip it again for routing.
* ``scheme`` — ``:scheme`` on H2/H3, otherwise the connection's; ``ws``/``wss``
  for WebSocket scopes.
* ``headers`` — the request's header list, names lowercased, order and
  duplicates preserved.
* ``client`` / ``server`` — from the connection, unless proxy headers apply.
* ``state`` — a *shallow copy* of the lifespan state dict, so a request may
  rebind keys without other requests seeing it, but shares the objects.
* ``extensions`` — the ones the protocol says it supports
  (``ConnectionInfo.extensions``, e.g. ``http.response.trailers``), plus
  ``websocket.http.response`` for WebSocket scopes (the denial response is
  implemented by ``asgi/websocket.py`` on every protocol), plus ``tls``
  (asgiref's "TLS" extension) whenever the connection itself is TLS or QUIC
  (``ConnectionInfo.tls``, computed once per connection by the transport).
  It describes the hop that reached quicserve, so a cleartext connection
  whose proxy headers say ``https`` gets none.  ``client_cert_chain`` is a
  fresh list per scope; the strings are shared.

Proxy headers: with ``--proxy-headers``, and only when the direct peer is in
``--forwarded-allow-ips`` (``*`` trusts everyone, networks allowed, ``unix``
for unix-socket peers), ``Forwarded`` (RFC 7239) or else ``X-Forwarded-For`` /
``X-Forwarded-Proto`` replace ``client`` and ``scheme``.  Address chains are
walked from the right: the client is the first hop that is not itself a
trusted proxy, so a client cannot spoof its address by prepending entries.
Header values are hostile input: they are parsed by ``_untrusted`` functions
that can raise only ``ValueError``, and a header that fails to parse is
ignored (the peer's own address stays).

This module never performs I/O and never sees the wire.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any, Iterable
from urllib.parse import quote, unquote_to_bytes

from ..interfaces import Address, ConnectionInfo, RequestHead
from .types import ASGI_VERSION, HTTP_SPEC_VERSION, WEBSOCKET_SPEC_VERSION, Scope

_HTTP_ASGI = {"version": ASGI_VERSION, "spec_version": HTTP_SPEC_VERSION}
_WS_ASGI = {"version": ASGI_VERSION, "spec_version": WEBSOCKET_SPEC_VERSION}
_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_HTTP_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split a request-target into ``(raw_path, query_string)``.

    Handles origin-form, absolute-form (``scheme://authority/path?query``),
    and asterisk-form.  Anything else (authority-form) is returned whole as
    the path, with no query.
    """
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        return path, query
    if target == b"*":
        return b"*", b""
    scheme_end = target.find(b"://")
    if scheme_end > 0 and target[:scheme_end].isalpha():
        rest = target[scheme_end + 3:]
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        path, _, query = rest[cut:].partition(b"?")
        return path or b"/", query
    return target, b""


def decode_path(raw_path: bytes) -> str:
    """Percent-decode, then UTF-8 decode (invalid sequences become U+FFFD)."""
    if b"%" not in raw_path:
        return raw_path.decode("utf-8", "replace")
    return unquote_to_bytes(raw_path).decode("utf-8", "replace")


class ScopeBuilder:
    """Builds every ``http`` and ``websocket`` scope; one per server.

    Built once from the options (``root_path``, proxy trust), then called per
    request.  Holds no per-request state.
    """

    __slots__ = ("_root_path", "_root_raw", "_proxy")

    def __init__(self, *, root_path: str = "", proxy: ProxyPolicy | None = None) -> None:
        self._root_path = root_path.rstrip("/")
        self._root_raw = quote(self._root_path).encode("ascii")
        self._proxy = proxy

    def http(self, head: RequestHead, conn: ConnectionInfo, state: dict[str, Any]) -> Scope:
        """The ``http`` scope of one request."""
        raw_path, query = split_target(head.target)
        path = decode_path(raw_path)
        if self._root_path:
            path, raw_path = self._rooted(path, raw_path)
        scheme = head.scheme or conn.scheme
        client = conn.client
        if self._proxy is not None:
            client, scheme = self._proxy.apply(head.headers, client, scheme)
        return {
            "type": "http",
            "asgi": _HTTP_ASGI,
            "http_version": conn.http_version,
            "method": head.method,
            "scheme": _HTTP_SCHEMES.get(scheme, scheme),
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": self._root_path,
            "headers": list(head.headers),  # (names are lowercase already: RequestHead)
            "client": client,
            "server": conn.server,
            "state": dict(state),
            "extensions": _extensions(conn),
        }

    def websocket(self, head: RequestHead, conn: ConnectionInfo, state: dict[str, Any]) -> Scope:
        """The ``websocket`` scope of one WebSocket request (any protocol)."""
        scope = self.http(head, conn, state)
        del scope["method"]
        scope["type"] = "websocket"
        scope["asgi"] = _WS_ASGI
        scope["scheme"] = _WS_SCHEMES.get(scope["scheme"], "ws")
        scope["subprotocols"] = subprotocols(scope["headers"])
        scope["extensions"]["websocket.http.response"] = {}
        return scope

    def _rooted(self, path: str, raw_path: bytes) -> tuple[str, bytes]:
        root = self._root_path
        if path == "*":
            return path, raw_path
        if path == root or path.startswith(root + "/"):
            return path, raw_path
        return root + path, self._root_raw + raw_path


def _extensions(conn: ConnectionInfo) -> dict[str, Any]:
    """The scope's extensions: the protocol's, plus "tls" on TLS connections."""
    extensions: dict[str, Any] = {name: {} for name in conn.extensions}
    tls = conn.tls
    if tls is not None:
        extensions["tls"] = {
            "server_cert": tls.server_cert,
            "client_cert_chain": list(tls.client_cert_chain),
            "client_cert_name": tls.client_cert_name,
            "client_cert_error": tls.client_cert_error,
            "tls_version": tls.tls_version,
            "cipher_suite": tls.cipher_suite,
        }
    return extensions


def subprotocols(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The subprotocols offered in ``Sec-WebSocket-Protocol`` headers, in order."""
    offered: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            offered.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
    return offered


# --------------------------------------------------------------------------
# Proxy headers.


class ProxyPolicy:
    """Which direct peers are trusted proxies, and what their headers mean.

    ``trusted`` holds addresses, networks (``10.0.0.0/8``), ``*`` for every
    peer, and ``unix`` for peers on a unix socket (which have no address).
    """

    __slots__ = ("_all", "_unix", "_networks", "trusts")

    def __init__(self, trusted: Iterable[str]) -> None:
        entries = tuple(trusted)
        self._all = "*" in entries
        self._unix = "unix" in entries
        self._networks = tuple(
            ipaddress.ip_network(e, strict=False) for e in entries if e not in ("*", "unix")
        )
        # Per-address verdicts are cached: the same few proxies ask every time.
        self.trusts = functools.lru_cache(maxsize=1024)(self._trusts)

    def _trusts(self, host: str) -> bool:
        """Whether ``host`` (an IP address as text) is a trusted proxy."""
        if self._all:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def peer_trusted(self, client: Address | None) -> bool:
        if client is None:
            return self._all or self._unix
        return bool(self.trusts(client[0]))

    def apply(
        self, headers: Iterable[tuple[bytes, bytes]], client: Address | None, scheme: str
    ) -> tuple[Address | None, str]:
        """``(client, scheme)`` after the forwarding headers of a trusted peer."""
        if not self.peer_trusted(client):
            return client, scheme
        forwarded: list[bytes] = []
        xff: list[bytes] = []
        xfp: list[bytes] = []
        for name, value in headers:
            if name == b"forwarded":
                forwarded.append(value)
            elif name == b"x-forwarded-for":
                xff.append(value)
            elif name == b"x-forwarded-proto":
                xfp.append(value)
        try:
            if forwarded:
                hops = _untrusted_forwarded(b",".join(forwarded))
            else:
                hops = _untrusted_x_forwarded(b",".join(xff), b",".join(xfp))
        except ValueError:
            return client, scheme
        return self._pick(hops, client, scheme)

    def _pick(
        self, hops: list[tuple[Address | None, str | None]], client: Address | None, scheme: str
    ) -> tuple[Address | None, str]:
        """Walk the hops right to left; stop at the first untrusted address."""
        for address, proto in reversed(hops):
            if proto is not None:
                scheme = proto
            if address is None:
                # "unknown" or an obfuscated identifier: nothing more is known.
                break
            client = address
            if not self.trusts(address[0]):
                break
        return client, scheme


_PROTOS = ("http", "https", "ws", "wss")


def _untrusted_host(text: str) -> Address | None:
    """Parse ``1.2.3.4``, ``1.2.3.4:80``, ``[v6]``, ``[v6]:80`` or a bare v6 address.

    Returns None for identifiers that are not addresses (``unknown``, ``_x``).
    Raises ValueError only.
    """
    text = text.strip().strip('"')
    port = 0
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("unterminated [")
        if rest.startswith(":"):
            port = _untrusted_port(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _untrusted_port(port_text)
    else:
        host = text
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        return None


def _untrusted_port(text: str) -> int:
    if not text.isdigit() or len(text) > 5:
        return 0  # obfuscated ports ("_abc") carry no number
    port = int(text)
    if port > 65535:
        raise ValueError("port out of range")
    return port


def _untrusted_x_forwarded(xff: bytes, xfp: bytes) -> list[tuple[Address | None, str | None]]:
    """Hops from ``X-Forwarded-For`` with the last ``X-Forwarded-Proto`` on the
    hop nearest to us.  Raises ValueError only."""
    hops: list[tuple[Address | None, str | None]] = [
        (_untrusted_host(part), None)
        for part in xff.decode("latin-1").split(",") if part.strip()
    ]
    protos = [p.strip().lower() for p in xfp.decode("latin-1").split(",") if p.strip()]
    if protos and protos[-1] in _PROTOS:
        if hops:
            address, _ = hops[-1]
            hops[-1] = (address, protos[-1])
        else:
            hops.append((None, protos[-1]))
    return hops


def _untrusted_forwarded(value: bytes) -> list[tuple[Address | None, str | None]]:
    """Hops from an RFC 7239 ``Forwarded`` value.  Raises ValueError only."""
    hops: list[tuple[Address | None, str | None]] = []
    for element in value.decode("latin-1").split(","):
        address: Address | None = None
        proto: str | None = None
        for pair in element.split(";"):
            key, sep, raw = pair.partition("=")
            if not sep:
                continue
            key = key.strip().lower()
            if key == "for":
                address = _untrusted_host(raw)
            elif key == "proto" and raw.strip().strip('"').lower() in _PROTOS:
                proto = raw.strip().strip('"').lower()
        hops.append((address, proto))
    return hops
