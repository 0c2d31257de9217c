"""The ASGI lifespan protocol: startup before serving, shutdown after.

Theory of operation
-------------------
``server.py`` calls :meth:`Lifespan.startup` before it opens any listener and
:meth:`Lifespan.shutdown` after the last request finished.  The app runs as
one long task with a ``lifespan`` scope whose ``state`` is *the* shared dict:
what the app stores there during startup is copied (shallowly) into every
request scope by ``asgi/scope.py``.

The exchange is a small state machine (:class:`LifespanState`, moved by
:meth:`Lifespan._transition` with the table ``_TRANSITIONS``)::

    IDLE -> STARTING -> STARTED -> STOPPING -> STOPPED
               |  \\
               |   +-> FAILED       (lifespan.startup.failed, or the app raised
               |                     after it read lifespan.startup)
               +-> UNSUPPORTED      (the app raised before reading any message,
                                     or returned during startup)

Modes (``--lifespan``): ``off`` never calls the app; ``auto`` treats an app
that raises *before it reads* ``lifespan.startup`` as not supporting lifespan
(logged at info level, serving continues); ``on`` treats that as a failure.
A startup failure raises :class:`~quicserve.errors.LifespanError` carrying the
app's message; the server exits with code 3.  A shutdown failure is logged.

A message the app sends in the wrong state raises ``LifespanError`` into the
app (never an ``assert``).
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

from .. import log
from ..errors import LifespanError
from .types import ASGI_VERSION, LIFESPAN_SPEC_VERSION, ASGIApp, Message


class LifespanState(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"
    STARTED = "started"
    FAILED = "failed"
    UNSUPPORTED = "unsupported"
    STOPPING = "stopping"
    STOPPED = "stopped"


_L = LifespanState
#: (state, message or event) -> next state.  The app's messages, plus
#: "raised"/"returned" for the end of its task.
_TRANSITIONS: dict[tuple[LifespanState, str], LifespanState] = {
    (_L.STARTING, "lifespan.startup.complete"): _L.STARTED,
    (_L.STARTING, "lifespan.startup.failed"): _L.FAILED,
    (_L.STARTING, "raised"): _L.FAILED,
    (_L.STARTING, "raised before receive"): _L.UNSUPPORTED,
    (_L.STARTING, "returned"): _L.UNSUPPORTED,
    (_L.STARTED, "raised"): _L.STOPPED,
    (_L.STARTED, "returned"): _L.STOPPED,
    (_L.STOPPING, "lifespan.shutdown.complete"): _L.STOPPED,
    (_L.STOPPING, "lifespan.shutdown.failed"): _L.STOPPED,
    (_L.STOPPING, "raised"): _L.STOPPED,
    (_L.STOPPING, "returned"): _L.STOPPED,
}


class Lifespan:
    """Runs the app's lifespan task.

    Error handling: :meth:`startup` raises ``LifespanError`` with the app's
    message when startup fails (see the module docstring for ``auto``);
    :meth:`shutdown` logs failures and never raises.

    Resource handling: one task, from :meth:`startup` until the app returns
    after :meth:`shutdown` (or the caller's deadline cancels the wait; the
    task is then cancelled too).
    """

    def __init__(self, app: ASGIApp, *, mode: str, state: dict[str, Any]) -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"lifespan mode must be auto, on or off, not {mode!r}")
        self._app = app
        self._mode = mode
        self._state_dict = state
        self._state = LifespanState.IDLE
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._received = False
        self._message = ""

    @property
    def state(self) -> LifespanState:
        return self._state

    async def startup(self) -> None:
        if self._mode == "off":
            return
        scope = {
            "type": "lifespan",
            "asgi": {"version": ASGI_VERSION, "spec_version": LIFESPAN_SPEC_VERSION},
            "state": self._state_dict,
        }
        self._state = LifespanState.STARTING
        self._inbox.put_nowait({"type": "lifespan.startup"})
        self._task = asyncio.get_running_loop().create_task(self._main(scope))
        await self._wait_while(LifespanState.STARTING)
        if self._state is LifespanState.FAILED:
            raise LifespanError(self._message or "lifespan startup failed")
        if self._state is LifespanState.UNSUPPORTED:
            self._unsupported()

    async def shutdown(self) -> None:
        if self._state is not LifespanState.STARTED:
            return
        self._state = LifespanState.STOPPING
        self._inbox.put_nowait({"type": "lifespan.shutdown"})
        try:
            await self._wait_while(LifespanState.STOPPING)
        except asyncio.CancelledError:
            if self._task is not None:
                self._task.cancel()
            raise
        if self._message:
            log.error_logger.error("ASGI lifespan shutdown failed: %s", self._message)

    # -- the app's receive() and send() ----------------------------------------

    async def receive(self) -> Message:
        self._received = True
        return await self._inbox.get()

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if not isinstance(kind, str) or not kind.startswith("lifespan."):
            raise LifespanError(f"unexpected lifespan message {kind!r} in state {self._state.name}")
        self._transition(kind)
        if kind.endswith(".failed"):
            self._message = str(message.get("message", ""))

    # -- internals -------------------------------------------------------------------

    def _transition(self, event: str) -> None:
        try:
            self._state = _TRANSITIONS[self._state, event]
        except KeyError:
            raise LifespanError(
                f"unexpected lifespan message {event!r} in state {self._state.name}"
            ) from None
        self._changed.set()

    async def _wait_while(self, state: LifespanState) -> None:
        while self._state is state:
            self._changed.clear()
            await self._changed.wait()

    async def _main(self, scope: dict[str, Any]) -> None:
        try:
            await self._app(scope, self.receive, self.send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported through the state machine below
            self._app_raised(exc)
        else:
            self._app_ended("returned")

    def _app_raised(self, exc: Exception) -> None:
        state = self._state
        if state is LifespanState.STARTING and not self._received and self._mode == "auto":
            log.error_logger.debug("lifespan: the app raised before reading", exc_info=exc)
            self._app_ended("raised before receive")
            return
        if state in (LifespanState.STARTING, LifespanState.STOPPING):
            self._message = self._message or f"{type(exc).__name__}: {exc}"
            log.error_logger.error("Exception in ASGI lifespan", exc_info=exc)
        else:
            log.error_logger.error("ASGI lifespan task raised (state %s)", state.name, exc_info=exc)
        self._app_ended("raised")

    def _app_ended(self, how: str) -> None:
        if (self._state, how) in _TRANSITIONS:
            self._transition(how)
        else:
            self._changed.set()

    def _unsupported(self) -> None:
        if self._mode == "on":
            log.error_logger.warning("the app does not run the ASGI lifespan protocol")
        else:
            log.error_logger.info("ASGI 'lifespan' protocol appears unsupported")
