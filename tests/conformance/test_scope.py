"""The ASGI scope and the request-side niceties look the same on every protocol."""

from __future__ import annotations

import json

import pytest

from tests.conformance.cases import ALL, REQUEST_BODY, on
from tests.conformance.drivers import Driver, H3Driver
from tests.support import apps

pytestmark = pytest.mark.timeout(60)

HTTP_VERSION = {"h1": "1.1", "h2": "2", "h3": "3", "hq": "1.1"}


@on(*ALL)
def test_scope(serve, protocol):
    async def scenario(c: Driver) -> None:
        r = await c.request("GET", "/a%20b/c?x=1&y=%20")
        assert r.status == 200
        scope = json.loads(r.body)
        assert scope["type"] == "http"
        assert scope["http_version"] == HTTP_VERSION[protocol]
        assert scope["method"] == "GET"
        assert scope["path"] == "/a b/c"
        assert scope["raw_path"] == "/a%20b/c"
        assert scope["query_string"] == "x=1&y=%20"
        assert scope["asgi"]["version"] == "3.0"
        headers = dict((name, value) for name, value in scope["headers"])
        assert "host" in headers
        assert all(name == name.lower() and not name.startswith(":")
                   for name, _ in scope["headers"])
    serve(apps.scope_json, scenario)


@on(*REQUEST_BODY)
def test_expect_100_continue(serve, protocol):
    """The interim 100 goes out when the app first calls receive(), before
    the client sends the body it announced."""
    async def scenario(c: Driver) -> None:
        ex = await c.open("POST", "/", [(b"expect", b"100-continue"),
                                       (b"content-length", b"4")], end=False)
        await c.wait(lambda: bool(ex.response.interim), "100 Continue")
        assert [status for status, _ in ex.response.interim] == [100]
        c.send(ex, b"body", end=True)
        await c.wait(lambda: ex.done, "the response")
        assert (ex.response.status, ex.response.body) == (200, b"body")
    serve(apps.echo, scenario)


@on("h3")
def test_unsafe_method_in_0rtt_is_425(serve, protocol):
    """RFC 8470: a POST that arrives in 0-RTT is answered 425 Too Early
    without reaching the app; a GET in the same flight is served."""
    seen: list = []

    async def app(scope, receive, send) -> None:
        seen.append(scope["method"])
        await apps.hello(scope, receive, send)

    async def scenario(c: Driver) -> None:
        assert isinstance(c, H3Driver)
        first = await c.request("GET", "/warm-up")
        assert first.status == 200
        post, get = await c.resume_with_early_data([("POST", "/unsafe"), ("GET", "/safe")])
        await c.wait(lambda: post.done and get.done, "both early responses")
        assert c.early_data_accepted()
        assert post.response.status == 425
        assert (get.response.status, get.response.body) == (200, b"hello")
    serve(app, scenario)
    assert seen == ["GET", "GET"]
