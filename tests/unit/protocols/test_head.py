"""Tests of ``quicserve.protocols.head``: every rejection, and the response head."""

from __future__ import annotations

import base64
import re

import pytest

from quicserve.errors import ProtocolError
from quicserve.interfaces import ResponseDefaults
from quicserve.protocols.head import (
    MAX_REQUEST_HEADERS,
    format_http_date,
    h1_request,
    h1_request_head,
    pseudo_request_head,
    reason_phrase,
    response_headers,
    trailer_fields,
)

WS_HEADERS = [
    (b"host", b"x"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"sec-websocket-version", b"13"),
]


def h1(method: bytes = b"GET", target: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None,
       version: bytes = b"1.1"):  # type: ignore[no-untyped-def]
    return h1_request(method, target, headers if headers is not None else [(b"host", b"x")], version)


def status_of(call) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError) as info:
        call()
    return info.value.status


# -- HTTP/1.x ------------------------------------------------------------------------


def test_h1_plain_request() -> None:
    request = h1(b"POST", b"/a?b=c", [(b"host", b"x"), (b"content-length", b"5")])
    head = request.head
    assert (head.method, head.target, head.scheme, head.protocol) == ("POST", b"/a?b=c", None, None)
    assert head.headers == ((b"host", b"x"), (b"content-length", b"5"))
    assert request.keep_alive and request.has_body and request.content_length == 5
    assert not request.expect_continue


def test_h1_request_head_returns_the_head_only() -> None:
    head = h1_request_head(b"GET", b"/", [(b"host", b"x")], b"1.1")
    assert head.method == "GET" and head.target == b"/"


@pytest.mark.parametrize("headers,version,keep_alive", [
    ([(b"host", b"x")], b"1.1", True),
    ([(b"host", b"x"), (b"connection", b"keep-alive, Close")], b"1.1", False),
    ([], b"1.0", False),
    ([(b"connection", b"keep-alive")], b"1.0", False),
])
def test_h1_keep_alive(headers: list[tuple[bytes, bytes]], version: bytes, keep_alive: bool) -> None:
    assert h1(headers=headers, version=version).keep_alive is keep_alive


def test_h1_expect_continue_only_on_http11() -> None:
    headers = [(b"host", b"x"), (b"expect", b"100-Continue"), (b"content-length", b"1")]
    assert h1(b"POST", headers=headers).expect_continue
    assert not h1(b"POST", headers=headers, version=b"1.0").expect_continue


def test_h1_chunked_has_body_without_length() -> None:
    request = h1(b"POST", headers=[(b"host", b"x"), (b"transfer-encoding", b"chunked")])
    assert request.has_body and request.content_length is None


def test_h1_content_length_with_transfer_encoding_is_rejected() -> None:
    assert status_of(lambda: h1(b"POST", headers=[
        (b"host", b"x"), (b"transfer-encoding", b"chunked"), (b"content-length", b"3")])) == 400


def test_h1_too_many_headers_is_431() -> None:
    headers = [(b"host", b"x")] + [(b"x-a", b"1")] * MAX_REQUEST_HEADERS
    assert status_of(lambda: h1(headers=headers)) == 431


@pytest.mark.parametrize("method,target,status", [
    (b"GET", b"*", 400),
    (b"GET", b"relative", 400),
    (b"CONNECT", b"example.com:443", 405),
    (b"GET", b"http:///nohost", 400),
    (b"GET", b"ftp://x/", 400),
])
def test_h1_bad_targets(method: bytes, target: bytes, status: int) -> None:
    assert status_of(lambda: h1(method, target)) == status


def test_h1_options_asterisk_is_fine() -> None:
    assert h1(b"OPTIONS", b"*").head.target == b"*"


