"""HqAdapter against a real aioquic client (``H0Connection``) in memory.

Two aioquic ``QuicConnection`` objects, client and server, exchange datagrams
through plain lists with a fake clock; the server's events go to the
``HqAdapter`` under test, whose streams are served by the real ASGI layer
(``asgi/dispatch.py`` + ``HTTPStream``) running real apps (``StaticFiles``
and the shared test apps).  Assertions are on what the *client* receives.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from aioquic.h0.connection import H0Connection
from aioquic.h3.events import DataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ProtocolNegotiated, StreamReset

from quicserve.asgi.app import wrap_app
from quicserve.asgi.dispatch import Dispatcher
from quicserve.config import Config
from quicserve.interfaces import (
    ConnectionContext,
    ConnectionInfo,
    ResponseDefaults,
    Statistics,
)
from quicserve.log import AccessLog
from quicserve.protocols.hq import (
    HqAdapter,
    HqErrorCode,
    HqRequestError,
    parse_request_line_untrusted,
)
from quicserve.static import StaticFiles
from tests.support import apps
from tests.support.certs import CertSet

CLIENT_ADDR = ("127.0.0.1", 50000)
SERVER_ADDR = ("127.0.0.1", 4433)


class MemorySession:
    """A real QuicSessionHandle over the server QuicConnection (what
    ``QuicSession`` provides), minus sockets and timers."""

    def __init__(self, quic: QuicConnection) -> None:
        self.quic = quic
        self.dirty = 0
        self.credited: dict[int, int] = {}
        self.early = False

    def mark_dirty(self) -> None:
        self.dirty += 1

    def connection_info(self, *, early_data: bool = False) -> ConnectionInfo:
        return ConnectionInfo(http_version="3", protocol="HTTP/3", scheme="https",
                              client=CLIENT_ADDR, server=SERVER_ADDR, secure=True,
                              connection_id="abcd", extensions=("http.response.trailers",))

    def return_credit(self, stream_id: int, n: int) -> None:
        self.credited[stream_id] = self.credited.get(stream_id, 0) + n

    def stream_send_buffered(self, stream_id: int) -> int:
        # Read-only look at aioquic's sender: bytes written but not yet acknowledged.
        stream = self.quic._streams.get(stream_id)
        if stream is None:
            return 0
        return int(stream.sender._buffer_stop - stream.sender._buffer_start)

    def stream_send_pending(self, stream_id: int) -> int:
        # Bytes written but never sent: the end of the buffer minus the highest offset sent.
        stream = self.quic._streams.get(stream_id)
        if stream is None:
            return 0
        return max(0, int(stream.sender._buffer_stop - stream.sender.highest_offset))

    def in_early_data(self) -> bool:
        return self.early


class Pair:
    """Client and server QUIC connections wired back to back."""

    def __init__(self, certs: CertSet, app: Any, *, options: Config | None = None) -> None:
        self.now = 1000.0
        self.options = options or Config()
        server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
        server_cfg.load_cert_chain(str(certs.cert), str(certs.key))
        client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["hq-interop"],
                                       verify_mode=ssl.CERT_NONE, server_name="localhost")
        self.client = QuicConnection(configuration=client_cfg)
        self.server = QuicConnection(configuration=server_cfg,
                                     original_destination_connection_id=self.client.original_destination_connection_id)
        self.h0 = H0Connection(self.client)
        self.session = MemorySession(self.server)
        self.stats = Statistics()
        self.dispatcher = Dispatcher(app=wrap_app(app), options=self.options, state={},
                                     stats=self.stats, access_log=AccessLog("%(r)s %(s)s"))
        self.ctx = ConnectionContext(options=self.options, stream_factory=self.dispatcher,
                                     response_defaults=ResponseDefaults(), stats=self.stats,
                                     clock=lambda: self.now)
        self.adapter: HqAdapter | None = None
        self.bodies: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.client.connect(SERVER_ADDR, now=self.now)

    def pump(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            moved = 0
            for data, _ in self.client.datagrams_to_send(now=self.now):
                self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
                moved += 1
            self._server_events()
            for data, _ in self.server.datagrams_to_send(now=self.now):
                self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
                moved += 1
            self._client_events()
            if self.adapter is not None:
                self.adapter.on_send_capacity()
            if not moved:
                return
            self.now += 0.002

    def _server_events(self) -> None:
        while (event := self.server.next_event()) is not None:
            if isinstance(event, ProtocolNegotiated):
                assert event.alpn_protocol == "hq-interop"
                self.adapter = HqAdapter(ctx=self.ctx, quic=self.server, session=self.session)
            if self.adapter is not None:
                self.adapter.handle_event(event)

    def _client_events(self) -> None:
        while (event := self.client.next_event()) is not None:
            if isinstance(event, StreamReset):
                self.resets[event.stream_id] = event.error_code
            for h0_event in self.h0.handle_event(event):
                if isinstance(h0_event, DataReceived):
                    self.bodies.setdefault(h0_event.stream_id, bytearray()).extend(h0_event.data)
                    if h0_event.stream_ended:
                        self.ended.add(h0_event.stream_id)

    def get(self, path: str) -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.h0.send_headers(stream_id, [(b":method", b"GET"), (b":path", path.encode())],
                             end_stream=True)
        return stream_id

    def raw(self, data: bytes, *, end: bool, stream_id: int | None = None) -> int:
        if stream_id is None:
            stream_id = self.client.get_next_available_stream_id()
        self.client.send_stream_data(stream_id, data, end)
        return stream_id

    def tick(self, seconds: float = 0.005) -> None:
        """Advance the fake clock and fire the timers that expired (pacing, loss)."""
        self.now += seconds
        for conn in (self.client, self.server):
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(now=self.now)

    async def settle(self, done: Any, *, turns: int = 3000) -> None:
        """Pump and let app tasks run until ``done()`` holds (bounded)."""
        for turn in range(turns):
            self.pump()
            if done():
                return
            self.tick()
            # Let app tasks run; a short real sleep lets executor reads finish.
            await asyncio.sleep(0 if turn % 4 else 0.001)
        raise AssertionError("did not settle")

    def finished(self, *ids: int) -> bool:
        return all(i in self.ended or i in self.resets for i in ids)


def run(coro: Any, timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


@pytest.fixture()
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "small").write_bytes(b"0123456789")
    (root / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    for i in range(40):
        (root / f"f{i}").write_bytes(os.urandom(1000 + i))
    return root


async def _connect(pair: Pair) -> None:
    await pair.settle(lambda: pair.adapter is not None and pair.client._handshake_complete)


# -- request line parsing ------------------------------------------------------


@pytest.mark.parametrize("line,target", [
    (b"GET /a", b"/a"), (b"GET /a/b?c=d", b"/a/b?c=d"), (b"GET / HTTP/1.0", b"/"),
    (b"GET /%2e%2e", b"/%2e%2e"),
])
def test_parse_request_line_accepts(line: bytes, target: bytes) -> None:
    assert parse_request_line_untrusted(line) == target


@pytest.mark.parametrize("line", [
    b"", b"GET", b"POST /a", b"get /a", b"GET a", b"GET /a b", b"GET  /a", b"GET /\x00",
    b"GET /\xff", b"GET /a HTTP/1.1 x",
])
def test_parse_request_line_rejects(line: bytes) -> None:
    with pytest.raises(HqRequestError):
        parse_request_line_untrusted(line)


# -- end to end in memory ----------------------------------------------------------


def test_static_file_over_hq(certs: CertSet, www: Path) -> None:
    async def main() -> None:
        pair = Pair(certs, StaticFiles(www))
        await _connect(pair)
        sid = pair.get("/big")
        await pair.settle(lambda: pair.finished(sid))
        assert sid not in pair.resets
        assert hashlib.sha256(pair.bodies[sid]).digest() == \
            hashlib.sha256((www / "big").read_bytes()).digest()
        await pair.settle(lambda: pair.stats.streams == 0 and pair.adapter.active_streams() == 0)
    run(main())


@pytest.mark.parametrize("request_bytes,end", [
    (b"GET /small\r\n", True), (b"GET /small\n", True), (b"GET /small", True),
    (b"GET /small\r\n", False),
])
def test_lenient_request_lines(certs: CertSet, www: Path, request_bytes: bytes, end: bool) -> None:
    async def main() -> None:
        pair = Pair(certs, StaticFiles(www))
        await _connect(pair)
        sid = pair.raw(request_bytes, end=end)
        await pair.settle(lambda: pair.finished(sid))
        assert bytes(pair.bodies[sid]) == b"0123456789"
    run(main())


def test_request_line_byte_by_byte(certs: CertSet, www: Path) -> None:
    async def main() -> None:
        pair = Pair(certs, StaticFiles(www))
        await _connect(pair)
        line = b"GET /small\r\n"
        sid = pair.client.get_next_available_stream_id()
        for i in range(len(line)):
            pair.raw(line[i:i + 1], end=i == len(line) - 1, stream_id=sid)
            pair.pump()
            await asyncio.sleep(0)
        await pair.settle(lambda: pair.finished(sid))
        assert bytes(pair.bodies[sid]) == b"0123456789"
        assert pair.session.credited[sid] == len(line)
    run(main())


def test_many_concurrent_streams(certs: CertSet, www: Path) -> None:
    async def main() -> None:
        pair = Pair(certs, StaticFiles(www))
        await _connect(pair)
        ids = {pair.get(f"/f{i}"): i for i in range(40)}
        await pair.settle(lambda: pair.finished(*ids))
        for sid, i in ids.items():
            assert bytes(pair.bodies[sid]) == (www / f"f{i}").read_bytes()
    run(main())


def test_out_of_order_streams_are_all_served(certs: CertSet, www: Path) -> None:
    """Requests on streams 0, 4, 8 arrive in reverse order (one datagram each):
    every one is a new request, and each is served exactly once."""
    async def main() -> None:
        pair = Pair(certs, StaticFiles(www))
        await _connect(pair)
        ids = [pair.raw(f"GET /f{i}?{'x' * 1100}\r\n".encode(), end=True) for i in (0, 4, 8)]
        assert ids == [0, 4, 8]
        datagrams = [d for d, _ in pair.client.datagrams_to_send(now=pair.now)]
        assert len(datagrams) >= 3
        for data in reversed(datagrams):
            pair.server.receive_datagram(data, CLIENT_ADDR, now=pair.now)
            pair._server_events()
        await pair.settle(lambda: pair.finished(*ids))
        for sid in ids:
            assert bytes(pair.bodies[sid]) == (www / f"f{sid}").read_bytes()
        assert pair.stats.requests == 3
        assert pair.adapter is not None and pair.adapter.active_streams() == 0
    run(main())


def test_missing_file_resets_with_status(certs: CertSet, www: Path) -> None:
    async def main() -> None:
        pair = Pair(certs, StaticFiles(www))
        await _connect(pair)
        sid = pair.get("/nope")
        ok = pair.get("/small")
        await pair.settle(lambda: pair.finished(sid, ok))
        assert pair.resets[sid] == 404
        assert bytes(pair.bodies[ok]) == b"0123456789"
        await pair.settle(lambda: pair.stats.streams == 0)
    run(main())


@pytest.mark.parametrize("line,code", [
    (b"POST /small\r\n", HqErrorCode.GENERAL_PROTOCOL_ERROR),
    (b"GET small\r\n", HqErrorCode.GENERAL_PROTOCOL_ERROR),
    (b"\r\n", HqErrorCode.GENERAL_PROTOCOL_ERROR),
    (b"", HqErrorCode.GENERAL_PROTOCOL_ERROR),
])
def test_bad_request_resets_only_that_stream(certs: CertSet, www: Path, line: bytes,
                                             code: int) -> None:
    async def main() -> None:
        pair = Pair(certs, StaticFiles(www))
        await _connect(pair)
        bad = pair.raw(line, end=True)
        good = pair.get("/small")
        await pair.settle(lambda: pair.finished(bad, good))
        assert pair.resets[bad] == code
        assert bytes(pair.bodies[good]) == b"0123456789"
        assert pair.stats.requests == 1
    run(main())


def test_overlong_request_line_is_refused(certs: CertSet, www: Path) -> None:
    async def main() -> None:
        pair = Pair(certs, StaticFiles(www), options=Config(h11_max_incomplete_size=1024))
        await _connect(pair)
        sid = pair.raw(b"GET /" + b"a" * 2000, end=False)
        await pair.settle(lambda: pair.finished(sid))
        assert pair.resets[sid] == HqErrorCode.EXCESSIVE_LOAD
        assert pair.stats.requests == 0
    run(main())


def test_scope_seen_by_the_app(certs: CertSet) -> None:
    async def main() -> None:
        pair = Pair(certs, apps.scope_json)
        await _connect(pair)
        sid = pair.get("/p/a%20b?x=1")
        await pair.settle(lambda: pair.finished(sid))
        scope = json.loads(bytes(pair.bodies[sid]))
        assert scope["method"] == "GET"
        assert scope["http_version"] == "1.1"
        assert scope["scheme"] == "https"
        assert scope["path"] == "/p/a b"
        assert scope["query_string"] == "x=1"
        assert ["host", "127.0.0.1:4433"] in scope["headers"]
        assert scope["client"] == list(CLIENT_ADDR)
        assert "http.response.trailers" not in scope.get("extensions", {})
    run(main())


def test_send_body_waits_while_data_is_unsent(certs: CertSet, www: Path) -> None:
    """While nothing leaves the server, it holds at most the high-water mark
    (plus one chunk) of the response; the rest follows once datagrams flow."""
    async def main() -> None:
        pair = Pair(certs, StaticFiles(www), options=Config(stream_high_water=65536))
        await _connect(pair)
        sid = pair.get("/big")
        pair.pump(rounds=1)  # the request reaches the server; nothing flows back after this
        for _ in range(200):  # real sleeps: the app reads the file in a thread
            await asyncio.sleep(0.005)
            if pair.session.stream_send_pending(sid) >= 65536:
                break
        for _ in range(20):
            await asyncio.sleep(0.005)  # give a non-blocking sender the chance to overrun
        pending = pair.session.stream_send_pending(sid)
        assert 65536 <= pending <= 65536 + 64 * 1024
        assert pair.session.stream_send_buffered(sid) == pending
        await pair.settle(lambda: pair.finished(sid))
        assert hashlib.sha256(pair.bodies[sid]).digest() == \
            hashlib.sha256((www / "big").read_bytes()).digest()
    run(main())


def test_stop_sending_aborts_the_app(certs: CertSet) -> None:
    seen: list[str] = []

    async def main() -> None:
        pair = Pair(certs, apps.wait_for_disconnect(seen))
        await _connect(pair)
        sid = pair.get("/")
        await pair.settle(lambda: pair.stats.app_tasks == 1)
        pair.client.stop_stream(sid, 0x10C)
        await pair.settle(lambda: pair.stats.streams == 0)
        assert "http.disconnect" in seen
        assert pair.adapter is not None and pair.adapter.active_streams() == 0
    run(main())


def test_connection_lost_aborts_a_blocked_sender(certs: CertSet, www: Path) -> None:
    async def main() -> None:
        pair = Pair(certs, StaticFiles(www))
        await _connect(pair)
        sid = pair.get("/big")
        pair.pump(rounds=1)
        for _ in range(400):  # until the app is blocked in send_body
            await asyncio.sleep(0.005)
            if pair.session.stream_send_pending(sid) >= pair.options.stream_high_water:
                break
        assert pair.stats.app_tasks == 1
        assert pair.adapter is not None
        pair.adapter.connection_lost()
        for _ in range(400):
            if pair.stats.streams == 0:
                break
            await asyncio.sleep(0.005)
        assert pair.stats.streams == 0 and pair.stats.app_tasks == 0
        assert pair.adapter.active_streams() == 0
    run(main())


def test_shutdown_refuses_new_streams_and_closes_when_idle(certs: CertSet, www: Path) -> None:
    async def main() -> None:
        pair = Pair(certs, StaticFiles(www))
        await _connect(pair)
        inflight = pair.get("/big")
        pair.pump(rounds=1)
        for _ in range(20):
            await asyncio.sleep(0)
        assert pair.adapter is not None
        pair.adapter.shutdown()
        late = pair.get("/small")
        await pair.settle(lambda: pair.finished(inflight, late))
        assert pair.resets[late] == HqErrorCode.REQUEST_REJECTED
        assert len(pair.bodies[inflight]) == (www / "big").stat().st_size
        await pair.settle(lambda: pair.client._close_event is not None)
        assert pair.client._close_event.error_code == HqErrorCode.NO_ERROR
    run(main())


def test_app_error_after_head_resets_with_internal_error(certs: CertSet) -> None:
    async def main() -> None:
        pair = Pair(certs, apps.raise_after_head)
        await _connect(pair)
        sid = pair.get("/")
        await pair.settle(lambda: pair.finished(sid))
        assert pair.resets[sid] == HqErrorCode.INTERNAL_ERROR
    run(main())


def test_app_error_before_head_resets_with_500(certs: CertSet) -> None:
    async def main() -> None:
        pair = Pair(certs, apps.raise_before_head)
        await _connect(pair)
        sid = pair.get("/")
        await pair.settle(lambda: pair.finished(sid))
        assert pair.resets[sid] == 500
        await pair.settle(lambda: pair.stats.streams == 0)
    run(main())


def test_early_data_flag_reaches_the_head(certs: CertSet) -> None:
    async def main() -> None:
        pair = Pair(certs, apps.scope_json)
        await _connect(pair)
        pair.session.early = True
        sid = pair.get("/")
        await pair.settle(lambda: pair.finished(sid))
        # GET is safe, so the dispatcher serves it even in 0-RTT.
        assert json.loads(bytes(pair.bodies[sid]))["method"] == "GET"
    run(main())
