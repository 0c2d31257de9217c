"""The scope builder: every field of the http and websocket scopes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from quicserve.asgi.scope import ProxyPolicy, ScopeBuilder, decode_path, split_target
from quicserve.interfaces import ConnectionInfo, RequestHead, TlsInfo
from tests.unit.asgi.helpers import CONN, CONN_H3, head


def build(request: RequestHead, conn: ConnectionInfo = CONN, *, root_path: str = "",
          proxy: ProxyPolicy | None = None, state: dict[str, Any] | None = None) -> dict[str, Any]:
    scope = ScopeBuilder(root_path=root_path, proxy=proxy).http(request, conn, state or {})
    return dict(scope)


def test_basic_fields() -> None:
    scope = build(head("GET", b"/a/b?x=1&y=%20", headers=[(b"accept", b"*/*")]))
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/a/b"
    assert scope["raw_path"] == b"/a/b"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["root_path"] == ""
    assert scope["headers"] == [(b"host", b"example.com"), (b"accept", b"*/*")]
    assert scope["client"] == ("127.0.0.1", 50000)
    assert scope["server"] == ("127.0.0.1", 8000)
    assert scope["extensions"] == {}


def test_path_is_percent_decoded_as_utf8_and_raw_path_kept() -> None:
    scope = build(head("GET", b"/caf%C3%A9/a%2Fb%20c"))
    assert scope["path"] == "/café/a/b c"
    assert scope["raw_path"] == b"/caf%C3%A9/a%2Fb%20c"


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert decode_path(b"/%FF") == "/\ufffd"


def test_headers_order_and_duplicates_kept_in_a_list_of_their_own() -> None:
    # Names arrive lowercase (RequestHead's contract, kept by the protocols).
    request = RequestHead(method="GET", target=b"/", headers=(
        (b"x-one", b"1"), (b"cookie", b"a=1"), (b"cookie", b"b=2")))
    scope = build(request)
    assert scope["headers"] == [(b"x-one", b"1"), (b"cookie", b"a=1"), (b"cookie", b"b=2")]
    scope["headers"].append((b"x-added", b"by a middleware"))
    assert build(request)["headers"] == list(request.headers)


def test_scheme_from_h3_pseudo_header_and_connection() -> None:
    assert build(head(), CONN_H3)["scheme"] == "https"
    assert build(head(scheme="https"), CONN)["scheme"] == "https"
    assert build(head(), CONN_H3)["http_version"] == "3"


def test_state_is_a_shallow_copy() -> None:
    shared = {"pool": ["conn"]}
    scope = build(head(), state=shared)
    scope["state"]["other"] = 1
    assert "other" not in shared
    assert scope["state"]["pool"] is shared["pool"]


@pytest.mark.parametrize(("target", "path", "query"), [
    (b"http://example.com/x/y?q=1", b"/x/y", b"q=1"),
    (b"https://example.com", b"/", b""),
    (b"http://example.com?q", b"/", b"q"),
    (b"*", b"*", b""),
    (b"/plain", b"/plain", b""),
])
def test_request_target_forms(target: bytes, path: bytes, query: bytes) -> None:
    assert split_target(target) == (path, query)


def test_options_asterisk() -> None:
    scope = build(head("OPTIONS", b"*"), root_path="/api")
    assert scope["path"] == "*" and scope["raw_path"] == b"*"


@pytest.mark.parametrize(("target", "path", "raw"), [
    (b"/users", "/api/users", b"/api/users"),       # the proxy stripped the prefix
    (b"/api/users", "/api/users", b"/api/users"),   # the proxy kept it
    (b"/api", "/api", b"/api"),
    (b"/apiary", "/api/apiary", b"/api/apiary"),    # a longer segment is not the prefix
])
def test_root_path_semantics(target: bytes, path: str, raw: bytes) -> None:
    scope = build(head("GET", target), root_path="/api/")
    assert scope["root_path"] == "/api"
    assert (scope["path"], scope["raw_path"]) == (path, raw)


def test_extensions_come_from_the_connection() -> None:
    assert build(head(), CONN_H3)["extensions"] == {"http.response.trailers": {}}


def test_websocket_scope() -> None:
    request = head("GET", b"/ws?x", headers=[(b"sec-websocket-protocol", b"a, b"),
                                               (b"sec-websocket-protocol", b"c")],
                   protocol="websocket")
    scope = dict(ScopeBuilder().websocket(request, CONN_H3, {"k": 1}))
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "wss"
    assert scope["subprotocols"] == ["a", "b", "c"]
    assert scope["http_version"] == "3"
    assert scope["state"] == {"k": 1}
    assert "method" not in scope
    assert "websocket.http.response" in scope["extensions"]
    assert dict(ScopeBuilder().websocket(request, CONN, {}))["scheme"] == "ws"


# -- proxy headers ---------------------------------------------------------------------------


XFF = [(b"x-forwarded-for", b"203.0.113.7, 10.0.0.2"), (b"x-forwarded-proto", b"https")]


def test_proxy_headers_ignored_without_a_policy() -> None:
    scope = build(head(headers=XFF))
    assert scope["client"] == ("127.0.0.1", 50000) and scope["scheme"] == "http"


def test_x_forwarded_from_a_trusted_peer() -> None:
    scope = build(head(headers=XFF), proxy=ProxyPolicy(["127.0.0.1", "10.0.0.0/8"]))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"


def test_x_forwarded_from_an_untrusted_peer_is_ignored() -> None:
    scope = build(head(headers=XFF), proxy=ProxyPolicy(["192.0.2.1"]))
    assert scope["client"] == ("127.0.0.1", 50000) and scope["scheme"] == "http"


def test_x_forwarded_for_cannot_be_spoofed_by_prepending() -> None:
    """The client is the rightmost untrusted hop, not the leftmost claim."""
    request = head(headers=[(b"x-forwarded-for", b"1.1.1.1, 198.51.100.9")])
    scope = build(request, proxy=ProxyPolicy(["127.0.0.1"]))
    assert scope["client"] == ("198.51.100.9", 0)


def test_star_trusts_everyone() -> None:
    scope = build(head(headers=XFF), proxy=ProxyPolicy(["*"]))
    assert scope["client"] == ("203.0.113.7", 0)


def test_forwarded_header_wins_and_carries_port_and_proto() -> None:
    request = head(headers=[(b"forwarded", b'for="[2001:db8::1]:4711";proto=https'), *XFF])
    scope = build(request, proxy=ProxyPolicy(["127.0.0.1"]))
    assert scope["client"] == ("2001:db8::1", 4711)
    assert scope["scheme"] == "https"


def test_garbage_forwarding_headers_are_ignored() -> None:
    request = head(headers=[(b"x-forwarded-for", b"not-an-ip"), (b"x-forwarded-proto", b"gopher")])
    scope = build(request, proxy=ProxyPolicy(["127.0.0.1"]))
    assert scope["client"] == ("127.0.0.1", 50000) and scope["scheme"] == "http"
    request = head(headers=[(b"forwarded", b"for=[::1")])
    assert build(request, proxy=ProxyPolicy(["127.0.0.1"]))["client"] == ("127.0.0.1", 50000)


def test_unix_socket_peer_trusted_only_when_listed() -> None:
    conn = ConnectionInfo(http_version="1.1", protocol="HTTP/1.1", scheme="http", client=None,
                          server=("/tmp/s.sock", None))
    # 10.0.0.2 is the nearest hop and is not itself trusted, so it is the client.
    assert build(head(headers=XFF), conn, proxy=ProxyPolicy(["unix"]))["client"] == ("10.0.0.2", 0)
    assert build(head(headers=XFF), conn, proxy=ProxyPolicy(["127.0.0.1"]))["client"] is None


def test_forwarded_proto_maps_to_ws_schemes() -> None:
    request = head(headers=XFF, protocol="websocket")
    scope = ScopeBuilder(proxy=ProxyPolicy(["127.0.0.1"])).websocket(request, CONN, {})
    assert scope["scheme"] == "wss"


# --------------------------------------------------------------------------
# The "tls" extension (asgiref TLS extension).

_TLS = TlsInfo(
    tls_version=0x0304, cipher_suite=0x1301, server_cert="-----BEGIN CERTIFICATE-----\nS\n",
    client_cert_chain=("-----BEGIN CERTIFICATE-----\nC\n", "-----BEGIN CERTIFICATE-----\nI\n"),
    client_cert_name="CN=client,O=Test",
)


def test_tls_extension_on_a_tls_connection() -> None:
    conn = dataclasses.replace(CONN_H3, tls=_TLS)
    tls = build(head(), conn)["extensions"]["tls"]
    assert tls == {
        "server_cert": "-----BEGIN CERTIFICATE-----\nS\n",
        "client_cert_chain": ["-----BEGIN CERTIFICATE-----\nC\n",
                              "-----BEGIN CERTIFICATE-----\nI\n"],
        "client_cert_name": "CN=client,O=Test",
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": 0x1301,
    }
    # The protocol's own extensions are still there.
    assert "http.response.trailers" in build(head(), conn)["extensions"]


def test_tls_extension_without_client_certificate() -> None:
    conn = dataclasses.replace(CONN_H3, tls=TlsInfo(tls_version=0x0303, cipher_suite=0xC02F))
    tls = build(head(), conn)["extensions"]["tls"]
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    assert tls["server_cert"] is None and tls["client_cert_error"] is None
    assert (tls["tls_version"], tls["cipher_suite"]) == (0x0303, 0xC02F)


def test_no_tls_extension_on_cleartext_even_behind_an_https_proxy() -> None:
    """The extension describes the hop that reached quicserve: a proxy's
    ``X-Forwarded-Proto: https`` makes the scheme https, not the connection TLS."""
    request = head(headers=[(b"x-forwarded-proto", b"https")])
    scope = build(request, proxy=ProxyPolicy(["127.0.0.1"]))
    assert scope["scheme"] == "https"
    assert "tls" not in scope["extensions"]


def test_tls_extension_is_per_scope() -> None:
    """An app mutating its scope's extension does not reach the next request."""
    conn = dataclasses.replace(CONN_H3, tls=_TLS)
    builder = ScopeBuilder()
    first = builder.http(head(), conn, {})
    first["extensions"]["tls"]["client_cert_chain"].clear()
    second = builder.http(head(), conn, {})
    assert len(second["extensions"]["tls"]["client_cert_chain"]) == 2


def test_tls_extension_in_wss_scope() -> None:
    conn = dataclasses.replace(CONN_H3, tls=_TLS)
    scope = ScopeBuilder().websocket(head(protocol="websocket"), conn, {})
    assert scope["scheme"] == "wss"
    assert scope["extensions"]["tls"]["client_cert_name"] == "CN=client,O=Test"
    assert "websocket.http.response" in scope["extensions"]
