"""HTTP/2 over TLS hello world: requests/s with h2load, 10 connections × 10 streams.

quicserve and Hypercorn (``-k uvloop``) serve ``bench.apps:hello`` side by
side over TLS (ALPN h2), each in its own process on its own port with its
access log off; ``h2load -c 10 -m 10 -D SECONDS`` measures each in
interleaved rounds (``common.interleave``).  Fixed-length runs let the table
also show requests per server CPU-second, the steadier figure on a busy
machine.

Hypercorn closes an HTTP/2 connection after ``keep_alive_max_requests``
(default 1000) requests, which h2load counts as failures rather than
reconnecting, so it gets a config file raising that limit out of reach.
Both servers keep their default of 100 concurrent streams per connection.

Standalone: ``python bench/h2.py [--rounds N] [--duration S]``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    BenchContext,
    Group,
    Server,
    free_port,
    interleave,
    standalone,
    tool,
)

TITLE = "HTTP/2"
APP = "bench.apps:hello"
CONNECTIONS = 10
STREAMS = 10

_REQUESTS = re.compile(rb"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       rb"(\d+) failed, (\d+) errored, (\d+) timeout")
_STATUS = re.compile(rb"status codes: (\d+) 2xx")


def h2load(url: str, duration: float) -> tuple[float, int]:
    """(requests/s, errors): failed + errored + timed-out + non-2xx requests."""
    path = tool("h2load")
    if path is None:
        raise RuntimeError("h2load is not installed (make deps: nghttp2-client)")
    result = subprocess.run([path, "-c", str(CONNECTIONS), "-m", str(STREAMS),
                             "-D", f"{duration:g}", url],
                            capture_output=True, timeout=duration + 120)
    out = result.stdout
    counts, status = _REQUESTS.search(out), _STATUS.search(out)
    if counts is None or status is None:
        raise RuntimeError(f"cannot parse h2load output:\n{out.decode(errors='replace')}"
                           f"{result.stderr.decode(errors='replace')}")
    total, succeeded = int(counts.group(1)), int(counts.group(4))
    errors = int(counts.group(5)) + int(counts.group(6)) + int(counts.group(7))
    errors += max(0, total - int(status.group(1)) - errors)
    return succeeded / duration, errors


def hypercorn_config(directory: Path, ctx: BenchContext, port: int) -> Path:
    path = directory / "hypercorn.toml"
    path.write_text(
        f'bind = ["127.0.0.1:{port}"]\n'
        f'certfile = "{ctx.certfile}"\n'
        f'keyfile = "{ctx.keyfile}"\n'
        'worker_class = "uvloop"\n'
        'loglevel = "WARNING"\n'
        '# h2load does not survive the default of 1000 requests per connection.\n'
        'keep_alive_max_requests = 1000000000\n')
    return path


def servers(ctx: BenchContext, directory: Path) -> list[Server]:
    python = ctx.python
    ports = [free_port() for _ in range(2)]
    config = hypercorn_config(directory, ctx, ports[1])
    return [
        Server("quicserve", [python, "-m", "quicserve", APP, "--bind", f"127.0.0.1:{ports[0]}",
                             "--certfile", str(ctx.certfile), "--keyfile", str(ctx.keyfile),
                             "--no-access-log", "--log-level", "warning", "--loop", "auto"],
               ports[0]),
        Server("hypercorn", [python, "-m", "hypercorn", "--config", str(config), APP], ports[1]),
    ]


def run(ctx: BenchContext) -> list[Group]:
    duration = ctx.duration
    group = Group(
        title=f"HTTP/2 over TLS hello world, {CONNECTIONS} connections × {STREAMS} streams",
        unit="req/s",
        command=f"h2load -c {CONNECTIONS} -m {STREAMS} -D {duration:g} https://127.0.0.1:PORT/",
        baseline="hypercorn",
        target=("quicserve", 2.0),
        run_seconds=duration,
    )
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as tmp:
        running = servers(ctx, Path(tmp))
        try:
            for server in running:
                server.start()
            for server in running:
                server.wait_tcp()

            def measure(server: Server) -> tuple[float, int]:
                return h2load(f"https://127.0.0.1:{server.port}/", duration)

            def warmup(server: Server) -> tuple[float, int]:
                return h2load(f"https://127.0.0.1:{server.port}/", ctx.warmup)

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
