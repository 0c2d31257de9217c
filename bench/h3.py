"""HTTP/3: small-response requests/s and one 32 MiB download, against Hypercorn.

Every server runs :data:`app` below over HTTP/3 on its own UDP port, at the
same time; rounds are interleaved (``bench.common.interleave``).  The load is
ngtcp2's ``gtlsclient`` (never quicserve's code), run quiet, success counted
from the downloaded bodies (``bench/ngtcp2.py``):

* requests/s: ``CLIENTS`` gtlsclient processes at once, each one connection
  of ``REQUESTS`` requests for distinct paths ``/r/<i>`` (13-byte body);
* MB/s: one gtlsclient downloading ``/32m`` (32 MiB; the app sends it in
  ``CHUNK``-byte ``http.response.body`` messages, as a streaming app would).

Servers: quicserve (the subject), Hypercorn (``--quic-bind``, the baseline of
the first tables), the minimal aioquic public-API server
(``bench/aioquic_baseline.py``) in both of its modes -- ``aioquic`` answers
inside aioquic's event callback, ``aioquic-handler`` from a task per request
flushed with ``transmit()`` -- and ngtcp2's C ``gtlsserver`` (the ceiling).
Targets (issue 6, raising issue 3's 3x and 1.3x): requests/s >= 4x Hypercorn
and >= 1.3x the aioquic baseline; MB/s >= 2x Hypercorn.  The requests/s
rounds are shown three times, against Hypercorn and against each aioquic
mode, each with its target line.

Standalone: ``python bench/h3.py [--rounds N] [--quick]``.
"""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import aioquic_baseline, ngtcp2
from bench.apps import lifespan
from bench.common import BenchContext, Group, Server, free_port, interleave, standalone

TITLE = "HTTP/3"
APP = "bench.h3:app"
CLIENTS = 4
REQUESTS = 2000
CHUNK = 256 * 1024
#: quicserve's targets against Hypercorn (requests/s, MB/s) and the aioquic
#: baseline (requests/s), issue 6.
RATE_TARGET = 4.0
DOWNLOAD_TARGET = 2.0
AIOQUIC_RATE_TARGET = 1.3

_SMALL = ngtcp2.BODY
_SMALL_START = {"type": "http.response.start", "status": 200, "headers": [
    (b"content-type", b"text/plain"), (b"content-length", str(len(_SMALL)).encode())]}
_SMALL_BODY = {"type": "http.response.body", "body": _SMALL}
_BIG_START = {"type": "http.response.start", "status": 200, "headers": [
    (b"content-type", b"application/octet-stream"),
    (b"content-length", str(ngtcp2.BIG_SIZE).encode())]}
_BIG_CHUNK = b"x" * CHUNK


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """``/32m``: 32 MiB in ``CHUNK``-byte messages; anything else: 13 bytes."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if scope["path"] != ngtcp2.BIG_PATH:
        await send(_SMALL_START)
        await send(_SMALL_BODY)
        return
    await send(_BIG_START)
    remaining = ngtcp2.BIG_SIZE
    while remaining > CHUNK:
        await send({"type": "http.response.body", "body": _BIG_CHUNK, "more_body": True})
        remaining -= CHUNK
    await send({"type": "http.response.body", "body": _BIG_CHUNK[:remaining]})


def servers(ctx: BenchContext, htdocs: Path) -> list[Server]:
    ports = [free_port(socket.SOCK_DGRAM) for _ in range(5)]
    common = ["--certfile", str(ctx.certfile), "--keyfile", str(ctx.keyfile)]
    return [
        Server("quicserve", [ctx.python, "-m", "quicserve", APP, "--quic-bind",
                             f"127.0.0.1:{ports[0]}", *common, "--no-access-log",
                             "--log-level", "warning", "--loop", "auto"], ports[0]),
        Server("hypercorn", [ctx.python, "-m", "hypercorn", APP, "--quic-bind",
                             f"127.0.0.1:{ports[1]}", "--bind", f"127.0.0.1:{free_port()}",
                             *common, "--worker-class", "uvloop", "--log-level", "warning"],
               ports[1]),
        aioquic_baseline.server(ctx.python, ctx.certfile, ctx.keyfile, ports[2]),
        aioquic_baseline.server(ctx.python, ctx.certfile, ctx.keyfile, ports[4], mode="handler"),
        ngtcp2.gtlsserver(htdocs, ctx.certfile, ctx.keyfile, port=ports[3]),
    ]


def groups(requests: int) -> tuple[Group, Group]:
    rate = Group(
        title=f"HTTP/3 small responses, {CLIENTS} gtlsclient processes x {requests} requests "
              "(one connection each)",
        unit="req/s",
        command=f"{CLIENTS} x gtlsclient -q --exit-on-all-streams-close -n {requests} "
                f"--download DIR 127.0.0.1 PORT https://127.0.0.1:PORT/r/0 ... "
                f"/r/{requests - 1}",
        baseline="hypercorn",
        target=("quicserve", RATE_TARGET),
    )
    download = Group(
        title="HTTP/3 download of 32 MiB (one connection)",
        unit="MB/s",
        command="gtlsclient -q --exit-on-all-streams-close --download DIR 127.0.0.1 PORT "
                "https://127.0.0.1:PORT/32m",
        baseline="hypercorn",
        target=("quicserve", DOWNLOAD_TARGET),
    )
    return rate, download


def run(ctx: BenchContext) -> list[Group]:
    ngtcp2.ensure_tools()
    requests = 300 if ctx.quick else REQUESTS
    rate, download = groups(requests)

    def measure_rate(server: Server) -> tuple[float, int]:
        result = ngtcp2.h3_load(server.port, clients=CLIENTS, requests=requests)
        return result.rate, result.errors

    def measure_download(server: Server) -> tuple[float, int]:
        result = ngtcp2.h3_download(server.port)
        return ngtcp2.mb_per_s(result), result.errors

    with tempfile.TemporaryDirectory(prefix="bench-htdocs-") as root:
        with ngtcp2.serving(servers(ctx, ngtcp2.make_htdocs(Path(root)))) as running:
            interleave(ctx, running, measure_rate, rate)
            interleave(ctx, running, measure_download, download)
    return [rate, *versus_aioquic(rate), download]


def versus_aioquic(rate: Group) -> list[Group]:
    """The requests/s rounds again, against each mode of the aioquic baseline."""
    titles = {
        "aioquic": "The same rounds against the aioquic public-API baseline, answering "
                   "inside the event callback",
        "aioquic-handler": "The same rounds against the aioquic public-API baseline, "
                           "answering from a task per request (transmit() per response)",
    }
    return [Group(title=title, unit=rate.unit, command=rate.command, baseline=name,
                  measurements=dict(rate.measurements),
                  target=("quicserve", AIOQUIC_RATE_TARGET))
            for name, title in titles.items() if name in rate.measurements]


def main(argv: list[str] | None = None) -> int:
    return standalone(run, __doc__, argv, duration=3.0)


if __name__ == "__main__":
    sys.exit(main())
