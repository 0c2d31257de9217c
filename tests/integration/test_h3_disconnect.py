"""Clients that go away: the app must hear ``http.disconnect`` and the
server's counters (sessions, streams, app tasks) must return to zero.

One client resets its stream mid-upload (aioquic's client, RESET_STREAM);
another vanishes mid-download (ngtcp2's gtlsclient killed with SIGKILL: no
CONNECTION_CLOSE, the server only notices through its idle timeout).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from typing import Any, Callable, Iterator

import pytest
from aioquic.h3.connection import ErrorCode

from tests.support.certs import CertSet
from tests.support.quic_peers import GTLSCLIENT, aioquic_configuration, aioquic_connect
from tests.support.server import ThreadedServer

pytestmark = pytest.mark.skipif(GTLSCLIENT is None, reason="gtlsclient (ngtcp2-client) missing")


class RecordingApp:
    """``/upload`` reads until the end or a disconnect; ``/download`` streams
    forever.  Both record what they saw (the server runs in-process, so the
    test reads the same list)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.uploaded = 0
        self.downloaded = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/upload":
            await self._upload(receive, send)
        else:
            await self._download(receive, send)

    async def _upload(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.events.append("upload: http.disconnect")
                return
            self.uploaded += len(message.get("body", b""))
            if not message.get("more_body", False):
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"done"})
                return

    async def _download(self, receive: Any, send: Any) -> None:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.events.append("download: http.disconnect")

        watcher = asyncio.ensure_future(watch())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"d" * 65536,
                            "more_body": True})
                self.downloaded += 65536
        except OSError:
            self.events.append("download: send failed")
        await watcher


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def server(certs: CertSet, app: RecordingApp) -> Iterator[ThreadedServer]:
    with ThreadedServer(app, quic_bind=["127.0.0.1:0"], certfile=str(certs.cert),
                        keyfile=str(certs.key), lifespan="off", access_log=False,
                        quic_idle_timeout=2.0) as running:
        yield running


def all_zero(stats: dict[str, int]) -> bool:
    return stats["quic_sessions"] == 0 and stats["streams"] == 0 and stats["app_tasks"] == 0


def test_client_resets_mid_upload(server: ThreadedServer, app: RecordingApp,
                                  certs: CertSet) -> None:
    host, port = server.address(transport="udp")

    async def main() -> None:
        async with aioquic_connect(host, port, aioquic_configuration(str(certs.ca))) as client:
            stream_id = client.start_request("POST", "/upload", f"{host}:{port}", end=False)
            for _ in range(8):
                client.send_body(stream_id, b"u" * 65536, False)
                await asyncio.sleep(0.01)
            for _ in range(500):
                if app.uploaded > 0:
                    break
                await asyncio.sleep(0.01)
            client._quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            client.transmit()
            for _ in range(500):
                if app.events:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(main(), 30))
    assert app.uploaded > 0
    assert app.events == ["upload: http.disconnect"]
    stats = server.wait_statistics(all_zero, timeout=15)
    assert stats["requests"] == 1


def test_client_vanishes_mid_download(server: ThreadedServer, app: RecordingApp) -> None:
    host, port = server.address(transport="udp")
    client = subprocess.Popen(
        [str(GTLSCLIENT), "-q", "--exit-on-all-streams-close", "--max-stream-data-bidi-local=256K",
         "--max-data=1M", host, str(port), f"https://{host}:{port}/download"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: app.downloaded >= 1024 * 1024, 20, "1 MiB downloaded")
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(10)
    assert server.statistics()["app_tasks"] == 1
    stats = server.wait_statistics(all_zero, timeout=20)
    assert "download: http.disconnect" in app.events
    assert "download: send failed" in app.events
    assert stats["requests"] == 1
