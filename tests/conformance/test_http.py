"""Requests and responses: bodies both ways, streaming, trailers, early hints."""

from __future__ import annotations

import pytest

from tests.conformance import apps as capps
from tests.conformance.cases import ALL, EARLY_HINTS, REQUEST_BODY, TRAILERS, on
from tests.conformance.drivers import Driver
from tests.support import apps

pytestmark = pytest.mark.timeout(60)


@on(*ALL)
def test_small_response(serve, protocol):
    async def scenario(c: Driver) -> None:
        r = await c.request("GET", "/")
        assert (r.status, r.body, r.ended, r.reset) == (200, b"hello", True, False)
        if protocol != "hq":
            assert r.header(b"content-type") == b"text/plain"
            assert r.header(b"server") == b"quicserve"
    serve(apps.hello, scenario)


@on(*ALL)
def test_sequential_requests_share_the_connection(serve, protocol):
    """Keep-alive on h1, new streams on h2/h3/hq: three in a row all answered."""
    async def scenario(c: Driver) -> None:
        for _ in range(3):
            r = await c.request("GET", "/")
            assert (r.status, r.body) == (200, b"hello")
    serve(apps.hello, scenario)


@on(*REQUEST_BODY)
def test_request_body_arrives_whole(serve, protocol):
    async def scenario(c: Driver) -> None:
        r = await c.request("POST", "/echo", body_chunks=[b"ping " * 100])
        assert (r.status, r.body) == (200, b"ping " * 100)
    serve(apps.echo, scenario)


@on(*REQUEST_BODY)
def test_request_body_is_streamed_to_the_app(serve, protocol):
    """Each chunk reaches the app as its own http.request message, before the
    next one is even sent; only the last says more_body=False."""
    log: list = []

    async def scenario(c: Driver) -> None:
        r = await c.request("POST", "/", body_chunks=[b"one", b"two", b"three"])
        assert (r.status, r.body) == (200, b"onetwothree")
    serve(capps.chunk_log(log), scenario)
    data = [entry for entry in log if entry[0]]
    assert data[:2] == [(b"one", True), (b"two", True)]
    assert log[-1][1] is False
    assert b"".join(body for body, _ in log) == b"onetwothree"


@on(*REQUEST_BODY)
def test_full_duplex_echo(serve, protocol):
    """The response streams while the request body still arrives: each chunk
    comes back before the client sends the next one."""
    async def scenario(c: Driver) -> None:
        ex = await c.open("POST", "/", body=b"a1", end=False)
        await c.wait(lambda: ex.response.body == b"a1", "the first echo")
        assert ex.response.status == 200 and not ex.response.ended
        c.send(ex, b"b2")
        await c.wait(lambda: ex.response.body == b"a1b2", "the second echo")
        c.send(ex, b"c3", end=True)
        await c.wait(lambda: ex.done, "the end of the response")
        r = ex.response
        assert (r.body, r.ended, r.reset) == (b"a1b2c3", True, False)
    serve(capps.duplex_echo, scenario)


@on(*ALL)
def test_response_streaming(serve, protocol):
    async def scenario(c: Driver) -> None:
        r = await c.request("GET", "/stream")
        assert (r.status, r.body, r.ended) == (200, b"0000111122223333444455556666", True)
    serve(apps.streaming(n=7, size=4), scenario)


@on(*REQUEST_BODY)
def test_large_bodies_both_ways(serve, protocol):
    """Bigger than the H2 stream window and the stream high-water mark, so
    flow-control credit must be returned as the app reads."""
    body = bytes(range(256)) * 2048  # 512 KiB

    async def scenario(c: Driver) -> None:
        r = await c.request("PUT", "/big", body_chunks=[body])
        assert r.status == 200
        assert len(r.body) == len(body) and r.body == body
    serve(apps.echo, scenario)


@on(*ALL)
def test_large_response(serve, protocol):
    async def scenario(c: Driver) -> None:
        r = await c.request("GET", "/big")
        assert (r.status, r.ended) == (200, True)
        assert r.body == b"".join(str(i % 10).encode() * 4096 for i in range(100))
    serve(apps.streaming(n=100, size=4096), scenario)


