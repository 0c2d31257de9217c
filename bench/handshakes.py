"""QUIC handshakes: connections/s and server CPU per handshake.

Every server answers ``bench.apps:hello`` (or the same bytes) over HTTP/3.
The load is ``PARALLEL`` loops, each running ``gtlsclient`` once per
connection -- a full handshake (no resumption, no Retry), one request, close
-- until ``CONNECTIONS`` connections are done.  Two figures per server from
the same rounds:

* handshakes/s: connections / wall time.  Starting a client process costs
  more than a handshake, so this is bounded by the clients and tells little
  about the server beyond "it keeps up";
* server CPU per handshake: the server process's (and its workers') user +
  system time over the round, from ``/proc/PID/stat``, divided by the
  connections.  This is the figure that compares servers.

Servers: quicserve, the aioquic public-API baseline
(``bench/aioquic_baseline.py``), Hypercorn (``--quic-bind``) and ngtcp2's
``gtlsserver`` (C) as the floor.

Standalone: ``python bench/handshakes.py [--rounds N] [--quick]``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import aioquic_baseline, ngtcp2
from bench.common import (BenchContext, Group, Measurement, Server, free_port, interleave,
                          standalone)

TITLE = "QUIC handshakes"
APP = "bench.apps:hello"
CONNECTIONS = 150
PARALLEL = 4


def servers(ctx: BenchContext, htdocs: Path) -> list[Server]:
    ports = [free_port(socket.SOCK_DGRAM) for _ in range(4)]
    return [
        Server("quicserve", [ctx.python, "-m", "quicserve", APP, "--quic-bind",
                             f"127.0.0.1:{ports[0]}", "--certfile", str(ctx.certfile),
                             "--keyfile", str(ctx.keyfile), "--no-access-log",
                             "--log-level", "warning", "--loop", "auto"], ports[0]),
        aioquic_baseline.server(ctx.python, ctx.certfile, ctx.keyfile, ports[1]),
        Server("hypercorn", [ctx.python, "-m", "hypercorn", APP, "--quic-bind",
                             f"127.0.0.1:{ports[2]}", "--bind", f"127.0.0.1:{free_port()}",
                             "--certfile", str(ctx.certfile), "--keyfile", str(ctx.keyfile),
                             "--worker-class", "uvloop", "--log-level", "warning"], ports[2]),
        ngtcp2.gtlsserver(htdocs, ctx.certfile, ctx.keyfile, port=ports[3]),
    ]


def handshakes(port: int, connections: int, parallel: int = PARALLEL) -> tuple[float, int]:
    """(handshakes/s, failed connections): ``parallel`` loops of one
    ``gtlsclient`` process per connection, each asking ``/r/<k>``."""
    with tempfile.TemporaryDirectory(prefix="bench-hs-", dir=ngtcp2._TMPFS) as root:
        counters = [0] * parallel

        def loop(index: int) -> None:
            directory = Path(root) / str(index)
            directory.mkdir()
            for k in range(index, connections, parallel):
                argv = ngtcp2.client_argv(port, [f"/r/{k % ngtcp2.MAX_PATHS}"], requests=1,
                                          timeout="5s", extra=["--download", str(directory)])
                subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=60)
                counters[index] += 1

        began = time.perf_counter()
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - began
        ok = sum(ngtcp2._good_files(Path(root) / str(i), ngtcp2.BODY) for i in range(parallel))
    return ok / seconds, connections - ok


def run(ctx: BenchContext) -> list[Group]:
    ngtcp2.ensure_tools()
    connections = 60 if ctx.quick else CONNECTIONS
    command = (f"{PARALLEL} loops of `gtlsclient -q --exit-on-all-streams-close 127.0.0.1 PORT "
               f"https://127.0.0.1:PORT/r/<k>`, {connections} connections in all")
    rate = Group(title=f"New HTTP/3 connections/s ({connections} connections, one request "
                       "each, full handshake)",
                 unit="conn/s", command=command, baseline="aioquic")
    cpu = Group(title="Server CPU per handshake (same rounds; lower is better)",
                unit="ms CPU/conn", command=command, baseline="aioquic",
                higher_is_better=False)
    with tempfile.TemporaryDirectory(prefix="bench-htdocs-") as root:
        with ngtcp2.serving(servers(ctx, ngtcp2.make_htdocs(Path(root)))) as running:
            interleave(ctx, running, lambda s: handshakes(s.port, connections), rate)
    for name, measurement in rate.measurements.items():
        cpu.measurements[name] = Measurement(
            name, values=[seconds * 1000 / connections for seconds in measurement.cpu],
            errors=measurement.errors)
    return [rate, cpu]


def main(argv: list[str] | None = None) -> int:
    return standalone(run, __doc__, argv, duration=3.0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
