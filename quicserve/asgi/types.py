"""ASGI type aliases shared by the modules of ``asgi/``.

ASGI messages are plain dicts built and read by third-party applications, so
they are typed as ``dict[str, Any]`` at the boundary; each adapter validates
the keys it reads.  Scopes are dicts the adapters build themselves.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, MutableMapping

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application: ``await app(scope, receive, send)``.
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The ``asgi`` key of every scope we build.
ASGI_VERSION = "3.0"
#: HTTP and WebSocket spec version: 2.4 is "send() after disconnect raises an
#: OSError" (``errors.ClientDisconnected``), which both adapters implement.
HTTP_SPEC_VERSION = "2.4"
WEBSOCKET_SPEC_VERSION = "2.4"
LIFESPAN_SPEC_VERSION = "2.0"
