"""Memory per idle HTTP/3 connection: 200 connections held open.

Every round starts each server afresh: a process that already held
connections keeps their freed memory and would serve the next 200 from it,
hiding most of their cost (a second round in the same process reads about
40 % of the first).  In a fresh server, a warm-up client opens and closes
``WARMUP`` connections (so lazily built tables and caches exist before the
baseline reading); then the server's resident set (``VmRSS`` of the process
and its workers, from ``/proc``) is read, a client process opens
``CONNECTIONS`` HTTP/3 connections, makes one request on each and leaves
them idle; once every connection answered, after a short settle, ``VmRSS``
is read again.  The figure is the difference divided by the connections that
succeeded.

The client is aioquic's (``QuicConnectionProtocol`` + ``H3Connection``) in
a separate process -- this file run with ``--client`` -- never quicserve's
code.  Idle timeouts are raised to 120 s everywhere so nothing closes during
the reading.

Target (issue 6): quicserve <= 64 KiB per idle connection.

Standalone: ``python bench/memory.py [--rounds N] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TITLE = "Memory per idle HTTP/3 connection"
APP = "bench.apps:hello"
CONNECTIONS = 200
WARMUP = 20
SETTLE = 1.0
TARGET_KIB = 64


# --------------------------------------------------------------------------
# The client (runs in its own process).


async def _client(port: int, count: int, hold: bool) -> None:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent

    class Client(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.http = H3Connection(self._quic)
            self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def quic_event_received(self, event: QuicEvent) -> None:
            for h3_event in self.http.handle_event(event):
                ended = isinstance(h3_event, (DataReceived, HeadersReceived)) and h3_event.stream_ended
                if ended and not self.done.done():
                    self.done.set_result(True)

        async def get(self) -> bool:
            stream_id = self._quic.get_next_available_stream_id()
            self.http.send_headers(stream_id, [
                (b":method", b"GET"), (b":scheme", b"https"),
                (b":authority", f"127.0.0.1:{port}".encode()), (b":path", b"/")], end_stream=True)
            self.transmit()
            return await asyncio.wait_for(self.done, 10)

    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                                      verify_mode=ssl.CERT_NONE, idle_timeout=120.0)
    clients: list[Client] = []
    async with contextlib.AsyncExitStack() as stack:
        async def one() -> bool:
            try:
                client = await stack.enter_async_context(
                    connect("127.0.0.1", port, configuration=configuration, create_protocol=Client,
                            wait_connected=True))
                clients.append(client)  # type: ignore[arg-type]
                return await client.get()  # type: ignore[attr-defined,no-any-return]
            except (OSError, asyncio.TimeoutError, ConnectionError):
                return False

        ok = 0
        for start in range(0, count, 20):
            results = await asyncio.gather(*(one() for _ in range(start, min(count, start + 20))))
            ok += sum(results)
        print(f"ready {ok}", flush=True)
        if hold:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        # Close every connection at once (the exit stack would wait for each
        # closing period in turn), give the CONNECTION_CLOSEs a moment, leave.
        for client in clients:
            client.close()
        await asyncio.sleep(0.2)
        sys.stdout.flush()
        os._exit(0)


def client_main(argv: list[str]) -> int:
    port, count, hold = int(argv[0]), int(argv[1]), argv[2:] == ["--hold"]
    asyncio.run(_client(port, count, hold))
    return 0


# --------------------------------------------------------------------------
# The benchmark.


def _bench() -> Any:
    from bench import aioquic_baseline, ngtcp2
    from bench import common

    return common, aioquic_baseline, ngtcp2


def servers(ctx: Any, htdocs: Path) -> list[Any]:
    common, aioquic_baseline, ngtcp2 = _bench()
    ports = [common.free_port(socket.SOCK_DGRAM) for _ in range(4)]
    return [
        common.Server("quicserve", [ctx.python, "-m", "quicserve", APP, "--quic-bind",
                                    f"127.0.0.1:{ports[0]}", "--certfile", str(ctx.certfile),
                                    "--keyfile", str(ctx.keyfile), "--no-access-log",
                                    "--log-level", "warning", "--loop", "auto",
                                    "--quic-idle-timeout", "120"], ports[0]),
        aioquic_baseline.server(ctx.python, ctx.certfile, ctx.keyfile, ports[1]),
        common.Server("hypercorn", [ctx.python, "-m", "hypercorn", APP, "--quic-bind",
                                    f"127.0.0.1:{ports[2]}", "--bind",
                                    f"127.0.0.1:{common.free_port()}", "--certfile",
                                    str(ctx.certfile), "--keyfile", str(ctx.keyfile),
                                    "--worker-class", "uvloop", "--log-level", "warning"],
                      ports[2]),
        ngtcp2.gtlsserver(htdocs, ctx.certfile, ctx.keyfile, port=ports[3]),
    ]


def rss(server: Any) -> int:
    total = 0
    for pid in server.pids():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def _run_client(python: str, port: int, count: int) -> int:
    out = subprocess.run([python, __file__, "--client", str(port), str(count)],
                         capture_output=True, timeout=300).stdout.decode()
    return int(out.split()[-1]) if out.startswith("ready") else 0


def per_connection(python: str, server: Any, connections: int) -> tuple[float, int]:
    """(KiB per idle connection, failed connections)."""
    before = rss(server)
    proc = subprocess.Popen([python, __file__, "--client", str(server.port), str(connections),
                             "--hold"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # bounded by the client's own timeouts
        ok = int(line.split()[1]) if line.startswith("ready") else 0
        time.sleep(SETTLE)
        after = rss(server)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    kib = (after - before) / 1024 / ok if ok else 0.0
    return kib, connections - ok


def run(ctx: Any) -> list[Any]:
    common, _, ngtcp2 = _bench()
    ngtcp2.ensure_tools()
    connections = 50 if ctx.quick else CONNECTIONS
    group = common.Group(
        title=f"Resident memory per idle HTTP/3 connection ({connections} connections, one "
              f"request each; lower is better; target: quicserve <= {TARGET_KIB} KiB)",
        unit="KiB/conn",
        command=f"python bench/memory.py --client PORT {connections} --hold (aioquic client); "
                "VmRSS of the server before and after",
        baseline="aioquic", higher_is_better=False)

    def measure(server: Any) -> tuple[float, int]:
        server.stop()
        server.start(Path(os.devnull))
        ngtcp2.wait_h3(server)
        _run_client(ctx.python, server.port, WARMUP)
        return per_connection(ctx.python, server, connections)

    def warmup(server: Any) -> tuple[float, int]:
        return 0.0, 0  # every round warms its own fresh server up

    measure.warmup = warmup  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix="bench-htdocs-") as root:
        with ngtcp2.serving(servers(ctx, ngtcp2.make_htdocs(Path(root)))) as running:
            common.interleave(ctx, running, measure, group)
    for measurement in group.measurements.values():
        measurement.cpu.clear()  # each round restarts the server: no CPU figure to show
    quicserve = group.measurements.get("quicserve")
    if quicserve is not None:
        met = quicserve.median <= TARGET_KIB and quicserve.errors == 0
        ctx.log(f"  quicserve {quicserve.median:.1f} KiB per idle connection: target "
                f"<= {TARGET_KIB} KiB {'met' if met else 'NOT met'}")
    return [group]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        return client_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    common, _, _ = _bench()
    ctx = common.make_context(rounds=1 if args.quick else args.rounds, duration=3.0,
                              quick=args.quick)
    print(common.render(run(ctx)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