def test_h1_absolute_form_becomes_origin_form_and_sets_host() -> None:
    head = h1(b"GET", b"http://example.com:8080/p?q", [(b"host", b"other")]).head
    assert head.target == b"/p?q"
    assert head.headers == ((b"host", b"example.com:8080"),)
    assert h1(b"GET", b"HTTPS://example.com?x").head.target == b"/?x"


def test_h1_websocket_upgrade_is_marked() -> None:
    request = h1(headers=WS_HEADERS)
    assert request.head.protocol == "websocket"
    assert request.websocket_key == b"dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize("mutate", [
    lambda hs: [(n, v) for n, v in hs if n != b"sec-websocket-key"],
    lambda hs: [(n, b"8" if n == b"sec-websocket-version" else v) for n, v in hs],
    lambda hs: [(n, b"short" if n == b"sec-websocket-key" else v) for n, v in hs],
    lambda hs: [(n, b"!!!notbase64!!!!!!!!!!!!" if n == b"sec-websocket-key" else v) for n, v in hs],
])
def test_h1_bad_websocket_handshakes(mutate) -> None:  # type: ignore[no-untyped-def]
    assert status_of(lambda: h1(headers=mutate(WS_HEADERS))) == 400


def test_h1_websocket_must_be_get() -> None:
    assert status_of(lambda: h1(b"POST", headers=WS_HEADERS)) == 400


def test_h1_upgrade_without_connection_upgrade_is_ignored() -> None:
    headers = [(n, v) for n, v in WS_HEADERS if n != b"connection"]
    assert h1(headers=headers).head.protocol is None


def test_h1_unknown_upgrade_is_ignored() -> None:
    headers = [(b"host", b"x"), (b"upgrade", b"foo/2"), (b"connection", b"upgrade")]
    assert h1(headers=headers).head.protocol is None


def _h2c_headers(settings: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x"), (b"connection", b"Upgrade, HTTP2-Settings"), (b"upgrade", b"h2c"),
            (b"http2-settings", settings)]


def test_h1_h2c_upgrade_decodes_settings() -> None:
    payload = b"\x00\x04\x00\x01\x00\x00"
    encoded = base64.urlsafe_b64encode(payload).rstrip(b"=")
    request = h1(headers=_h2c_headers(encoded))
    assert request.head.protocol == "h2c" and request.h2_settings == payload


def test_h1_h2c_upgrade_with_bad_settings_is_400() -> None:
    assert status_of(lambda: h1(headers=_h2c_headers(b"AAAA"))) == 400  # 3 bytes: not n*6
    assert status_of(lambda: h1(headers=_h2c_headers(b"@@@@"))) == 400


def test_h1_h2c_needs_http2_settings_in_connection() -> None:
    headers = _h2c_headers(b"")
    headers[1] = (b"connection", b"Upgrade")
    assert h1(headers=headers).head.protocol is None


# -- HTTP/2 and HTTP/3 ---------------------------------------------------------------------

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/p?q"), (b":authority", b"ex.com")]


def test_pseudo_plain_request() -> None:
    head = pseudo_request_head(BASE + [(b"accept", b"*/*")], early_data=True)
    assert (head.method, head.target, head.scheme, head.early_data) == ("GET", b"/p?q", "https", True)
    assert head.headers == ((b"accept", b"*/*"), (b"host", b"ex.com"))


def test_pseudo_host_matching_authority_is_kept_once() -> None:
    head = pseudo_request_head(BASE + [(b"host", b"ex.com")])
    assert head.headers == ((b"host", b"ex.com"),)


def test_pseudo_host_without_authority() -> None:
    head = pseudo_request_head(BASE[:3] + [(b"host", b"ex.com")])
    assert head.headers == ((b"host", b"ex.com"),)


