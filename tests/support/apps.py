"""ASGI test applications shared by unit, conformance and integration tests.

Each is a plain ASGI 3 callable (or a factory returning one) whose behaviour
is visible in the response, so tests assert on bytes, not on calls.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable, MutableMapping

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or [
        (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """200 "hello" for http; ignores lifespan."""
    if scope["type"] != "http":
        return
    await respond(send, 200, b"hello")


async def slow(scope: Scope, receive: Receive, send: Send) -> None:
    """200 "hello" after ``?s=SECONDS`` (at most 30) of sleep; ignores lifespan."""
    if scope["type"] != "http":
        return
    query = scope["query_string"].decode("latin-1")
    seconds = float(query[2:]) if query.startswith("s=") else 0.0
    await asyncio.sleep(min(seconds, 30.0))
    await respond(send, 200, b"hello")


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo the whole request body (any method)."""
    if scope["type"] != "http":
        return
    await respond(send, 200, await read_body(receive))


async def scope_json(scope: Scope, receive: Receive, send: Send) -> None:
    """The scope, JSON-encoded (bytes as latin-1 text), for scope assertions."""
    if scope["type"] != "http":
        return
    await read_body(receive)

    def encode(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode("latin-1")
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            return {k: encode(v) for k, v in value.items()}
        return value

    await respond(send, 200, json.dumps(encode(dict(scope))).encode())


async def message_log(scope: Scope, receive: Receive, send: Send) -> None:
    """Responds with the http.request messages it received, one JSON per line."""
    if scope["type"] != "http":
        return
    lines = []
    while True:
        message = await receive()
        lines.append(json.dumps({"type": message["type"], "body": message.get("body", b"").decode("latin-1"),
                                 "more_body": message.get("more_body", False)}))
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    await respond(send, 200, "\n".join(lines).encode())


def streaming(n: int = 5, size: int = 4) -> App:
    """Streams ``n`` chunks of ``size`` bytes (b"0000", b"1111", ...)."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(n):
            await send({"type": "http.response.body", "body": str(i % 10).encode() * size, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    return app


def slow_reader(gate: asyncio.Event) -> App:
    """Reads nothing until ``gate`` is set, then echoes the body."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await gate.wait()
        await respond(send, 200, await read_body(receive))
    return app


async def raise_before_head(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("boom before head")


async def raise_after_head(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("boom after head")


async def return_without_response(scope: Scope, receive: Receive, send: Send) -> None:
    return None


async def return_mid_body(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})


async def body_before_start(scope: Scope, receive: Receive, send: Send) -> None:
    """Breaks the ASGI protocol: a body message before http.response.start."""
    await send({"type": "http.response.body", "body": b"oops"})


def trailers_app(trailers: list[tuple[bytes, bytes]]) -> App:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": False})
        await send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})
    return app


def wait_for_disconnect(seen: list[str]) -> App:
    """Reads the body, then waits for http.disconnect and records it."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect":
                return
    return app


def lifespan_state(key: str = "db", value: Any = "connected") -> App:
    """Sets ``state[key]`` on startup and answers http with that state value."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"][key] = value
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            await respond(send, 200, str(scope["state"].get(key)).encode())
    return app


def lifespan_failing(message: str = "database unreachable") -> App:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": message})
    return app


async def websocket_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Accepts (with the first offered subprotocol) and echoes text and bytes.

    A text message "close:CODE:REASON" makes it close with that code/reason.
    """
    if scope["type"] != "websocket":
        if scope["type"] == "http":
            await respond(send, 200, b"not a websocket")
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    offered = scope.get("subprotocols") or []
    await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
    await echo_messages(receive, send)


async def echo_messages(receive: Receive, send: Send) -> Message | None:
    """Echo an accepted WebSocket's text and bytes until it ends: returns the
    ``websocket.disconnect`` message, or None when a text "close:CODE:REASON"
    made the app close with that code and reason."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return message
        text = message.get("text")
        if text is not None and text.startswith("close:"):
            _, code, reason = text.split(":", 2)
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
            return None
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes")})
