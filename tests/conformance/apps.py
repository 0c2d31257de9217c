"""ASGI apps for the conformance suite that ``tests/support/apps.py`` lacks.

Each records what it saw into a list the test passes in (plain data, no
mocks), or shows it in the response, so the tests assert on what the app
observed and what the client received.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.apps import App, Receive, Scope, Send, read_body, respond

Record = list[Any]


def chunk_log(log: Record) -> App:
    """Records every ``http.request`` message as (body, more_body), then
    answers 200 with the whole body."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                log.append(message["type"])
                return
            log.append((message.get("body", b""), message.get("more_body", False)))
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await respond(send, 200, b"".join(chunks))
    return app


async def duplex_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Echoes each request chunk as a response chunk as soon as it arrives."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")]})
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        more = message.get("more_body", False)
        await send({"type": "http.response.body", "body": message.get("body", b""),
                    "more_body": more})
        if not more:
            return


def gated(gate: asyncio.Event, started: Record) -> App:
    """Records the path, waits for ``gate``, then answers 200 "done"."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.append(scope["path"])
        await gate.wait()
        await read_body(receive)
        await respond(send, 200, b"done")
    return app


def stream_until_gone(log: Record, *, limit: int = 5000, size: int = 1024,
                      sent: list[int] | None = None) -> App:
    """Streams ``size``-byte chunks until ``send`` raises (the client went
    away: logs "send failed") or ``limit`` chunks went out (logs "finished").
    Then logs what ``receive()`` says.  ``sent[0]`` counts the sends that
    returned."""
    counter = sent if sent is not None else [0]
    counter[:] = [0]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(limit):
                await send({"type": "http.response.body", "body": b"x" * size, "more_body": True})
                counter[0] += 1
                await asyncio.sleep(0)  # let the test's pump run, whatever the transport
        except OSError:
            log.append("send failed")
        else:
            log.append("finished")
            await send({"type": "http.response.body", "body": b""})
        message = await receive()
        while message["type"] == "http.request":
            message = await receive()
        log.append(message["type"])
    return app


def early_hints(offered: Record) -> App:
    """Sends a 103 when the scope offers early hints, then 200 "ok"."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        has = "http.response.early_hint" in scope.get("extensions", {})
        offered.append(has)
        if has:
            await send({"type": "http.response.early_hint",
                        "links": [b"</style.css>; rel=preload; as=style"]})
        await respond(send, 200, b"ok")
    return app


def trailers_if_offered(offered: Record) -> App:
    """Trailers only where the scope offers them (as an ASGI app must)."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        has = "http.response.trailers" in scope.get("extensions", {})
        offered.append(has)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"trailer", b"x-checksum")] if has else [],
                    "trailers": has})
        await send({"type": "http.response.body", "body": b"da", "more_body": True})
        await send({"type": "http.response.body", "body": b"ta", "more_body": False})
        if has:
            await send({"type": "http.response.trailers",
                        "headers": [(b"x-checksum", b"abc123")], "more_trailers": False})
    return app


def websocket_recorder(log: Record) -> App:
    """Accepts, echoes text and bytes, and records the disconnect code.

    A text message "close:CODE:REASON" makes it close with that code/reason.
    """
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await respond(send, 404, b"websocket only")
            return
        if (await receive())["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols") or []
        await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                log.append(("disconnect", message.get("code"), message.get("reason", "")))
                return
            text = message.get("text")
            if text is not None and text.startswith("close:"):
                _, code, reason = text.split(":", 2)
                await send({"type": "websocket.close", "code": int(code), "reason": reason})
                log.append(("closed", int(code)))
                return
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes")})
    return app


async def websocket_reject(scope: Scope, receive: Receive, send: Send) -> None:
    """Closes before accepting: the handshake is denied with 403."""
    if scope["type"] != "websocket":
        await respond(send, 404, b"websocket only")
        return
    await receive()
    await send({"type": "websocket.close", "code": 1000})
