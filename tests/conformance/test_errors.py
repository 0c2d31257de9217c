"""Application failures: before the head (a clean 500), after it (the
stream is reset, or the HTTP/1.1 connection closed), and protocol misuse."""

from __future__ import annotations

import pytest

from tests.conformance.cases import ALL, APP_ERROR_RESET, on
from tests.conformance.drivers import Driver, Response
from tests.support import apps

pytestmark = pytest.mark.timeout(60)


def assert_server_error(protocol: str, r: Response) -> None:
    """A complete 500 (hq: the stream reset with code 500, its only way to say it)."""
    assert r.status == 500, r
    if protocol == "hq":
        assert (r.reset_code, r.body) == (500, b"")
    else:
        assert (r.body, r.ended, r.reset) == (b"Internal Server Error", True, False)


def assert_cut_short(protocol: str, r: Response) -> None:
    """The response started (200) and was then cut short, not ended cleanly."""
    assert not r.ended and r.reset, r
    assert r.reset_code == APP_ERROR_RESET[protocol]
    if protocol == "h1":
        assert r.status == 200 and r.connection_closed
        assert r.body == b"partial"
    elif protocol == "h2":
        assert r.status == 200


@on(*ALL)
def test_app_raises_before_the_head(serve, protocol):
    async def scenario(c: Driver) -> None:
        assert_server_error(protocol, await c.request("GET", "/"))
    serve(apps.raise_before_head, scenario)


@on(*ALL)
def test_app_returns_without_a_response(serve, protocol):
    async def scenario(c: Driver) -> None:
        assert_server_error(protocol, await c.request("GET", "/"))
    serve(apps.return_without_response, scenario)


@on(*ALL)
def test_body_before_start_is_a_500(serve, protocol):
    """An ASGI protocol error before any head went out still gets a clean 500."""
    async def scenario(c: Driver) -> None:
        assert_server_error(protocol, await c.request("GET", "/"))
    serve(apps.body_before_start, scenario)


@on(*ALL)
def test_app_raises_after_the_head(serve, protocol):
    async def scenario(c: Driver) -> None:
        assert_cut_short(protocol, await c.request("GET", "/"))
    serve(apps.raise_after_head, scenario)


@on(*ALL)
def test_app_returns_mid_body(serve, protocol):
    async def scenario(c: Driver) -> None:
        assert_cut_short(protocol, await c.request("GET", "/"))
    serve(apps.return_mid_body, scenario)


@on(*ALL)
def test_connection_survives_a_failed_stream(serve, protocol):
    """After a reset stream (or a closed H1 connection) the client can go on."""
    async def scenario(c: Driver) -> None:
        first = await c.request("GET", "/fail")
        assert first.reset
        second = await c.request("GET", "/")
        assert (second.status, second.body) == (200, b"hello")
    calls: list = []

    async def app(scope, receive, send) -> None:
        calls.append(scope["path"])
        if scope["path"] == "/fail":
            await apps.raise_after_head(scope, receive, send)
        else:
            await apps.hello(scope, receive, send)
    serve(app, scenario)
    assert calls == ["/fail", "/"]


def wrong_length(declared: int, sent: int):
    async def app(scope, receive, send) -> None:
        if scope["path"] == "/ok":
            await apps.hello(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(declared).encode())]})
        await send({"type": "http.response.body", "body": b"x" * sent})
    return app


@on("h1", "h2", "h3")
@pytest.mark.parametrize("declared,sent", [(3, 5), (10, 5)], ids=["too-long", "too-short"])
def test_body_contradicting_content_length(serve, protocol, declared, sent):
    """The app's body does not match its own Content-Length.  The server must
    not deliver a malformed message: the response is cut short (h1: the
    connection is closed), never ended with the wrong length, and only that
    response suffers: the next request is served."""
    async def scenario(c: Driver) -> None:
        r = await c.request("GET", "/bad")
        if r.status == 500:
            # The mismatch was caught before the head went out: a clean 500.
            assert r.ended and b"hello" not in r.body
        else:
            assert not r.ended, f"a complete response with the wrong length: {r}"
            assert r.reset
        ok = await c.request("GET", "/ok")
        assert (ok.status, ok.body) == (200, b"hello")
    serve(wrong_length(declared, sent), scenario)