@pytest.mark.parametrize("headers", [
    BASE[1:],                                                  # no :method
    [BASE[0], BASE[2], BASE[3]],                               # no :scheme
    [BASE[0], BASE[1], BASE[3]],                               # no :path
    BASE[:3],                                                  # no authority and no host
    BASE + [(b":method", b"GET")],                             # duplicate pseudo
    BASE + [(b":foo", b"x")],                                  # unknown pseudo
    [(b"accept", b"*/*")] + BASE,                              # pseudo after regular
    BASE + [(b"Accept", b"*/*")],                              # uppercase name
    BASE + [(b"connection", b"keep-alive")],
    BASE + [(b"keep-alive", b"5")],
    BASE + [(b"proxy-connection", b"x")],
    BASE + [(b"transfer-encoding", b"chunked")],
    BASE + [(b"upgrade", b"websocket")],
    BASE + [(b"te", b"gzip")],
    BASE + [(b"x-a", b"a\r\nb")],
    BASE + [(b"x-a", b"a\x00b")],
    BASE + [(b"x-a", b" padded")],
    BASE + [(b"bad name", b"x")],
    BASE + [(b"host", b"other.com")],                          # host differs from :authority
    BASE + [(b"content-length", b"12x")],
    [BASE[0], BASE[1], (b":path", b""), BASE[3]],              # empty :path
    [BASE[0], BASE[1], (b":path", b"nopath"), BASE[3]],
    [BASE[0], BASE[1], (b":path", b"*"), BASE[3]],             # * only for OPTIONS
    [BASE[0], BASE[1], BASE[2], (b":authority", b"")],
    [(b":method", b"G T"), BASE[1], BASE[2], BASE[3]],
    BASE + [(b":protocol", b"websocket")],                     # :protocol without CONNECT
    [BASE[0], (b":scheme", b""), BASE[2], BASE[3]],
])
def test_pseudo_malformed_requests_are_400(headers: list[tuple[bytes, bytes]]) -> None:
    assert status_of(lambda: pseudo_request_head(headers)) == 400


def test_pseudo_te_trailers_is_allowed() -> None:
    assert pseudo_request_head(BASE + [(b"te", b"trailers")]).headers[0] == (b"te", b"trailers")


def test_pseudo_options_asterisk() -> None:
    head = pseudo_request_head([(b":method", b"OPTIONS"), (b":scheme", b"https"), (b":path", b"*"),
                                (b":authority", b"x")])
    assert head.target == b"*"


def test_pseudo_too_many_fields_is_431() -> None:
    assert status_of(lambda: pseudo_request_head(BASE + [(b"x-a", b"1")] * MAX_REQUEST_HEADERS)) == 431


CONNECT_WS = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
              (b":path", b"/chat"), (b":authority", b"ex.com")]


def test_extended_connect_websocket_is_marked() -> None:
    head = pseudo_request_head(CONNECT_WS + [(b"sec-websocket-version", b"13")])
    assert head.protocol == "websocket" and head.method == "CONNECT" and head.target == b"/chat"


def test_extended_connect_other_protocol_is_refused_not_served() -> None:
    headers = [(n, b"webtransport" if n == b":protocol" else v) for n, v in CONNECT_WS]
    assert status_of(lambda: pseudo_request_head(headers)) == 501


def test_extended_connect_needs_the_setting() -> None:
    assert status_of(lambda: pseudo_request_head(CONNECT_WS, allow_connect_protocol=False)) == 400


@pytest.mark.parametrize("drop", [b":path", b":scheme", b":authority"])
def test_extended_connect_needs_all_pseudo_fields(drop: bytes) -> None:
    headers = [(n, v) for n, v in CONNECT_WS if n != drop]
    assert status_of(lambda: pseudo_request_head(headers)) == 400


def test_plain_connect_is_405() -> None:
    assert status_of(lambda: pseudo_request_head(
        [(b":method", b"CONNECT"), (b":authority", b"ex.com:443")])) == 405


def test_malformed_plain_connect_is_400() -> None:
    assert status_of(lambda: pseudo_request_head(
        [(b":method", b"CONNECT"), (b":authority", b"ex.com:443"), (b":path", b"/")])) == 400


# -- responses ------------------------------------------------------------------------------------

