"""One worker against two: HTTP/3 requests/s with 8 client processes.

``quicserve --workers 1`` and ``--workers 2`` serve ``bench.apps:hello`` over
HTTP/3 side by side (each on its own UDP port); 8 ``gtlsclient`` processes
at once, each one connection of ``REQUESTS`` requests, measure each in
interleaved rounds.  The clients pick their first DCIDs at random, as real
clients do, so the connection-ID steering alone would often split the 8
connections 5/3 or 6/2 between the two workers (and the busier one would set
the wall time); the workers balance new connections between them
(``transport/handoff.py``), four each.  On a 2-core machine
the server side can then use both cores -- while the clients use them too,
which is why the target is 1.4x and not 2x.  The aioquic public-API
baseline (one process) runs in the same rounds for reference.

Standalone: ``python bench/workers.py [--rounds N] [--quick]``.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import aioquic_baseline, ngtcp2
from bench.common import BenchContext, Group, Server, free_port, interleave, standalone

TITLE = "Workers"
APP = "bench.apps:hello"
CLIENTS = 8
REQUESTS = 2000


def quicserve(ctx: BenchContext, workers: int, port: int) -> Server:
    return Server(f"quicserve -w {workers}", [
        ctx.python, "-m", "quicserve", APP, "--workers", str(workers),
        "--quic-bind", f"127.0.0.1:{port}", "--certfile", str(ctx.certfile),
        "--keyfile", str(ctx.keyfile), "--no-access-log", "--log-level", "warning",
        "--loop", "auto"], port)


def run(ctx: BenchContext) -> list[Group]:
    ngtcp2.ensure_tools()
    requests = 200 if ctx.quick else REQUESTS
    group = Group(
        title=f"HTTP/3 hello world, {CLIENTS} gtlsclient processes x {requests} requests "
              "(one connection each)",
        unit="req/s",
        command=f"{CLIENTS} x gtlsclient -q --exit-on-all-streams-close -n {requests} "
                f"--download DIR 127.0.0.1 PORT https://127.0.0.1:PORT/r/0 ... "
                f"/r/{requests - 1}",
        baseline="quicserve -w 1",
        target=("quicserve -w 2", 1.4),
    )
    servers = [quicserve(ctx, 1, free_port(socket.SOCK_DGRAM)),
               quicserve(ctx, 2, free_port(socket.SOCK_DGRAM)),
               aioquic_baseline.server(ctx.python, ctx.certfile, ctx.keyfile,
                                       free_port(socket.SOCK_DGRAM))]

    def measure(server: Server) -> tuple[float, int]:
        result = ngtcp2.h3_load(server.port, clients=CLIENTS, requests=requests)
        return result.rate, result.errors

    with ngtcp2.serving(servers):
        interleave(ctx, servers, measure, group)
    # The same rounds seen against the single-process aioquic baseline.
    versus = Group(title="The same rounds against the aioquic public-API baseline (one process)",
                   unit=group.unit, command=group.command, baseline="aioquic",
                   measurements=dict(group.measurements))
    return [group, versus]


def main(argv: list[str] | None = None) -> int:
    return standalone(run, __doc__, argv, duration=3.0)


if __name__ == "__main__":
    sys.exit(main())
