"""Fixtures of the conformance suite: one server per test, one protocol per case.

``serve(app, scenario, **config)`` builds the protocol's driver around a
fresh server (real adapters, real ``Dispatcher``) running ``app``, runs
``await scenario(driver)`` on a new event loop, then checks that every
stream and app task ended (``Statistics`` back to zero).  The whole run is
bounded by a wall-clock timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest

from quicserve.config import Config
from tests.conformance.cases import ALL
from tests.conformance.drivers import Driver, make_driver
from tests.support.certs import CertSet

Scenario = Callable[[Driver], Awaitable[None]]
Serve = Callable[..., None]

#: Wall-clock bound of one scenario, in seconds.
SCENARIO_TIMEOUT = 20.0


@pytest.fixture(params=ALL)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve(protocol: str, certs: CertSet) -> Serve:
    def run(app: Any, scenario: Scenario, **config: Any) -> None:
        options = Config(**config)

        async def main() -> None:
            driver = await make_driver(protocol, app, options, certs)
            try:
                await scenario(driver)
                await driver.settle()
            finally:
                driver.close()

        async def bounded() -> None:
            await asyncio.wait_for(main(), SCENARIO_TIMEOUT)

        asyncio.run(bounded())

    return run
