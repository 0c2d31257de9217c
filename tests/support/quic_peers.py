"""Real aioquic clients against quicserve's QUIC endpoint, in memory or over UDP.

In memory (sans-IO, fake time):

* :class:`H3Client` -- aioquic ``QuicConnection(is_client=True)`` with an
  ``H3Connection`` (or ``H0Connection`` for hq-interop); collects responses
  per stream.
* :class:`QuicHarness` -- the real ``UdpEndpoint`` (``transport/udp.py``) on
  a :class:`~tests.support.clock.FakeLoop`, writing into a
  :class:`~tests.support.memory.DatagramLink`, with the real ASGI dispatcher
  and a test app.  :meth:`QuicHarness.run` moves datagrams both ways, lets
  the app tasks run, and advances fake time to the next timer when nothing
  else moves -- bounded in rounds.

Over real UDP (integration): :func:`aioquic_connect` opens an
``aioquic.asyncio`` client whose protocol runs HTTP/3 requests, and
:func:`gtlsclient` runs ngtcp2's client (bounded in time).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.h0.connection import H0Connection
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamReset,
)
from aioquic.tls import SessionTicket

from quicserve.asgi.app import wrap_app
from quicserve.asgi.dispatch import Dispatcher
from quicserve.config import Config
from quicserve.interfaces import ConnectionContext, ResponseDefaults, Statistics
from quicserve.log import AccessLog
from quicserve.quic.tokens import QuicSecrets
from quicserve.transport.udp import UdpEndpoint, build_endpoint
from tests.support.clock import FakeClock, FakeLoop
from tests.support.memory import Address, DatagramLink, MemoryDatagramTransport

SERVER_ADDR: Address = ("10.0.0.1", 443)
CLIENT_ADDR: Address = ("10.0.0.2", 50000)


@dataclass
class Response:
    """What a client saw on one request stream."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    interim: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset_code: int | None = None
    stop_code: int | None = None

    @property
    def status(self) -> int | None:
        for name, value in self.headers:
            if name == b":status":
                return int(value)
        return None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None


def client_configuration(ca: str, *, alpn: Iterable[str] = ("h3",), **options: Any) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=list(alpn),
                                      server_name="localhost", **options)
    configuration.load_verify_locations(cafile=ca)
    return configuration


