"""The native suite's aioquic client: hq-interop (H0) or HTTP/3 downloads with evidence.

Theory of operation
-------------------
``interop/run.py`` plays the interop runner's *client* role with two
independent clients: ngtcp2's ``gtlsclient`` (HTTP/3 only) and this one, built
on aioquic's own client stack (``aioquic.asyncio.connect`` with
``H0Connection`` for ``hq-interop`` or ``H3Connection`` for ``h3``).  Nothing
here imports quicserve: the server is a black box behind a UDP port.

:func:`fetch` opens one connection, requests paths (all at once, so they are
multiplexed), hashes each response body as it streams in (nothing is kept in
memory), and returns a :class:`ConnectionReport` with what the runner checks
from its pcaps, read here from the client's own qlog (aioquic's in-memory
``QuicLogger``) and connection state:

* ``retry_seen``: a Retry packet was received;
* ``session_resumed`` / ``early_data_accepted`` from ``HandshakeCompleted``,
  ``zero_rtt_packets`` sent, and whether the server sent a certificate;
* ``key_updated`` (the client started a key update) and ``recv_key_phase``
  (the phase of the last packets it could decrypt: 1 means the server
  answered in the new phase);
* ``version`` and ``cipher_suite`` negotiated;
* ``path_challenges`` received (the server validating a new client path);
* ``server_max_streams_bidi`` from the server's transport parameters.

The few aioquic attributes read for evidence (``_version``, ``tls``,
``_cryptos``) are read, never written, and only here.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from dataclasses import dataclass, field
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.h0.connection import H0Connection
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, QuicEvent, StreamReset
from aioquic.quic.logger import QuicLogger
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.tls import CipherSuite, Epoch, SessionTicket


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOptions:
    host: str
    port: int
    server_name: str = "localhost"
    cafile: str | None = None
    alpn: str = "hq-interop"
    #: Offer only these TLS cipher suites (e.g. ChaCha20 for ``chacha20``).
    ciphers: tuple[CipherSuite, ...] | None = None
    #: Start in v1 and offer v2 first (compatible version negotiation).
    v2: bool = False
    #: Start a key update as soon as the handshake is confirmed.
    key_update: bool = False
    #: Small initial flow-control windows (the runner's ``transfer`` asks for them).
    max_data: int | None = None
    max_stream_data: int | None = None
    #: Send the requests without waiting for the handshake (0-RTT when a ticket allows).
    early: bool = False
    timeout: float = 60.0
    #: Idle timeout of the client connection.
    idle_timeout: float = 30.0


@dataclass
class ConnectionReport:
    files: dict[str, tuple[str, int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    handshake_completed: bool = False
    alpn: str | None = None
    session_resumed: bool = False
    early_data_accepted: bool = False
    server_sent_certificate: bool = False
    retry_seen: bool = False
    initial_packets_sent: int = 0
    zero_rtt_packets: int = 0
    key_updated: bool = False
    recv_key_phase: int = 0
    version: int = 0
    cipher_suite: int = 0
    path_challenges: int = 0
    server_max_streams_bidi: int | None = None
    tickets: list[SessionTicket] = field(default_factory=list)


class _Fetch:
    __slots__ = ("path", "digest", "size", "done", "status")

    def __init__(self, path: str) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        self.size = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status: int | None = None


class _ClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        alpn = self._quic.configuration.alpn_protocols[0]
        self.http: H0Connection | H3Connection = (
            H3Connection(self._quic) if alpn == "h3" else H0Connection(self._quic))
        self.fetches: dict[int, _Fetch] = {}
        self.handshake: HandshakeCompleted | None = None

    def request(self, authority: str, path: str) -> _Fetch:
        stream_id = self._quic.get_next_available_stream_id()
        fetch = self.fetches[stream_id] = _Fetch(path)
        self.http.send_headers(stream_id, [
            (b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode()),
            (b":path", path.encode()), (b"user-agent", b"quicserve-interop")], end_stream=True)
        self.transmit()
        return fetch

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshake = event
        elif isinstance(event, StreamReset):
            self._finish(event.stream_id, f"stream reset with code {event.error_code}")
        for http_event in self.http.handle_event(event):
            fetch = self.fetches.get(http_event.stream_id)  # type: ignore[attr-defined]
            if fetch is None:
                continue
            if isinstance(http_event, HeadersReceived):
                for name, value in http_event.headers:
                    if name == b":status":
                        fetch.status = int(value)
            elif isinstance(http_event, DataReceived):
                fetch.digest.update(http_event.data)
                fetch.size += len(http_event.data)
            if getattr(http_event, "stream_ended", False):
                self._finish(http_event.stream_id, None)  # type: ignore[attr-defined]

    def _finish(self, stream_id: int, error: str | None) -> None:
        fetch = self.fetches.get(stream_id)
        if fetch is None or fetch.done.done():
            return
        if error is None and fetch.status not in (None, 200):
            error = f"status {fetch.status}"
        if error is None:
            fetch.done.set_result(None)
        else:
            fetch.done.set_exception(ConnectionError(error))


def configuration(options: ClientOptions, *, ticket: SessionTicket | None,
                  logger: QuicLogger) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=[options.alpn],
                               server_name=options.server_name, quic_logger=logger,
                               idle_timeout=options.idle_timeout, max_datagram_frame_size=None)
    if options.cafile:
        config.load_verify_locations(options.cafile)
    else:
        config.verify_mode = ssl.CERT_NONE
    if options.ciphers:
        config.cipher_suites = list(options.ciphers)
    if options.v2:
        config.original_version = QuicProtocolVersion.VERSION_1
        config.supported_versions = [QuicProtocolVersion.VERSION_2, QuicProtocolVersion.VERSION_1]
    if options.max_data is not None:
        config.max_data = options.max_data
    if options.max_stream_data is not None:
        config.max_stream_data = options.max_stream_data
    config.session_ticket = ticket
    return config


async def fetch(options: ClientOptions, paths: list[str], *,
                ticket: SessionTicket | None = None) -> ConnectionReport:
    """Download ``paths`` over one new connection; never raises for a failed
    download (see ``report.errors``), only :class:`TimeoutError` past
    ``options.timeout``."""
    report = ConnectionReport()
    logger = QuicLogger()
    config = configuration(options, ticket=ticket, logger=logger)
    authority = options.server_name if options.port == 443 else \
        f"{options.server_name}:{options.port}"
    async with asyncio.timeout(options.timeout):
        async with connect(options.host, options.port, configuration=config,
                           create_protocol=_ClientProtocol,
                           session_ticket_handler=report.tickets.append,
                           wait_connected=not options.early) as protocol:
            client: _ClientProtocol = protocol  # type: ignore[assignment]
            if options.key_update:
                # Applied with the next 1-RTT packet once the handshake is
                # confirmed (aioquic defers it until then by itself).
                client._quic.request_key_update()
            fetches = [client.request(authority, path) for path in paths]
            await asyncio.gather(*(f.done for f in fetches), return_exceptions=True)
            for f in fetches:
                if f.done.exception() is not None:
                    report.errors[f.path] = str(f.done.exception())
                else:
                    report.files[f.path] = (f.digest.hexdigest(), f.size)
            if client.handshake is None:
                await client.wait_connected()
            _connection_evidence(client, report)
            client.close()
            await client.wait_closed()
    _qlog_evidence(logger, report)
    return report


def _connection_evidence(client: _ClientProtocol, report: ConnectionReport) -> None:
    quic: Any = client._quic
    if client.handshake is not None:
        report.handshake_completed = True
        report.alpn = client.handshake.alpn_protocol
        report.session_resumed = client.handshake.session_resumed
        report.early_data_accepted = client.handshake.early_data_accepted
    report.version = int(quic._version)
    schedule = getattr(quic.tls, "key_schedule", None)
    report.cipher_suite = int(getattr(schedule, "cipher_suite", 0) or 0)
    report.server_sent_certificate = getattr(quic.tls, "_peer_certificate", None) is not None
    crypto = quic._cryptos.get(Epoch.ONE_RTT)
    if crypto is not None:
        report.recv_key_phase = int(crypto.recv.key_phase)


def _qlog_evidence(logger: QuicLogger, report: ConnectionReport) -> None:
    for trace in logger.to_dict()["traces"]:
        for event in trace["events"]:
            _qlog_event(event["name"], event.get("data", {}), report)


def _qlog_event(name: str, data: dict[str, Any], report: ConnectionReport) -> None:
    header = data.get("header", {})
    kind = header.get("packet_type")
    if name == "transport:packet_received":
        if kind == "retry":
            report.retry_seen = True
        report.path_challenges += sum(1 for f in data.get("frames", ())
                                      if f.get("frame_type") == "path_challenge")
    elif name == "transport:packet_sent":
        if kind == "initial":
            report.initial_packets_sent += 1
        elif kind == "0RTT":
            report.zero_rtt_packets += 1
    elif name == "security:key_updated" and data.get("trigger") == "local_update":
        report.key_updated = True
    elif name == "transport:parameters_set" and data.get("owner") == "remote":
        if "initial_max_streams_bidi" in data:
            report.server_max_streams_bidi = int(data["initial_max_streams_bidi"])
