"""WebSocket over HTTP/1.1: echo messages/s for quicserve, Uvicorn and Hypercorn.

Every server runs :func:`echo` (below) in its own process on its own port
with its access log off: quicserve with its defaults, Uvicorn with
``--ws wsproto --http h11 --loop uvloop``, Hypercorn with ``-k uvloop``.  The
load is this module run as a separate process (``--client``): a raw-socket
asyncio client (uvloop when installed) that opens ``CONNECTIONS``
connections, does the RFC 6455 handshake without extensions, then keeps
``IN_FLIGHT`` small text messages in flight per connection, sending one more
for every echo it gets, for ``duration`` seconds.  Frames are built once and
parsed with a few slicing operations, so the client is not what limits the
figure.  Rounds are interleaved (``common.interleave``).

Standalone: ``python bench/ws.py [--rounds N] [--duration S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.apps import lifespan
from bench.common import BenchContext, Group, Server, free_port, interleave, make_context, render

TITLE = "WebSocket"
APP = "bench.ws:echo"
CONNECTIONS = 20
IN_FLIGHT = 16
MESSAGE = b"hello, websocket benchmark!!"  # 28 bytes: one short frame each way


# --------------------------------------------------------------------------
# The application every server runs.


async def echo(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
               send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """Accept and echo every message; acknowledge lifespan."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes")})


# --------------------------------------------------------------------------
# The load client (run in its own process).


def _masked_text_frame(payload: bytes) -> bytes:
    """A client text frame (FIN, masked); built once and reused."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + masked


class _Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.errors = 0


async def _connection(host: str, port: int, deadline: float, counter: _Counter,
                      started: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        counter.errors += 1
        writer.close()
        return
    await started.wait()
    frame = _masked_text_frame(MESSAGE)
    writer.write(frame * IN_FLIGHT)
    buffer = b""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        chunk = await reader.read(65536)
        if not chunk:
            counter.errors += 1
            break
        buffer += chunk
        count, buffer = _parse_frames(buffer)
        if count:
            counter.messages += count
            writer.write(frame * count)
    writer.close()


def _parse_frames(buffer: bytes) -> tuple[int, bytes]:
    """Count complete server frames (unmasked) at the start of ``buffer``."""
    count = 0
    pos = 0
    size = len(buffer)
    while size - pos >= 2:
        length = buffer[pos + 1] & 0x7F
        header = 2
        if length == 126:
            if size - pos < 4:
                break
            length = int.from_bytes(buffer[pos + 2:pos + 4], "big")
            header = 4
        elif length == 127:
            if size - pos < 10:
                break
            length = int.from_bytes(buffer[pos + 2:pos + 10], "big")
            header = 10
        if size - pos < header + length:
            break
        pos += header + length
        count += 1
    return count, buffer[pos:]


async def _client(host: str, port: int, connections: int, duration: float) -> dict[str, float]:
    counter = _Counter()
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration + 5.0
    tasks = [asyncio.create_task(_connection(host, port, deadline, counter, started))
             for _ in range(connections)]
    await asyncio.sleep(0.5)  # handshakes
    begin, counted_before = loop.time(), counter.messages
    started.set()
    await asyncio.sleep(duration)
    elapsed, messages = loop.time() - begin, counter.messages - counted_before
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"messages_per_second": messages / elapsed, "errors": counter.errors}


def client_main(url: str, connections: int, duration: float) -> None:
    host, _, port = url.rpartition(":")
    try:
        import uvloop
        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a bench dependency
        runner = asyncio.run
    result = runner(_client(host, int(port), connections, duration))
    print(json.dumps(result))


def load(ctx: BenchContext, port: int, duration: float) -> tuple[float, int]:
    result = subprocess.run([ctx.python, str(Path(__file__).resolve()), "--client",
                             f"127.0.0.1:{port}", "--connections", str(CONNECTIONS),
                             "--duration", str(duration)],
                            capture_output=True, timeout=duration + 60)
    try:
        figures = json.loads(result.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError("the WebSocket load client failed:\n"
                           + result.stderr.decode(errors="replace")) from None
    return float(figures["messages_per_second"]), int(figures["errors"])


# --------------------------------------------------------------------------
# The comparison.


def servers(ctx: BenchContext) -> list[Server]:
    python = ctx.python
    ports = [free_port() for _ in range(3)]
    return [
        Server("quicserve", [python, "-m", "quicserve", APP, "--insecure-bind",
                             f"127.0.0.1:{ports[0]}", "--no-access-log", "--log-level", "warning",
                             "--loop", "auto"], ports[0]),
        Server("uvicorn", [python, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port",
                           str(ports[1]), "--http", "h11", "--ws", "wsproto", "--loop", "uvloop",
                           "--no-access-log", "--log-level", "warning"], ports[1]),
        Server("hypercorn", [python, "-m", "hypercorn", APP, "--bind", f"127.0.0.1:{ports[2]}",
                             "--worker-class", "uvloop", "--log-level", "warning"], ports[2]),
    ]


def run(ctx: BenchContext) -> list[Group]:
    duration = ctx.duration
    group = Group(
        title=f"WebSocket echo over HTTP/1.1, {CONNECTIONS} connections × {IN_FLIGHT} "
              f"messages in flight, {len(MESSAGE)}-byte text messages",
        unit="msg/s",
        command=f"python bench/ws.py --client 127.0.0.1:PORT --connections {CONNECTIONS} "
                f"--duration {duration:g}",
        baseline="uvicorn",
        target=("quicserve", 1.0),
        run_seconds=duration,
    )
    running = servers(ctx)
    try:
        for server in running:
            server.start()
        for server in running:
            server.wait_tcp()

        def measure(server: Server) -> tuple[float, int]:
            return load(ctx, server.port, duration)

        def warmup(server: Server) -> tuple[float, int]:
            return load(ctx, server.port, ctx.warmup)

        measure.warmup = warmup  # type: ignore[attr-defined]
        interleave(ctx, running, measure, group)
    finally:
        for server in running:
            server.stop()
    return [group]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--client", metavar="HOST:PORT",
                        help="run the load client only (what the benchmark spawns)")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client, args.connections, args.duration)
        return 0
    ctx = make_context(rounds=args.rounds, duration=args.duration, quick=False)
    print(render(run(ctx)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
