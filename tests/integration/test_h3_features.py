"""One test per QUIC feature, each with a real client over real UDP.

Retry, resumption and 0-RTT, 425 for unsafe 0-RTT requests, key update, a
client port change mid-download, QUIC v2, ChaCha20 only, stateless reset,
Version Negotiation, and silence for an undersized Initial.  The server is
quicserve's real ``Server`` in-process (:class:`ThreadedServer`); the clients
are ngtcp2's ``gtlsclient``, aioquic's asyncio client, and raw UDP sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any, Iterator

import pytest
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.tls import SessionTicket

from quicserve.log import error_logger
from quicserve.quic.cid import StatelessResetKeys
from quicserve.quic.tokens import QuicSecrets
from tests.support.certs import CertSet
from tests.support.quic_packets import long_header
from tests.support.quic_peers import (
    CHACHA20_ONLY,
    GTLSCLIENT,
    Response,
    aioquic_configuration,
    aioquic_connect,
    gtlsclient,
)
from tests.support.server import ThreadedServer

pytestmark = pytest.mark.skipif(GTLSCLIENT is None, reason="gtlsclient (ngtcp2-client) missing")

STREAM_10MIB = "/stream?n=160&size=65536"


def stream_body(n: int, size: int) -> bytes:
    return b"".join(bytes([0x61 + i % 26]) * size for i in range(n))


def only_file(directory: Path) -> bytes:
    (path,) = list(directory.iterdir())
    return path.read_bytes()


def start(certs: CertSet, **options: Any) -> ThreadedServer:
    return ThreadedServer(quic_bind=["127.0.0.1:0"], certfile=str(certs.cert),
                          keyfile=str(certs.key), access_log=False, **options)


@pytest.fixture(scope="module")
def server(certs: CertSet) -> Iterator[ThreadedServer]:
    with start(certs) as running:
        yield running


def udp(server: ThreadedServer) -> tuple[str, int]:
    host, port = server.address(transport="udp")
    return str(host), int(port)


class DebugLog(logging.Handler):
    """Collects quicserve.error DEBUG lines emitted while it is installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> DebugLog:
        self._level = error_logger.level
        error_logger.setLevel(logging.DEBUG)
        error_logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        error_logger.removeHandler(self)
        error_logger.setLevel(self._level)


