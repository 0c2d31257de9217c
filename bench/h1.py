"""HTTP/1.1 keep-alive hello world: requests/s with wrk, 50 connections.

quicserve, Uvicorn (``--http h11 --loop uvloop``) and Hypercorn (``-k
uvloop``) serve ``bench.apps:hello`` side by side, each in its own process on
its own port with its access log off; ``wrk -t2 -c50 -d10s`` measures each in
interleaved rounds (``common.interleave``).  wrk reconnects when a server
closes a keep-alive connection, so Hypercorn's default of 1000 requests per
connection costs it a reconnect, not the run.

Standalone: ``python bench/h1.py [--rounds N] [--duration S]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BenchContext, Group, Server, free_port, interleave, standalone, wrk

TITLE = "HTTP/1.1"
APP = "bench.apps:hello"
CONNECTIONS = 50
THREADS = 2


def servers(ctx: BenchContext) -> list[Server]:
    python = ctx.python
    ports = [free_port() for _ in range(3)]
    return [
        Server("quicserve", [python, "-m", "quicserve", APP, "--insecure-bind",
                             f"127.0.0.1:{ports[0]}", "--no-access-log", "--log-level", "warning",
                             "--loop", "auto"], ports[0]),
        Server("uvicorn", [python, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port",
                           str(ports[1]), "--http", "h11", "--loop", "uvloop",
                           "--no-access-log", "--log-level", "warning"], ports[1]),
        Server("hypercorn", [python, "-m", "hypercorn", APP, "--bind", f"127.0.0.1:{ports[2]}",
                             "--worker-class", "uvloop", "--log-level", "warning"], ports[2]),
    ]


def run(ctx: BenchContext) -> list[Group]:
    duration = ctx.duration
    group = Group(
        title=f"HTTP/1.1 keep-alive hello world, {CONNECTIONS} connections",
        unit="req/s",
        command=f"wrk -t{THREADS} -c{CONNECTIONS} -d{duration:g}s http://127.0.0.1:PORT/",
        baseline="uvicorn",
        target=("quicserve", 1.2),
        run_seconds=duration,
    )
    running = servers(ctx)
    try:
        for server in running:
            server.start()
        for server in running:
            server.wait_tcp()

        def measure(server: Server) -> tuple[float, int]:
            result = wrk(f"http://127.0.0.1:{server.port}/", connections=CONNECTIONS,
                         threads=THREADS, duration=duration)
            return result.requests_per_second, result.non_2xx + result.socket_errors

        def warmup(server: Server) -> tuple[float, int]:
            result = wrk(f"http://127.0.0.1:{server.port}/", connections=CONNECTIONS,
                         threads=THREADS, duration=ctx.warmup)
            return result.requests_per_second, 0

        measure.warmup = warmup  # type: ignore[attr-defined]
        interleave(ctx, running, measure, group)
    finally:
        for server in running:
            server.stop()
    return [group]


def main(argv: list[str] | None = None) -> int:
    return standalone(run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
