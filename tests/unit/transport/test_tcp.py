"""Loopback tests of ``quicserve.transport.tcp`` (and the TLS context of
``transport/tls.py``): real sockets on 127.0.0.1 / a unix socket, real TLS,
on both asyncio's loop and uvloop.

Adapters here are small real implementations of ``ByteProtocol`` (or the real
``H11Adapter``), never mocks: the tests assert on bytes and timings that come
out of the sockets.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile
from typing import Any, Awaitable, Callable

import pytest

from quicserve.errors import StreamClosed, TLSConfigError
from quicserve.interfaces import (
    ConnectionContext,
    ConnectionInfo,
    RequestHead,
    ResponseDefaults,
    Statistics,
    StreamSink,
)
from quicserve.protocols.base import ByteTransport, SwitchTo
from quicserve.protocols.h11 import H11Adapter
from quicserve.transport.tcp import TcpListener
from quicserve.transport.tls import create_ssl_context
from tests.support.bytelink import Options
from tests.support.certs import CertSet

LOOPS = ["asyncio", "uvloop"]


def run_on(kind: str, main: Callable[[], Awaitable[Any]]) -> Any:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(asyncio.wait_for(main(), 20))
    return asyncio.run(asyncio.wait_for(main(), 20))


class HelloStream:
    """Answers every request with 200 "hello" (as a task, like the ASGI layer)."""

    def __init__(self, head: RequestHead, sink: StreamSink) -> None:
        self.sink = sink
        self.task: asyncio.Task[None] | None = None

    def start(self, head: RequestHead, conn: ConnectionInfo) -> None:
        self.task = asyncio.ensure_future(self._respond(conn))

    def receive_body(self, data: bytes, more: bool) -> None:
        if data:
            self.sink.credit(len(data))

    def abort(self, reason: str) -> None:
        pass

    async def _respond(self, conn: ConnectionInfo) -> None:
        body = f"hello {conn.scheme} {conn.http_version}".encode()
        self.sink.send_head(200, [(b"content-length", b"%d" % len(body))])
        await self.sink.send_body(body, True)


class Recorder:
    """A ByteProtocol that records everything the transport tells it."""

    built: list[Recorder] = []
    #: Set whenever a Recorder is built (a fresh Event per test, see reset()).
    made: asyncio.Event | None = None

    @classmethod
    def reset(cls) -> None:
        cls.built.clear()
        cls.made = asyncio.Event()

    @classmethod
    async def first(cls) -> Recorder:
        """The first Recorder built in this test, once the server made it."""
        assert cls.made is not None
        await asyncio.wait_for(cls.made.wait(), 5)
        return cls.built[0]

    def __init__(self, *, ctx: ConnectionContext, transport: ByteTransport, conn: ConnectionInfo,
                 switch: SwitchTo | None = None) -> None:
        self.transport = transport
        self.conn = conn
        self.switch = switch
        self.data = bytearray()
        self.got_data = asyncio.Event()
        self.lost = asyncio.Event()
        self.timeouts: list[float] = []
        self.timed_out = asyncio.Event()
        Recorder.built.append(self)
        if Recorder.made is not None:
            Recorder.made.set()

    def data_received(self, data: bytes) -> SwitchTo | None:
        self.data += data
        self.got_data.set()
        return None

    def eof_received(self) -> None:
        pass

    def connection_lost(self) -> None:
        self.lost.set()

    def timeout(self) -> None:
        self.timeouts.append(asyncio.get_running_loop().time())
        self.timed_out.set()

    def shutdown(self) -> None:
        self.transport.close()


def make_ctx(**options: Any) -> ConnectionContext:
    return ConnectionContext(
        options=Options(**options),
        stream_factory=HelloStream,
        response_defaults=ResponseDefaults(server=b"quicserve", date=False, alt_svc=b'h3=":4433"'),
        stats=Statistics(),
        clock=lambda: asyncio.get_running_loop().time(),
    )


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


async def start_listener(*, ssl_context: ssl.SSLContext | None = None, adapters: Any = None,
                         handshake_timeout: float = 5.0, sock: socket.socket | None = None,
                         **options: Any) -> TcpListener:
    listener = TcpListener(
        sock=sock or listening_socket(), ctx=make_ctx(**options),
        adapters=adapters or {"http/1.1": H11Adapter},
        ssl_context=ssl_context, tls_handshake_timeout=handshake_timeout, keep_alive=5.0)
    await listener.start()
    return listener


async def recorded_connection() -> tuple[TcpListener, asyncio.StreamReader,
                                         asyncio.StreamWriter, Recorder]:
    """A listener whose connections are Recorders, and one client connection
    to it (1 MiB read limit) whose first bytes the Recorder has received."""
    Recorder.reset()
    listener = await start_listener(adapters={"http/1.1": Recorder})
    host, port = listener.addresses[0]  # type: ignore[misc]
    reader, writer = await asyncio.open_connection(host, port, limit=2**20)
    writer.write(b"go")
    recorder = await Recorder.first()
    await asyncio.wait_for(recorder.got_data.wait(), 5)
    return listener, reader, writer, recorder


def server_tls(certs: CertSet, **kwargs: Any) -> ssl.SSLContext:
    options: dict[str, Any] = dict(certfile=str(certs.cert), keyfile=str(certs.key), password=None,
                                   ca_certs=None, verify_mode=None, alpn=["h2", "http/1.1"],
                                   keylog_file=None)
    options.update(kwargs)
    return create_ssl_context(**options)


def client_tls(certs: CertSet, alpn: list[str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


async def http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   path: str = "/") -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    return head + await reader.readexactly(length)


# -- cleartext -----------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_cleartext_keep_alive_requests_and_connection_count(loop: str) -> None:
    async def main() -> None:
        listener = await start_listener()
        host, port = listener.addresses[0]  # type: ignore[misc]
        stats = listener.ctx.stats
        reader, writer = await asyncio.open_connection(host, port)
        first = await http_get(reader, writer)
        second = await http_get(reader, writer, "/again")
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"hello http 1.1")
        assert second.endswith(b"hello http 1.1")
        assert b"alt-svc" not in first  # cleartext: no Alt-Svc
        assert stats.tcp_connections == 1
        writer.close()
        await writer.wait_closed()
        listener.stop_accepting()
        await asyncio.wait_for(listener.wait_closed(), 5)
        assert stats.tcp_connections == 0

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_idle_keep_alive_connection_is_closed_after_the_timeout(loop: str) -> None:
    async def main() -> None:
        listener = await start_listener(keep_alive=0.3)
        host, port = listener.addresses[0]  # type: ignore[misc]
        reader, writer = await asyncio.open_connection(host, port)
        await http_get(reader, writer)
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        elapsed = asyncio.get_running_loop().time() - started
        assert 0.2 < elapsed < 3
        writer.close()
        listener.stop_accepting()
        await asyncio.wait_for(listener.wait_closed(), 5)

    run_on(loop, main)


def test_timer_rearm_later_and_earlier() -> None:
    """set_timeout only moves a deadline: a later deadline is honoured (the
    early loop timer re-arms), an earlier one reschedules."""

    async def main() -> None:
        Recorder.reset()
        listener = await start_listener(adapters={"http/1.1": Recorder})
        host, port = listener.addresses[0]  # type: ignore[misc]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"x")
        recorder = await Recorder.first()
        await asyncio.wait_for(recorder.got_data.wait(), 5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        recorder.transport.set_timeout(0.1)
        recorder.transport.set_timeout(0.4)  # later: the 0.1 s timer must not fire it
        await asyncio.wait_for(recorder.timed_out.wait(), 5)
        assert recorder.timeouts[0] - start >= 0.39
        recorder.timed_out.clear()
        start = loop.time()
        recorder.transport.set_timeout(5.0)
        recorder.transport.set_timeout(0.1)  # earlier: rescheduled
        await asyncio.wait_for(recorder.timed_out.wait(), 2)
        assert recorder.timeouts[1] - start < 1.0
        recorder.transport.set_timeout(0.05)
        recorder.transport.set_timeout(None)  # disarmed
        await asyncio.sleep(0.2)
        assert len(recorder.timeouts) == 2
        writer.close()
        listener.abort()
        await asyncio.wait_for(listener.wait_closed(), 5)

    run_on("asyncio", main)


@pytest.mark.parametrize("loop", LOOPS)
def test_write_backpressure_waits_until_the_client_reads(loop: str) -> None:
    async def main() -> None:
        listener, reader, writer, recorder = await recorded_connection()
        transport = recorder.transport
        chunk = b"z" * 65536
        written = 0

        async def writer_task() -> None:
            nonlocal written
            for _ in range(2000):  # at most 128 MiB: the buffer fills long before
                transport.write(chunk)
                written += len(chunk)
                await transport.wait_writable()

        task = asyncio.ensure_future(writer_task())
        await asyncio.sleep(0.5)
        assert not task.done()  # blocked: the client does not read
        blocked_at = written
        assert blocked_at < 64 * 2**20
        received = 0
        while received < blocked_at:
            received += len(await asyncio.wait_for(reader.read(2**20), 5))
        await asyncio.sleep(0.05)
        assert written > blocked_at  # reading let the writer go on
        writer.close()
        with pytest.raises(StreamClosed):
            await asyncio.wait_for(task, 5)
        listener.abort()
        await asyncio.wait_for(listener.wait_closed(), 5)

    run_on(loop, main)


def test_ipv6_connection_info() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main() -> None:
        Recorder.reset()
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            sock.bind(("::1", 0))
        except OSError:
            pytest.skip("no ::1")
        sock.listen(8)
        listener = await start_listener(sock=sock, adapters={"http/1.1": Recorder})
        host, port = listener.addresses[0]  # type: ignore[misc]
        assert host == "::1"
        reader, writer = await asyncio.open_connection("::1", port)
        writer.write(b"hi")
        recorder = await Recorder.first()
        await asyncio.wait_for(recorder.got_data.wait(), 5)
        assert recorder.conn.server == ("::1", port)
        assert recorder.conn.client is not None and recorder.conn.client[0] == "::1"
        writer.close()
        listener.abort()
        await asyncio.wait_for(listener.wait_closed(), 5)

    run_on("asyncio", main)


def test_unix_socket_connection_info() -> None:
    async def main() -> None:
        Recorder.reset()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            sock.listen(8)
            listener = await start_listener(sock=sock, adapters={"http/1.1": Recorder})
            assert listener.addresses == [path]
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"hi")
            await asyncio.wait_for((await Recorder.first()).got_data.wait(), 5)
            conn = Recorder.built[0].conn
            assert conn.client is None and conn.server == (path, None)
            assert conn.scheme == "http" and not conn.secure
            assert conn.connection_id.startswith("tcp-")
            writer.close()
            listener.abort()
            await asyncio.wait_for(listener.wait_closed(), 5)

    run_on("asyncio", main)


def test_h2c_prior_knowledge_is_handed_to_the_h2_adapter() -> None:
    async def main() -> None:
        Recorder.reset()
        listener = await start_listener(adapters={"http/1.1": H11Adapter, "h2": Recorder})
        host, port = listener.addresses[0]  # type: ignore[misc]
        reader, writer = await asyncio.open_connection(host, port)
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        writer.write(preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        await asyncio.sleep(0)
        await asyncio.wait_for((await Recorder.first()).got_data.wait(), 5)
        recorder = Recorder.built[0]
        assert recorder.switch is not None and recorder.switch.protocol == "h2"
        assert bytes(recorder.data).startswith(preface)
        assert recorder.conn.http_version == "2" and recorder.conn.protocol == "HTTP/2"
        writer.close()
        listener.abort()
        await asyncio.wait_for(listener.wait_closed(), 5)

    run_on("asyncio", main)


def test_shutdown_closes_idle_connections_and_wait_closed_returns() -> None:
    async def main() -> None:
        listener = await start_listener()
        host, port = listener.addresses[0]  # type: ignore[misc]
        reader, writer = await asyncio.open_connection(host, port)
        await http_get(reader, writer)
        listener.stop_accepting()
        listener.shutdown()
        await asyncio.wait_for(listener.wait_closed(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert listener.ctx.stats.tcp_connections == 0
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection(host, port), 2)

    run_on("asyncio", main)


# -- TLS --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("alpn,expected", [
    (["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), (None, "http/1.1"),
])
def test_tls_alpn_picks_the_adapter(loop: str, certs: CertSet, alpn: list[str] | None,
                                    expected: str) -> None:
    async def main() -> None:
        Recorder.reset()
        listener = await start_listener(ssl_context=server_tls(certs),
                                        adapters={"http/1.1": H11Adapter, "h2": Recorder})
        host, port = listener.addresses[0]  # type: ignore[misc]
        reader, writer = await asyncio.open_connection(
            host, port, ssl=client_tls(certs, alpn), server_hostname="localhost")
        selected = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        assert (selected or "http/1.1") == expected
        if expected == "h2":
            writer.write(b"frames")
            await asyncio.wait_for((await Recorder.first()).got_data.wait(), 5)
            conn = Recorder.built[0].conn
            assert (conn.http_version, conn.scheme, conn.secure) == ("2", "https", True)
        else:
            response = await http_get(reader, writer)
            assert response.endswith(b"hello https 1.1")
            assert b'alt-svc: h3=":4433"\r\n' in response  # TLS over TCP advertises HTTP/3
            assert not Recorder.built
        writer.close()
        listener.abort()
        await asyncio.wait_for(listener.wait_closed(), 5)

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_handshake_timeout_drops_a_silent_client(loop: str, certs: CertSet) -> None:
    async def main() -> None:
        listener = await start_listener(ssl_context=server_tls(certs), handshake_timeout=0.3)
        host, port = listener.addresses[0]  # type: ignore[misc]
        reader, writer = await asyncio.open_connection(host, port)  # TCP only, no ClientHello
        started = asyncio.get_running_loop().time()
        try:
            data = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            data = b""
        elapsed = asyncio.get_running_loop().time() - started
        assert data == b"" and 0.2 < elapsed < 4
        assert listener.ctx.stats.tcp_connections == 0  # never made: never counted
        # Another client is served meanwhile and after.
        r2, w2 = await asyncio.open_connection(host, port, ssl=client_tls(certs, ["http/1.1"]),
                                               server_hostname="localhost")
        assert (await http_get(r2, w2)).endswith(b"hello https 1.1")
        writer.close()
        w2.close()
        listener.abort()
        await asyncio.wait_for(listener.wait_closed(), 5)

    run_on(loop, main)


def test_tls_client_certificate_subject(certs: CertSet) -> None:
    async def main() -> None:
        Recorder.reset()
        context = server_tls(certs, ca_certs=str(certs.ca), verify_mode="required")
        listener = await start_listener(ssl_context=context, adapters={"http/1.1": Recorder})
        host, port = listener.addresses[0]  # type: ignore[misc]
        client = client_tls(certs, ["http/1.1"])
        client.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        reader, writer = await asyncio.open_connection(host, port, ssl=client,
                                                       server_hostname="localhost")
        writer.write(b"x")
        await asyncio.wait_for((await Recorder.first()).got_data.wait(), 5)
        subject = Recorder.built[0].conn.client_cert
        assert subject is not None
        assert any(key == "commonName" for rdn in subject for key, _ in rdn)
        writer.close()
        listener.abort()
        await asyncio.wait_for(listener.wait_closed(), 5)

    run_on("asyncio", main)


def test_tls_context_refuses_old_protocols(certs: CertSet) -> None:
    context = server_tls(certs)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_tls_config_errors_name_the_file(certs: CertSet, tmp_path: Any) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(TLSConfigError, match="missing.pem"):
        server_tls(certs, certfile=missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TLSConfigError, match="garbage.pem"):
        server_tls(certs, certfile=str(garbage))
    with pytest.raises(TLSConfigError, match="ca.pem|missing"):
        server_tls(certs, ca_certs=missing)
    with pytest.raises(TLSConfigError, match="CA file"):
        server_tls(certs, verify_mode="required")


# -- file-descriptor exhaustion -----------------------------------------------------------------

_EMFILE_SERVER = r"""
import asyncio, logging, os, resource, sys
sys.path.insert(0, {root!r})
from tests.unit.transport.test_tcp import start_listener

