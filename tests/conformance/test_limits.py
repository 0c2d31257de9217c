"""Server limits: --limit-concurrency (503 on every protocol) and
--h11-max-incomplete-size (431 on HTTP/1.1)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conformance import apps as capps
from tests.conformance.cases import ALL, on
from tests.conformance.drivers import Driver
from tests.support import apps

pytestmark = pytest.mark.timeout(60)


@on(*ALL)
def test_limit_concurrency_answers_503(serve, protocol):
    """With one request in flight and --limit-concurrency 1, the next gets
    503 without reaching the app (hq: reset with code 503); once the first
    finishes, requests are served again."""
    started: list = []

    async def scenario(c: Driver) -> None:
        gate = asyncio.Event()
        holder.append(gate)
        first = await c.open("GET", "/slow")
        await c.wait(lambda: started == ["/slow"], "the first request at the app")
        second = await c.request("GET", "/refused")
        assert second.status == 503
        if protocol == "hq":
            assert second.reset_code == 503
        else:
            assert (second.body, second.ended) == (b"Service Unavailable\n", True)
        gate.set()
        await c.wait(lambda: first.done, "the first response")
        assert (first.response.status, first.response.body) == (200, b"done")
        third = await c.request("GET", "/again")
        assert (third.status, third.body) == (200, b"done")

    holder: list[asyncio.Event] = []

    async def app(scope, receive, send) -> None:
        await capps.gated(holder[0], started)(scope, receive, send)
    serve(app, scenario, limit_concurrency=1)
    assert started == ["/slow", "/again"]


@on("h1")
def test_oversized_head_is_431(serve, protocol):
    async def scenario(c: Driver) -> None:
        r = await c.request("GET", "/", headers=[(b"x-big", b"a" * 2048)])
        assert (r.status, r.ended, r.connection_closed) == (431, True, True)
        ok = await c.request("GET", "/", headers=[(b"x-small", b"a" * 100)])
        assert (ok.status, ok.body) == (200, b"hello")
    serve(apps.hello, scenario, h11_max_incomplete_size=1024)
