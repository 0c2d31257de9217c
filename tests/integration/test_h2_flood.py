"""HTTP/2 floods against a real quicserve process, over real sockets.

Each attack runs beside a well-behaved client on its own connection.  The
attacker must get GOAWAY (ENHANCE_YOUR_CALM) or be closed; the server's RSS
(``/proc/PID/status`` VmRSS) must stay bounded; the well-behaved client must
keep getting 200s throughout and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import pytest

from tests.support.certs import CertSet
from tests.support.h2_peers import (
    CONTINUATION,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    RawH2,
    _H2Socket,
    client_ssl_context,
    frame,
    goaway_code,
    ping_frame,
    rst_frame,
    settings_frame,
)
from tests.support.server import ServerProcess

APP = "tests.support.server:router_app"
ENHANCE_YOUR_CALM = 0xB
#: RSS growth tolerated during one attack.  The attacks push tens to hundreds
#: of megabytes at the server; what it keeps must be a small, fixed amount.
RSS_SLACK = 40 * 1024 * 1024


@pytest.fixture(scope="module")
def server(certs: CertSet) -> Iterator[ServerProcess]:
    with ServerProcess(APP, "--bind", "127.0.0.1:0", "--insecure-bind", "127.0.0.1:0",
                       "--certfile", str(certs.cert), "--keyfile", str(certs.key),
                       "--no-access-log") as process:
        process.wait_ready()
        yield process


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


class GoodClient:
    """Sequential GETs on one HTTP/2 connection, in a thread with its own event
    loop (so the attacker's work in the test's loop cannot starve it), until
    told to stop."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(host, port, ssl_context),
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self.stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the good client hung"
        if self.error is not None:
            raise self.error

    def _main(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        try:
            asyncio.run(asyncio.wait_for(self._run(host, port, ssl_context), 120))
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    async def _run(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        sock = await _H2Socket.open(host, port, ssl_context=ssl_context)
        try:
            for _ in range(100000):
                status, _, body = await sock.request("GET", "/hello", timeout=20)
                assert body == b"hello"
                self.statuses.append(status)
                if self.stop.is_set() and len(self.statuses) >= 5:
                    return
                await asyncio.sleep(0.005)
        finally:
            await sock.close()


Attack = Callable[[RawH2], Awaitable[None]]

#: How long each storm lasts: the attacker reconnects and attacks again until then.
STORM_SECONDS = 2.0
MAX_ATTACKS = 40


async def storm(attack: Attack, host: str, port: int, context: ssl.SSLContext | None
                ) -> list[tuple[bytes, bool]]:
    """Attack on fresh connections, one after another, for STORM_SECONDS;
    returns (bytes received, EOF seen) per attacking connection."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STORM_SECONDS
    outcomes: list[tuple[bytes, bool]] = []
    while loop.time() < deadline and len(outcomes) < MAX_ATTACKS:
        raw = await RawH2.open(host, port, context)
        try:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await attack(raw)
            received = await raw.read_until_closed(timeout=15)
        finally:
            raw.close()
        outcomes.append((received, raw.eof))
    return outcomes


async def run_storm(server: ServerProcess, certs: CertSet, attack: Attack, *,
                    tls: bool = False) -> list[tuple[bytes, bool]]:
    """The storm beside a good client on its own connection."""
    prefix = "https" if tls else "http"
    host, port = server.tcp_address(prefix)
    context = client_ssl_context(str(certs.ca)) if tls else None
    good = GoodClient(host, port, client_ssl_context(str(certs.ca)) if tls else None)
    good.start()
    await asyncio.sleep(0.3)
    before = len(good.statuses)
    outcomes = await storm(attack, host, port, context)
    during = len(good.statuses) - before
    await asyncio.to_thread(good.join, 60)
    assert set(good.statuses) == {200}
    assert during >= 5, f"the good client got only {during} responses during the storm"
    return outcomes


def assert_offender_stopped(received: bytes, eof: bool) -> None:
    code = goaway_code(received)
    assert code == ENHANCE_YOUR_CALM or (code is None and eof), (code, eof)


def flood_test(server: ServerProcess, certs: CertSet, attack: Attack, *, tls: bool = False) -> None:
    start = rss(server.pid)
    outcomes = asyncio.run(asyncio.wait_for(run_storm(server, certs, attack, tls=tls), 150))
    assert outcomes
    for received, eof in outcomes:
        assert_offender_stopped(received, eof)
    grown = rss(server.pid) - start
    assert grown < RSS_SLACK, f"server RSS grew by {grown / 2**20:.1f} MiB"


async def _write_batches(raw: RawH2, chunk: bytes, batches: int) -> None:
    for _ in range(batches):
        raw.write(chunk)
        if not await raw.drain(timeout=10):
            return
        if raw.writer.is_closing():
            return


# -- the attacks --------------------------------------------------------------------------------


def literal_block(fields: list[tuple[bytes, bytes]]) -> bytes:
    """An HPACK block of literals without indexing: stateless, so reusable."""
    return b"".join(b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
                    for name, value in fields)


RESET_BLOCK = literal_block([(b":method", b"GET"), (b":scheme", b"http"),
                             (b":authority", b"localhost"), (b":path", b"/slow?s=5")])


async def rapid_reset(raw: RawH2) -> None:
    """CVE-2023-44487: open a stream and reset it at once, thousands of times."""
    stream_id = 1
    for _ in range(50):
        batch = bytearray()
        for _ in range(200):
            batch += frame(HEADERS, END_HEADERS | END_STREAM, stream_id, RESET_BLOCK)
            batch += rst_frame(stream_id)
            stream_id += 2
        raw.write(bytes(batch))
        if not await raw.drain():
            return


async def ping_flood(raw: RawH2) -> None:
    await _write_batches(raw, ping_frame() * 4000, 100)


async def settings_flood(raw: RawH2) -> None:
    await _write_batches(raw, settings_frame() * 4000, 100)


async def continuation_flood(raw: RawH2) -> None:
    """An endless header block: HEADERS without END_HEADERS, then CONTINUATIONs."""
    raw.write(frame(HEADERS, 0, 1, raw.header_block(1)))
    await _write_batches(raw, frame(CONTINUATION, 0, 1, b"\x00" * 16384), 2000)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("attack", [rapid_reset, ping_flood, settings_flood, continuation_flood],
                         ids=["rapid-reset", "ping", "settings", "continuation"])
def test_flood_is_stopped_while_a_good_client_is_served(server: ServerProcess, certs: CertSet,
                                                        attack: Attack) -> None:
    flood_test(server, certs, attack)


@pytest.mark.timeout(180)
def test_rapid_reset_over_tls(server: ServerProcess, certs: CertSet) -> None:
    flood_test(server, certs, rapid_reset, tls=True)


def test_server_still_serves_new_connections_after_the_floods(server: ServerProcess,
                                                              certs: CertSet) -> None:
    async def main() -> None:
        host, port = server.tcp_address("https")
        sock = await _H2Socket.open(host, port, ssl_context=client_ssl_context(str(certs.ca)))
        try:
            statuses = [(await sock.request("GET", "/hello"))[0] for _ in range(20)]
        finally:
            await sock.close()
        assert statuses == [200] * 20

    asyncio.run(asyncio.wait_for(main(), 30))