class Count(logging.Handler):
    records = 0
    def emit(self, record):
        Count.records += 1

async def main():
    logging.getLogger().addHandler(Count())
    logging.getLogger().setLevel(logging.WARNING)
    listener = await start_listener(keep_alive=30.0)
    nfds = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nfds + 8, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print(listener.addresses[0][1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print(Count.records, listener.ctx.stats.tcp_connections, flush=True)

if {loop!r} == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


@pytest.mark.parametrize("loop", LOOPS)
def test_out_of_file_descriptors_backs_off_and_recovers(loop: str, tmp_path: Any) -> None:
    """Past RLIMIT_NOFILE the listener neither spins nor floods the log, keeps
    serving the connections it has, and accepts again once descriptors free up."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    if loop == "uvloop":
        pytest.importorskip("uvloop")
    script = tmp_path / "server.py"
    script.write_text(_EMFILE_SERVER.format(root=str(Path(__file__).resolve().parents[3]), loop=loop))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(30)]
        # An early connection (accepted before the limit) is still served.
        clients[0].sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert clients[0].recv(1000).startswith(b"HTTP/1.1 200 OK")
        for client in clients:
            client.close()
        # libuv sheds (resets) connections that arrive while it is still out of
        # descriptors, asyncio's loop leaves them queued: allow a few attempts.
        for _attempt in range(10):
            late = socket.create_connection(("127.0.0.1", port), timeout=5)
            late.settimeout(8)
            try:
                late.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                answer = late.recv(1000)
            except ConnectionResetError:
                answer = b""
            finally:
                late.close()
            if answer:
                break
            time.sleep(0.2)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        out, err = proc.communicate("done\n", timeout=10)
        records = int(out.split()[0])
        assert records < 20, err[-2000:]
    finally:
        proc.kill()
        proc.wait()


def test_tls_encrypted_key_needs_the_right_password(certs: CertSet, tmp_path: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret")))
    context = server_tls(certs, keyfile=str(encrypted), password="s3cret")
    assert isinstance(context, ssl.SSLContext)
    with pytest.raises(TLSConfigError, match="encrypted.key"):
        server_tls(certs, keyfile=str(encrypted), password="wrong")


@pytest.mark.parametrize("loop", LOOPS)
def test_writes_of_one_turn_arrive_in_order_and_before_close(loop: str) -> None:
    """Writes are gathered per loop turn (one send instead of many): small
    and large writes keep their order, and close() in the same turn sends
    them all before the FIN."""
    async def main() -> None:
        listener, reader, writer, recorder = await recorded_connection()
        transport = recorder.transport
        expected = bytearray()
        for i in range(300):  # small ones, a large one (sent at once), small ones again
            piece = b"%d," % i if i != 150 else b"L" * 100_000
            transport.write(piece)
            expected += piece
        transport.close()
        received = await asyncio.wait_for(reader.read(), 5)  # up to EOF
        assert received == bytes(expected)
        writer.close()
        listener.abort()
        await asyncio.wait_for(listener.wait_closed(), 5)

    run_on(loop, main)
