"""A minimal HTTP/3 server on aioquic's public API: the baseline quicserve
must beat by 1.3x (issue 6).

Only public aioquic API is used -- ``aioquic.asyncio.serve``, a
``QuicConnectionProtocol`` subclass and ``H3Connection`` -- with no ASGI
layer, no backpressure and no bookkeeping.  It answers every GET with:

* ``/bytes/N``  N bytes (``/32m`` is 32 MiB), handed to aioquic in one call;
* anything else ``hello, world\\n`` (13 bytes).

Two ways to answer, chosen with ``--mode``:

``inline`` (the default; the ``aioquic`` row of the tables)
    The response is queued inside the event callback that delivered the
    request head, and goes out with the packets aioquic sends after that
    datagram anyway.  No task, no extra flush: the least a Python server on
    aioquic can do per request, and the strictest bar.
``handler``  (the ``aioquic-handler`` row)
    What a server that runs a coroutine per request must do, as aioquic's own
    example HTTP/3 server does: the request head starts a task, the task
    queues the response and calls ``transmit()`` (once per response here,
    where the example calls it after every ASGI message).  The answer no
    longer rides on the datagram that carried the request, so each response
    costs aioquic a packet-building pass of its own.

Run ``python bench/aioquic_baseline.py --port 4433 --certfile C --keyfile K``;
it prints ``ready <port>`` on stdout once listening and stops on SIGTERM or
SIGINT.  ``--loop uvloop`` (the default when installed, as for quicserve)
or ``--loop asyncio``.  The benchmark modules start it with :func:`server`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from typing import TYPE_CHECKING

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent

if TYPE_CHECKING:
    from bench.common import Server

SMALL_BODY = b"hello, world\n"
BIG = 32 * 1024 * 1024
_BLOBS: dict[int, bytes] = {}


def body_for(path: bytes) -> bytes:
    """The response body for ``path``; large bodies are made once and reused."""
    size = None
    if path == b"/32m":
        size = BIG
    elif path.startswith(b"/bytes/") and path[7:].isdigit():
        size = min(int(path[7:]), 1 << 30)
    if size is None:
        return SMALL_BODY
    if size not in _BLOBS:
        _BLOBS[size] = b"x" * size
    return _BLOBS[size]


class BaselineProtocol(QuicConnectionProtocol):
    """One QUIC connection: H3 on top, answer each request head at once."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._http: H3Connection | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            self._http = H3Connection(self._quic)
        if self._http is not None:
            for h3_event in self._http.handle_event(event):
                self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived) or self._http is None:
            return
        path = dict(event.headers).get(b":path", b"/")
        self._respond(self._http, event.stream_id, path)

    def _respond(self, http: H3Connection, stream_id: int, path: bytes) -> None:
        body = body_for(path)
        http.send_headers(stream_id, [
            (b":status", b"200"),
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(len(body)).encode()),
        ])
        http.send_data(stream_id, body, end_stream=True)


class HandlerProtocol(BaselineProtocol):
    """The same answers from one task per request, flushed with ``transmit()``."""

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived) or self._http is None:
            return
        path = dict(event.headers).get(b":path", b"/")
        task = asyncio.get_running_loop().create_task(
            self._handle(self._http, event.stream_id, path))
        self._tasks.add(task)  # (a strong reference until it is done)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, http: H3Connection, stream_id: int, path: bytes) -> None:
        self._respond(http, stream_id, path)
        self.transmit()


async def main_async(args: argparse.Namespace) -> None:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN,
                                      max_datagram_frame_size=None)
    configuration.load_cert_chain(args.certfile, args.keyfile)
    protocol = HandlerProtocol if args.mode == "handler" else BaselineProtocol
    server = await serve(args.host, args.port, configuration=configuration,
                         create_protocol=protocol)
    port = server._transport.get_extra_info("sockname")[1]  # for the ready line only
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {port}", flush=True)
    await stop.wait()
    server.close()


def server(python: str, certfile: object, keyfile: object, port: int, *,
           mode: str = "inline") -> Server:
    """This script as a ``bench.common.Server`` (not yet started): named
    ``aioquic`` in ``inline`` mode, ``aioquic-handler`` in ``handler`` mode."""
    from bench.common import Server

    name = "aioquic" if mode == "inline" else f"aioquic-{mode}"
    return Server(name, [python, __file__, "--port", str(port), "--certfile", str(certfile),
                         "--keyfile", str(keyfile), "--mode", mode], port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--mode", choices=("inline", "handler"), default="inline",
                        help="answer inside the event callback, or from a task per "
                             "request flushed with transmit() (see the module docstring)")
    args = parser.parse_args(argv)
    if args.loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if args.loop == "uvloop":
                raise
        else:
            uvloop.install()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
