"""What every ASGI stream is handed by the dispatcher: one object, built once.

``asgi/dispatch.py`` builds a single :class:`StreamContext` per server and
passes it to each :class:`~quicserve.asgi.http.HTTPStream` and
:class:`~quicserve.asgi.websocket.WebSocketStream` it creates, so stream
constructors take a context plus the per-request sink, never a long list of
positional arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Coroutine

from ..interfaces import AppOptions
from ..log import AccessLog
from .scope import ScopeBuilder
from .types import ASGIApp

@dataclass(frozen=True, slots=True, kw_only=True)
class StreamContext:
    app: ASGIApp
    options: AppOptions
    scopes: ScopeBuilder
    #: The lifespan state; each scope gets a shallow copy.
    state: dict[str, Any]
    access_log: AccessLog
    #: ``spawn(coro, is_app)`` runs a stream's one task and counts the stream
    #: as active until the task ends; ``is_app`` says whether it runs the app.
    spawn: Callable[[Coroutine[Any, Any, None], bool], None]
    #: A monotonic clock, for durations in the access log.
    clock: Callable[[], float]
