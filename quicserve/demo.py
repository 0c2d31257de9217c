"""The built-in demo application, ``quicserve.demo:app`` (served when no APP is given).

Routes:

* ``/`` — a small HTML page naming the protocol the request came over
  (``HTTP/1.1``, ``HTTP/2``, ``HTTP/3``), from the scope's ``http_version``.
* ``/echo`` — any method; streams the request body back as it arrives.
* ``/stream?n=10&size=1024`` — ``n`` chunks of ``size`` bytes, one message each.
* ``/ws`` — WebSocket echo (text and bytes).
* ``/health`` — ``ok``.

It runs the lifespan protocol and records its start time in the state.
A plain ASGI 3 callable with no dependencies, so it doubles as a smoke test.
"""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import parse_qs

from .asgi.types import Receive, Scope, Send

_PROTOCOLS = {"1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2", "3": "HTTP/3"}
MAX_STREAM_BYTES = 1 << 30

_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>quicserve</title></head>
<body>
<h1>quicserve</h1>
<p>This page came over <strong id="protocol">{protocol}</strong>.</p>
<ul>
<li><a href="/stream?n=10&amp;size=1024">/stream</a> streams chunks</li>
<li>POST a body to <code>/echo</code> to get it back</li>
<li><code>/ws</code> is a WebSocket echo: <span id="ws">not tried</span></li>
</ul>
<script>
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
ws.onopen = () => ws.send("hello");
ws.onmessage = (e) => {{ document.getElementById("ws").textContent = "echoed " + e.data; ws.close(); }};
ws.onerror = () => {{ document.getElementById("ws").textContent = "failed"; }};
</script>
</body>
</html>
"""


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The demo ASGI 3 application."""
    kind = scope["type"]
    if kind == "http":
        await _http(scope, receive, send)
    elif kind == "websocket":
        await _websocket(scope, receive, send)
    elif kind == "lifespan":
        await _lifespan(scope, receive, send)


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    if path in ("/", "/index.html"):
        protocol = _PROTOCOLS.get(scope["http_version"], "HTTP/" + scope["http_version"])
        page = _PAGE.format(protocol=html.escape(protocol)).encode("utf-8")
        await _respond(send, 200, page, b"text/html; charset=utf-8")
    elif path == "/health":
        await _respond(send, 200, b"ok\n", b"text/plain; charset=utf-8")
    elif path == "/echo":
        await _echo(scope, receive, send)
    elif path == "/stream":
        await _stream(scope, send)
    else:
        await _respond(send, 404, b"not found\n", b"text/plain; charset=utf-8")


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type),
                    (b"content-length", str(len(body)).encode("ascii"))],
    })
    await send({"type": "http.response.body", "body": body})


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo the body.  A body that arrives in one message is answered with a
    Content-Length; a longer one is streamed back chunk by chunk, so the
    upload and the download are flow-controlled together."""
    content_type = b"application/octet-stream"
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
    message = await receive()
    if message["type"] == "http.disconnect":
        return
    body = message.get("body", b"")
    if not message.get("more_body", False):
        await _respond(send, 200, body, content_type)
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type)]})
    while True:
        await send({"type": "http.response.body", "body": body, "more_body": True})
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.body", "body": body})


async def _stream(scope: Scope, send: Send) -> None:
    query = parse_qs(scope["query_string"].decode("latin-1"))
    try:
        n = int(query.get("n", ["10"])[0])
        size = int(query.get("size", ["1024"])[0])
    except ValueError:
        await _respond(send, 400, b"n and size must be integers\n", b"text/plain; charset=utf-8")
        return
    if n < 0 or size < 0 or n * size > MAX_STREAM_BYTES:
        await _respond(send, 400, b"n and size out of range\n", b"text/plain; charset=utf-8")
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")]})
    chunk = b"x" * size
    for _ in range(n):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _websocket(scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if scope["path"] != "/ws":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def _lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    state: dict[str, Any] = scope.setdefault("state", {})
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            state["demo_started_at"] = time.time()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
