"""Backpressure on the request side, and credit that is never leaked.

A slow app holds back the client (TCP: reading pauses; H2: the stream
window stays shut; H3: MAX_STREAM_DATA is withheld) instead of the server
buffering the body; bodies nobody reads do not eat the connection's credit.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conformance.cases import REQUEST_BODY, on
from tests.conformance.drivers import Driver
from tests.support import apps

pytestmark = pytest.mark.timeout(60)

WINDOW = 256 * 1024
#: Small windows so a megabyte is "a lot" on every protocol.
SMALL_WINDOWS = dict(h2_initial_window_size=WINDOW, quic_max_stream_data=WINDOW,
                     quic_max_data=4 * WINDOW, stream_high_water=64 * 1024)


@on(*REQUEST_BODY)
def test_slow_reader_holds_the_client_back(serve, protocol):
    body = bytes(range(256)) * 4096  # 1 MiB
    holder: list[asyncio.Event] = []

    async def app(scope, receive, send) -> None:
        await apps.slow_reader(holder[0])(scope, receive, send)

    async def scenario(c: Driver) -> None:
        gate = asyncio.Event()
        holder.append(gate)
        ex = await c.open("POST", "/", [(b"content-length", str(len(body)).encode())],
                          body=body, end=True)
        await c.quiesce()
        accepted = len(body) - c.unsent(ex)
        assert c.unsent(ex) > 0, "the server took the whole body without the app reading it"
        assert accepted <= WINDOW + 64 * 1024, f"{accepted} bytes buffered for a stalled app"
        gate.set()
        await c.wait(lambda: ex.done, "the echo")
        assert (ex.response.status, ex.response.body == body) == (200, True)
    serve(app, scenario, **SMALL_WINDOWS)


@on(*REQUEST_BODY)
def test_unread_bodies_do_not_leak_connection_credit(serve, protocol):
    """The app answers without reading; five 320 KiB bodies (more than the
    1 MiB connection window in total) still all get through, one request
    after another."""
    body = b"u" * (320 * 1024)

    async def scenario(c: Driver) -> None:
        for i in range(5):
            ex = await c.open("POST", f"/{i}", [(b"content-length", str(len(body)).encode())],
                              body=body, end=True)
            await c.wait(lambda: ex.done and c.unsent(ex) == 0,
                         f"request {i} answered and its body gone")
            assert (ex.response.status, ex.response.body) == (200, b"hello")
    serve(apps.hello, scenario, **SMALL_WINDOWS)