@on(*ALL)
def test_trailers(serve, protocol):
    offered: list = []

    async def scenario(c: Driver) -> None:
        r = await c.request("GET", "/trailers", headers=[(b"te", b"trailers")])
        assert (r.status, r.body, r.ended) == (200, b"data", True)
        if protocol in TRAILERS:
            assert r.trailers == [(b"x-checksum", b"abc123")]
        else:
            assert r.trailers is None
    serve(capps.trailers_if_offered(offered), scenario)
    assert offered == [protocol in TRAILERS]


@on(*ALL)
def test_early_hints(serve, protocol):
    offered: list = []

    async def scenario(c: Driver) -> None:
        r = await c.request("GET", "/")
        assert (r.status, r.body) == (200, b"ok")
        if protocol in EARLY_HINTS:
            assert r.interim == [(103, [(b"link", b"</style.css>; rel=preload; as=style")])]
        else:
            assert r.interim == []
    serve(capps.early_hints(offered), scenario)
    assert offered == [protocol in EARLY_HINTS]


@on("h1", "h2", "h3", xfail={
    "h3": "the aioquic H3 client used as the peer checks content-length against the DATA it "
          "received even for HEAD (aioquic h3/connection.py _check_content_length) and closes "
          "the connection with H3_MESSAGE_ERROR; the server sends the head with content-length "
          "and no body, as RFC 9110 9.3.2 asks",
})
def test_head_has_no_body(serve, protocol):
    """The app answers HEAD like GET (as ASGI apps do); the server drops the body."""
    async def scenario(c: Driver) -> None:
        r = await c.request("HEAD", "/")
        assert (r.status, r.body, r.ended) == (200, b"", True)
        assert r.header(b"content-length") == b"5"
    serve(apps.hello, scenario)


@on("h2", "h3", "hq")
def test_concurrent_streams_answered_independently(serve, protocol):
    async def scenario(c: Driver) -> None:
        exchanges = [await c.open("GET", f"/{i}") for i in range(5)]
        await c.wait(lambda: all(ex.done for ex in exchanges), "five responses")
        assert [(ex.response.status, ex.response.body) for ex in exchanges] == [(200, b"hello")] * 5
    serve(apps.hello, scenario)


@on("h1", "h2", "h3")
def test_repeated_response_headers_are_kept(serve, protocol):
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": [
            (b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X-Custom", b"v")]})
        await send({"type": "http.response.body", "body": b"made"})

    async def scenario(c: Driver) -> None:
        r = await c.request("GET", "/")
        assert (r.status, r.body) == (201, b"made")
        assert [v for n, v in r.headers if n == b"set-cookie"] == [b"a=1", b"b=2"]
        assert r.header(b"x-custom") == b"v"
    serve(app, scenario)


@on("h1", "h2", "h3")
def test_empty_body_post(serve, protocol):
    log: list = []

    async def scenario(c: Driver) -> None:
        r = await c.request("POST", "/", headers=[(b"content-length", b"0")])
        assert (r.status, r.body) == (200, b"")
    serve(capps.chunk_log(log), scenario)
    assert log == [(b"", False)]


@on(*REQUEST_BODY)
def test_request_trailers_end_the_body(serve, protocol):
    """A request body ended by a trailer section: the app gets the whole body
    and a final more_body=False (ASGI has no request trailers)."""
    log: list = []

    async def scenario(c: Driver) -> None:
        ex = await c.open("POST", "/", [(b"te", b"trailers")], body=b"abc", end=False)
        await c.quiesce()
        c.send(ex, b"def")
        c.send_trailers(ex, [(b"x-digest", b"123")])
        await c.wait(lambda: ex.done, "the response")
        assert (ex.response.status, ex.response.body) == (200, b"abcdef")
    serve(capps.chunk_log(log), scenario)
    assert log[-1][1] is False
