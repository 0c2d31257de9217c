"""The client goes away: the app hears ``http.disconnect`` and its
``send()`` fails, on every protocol; nothing is left running."""

from __future__ import annotations

import asyncio

import pytest

from tests.conformance import apps as capps
from tests.conformance.cases import ALL, REQUEST_BODY, on
from tests.conformance.drivers import Driver
from tests.support import apps

pytestmark = pytest.mark.timeout(60)


@on(*REQUEST_BODY)
def test_reset_mid_upload(serve, protocol):
    """Half the body was read; then RST_STREAM / RESET_STREAM (h1: the
    connection drops).  The app's next receive() is http.disconnect."""
    seen: list = []

    async def scenario(c: Driver) -> None:
        ex = await c.open("POST", "/upload", body=b"first half", end=False)
        await c.wait(lambda: seen == ["http.request"], "the first chunk at the app")
        c.reset(ex)
        await c.wait(lambda: "http.disconnect" in seen, "http.disconnect at the app")
    serve(apps.wait_for_disconnect(seen), scenario)
    assert seen == ["http.request", "http.disconnect"]


@on(*ALL)
def test_client_vanishes_mid_download(serve, protocol):
    """The app streams; the client stops reading (STOP_SENDING / RST_STREAM /
    dropped connection): the app's send() fails and receive() says
    http.disconnect."""
    log: list = []

    async def scenario(c: Driver) -> None:
        ex = await c.open("GET", "/download")
        await c.wait(lambda: len(ex.response.body) >= 4096, "some of the download")
        c.reset(ex)
        await c.wait(lambda: len(log) == 2, "the app to notice")
    serve(capps.stream_until_gone(log), scenario)
    assert log == ["send failed", "http.disconnect"]


@on(*ALL)
def test_disconnect_while_the_app_waits(serve, protocol):
    """The request is complete and the app waits in receive(): a reset or
    a dropped connection wakes it with http.disconnect."""
    seen: list = []

    async def scenario(c: Driver) -> None:
        ex = await c.open("GET", "/")
        await c.wait(lambda: seen == ["http.request"], "the (empty) request at the app")
        c.reset(ex)
        await c.wait(lambda: "http.disconnect" in seen, "http.disconnect at the app")
    serve(apps.wait_for_disconnect(seen), scenario)
    assert seen == ["http.request", "http.disconnect"]


@on(*ALL)
def test_connection_lost_while_the_app_is_blocked_sending(serve, protocol):
    """The client stops reading, so the app ends up waiting in send() on
    backpressure; then the whole connection goes.  The blocked send() must
    fail (not hang), the app hears http.disconnect, and nothing is left."""
    log: list = []
    sent: list[int] = []

    async def scenario(c: Driver) -> None:
        ex = await c.open("GET", "/download")
        await c.wait(lambda: len(ex.response.body) >= 65536, "the first chunks")
        c.stall()
        await c.quiesce()
        blocked_at = sent[0]
        await c.quiesce()
        for _ in range(50):
            await asyncio.sleep(0)
        assert sent[0] == blocked_at and log == [], "the app should be blocked in send()"
        c.drop_connection()
        await c.wait(lambda: len(log) == 2, "the blocked app to notice")
    serve(capps.stream_until_gone(log, limit=2000, size=65536, sent=sent), scenario)
    assert log == ["send failed", "http.disconnect"]