def run(coro: Any, timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# --------------------------------------------------------------------------
# Address validation


def test_retry_is_observed_by_the_client(certs: CertSet, tmp_path: Path) -> None:
    with start(certs, quic_retry=True) as server:
        host, port = udp(server)
        result = gtlsclient(host, port, ["/hello"], "--download", str(tmp_path), quiet=False)
        assert result.returncode == 0, result.stdout[-2000:]
        assert "type=Retry" in result.stdout
        assert only_file(tmp_path) == b"hello"
        assert server.statistics()["retries"] >= 1


async def aioquic_get_with_token(ca: str, host: str, port: int,
                                 token: bytes = b"") -> tuple[Any, list[bytes]]:
    """GET /hello on an aioquic connection presenting ``token`` in its Initial;
    the response and the NEW_TOKEN tokens the server gave."""
    tokens: list[bytes] = []
    configuration = aioquic_configuration(ca)
    configuration.token = token
    async with aioquic_connect(host, port, configuration, token_handler=tokens.append) as client:
        response = await client.request("GET", "/hello", f"{host}:{port}")
        for _ in range(100):
            if tokens:
                break
            await asyncio.sleep(0.01)
    return response, tokens


def test_new_token_lets_a_returning_client_skip_the_retry(certs: CertSet) -> None:
    """With --quic-retry the first connection pays the Retry and is given a
    NEW_TOKEN token; the next connection presenting it is served without a
    Retry; a tampered token counts as none (Retry again, still served)."""
    ca = str(certs.ca)
    with start(certs, quic_retry=True) as server:
        host, port = udp(server)
        response, tokens = run(aioquic_get_with_token(ca, host, port))
        assert response.status == 200 and len(tokens) == 1
        assert server.statistics()["retries"] == 1
        response, again = run(aioquic_get_with_token(ca, host, port, tokens[0]))
        assert response.status == 200 and bytes(response.body) == b"hello"
        assert server.statistics()["retries"] == 1, "the token did not spare the Retry"
        assert len(again) == 1 and again[0] != tokens[0]  # (a fresh one for next time)
        tampered = bytearray(tokens[0])
        tampered[-1] ^= 1
        response, _ = run(aioquic_get_with_token(ca, host, port, bytes(tampered)))
        assert response.status == 200
        assert server.statistics()["retries"] == 2


def test_no_new_token_without_retry(server: ThreadedServer, certs: CertSet) -> None:
    host, port = udp(server)
    response, tokens = run(aioquic_get_with_token(str(certs.ca), host, port))
    assert response.status == 200 and tokens == []


# --------------------------------------------------------------------------
# Resumption and 0-RTT


def test_resumption_and_0rtt_with_gtlsclient(server: ThreadedServer, tmp_path: Path) -> None:
    host, port = udp(server)
    files = ["--session-file", str(tmp_path / "session"), "--tp-file", str(tmp_path / "tp")]
    first = gtlsclient(host, port, ["/hello"], *files)
    assert first.returncode == 0, first.stdout[-2000:]
    assert (tmp_path / "session").stat().st_size > 0
    download = tmp_path / "dl"
    download.mkdir()
    with DebugLog() as debug:
        second = gtlsclient(host, port, ["/hello"], *files, "--download", str(download),
                            quiet=False)
    assert second.returncode == 0, second.stdout[-2000:]
    assert " 0RTT STREAM" in second.stdout, "the client sent its request in 0-RTT"
    assert any("resumed=True, 0-RTT=True" in line for line in debug.lines), debug.lines
    assert only_file(download) == b"hello"


def test_unsafe_0rtt_request_from_gtlsclient_gets_425(server: ThreadedServer,
                                                      tmp_path: Path) -> None:
    host, port = udp(server)
    files = ["--session-file", str(tmp_path / "session"), "--tp-file", str(tmp_path / "tp")]
    assert gtlsclient(host, port, ["/hello"], *files).returncode == 0
    download = tmp_path / "dl"
    download.mkdir()
    result = gtlsclient(host, port, ["/echo"], *files, "-m", "POST", "--download", str(download))
    assert result.returncode == 0, result.stdout[-2000:]
    assert only_file(download) == b"Too Early\n"


async def aioquic_0rtt_post(ca: str, host: str, port: int, body: bytes) -> tuple[Any, bool]:
    """POST in 0-RTT on a second aioquic connection; the response and
    whether the server accepted the early data."""
    tickets: list[SessionTicket] = []
    authority = f"{host}:{port}"
    async with aioquic_connect(host, port, aioquic_configuration(ca),
                               session_ticket_handler=tickets.append) as client:
        await client.request("GET", "/hello", authority)
        for _ in range(100):
            if tickets:
                break
            await asyncio.sleep(0.01)
    assert tickets, "the server sent no session ticket"
    configuration = aioquic_configuration(ca)
    configuration.session_ticket = tickets[0]
    async with aioquic_connect(host, port, configuration, wait_connected=False) as client:
        response = await client.request("POST", "/echo", authority, body=body)
        return response, client._quic.tls.early_data_accepted


def test_unsafe_0rtt_request_from_aioquic_gets_425(server: ThreadedServer,
                                                   certs: CertSet) -> None:
    host, port = udp(server)
    response, accepted = run(aioquic_0rtt_post(str(certs.ca), host, port, b"unsafe"))
    assert accepted
    assert response.status == 425
    assert bytes(response.body) == b"Too Early\n"


def test_unsafe_0rtt_request_served_with_0rtt_unsafe(certs: CertSet) -> None:
    with start(certs, quic_0rtt_unsafe=True) as server:
        host, port = udp(server)
        response, accepted = run(aioquic_0rtt_post(str(certs.ca), host, port, b"unsafe"))
    assert accepted
    assert response.status == 200
    assert bytes(response.body) == b"unsafe"


# --------------------------------------------------------------------------
# Keys, paths, versions, ciphers


def test_key_update_mid_transfer(server: ThreadedServer, tmp_path: Path) -> None:
    host, port = udp(server)
    result = gtlsclient(host, port, [STREAM_10MIB], "--key-update=50ms", "--download",
                        str(tmp_path), quiet=False)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "key update confirmed" in result.stdout
    expected = hashlib.sha256(stream_body(160, 65536)).hexdigest()
    assert hashlib.sha256(only_file(tmp_path)).hexdigest() == expected


def test_client_port_change_mid_download_gtlsclient(server: ThreadedServer,
                                                    tmp_path: Path) -> None:
    """ngtcp2 moves to a new local port (and probes it) mid-download."""
    host, port = udp(server)
    result = gtlsclient(host, port, [STREAM_10MIB], "--change-local-addr=50ms",
                        "--download", str(tmp_path), quiet=False)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Local address is now" in result.stdout
    assert "path has been validated" in result.stdout
    expected = hashlib.sha256(stream_body(160, 65536)).hexdigest()
    assert hashlib.sha256(only_file(tmp_path)).hexdigest() == expected


def test_client_port_change_mid_download_aioquic(server: ThreadedServer,
                                                 certs: CertSet) -> None:
    """aioquic's client rebinds to a new UDP socket (a new port) mid-download,
    switches to a fresh connection ID and pings from there: the server follows
    the new path and the file arrives intact."""
    host, port = udp(server)

    async def main() -> tuple[bytes, tuple[Any, ...], tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        async with aioquic_connect(host, port, aioquic_configuration(str(certs.ca))) as client:
            download = asyncio.ensure_future(
                client.request("GET", STREAM_10MIB, f"{host}:{port}"))
            stream_id = 0
            for _ in range(2000):
                if len(client.responses.get(stream_id, Response()).body) > 1024 * 1024:
                    break
                await asyncio.sleep(0.005)
            old = client._transport.get_extra_info("sockname")
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
            previous = client._transport
            transport, _ = await loop.create_datagram_endpoint(lambda: client, sock=sock)
            previous.close()
            client.change_connection_id()
            await client.ping()
            response = await download
            new = transport.get_extra_info("sockname")
        transport.close()
        return bytes(response.body), old, new

    body, old, new = run(main())
    assert old[1] != new[1]
    assert hashlib.sha256(body).digest() == hashlib.sha256(stream_body(160, 65536)).digest()


def test_quic_v2_with_aioquic(server: ThreadedServer, certs: CertSet) -> None:
    host, port = udp(server)

    async def main() -> tuple[Any, int]:
        configuration = aioquic_configuration(
            str(certs.ca), supported_versions=[QuicProtocolVersion.VERSION_2])
        async with aioquic_connect(host, port, configuration) as client:
            response = await client.request("GET", "/hello", f"{host}:{port}")
            return response, client._quic._version

    response, version = run(main())
    assert version == QuicProtocolVersion.VERSION_2
    assert bytes(response.body) == b"hello"


def test_compatible_version_negotiation_v1_to_v2(server: ThreadedServer,
                                                 certs: CertSet) -> None:
    """A client that starts in v1 but prefers v2 is upgraded (RFC 9368)."""
    host, port = udp(server)

    async def main() -> tuple[Any, int]:
        configuration = aioquic_configuration(
            str(certs.ca), original_version=QuicProtocolVersion.VERSION_1,
            supported_versions=[QuicProtocolVersion.VERSION_2, QuicProtocolVersion.VERSION_1])
        async with aioquic_connect(host, port, configuration) as client:
            response = await client.request("GET", "/hello", f"{host}:{port}")
            return response, client._quic._version

    response, version = run(main())
    assert bytes(response.body) == b"hello"
    assert version in (QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2)


def test_chacha20_only(server: ThreadedServer, tmp_path: Path) -> None:
    host, port = udp(server)
    result = gtlsclient(host, port, ["/hello"], f"--ciphers={CHACHA20_ONLY}", "--download",
                        str(tmp_path), quiet=False)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Negotiated cipher suite is CHACHA20-POLY1305" in result.stdout
    assert only_file(tmp_path) == b"hello"


# --------------------------------------------------------------------------
# Raw datagrams


def exchange(address: tuple[str, int], datagram: bytes, wait: float) -> bytes | None:
    """Send one datagram; the first reply within ``wait`` seconds, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        sock.sendto(datagram, address)
        try:
            data, _ = sock.recvfrom(65535)
        except socket.timeout:
            return None
        return data


def test_stateless_reset_for_an_unknown_connection_id(certs: CertSet, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(os.urandom(32).hex())
    secret_file.chmod(0o600)
    keys = StatelessResetKeys(QuicSecrets.load(str(secret_file)).reset_key)
    dcid = os.urandom(8)
    packet = bytes([0x40 | 0x01]) + dcid + os.urandom(51)
    with start(certs, quic_secret_file=str(secret_file)) as server:
        reply = exchange(udp(server), packet, 2.0)
        assert server.statistics()["stateless_resets"] == 1
    assert reply is not None
    assert len(reply) < len(packet)
    assert reply[0] & 0xC0 == 0x40, "a stateless reset looks like a short-header packet"
    assert reply[-16:] == keys.token(dcid)


def test_version_negotiation_for_an_unknown_version(server: ThreadedServer) -> None:
    dcid, scid = os.urandom(8), os.urandom(8)
    packet = long_header(version=0x1A2A3A4A, dcid=dcid, scid=scid, size=1200)
    reply = exchange(udp(server), packet, 2.0)
    assert reply is not None
    assert reply[0] & 0x80
    assert reply[1:5] == b"\x00\x00\x00\x00"
    assert reply[6:6 + reply[5]] == scid, "the reply echoes the client's SCID as DCID"
    offset = 6 + reply[5]
    offset += 1 + reply[offset]
    versions = {struct.unpack("!I", reply[i:i + 4])[0] for i in range(offset, len(reply), 4)}
    assert {QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2} <= versions


def test_no_reply_to_an_undersized_initial(server: ThreadedServer) -> None:
    dropped = server.statistics()["datagrams_dropped"]
    packet = long_header(version=1, dcid=os.urandom(8), scid=os.urandom(8), size=1000)
    assert exchange(udp(server), packet, 0.5) is None
    assert server.statistics()["datagrams_dropped"] == dropped + 1


# --------------------------------------------------------------------------
# Key log and qlog


def test_sslkeylogfile_is_honoured_for_quic(certs: CertSet, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    keylog = tmp_path / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    with start(certs) as server:
        host, port = udp(server)
        assert gtlsclient(host, port, ["/hello"]).returncode == 0
    labels = {line.split()[0] for line in keylog.read_text().splitlines() if line.strip()}
    assert {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"} <= labels


def test_qlog_file_per_connection(certs: CertSet, tmp_path: Path) -> None:
    qlogs = tmp_path / "qlog"
    qlogs.mkdir()
    with start(certs, quic_qlog_dir=str(qlogs)) as server:
        host, port = udp(server)
        assert gtlsclient(host, port, ["/hello"]).returncode == 0
        server.wait_statistics(lambda stats: stats["quic_sessions"] == 0, timeout=10)
    (qlog,) = list(qlogs.iterdir())
    assert qlog.suffix == ".qlog"
    assert '"qlog_version"' in qlog.read_text()
