"""The application every server runs in the benchmarks: a plain ASGI hello world.

The same 13-byte body with Content-Type and Content-Length, and a lifespan
handler that acknowledges startup and shutdown, so no server logs noise or
takes a fallback path.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

BODY = b"hello, world\n"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]
START = {"type": "http.response.start", "status": 200, "headers": HEADERS}
END = {"type": "http.response.body", "body": BODY}


async def lifespan(receive: Callable[[], Awaitable[dict[str, Any]]],
                   send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """Acknowledge startup, then shutdown (every bench app's lifespan)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] == "http":
        await send(START)
        await send(END)
        return
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
