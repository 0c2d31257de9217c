"""The lifespan protocol: startup, shutdown, failures, state, modes."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from quicserve.asgi.lifespan import Lifespan, LifespanState
from quicserve.errors import LifespanError
from tests.support import apps
from tests.unit.asgi.helpers import Server, run


def test_startup_fills_the_state_that_requests_see() -> None:
    async def main() -> None:
        state: dict[str, Any] = {}
        lifespan = Lifespan(apps.lifespan_state("db", "connected"), mode="auto", state=state)
        await lifespan.startup()
        assert state == {"db": "connected"}
        assert lifespan.state is LifespanState.STARTED
        server = Server(apps.lifespan_state("db"), state=state)
        sink = await server.request()
        assert sink.body == b"connected"
        await lifespan.shutdown()
        assert lifespan.state is LifespanState.STOPPED
    run(main())


def test_startup_failed_raises_with_the_apps_message() -> None:
    async def main() -> None:
        lifespan = Lifespan(apps.lifespan_failing("database unreachable"), mode="auto", state={})
        with pytest.raises(LifespanError, match="database unreachable"):
            await lifespan.startup()
    run(main())


def test_exception_after_reading_startup_is_a_failure_even_in_auto(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise ConnectionRefusedError("no database")

    async def main() -> None:
        with pytest.raises(LifespanError, match="no database"):
            await Lifespan(app, mode="auto", state={}).startup()
    run(main())


def test_app_without_lifespan_support_in_auto_mode(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"

    async def main() -> None:
        lifespan = Lifespan(app, mode="auto", state={})
        await lifespan.startup()
        assert lifespan.state is LifespanState.UNSUPPORTED
        await lifespan.shutdown()  # nothing to do

    with caplog.at_level(logging.INFO, logger="quicserve.error"):
        run(main())
    assert "unsupported" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_app_without_lifespan_support_in_on_mode_fails() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("only http here")

    async def main() -> None:
        with pytest.raises(LifespanError, match="only http here"):
            await Lifespan(app, mode="on", state={}).startup()
    run(main())


def test_off_mode_never_calls_the_app() -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    async def main() -> None:
        lifespan = Lifespan(app, mode="off", state={})
        await lifespan.startup()
        await lifespan.shutdown()
    run(main())
    assert calls == []


def test_shutdown_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.failed", "message": "could not flush"})

    async def main() -> None:
        lifespan = Lifespan(app, mode="on", state={})
        await lifespan.startup()
        await lifespan.shutdown()
    run(main())
    assert "could not flush" in caplog.text


def test_message_in_the_wrong_state_raises_lifespan_error_into_the_app() -> None:
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        try:
            await send({"type": "lifespan.shutdown.complete"})
        except LifespanError as exc:
            raised.append(exc)
        await send({"type": "lifespan.startup.complete"})

    async def main() -> None:
        await Lifespan(app, mode="on", state={}).startup()
    run(main())
    assert len(raised) == 1 and "STARTING" in str(raised[0])


def test_scope_shape() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        await receive()
        await send({"type": "lifespan.startup.complete"})

    state: dict[str, Any] = {}
    run(Lifespan(app, mode="on", state=state).startup())
    assert seen["type"] == "lifespan"
    assert seen["asgi"]["version"] == "3.0"
    assert seen["state"] is state
