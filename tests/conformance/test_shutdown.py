"""Graceful shutdown: the in-flight request finishes, then the server ends
the connection cleanly (h1: ``connection: close``; h2: GOAWAY NO_ERROR;
h3: GOAWAY, then CONNECTION_CLOSE H3_NO_ERROR; hq: CONNECTION_CLOSE)."""

from __future__ import annotations

import asyncio

import pytest
from aioquic.h3.connection import ErrorCode as H3ErrorCode

from tests.conformance import apps as capps
from tests.conformance.cases import ALL, on
from tests.conformance.drivers import Driver, H2Driver, QuicDriver

pytestmark = pytest.mark.timeout(60)


@on(*ALL)
def test_in_flight_request_finishes_then_the_connection_closes(serve, protocol):
    started: list = []
    holder: list[asyncio.Event] = []

    async def app(scope, receive, send) -> None:
        await capps.gated(holder[0], started)(scope, receive, send)

    async def scenario(c: Driver) -> None:
        gate = asyncio.Event()
        holder.append(gate)
        first = await c.open("GET", "/slow")
        await c.wait(lambda: started == ["/slow"], "the request at the app")
        c.shutdown()
        await c.quiesce()
        assert not first.done and not c.closed_by_server(), "shutdown cut the request short"
        gate.set()
        await c.wait(lambda: first.done, "the in-flight response")
        r = first.response
        assert (r.status, r.body, r.ended) == (200, b"done", True)
        await c.wait(c.closed_by_server, "the server closing the connection")
        if protocol == "h1":
            assert r.header(b"connection") == b"close"
        if isinstance(c, H2Driver):
            assert c.client.goaways == [(1, 0)]
        if isinstance(c, QuicDriver):
            terminated = c.client.terminated
            assert terminated is not None
            assert terminated.error_code == int(H3ErrorCode.H3_NO_ERROR)
    serve(app, scenario)


#: How each multiplexed protocol refuses a stream opened after shutdown began.
REFUSED = {"h2": 0x7, "h3": int(H3ErrorCode.H3_REQUEST_REJECTED),
           "hq": int(H3ErrorCode.H3_REQUEST_REJECTED)}


@on("h2", "h3", "hq")
def test_requests_after_shutdown_are_refused(serve, protocol):
    """A stream the client opens after the shutdown began never reaches the
    app: it is refused (REFUSED_STREAM / H3_REQUEST_REJECTED), so the client
    knows it may retry it elsewhere."""
    started: list = []
    holder: list[asyncio.Event] = []

    async def app(scope, receive, send) -> None:
        await capps.gated(holder[0], started)(scope, receive, send)

    async def scenario(c: Driver) -> None:
        gate = asyncio.Event()
        holder.append(gate)
        first = await c.open("GET", "/slow")
        await c.wait(lambda: started == ["/slow"], "the request at the app")
        c.shutdown()
        await c.quiesce()
        late = await c.open("GET", "/late")
        await c.wait(lambda: late.done, "the late stream's fate")
        assert late.response.reset and late.response.reset_code == REFUSED[protocol]
        gate.set()
        await c.wait(lambda: first.done or c.closed_by_server(), "the first request's end")
    serve(app, scenario)
    assert started == ["/slow"]