class H3Client:
    """A sans-IO aioquic HTTP/3 (or HTTP/0.9) client at ``address``."""

    def __init__(self, configuration: QuicConfiguration, *, address: Address = CLIENT_ADDR,
                 h0: bool = False) -> None:
        self.address = address
        self.tickets: list[SessionTicket] = []
        self.quic = QuicConnection(configuration=configuration,
                                   session_ticket_handler=self.tickets.append)
        self.http: H3Connection | H0Connection = (
            H0Connection(self.quic) if h0 else H3Connection(self.quic))
        self.responses: dict[int, Response] = {}
        self.handshake: HandshakeCompleted | None = None
        self.terminated: ConnectionTerminated | None = None
        self.quic_events: list[QuicEvent] = []

    # -- driving -------------------------------------------------------------------

    def connect(self, server: Address, now: float) -> None:
        self.quic.connect(server, now)

    def receive(self, data: bytes, addr: Address, now: float) -> None:
        self.quic.receive_datagram(data, addr, now)
        self._drain()

    def handle_timer(self, now: float) -> None:
        self.quic.handle_timer(now)
        self._drain()

    def _drain(self) -> None:
        event = self.quic.next_event()
        while event is not None:
            self.quic_events.append(event)
            self._quic_event(event)
            for http_event in self.http.handle_event(event):
                self._http_event(http_event)
            event = self.quic.next_event()

    def _quic_event(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshake = event
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event
        elif isinstance(event, StreamReset):
            self.responses.setdefault(event.stream_id, Response()).reset_code = event.error_code
        elif isinstance(event, StopSendingReceived):
            self.responses.setdefault(event.stream_id, Response()).stop_code = event.error_code

    def _http_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            response = self.responses.setdefault(event.stream_id, Response())
            status = dict(event.headers).get(b":status", b"")
            if not response.headers and status.startswith(b"1"):
                response.interim.append(list(event.headers))
            elif not response.headers:
                response.headers = list(event.headers)
            else:
                response.trailers = list(event.headers)
            response.ended = response.ended or event.stream_ended
        elif isinstance(event, DataReceived):
            response = self.responses.setdefault(event.stream_id, Response())
            response.body += event.data
            response.ended = response.ended or event.stream_ended

    # -- requests ----------------------------------------------------------------------

    def request(self, method: str = "GET", path: str = "/", *, body: bytes | None = None,
                headers: Iterable[tuple[bytes, bytes]] = (), end: bool = True,
                authority: bytes = b"localhost") -> int:
        stream_id = self.quic.get_next_available_stream_id()
        fields = [(b":method", method.encode()), (b":scheme", b"https"),
                  (b":authority", authority), (b":path", path.encode()), *headers]
        self.send_headers(stream_id, fields, end=end and body is None)
        if body is not None:
            self.send_body(stream_id, body, end=end)
        return stream_id

    def send_headers(self, stream_id: int, fields: list[tuple[bytes, bytes]], *, end: bool) -> None:
        self.responses.setdefault(stream_id, Response())
        self.http.send_headers(stream_id, fields, end_stream=end)

    def send_body(self, stream_id: int, data: bytes, *, end: bool) -> None:
        self.http.send_data(stream_id, data, end_stream=end)

    def response(self, stream_id: int) -> Response:
        return self.responses[stream_id]


def make_context(config: Config, app: Any, clock: Callable[[], float],
                 stats: Statistics | None = None) -> tuple[ConnectionContext, Dispatcher]:
    """A ConnectionContext with the real ASGI dispatcher, as server.py builds it."""
    stats = stats if stats is not None else Statistics()
    dispatcher = Dispatcher(app=wrap_app(app), options=config, state={}, stats=stats,
                            access_log=AccessLog('%(h)s "%(r)s" %(s)s'))
    ctx = ConnectionContext(options=config, stream_factory=dispatcher,
                            response_defaults=ResponseDefaults(), stats=stats, clock=clock)
    return ctx, dispatcher


class QuicHarness:
    """quicserve's real UDP endpoint on fake time, with in-memory clients."""

    def __init__(self, *, config: Config, app: Any, ca: str,
                 secrets: QuicSecrets | None = None) -> None:
        self.config = config
        self.ca = ca
        self.clock = FakeClock()
        self.loop = FakeLoop(self.clock)
        self.link = DatagramLink()
        self.secrets = secrets or QuicSecrets.generate()
        self.ctx, self.dispatcher = make_context(config, app, self.clock)
        self.stats = self.ctx.stats
        self.endpoint: UdpEndpoint = build_endpoint(
            loop=self.loop,  # type: ignore[arg-type]
            ctx=self.ctx, config=config, secrets=self.secrets, server=SERVER_ADDR)
        self.transport = MemoryDatagramTransport(self.link, SERVER_ADDR)
        self.endpoint.attach(self.transport, SERVER_ADDR)
        self.clients: list[H3Client] = []

    def client(self, *, address: Address = CLIENT_ADDR, connect: bool = True,
               h0: bool = False, alpn: Iterable[str] | None = None,
               certificate: tuple[str, str] | None = None, **options: Any) -> H3Client:
        """A client at ``address``; ``certificate`` is (certfile, keyfile) to
        present when the server asks for one."""
        alpn = alpn if alpn is not None else (("hq-interop",) if h0 else ("h3",))
        configuration = client_configuration(self.ca, alpn=alpn, **options)
        if certificate is not None:
            configuration.load_cert_chain(certificate[0], certificate[1])
        client = H3Client(configuration, address=address, h0=h0)
        self.clients.append(client)
        if connect:
            client.connect(SERVER_ADDR, self.clock.now)
        return client

    # -- moving datagrams and time ---------------------------------------------------

    def exchange(self) -> bool:
        """One round: clients send, the endpoint receives and flushes, clients
        receive.  True if any datagram moved."""
        moved = False
        now = self.clock.now
        for client in self.clients:
            for data, addr in client.quic.datagrams_to_send(now):
                self.link.send(data, client.address, (addr[0], addr[1]))
        for data, src in self.link.receive(SERVER_ADDR):
            moved = True
            self.endpoint.datagram_received(data, src)
        self.loop.run_ready()
        for client in self.clients:
            for data, src in self.link.receive(client.address):
                moved = True
                client.receive(data, src, now)
        return moved

    def advance(self, limit: float | None = None) -> bool:
        """Jump to the next timer (server or client), never past ``limit``, and run it."""
        deadlines = [t for t in (c.quic.get_timer() for c in self.clients) if t is not None]
        server = self.clock.next_deadline()
        if server is not None:
            deadlines.append(server)
        if limit is not None:
            deadlines.append(max(limit, self.clock.now))
        if not deadlines:
            return False
        when = min(deadlines)
        self.clock.advance_to(when)
        for client in self.clients:
            timer = client.quic.get_timer()
            if timer is not None and timer <= self.clock.now:
                client.handle_timer(self.clock.now)
        self.loop.run_ready()
        return True

    async def run(self, until: Callable[[], bool], *, max_rounds: int = 2000,
                  advance: bool = True, limit: float | None = None) -> None:
        """Exchange until ``until()`` holds; advance time (never past
        ``limit``) when idle.  Bounded in rounds."""
        for _ in range(max_rounds):
            moved = self.exchange()
            for _ in range(4):
                await asyncio.sleep(0)
            moved = self.loop.run_ready() > 0 or moved
            if until():
                return
            if not moved and advance and not self.advance(limit):
                await asyncio.sleep(0.001)
        raise AssertionError(f"the network never reached the expected state: {self.stats.snapshot()}")

    async def run_for(self, seconds: float, *, max_rounds: int = 5000) -> None:
        """Let ``seconds`` of fake time pass with traffic flowing."""
        target = self.clock.now + seconds
        await self.run(lambda: self.clock.now >= target, max_rounds=max_rounds, limit=target)

    async def settle(self, rounds: int = 20) -> None:
        """Exchange a few rounds without advancing time."""
        for _ in range(rounds):
            self.exchange()
            for _ in range(4):
                await asyncio.sleep(0)
            self.loop.run_ready()


# --------------------------------------------------------------------------
# Over real UDP.


class _H3ClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.responses: dict[int, Response] = {}
        self.waiters: dict[int, asyncio.Future[Response]] = {}
        self.terminated: ConnectionTerminated | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
        if isinstance(event, StreamReset) and event.stream_id in self.responses:
            self.responses[event.stream_id].reset_code = event.error_code
            self._finish(event.stream_id)
        for http_event in self.http.handle_event(event):
            self._http_event(http_event)

    def _http_event(self, event: H3Event) -> None:
        if not isinstance(event, (HeadersReceived, DataReceived)):
            return
        response = self.responses.get(event.stream_id)
        if response is None:
            return
        if isinstance(event, HeadersReceived):
            if not response.headers and not dict(event.headers).get(b":status", b"").startswith(b"1"):
                response.headers = list(event.headers)
            elif response.headers:
                response.trailers = list(event.headers)
        else:
            response.body += event.data
        if event.stream_ended:
            response.ended = True
            self._finish(event.stream_id)

    def _finish(self, stream_id: int) -> None:
        waiter = self.waiters.pop(stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(self.responses[stream_id])

    def start_request(self, method: str, path: str, authority: str,
                      headers: Iterable[tuple[bytes, bytes]] = (), end: bool = True) -> int:
        stream_id = self._quic.get_next_available_stream_id()
        self.responses[stream_id] = Response()
        self.waiters[stream_id] = asyncio.get_running_loop().create_future()
        self.http.send_headers(stream_id, [
            (b":method", method.encode()), (b":scheme", b"https"),
            (b":authority", authority.encode()), (b":path", path.encode()), *headers],
            end_stream=end)
        self.transmit()
        return stream_id

    def send_body(self, stream_id: int, data: bytes, end: bool) -> None:
        self.http.send_data(stream_id, data, end_stream=end)
        self.transmit()

    def stream_buffered(self, stream_id: int) -> int:
        stream = self._quic._streams.get(stream_id)
        return len(stream.sender._buffer) if stream is not None else 0

    async def request(self, method: str, path: str, authority: str, body: bytes | None = None,
                      headers: Iterable[tuple[bytes, bytes]] = ()) -> Response:
        stream_id = self.start_request(method, path, authority, headers, end=body is None)
        if body is not None:
            self.send_body(stream_id, body, True)
        return await self.waiters[stream_id]


def aioquic_configuration(ca: str, **options: Any) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                      server_name="localhost", **options)
    configuration.load_verify_locations(cafile=ca)
    configuration.verify_mode = ssl.CERT_REQUIRED
    return configuration


def aioquic_connect(host: str, port: int, configuration: QuicConfiguration,
                    **kwargs: Any) -> Any:
    """``async with aioquic_connect(...) as client:`` -> :class:`_H3ClientProtocol`."""
    return connect(host, port, configuration=configuration,
                   create_protocol=_H3ClientProtocol, **kwargs)


# --------------------------------------------------------------------------
# ngtcp2's gtlsclient (Debian ngtcp2-client 0.12).

GTLSCLIENT = shutil.which("gtlsclient")
#: GnuTLS priority string for ChaCha20-Poly1305 only (gtlsclient's --ciphers).
CHACHA20_ONLY = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305"


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def gtlsclient(host: str, port: int, paths: Iterable[str], *args: str, quiet: bool = True,
               timeout: float = 60.0, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run gtlsclient against ``host:port`` for ``paths`` (one stream each,
    one connection); bounded in time.  Output is stdout and stderr merged."""
    if GTLSCLIENT is None:
        raise RuntimeError("gtlsclient is not installed (Debian ngtcp2-client)")
    uris = [f"https://{url_host(host)}:{port}{path}" for path in paths]
    command = [GTLSCLIENT, "--exit-on-all-streams-close", *(["-q"] if quiet else []), *args,
               host, str(port), *uris]
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", timeout=timeout, cwd=cwd, check=False)
