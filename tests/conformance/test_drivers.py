"""The suite's own safety net: the end-of-scenario check really fails when
an app task is left running, and a wait that cannot succeed gives up."""

from __future__ import annotations

import asyncio

import pytest

from tests.conformance.cases import ALL, on
from tests.conformance.drivers import Driver

pytestmark = pytest.mark.timeout(60)


@on(*ALL)
def test_settle_fails_when_an_app_task_is_left(serve, protocol):
    async def stuck(scope, receive, send) -> None:
        await asyncio.Event().wait()

    async def scenario(c: Driver) -> None:
        await c.open("GET", "/")
        await c.quiesce()
        assert c.stats.app_tasks == 1
        with pytest.raises(AssertionError, match="streams/app tasks left"):
            await c.settle()
        c.cancel_apps()

    serve(stuck, scenario)


@on(*ALL)
def test_wait_is_bounded(serve, protocol):
    async def silent(scope, receive, send) -> None:
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": False})

    async def scenario(c: Driver) -> None:
        with pytest.raises(AssertionError, match="never saw the impossible"):
            await c.wait(lambda: False, "the impossible")

    serve(silent, scenario)