DATE_RE = re.compile(rb"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")


def test_response_headers_add_defaults() -> None:
    defaults = ResponseDefaults(server=b"quicserve", date=True, extra=((b"x-extra", b"1"),),
                                alt_svc=b'h3=":443"')
    out = response_headers(200, [(b"Content-Type", b"text/plain")], defaults, now=5.0, alt_svc=True)
    names = [n for n, _ in out]
    assert names == [b"content-type", b"x-extra", b"date", b"server", b"alt-svc"]
    assert DATE_RE.fullmatch(dict(out)[b"date"])


def test_response_headers_app_values_win() -> None:
    defaults = ResponseDefaults(server=b"quicserve", date=True, extra=((b"x-extra", b"1"),),
                                alt_svc=b'h3=":443"')
    app = [(b"server", b"mine"), (b"date", b"then"), (b"x-extra", b"2"), (b"alt-svc", b"clear")]
    out = response_headers(200, app, defaults, now=5.0, alt_svc=True)
    assert out == app


def test_response_headers_extra_may_replace_a_default() -> None:
    defaults = ResponseDefaults(server=b"quicserve", date=False, extra=((b"server", b"front"),))
    assert response_headers(200, [], defaults, now=0, alt_svc=False) == [(b"server", b"front")]


def test_response_headers_multiplexed_drops_connection_specific_fields() -> None:
    app = [(b"connection", b"keep-alive"), (b"Transfer-Encoding", b"chunked"), (b"upgrade", b"x"),
           (b"keep-alive", b"5"), (b"x-kept", b"1")]
    defaults = ResponseDefaults(server=None, date=False)
    assert response_headers(200, app, defaults, now=0, alt_svc=False, multiplexed=True) == [
        (b"x-kept", b"1")]
    assert len(response_headers(200, app, defaults, now=0, alt_svc=False)) == 5


def test_response_headers_alt_svc_only_when_asked() -> None:
    defaults = ResponseDefaults(server=None, date=False, alt_svc=b'h3=":443"')
    assert response_headers(200, [], defaults, now=0, alt_svc=False) == []


def test_response_headers_no_defaults_on_1xx() -> None:
    out = response_headers(103, [(b"link", b"</a>")], ResponseDefaults(), now=0, alt_svc=True)
    assert out == [(b"link", b"</a>")]


@pytest.mark.parametrize("pair", [
    (b"x-a", b"a\r\nb"), (b"x-a", b"a\nb"), (b"x-a", b"a\x00b"), (b"bad name", b"x"),
    (b"", b"x"), (b"x:y", b"z"),
])
def test_response_headers_reject_injection(pair: tuple[bytes, bytes]) -> None:
    assert status_of(lambda: response_headers(200, [pair], ResponseDefaults(), now=0,
                                              alt_svc=False)) == 500


def test_date_is_cached_per_second() -> None:
    defaults = ResponseDefaults(server=None, date=True)
    first = response_headers(200, [], defaults, now=100.0, alt_svc=False)
    second = response_headers(200, [], defaults, now=100.0, alt_svc=False)
    assert first[0][1] is second[0][1]  # the same cached object


def test_format_http_date() -> None:
    assert format_http_date(784111777) == b"Sun, 06 Nov 1994 08:49:37 GMT"  # RFC 9110's example


def test_trailer_fields_validate_without_defaults() -> None:
    assert trailer_fields([(b"X-Sum", b"1")]) == [(b"x-sum", b"1")]
    assert status_of(lambda: trailer_fields([(b"x", b"\r")])) == 500


def test_reason_phrases() -> None:
    assert reason_phrase(200) == b"OK"
    assert reason_phrase(431) == b"Request Header Fields Too Large"
    assert reason_phrase(103) == b"Early Hints"
    assert reason_phrase(299) == b"Success" and reason_phrase(199) == b"Informational"
    assert reason_phrase(999) == b"Unknown"
