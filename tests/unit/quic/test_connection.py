"""QuicSession and UdpEndpoint against a real aioquic client, in memory, on fake time.

Every test runs quicserve's real ``UdpEndpoint`` (router, sessions, flush,
timers) on a :class:`~tests.support.clock.FakeLoop` with the real ASGI
dispatcher and a test app; the client is aioquic's own ``QuicConnection`` +
``H3Connection``.  Only time and the socket are fake.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Callable, Coroutine

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.h3.connection import ErrorCode as H3ErrorCode
from aioquic.h3.connection import FrameType
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.packet import QuicErrorCode, QuicProtocolVersion

from quicserve.config import Config
from quicserve.protocols.h3 import MAX_GOAWAY_STREAM_ID
from quicserve.quic.connection import stream_send_buffered, stream_send_pending
from tests.support import apps
from tests.support.certs import CertSet
from quicserve.transport.udp import FLUSH_BUDGET, build_endpoint
from tests.support.quic_peers import CLIENT_ADDR, SERVER_ADDR, H3Client, QuicHarness


def run(coro: Coroutine[Any, Any, None], timeout: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def config(certs: CertSet, **options: Any) -> Config:
    return Config(quic_bind=("127.0.0.1:0",), certfile=str(certs.cert), keyfile=str(certs.key),
                  **options)


def harness(certs: CertSet, app: Any, **options: Any) -> QuicHarness:
    return QuicHarness(config=config(certs, **options), app=app, ca=str(certs.ca))


def done(client: H3Client, stream_id: int) -> Callable[[], bool]:
    return lambda: stream_id in client.responses and client.responses[stream_id].done


async def get(h: QuicHarness, client: H3Client, path: str = "/") -> int:
    """``client`` GETs ``path``; the exchange runs until the response is
    complete.  Returns the request's stream ID."""
    stream_id = client.request("GET", path)
    await h.run(done(client, stream_id))
    return stream_id


def session_count(h: QuicHarness) -> int:
    return len(h.endpoint.sessions)


# --------------------------------------------------------------------------
# Requests


def test_handshake_and_get(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello)
        client = h.client()
        stream_id = await get(h, client)
        response = client.response(stream_id)
        assert response.status == 200
        assert bytes(response.body) == b"hello"
        assert client.handshake is not None and client.handshake.alpn_protocol == "h3"
        assert h.stats.quic_sessions == 1 and session_count(h) == 1
        assert h.stats.requests == 1
    run(main())


def test_session_releases_handshake_streams_at_handshake_completion(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello)
        client = h.client()
        await get(h, client)
        (session,) = h.endpoint.sessions
        streams = session._quic._crypto_streams
        assert streams[tls.Epoch.INITIAL] is streams[tls.Epoch.HANDSHAKE]
    run(main())


def test_post_body_larger_than_the_stream_window_is_echoed(certs: CertSet) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)

    async def main() -> None:
        h = harness(certs, apps.echo, quic_max_stream_data=256 * 1024)
        client = h.client()
        stream_id = client.request("POST", "/", body=body)
        await h.run(done(client, stream_id), max_rounds=20000)
        assert client.response(stream_id).status == 200
        assert bytes(client.response(stream_id).body) == body
    run(main())


def test_empty_post(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.echo)
        client = h.client()
        stream_id = client.request("POST", "/", body=b"")
        await h.run(done(client, stream_id))
        assert client.response(stream_id).status == 200
        assert client.response(stream_id).body == b""
    run(main())


def test_slow_reader_keeps_the_client_within_one_stream_window(certs: CertSet) -> None:
    """Credit is returned only as the app reads: a client uploading to an app
    that does not read is held to the stream window."""
    window = 128 * 1024
    body = os.urandom(2 * 1024 * 1024)
    gate = asyncio.Event()

    async def main() -> None:
        h = harness(certs, apps.slow_reader(gate), quic_max_stream_data=window)
        client = h.client()
        stream_id = client.request("POST", "/", body=body)
        await h.run_for(2.0)
        sent = client.quic._streams[stream_id].sender.highest_offset
        assert window // 2 <= sent <= window + 1024
        gate.set()
        await h.run(done(client, stream_id), max_rounds=20000)
        assert bytes(client.response(stream_id).body) == body
    run(main())


def test_many_streams_on_one_connection(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.echo, quic_max_streams=16)
        client = h.client()
        ids = [client.request("POST", "/", body=str(i).encode()) for i in range(60)]
        await h.run(lambda: all(done(client, i)() for i in ids), max_rounds=5000)
        assert [bytes(client.response(i).body) for i in ids] == [str(i).encode() for i in range(60)]
    run(main())


def test_transfer_survives_loss_and_reordering(certs: CertSet) -> None:
    body = os.urandom(300 * 1024)

    async def main() -> None:
        h = harness(certs, apps.echo)
        client = h.client()
        await get(h, client)
        counter = iter(range(10**9))
        h.link.lose = lambda data, src, dst: next(counter) % 7 == 3
        h.link.reorder = True
        stream_id = client.request("POST", "/", body=body)
        await h.run(done(client, stream_id), max_rounds=20000)
        assert h.link.lost > 0
        assert bytes(client.response(stream_id).body) == body
    run(main())


# --------------------------------------------------------------------------
# Resets, disconnects, idle timeout


def test_client_reset_aborts_the_app_and_counters_return_to_zero(certs: CertSet) -> None:
    seen: list[str] = []

    async def main() -> None:
        h = harness(certs, apps.wait_for_disconnect(seen))
        client = h.client()
        stream_id = client.request("POST", "/", body=b"partial", end=False)
        await h.run(lambda: h.stats.app_tasks == 1 and seen == ["http.request"])
        client.quic.reset_stream(stream_id, H3ErrorCode.H3_REQUEST_CANCELLED)
        await h.run(lambda: h.stats.app_tasks == 0)
        assert seen == ["http.request", "http.disconnect"]
        assert h.stats.streams == 0
        (session,) = h.endpoint.sessions
        await h.run(lambda: session.active_streams == 0)
    run(main())


def test_idle_timeout_removes_the_session(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello, quic_idle_timeout=5.0)
        client = h.client()
        await get(h, client)
        started = h.clock.now
        # The client goes silent: nothing it sends arrives any more.
        h.link.lose = lambda data, src, dst: src == CLIENT_ADDR
        await h.run(lambda: session_count(h) == 0)
        assert h.clock.now - started >= 5.0
        assert h.stats.quic_sessions == 0
        assert h.endpoint.router_statistics().sessions == 0  # type: ignore[attr-defined]
        assert h.endpoint.router_statistics().connection_ids == 0  # type: ignore[attr-defined]
        assert h.clock.pending() == 0, "the session's timer must be cancelled"
    run(main())


def test_session_clock_on_its_own_base_drives_the_timers(certs: CertSet) -> None:
    """The endpoint's ``clock`` (time.monotonic in production, because
    uvloop's loop clock counts whole milliseconds) gives the sessions' ``now``;
    deadlines become loop timers by their distance from that clock.  With a
    clock 7 s ahead of the loop's, the idle timeout still fires 5 s after the
    client went silent -- not 7 s early or late."""
    async def main() -> None:
        h = harness(certs, apps.hello, quic_idle_timeout=5.0)
        h.endpoint = build_endpoint(loop=h.loop,  # type: ignore[arg-type]
                                    ctx=h.ctx, config=h.config, secrets=h.secrets,
                                    server=SERVER_ADDR, clock=lambda: h.clock.now + 7.0)
        h.endpoint.attach(h.transport, SERVER_ADDR)
        client = h.client()
        await get(h, client)
        h.link.lose = lambda data, src, dst: src == CLIENT_ADDR
        started = h.clock.now
        await h.run_for(4.5)
        assert session_count(h) == 1, "closed early: deadlines were read on the wrong base"
        await h.run(lambda: session_count(h) == 0)
        assert 5.0 <= h.clock.now - started <= 6.5
    run(main())


def test_connection_loss_mid_download_aborts_the_app(certs: CertSet) -> None:
    """A client that vanishes mid-download: the app's send fails, its task
    ends, and every counter returns to zero after the idle timeout."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(10000):
            await send({"type": "http.response.body", "body": b"x" * 16384, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        h = harness(certs, app, quic_idle_timeout=3.0)
        client = h.client()
        stream_id = client.request("GET", "/")
        await h.run(lambda: len(client.responses[stream_id].body) > 200000)
        h.link.lose = lambda data, src, dst: True
        await h.run(lambda: session_count(h) == 0 and h.stats.app_tasks == 0)
        assert h.stats.snapshot()["streams"] == 0
        assert h.stats.quic_sessions == 0
    run(main())


# --------------------------------------------------------------------------
# Timer and flush discipline


class CountingLoop:
    """Counts call_at calls made by the endpoint (wraps the fake loop)."""

    def __init__(self, h: QuicHarness) -> None:
        self.calls = 0
        original = h.loop.call_at

        def call_at(when: float, callback: Any, *args: Any) -> Any:
            self.calls += 1
            return original(when, callback, *args)

        h.loop.call_at = call_at  # type: ignore[method-assign]


def test_timer_is_rearmed_only_when_the_deadline_changes(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello)
        counter = CountingLoop(h)
        client = h.client()
        await get(h, client)
        await h.settle(5)
        (session,) = h.endpoint.sessions
        before, deadline = counter.calls, session.deadline()
        for _ in range(10):
            session.mark_dirty()
            h.loop.run_ready()
        assert session.deadline() == deadline
        assert counter.calls == before, "an unchanged deadline must not re-arm the timer"
        assert h.clock.pending() == 1, "exactly one timer per session"
        # Time passes, the ACK timer fires and the deadline moves on: the
        # timer follows it, and there is still exactly one.
        await h.run_for(1.0)
        assert session.deadline() != deadline
        assert counter.calls > before
        assert h.clock.pending() == 1
        assert h.clock.next_deadline() == session.deadline()
    run(main())


def test_one_flush_per_loop_turn(certs: CertSet) -> None:
    """Datagrams for several sessions arriving in one loop turn cause one
    flush callback, which serves every one of them."""
    async def main() -> None:
        h = harness(certs, apps.hello)
        clients = [h.client(address=("10.0.0.2", 50000 + i)) for i in range(4)]
        for client in clients:
            for data, addr in client.quic.datagrams_to_send(h.clock.now):
                h.link.send(data, client.address, (addr[0], addr[1]))
        received = h.link.receive(SERVER_ADDR)
        assert len(received) >= 4
        scheduled = h.loop.scheduled
        for data, src in received:
            h.endpoint.datagram_received(data, src)
        assert h.loop.scheduled - scheduled == 1, "one flush callback for the whole burst"
        h.loop.run_ready()
        answered = {dst for _, _, dst in h.link.log if dst != SERVER_ADDR}
        assert answered == {client.address for client in clients}
        ids = [(client, client.request("GET", "/")) for client in clients]
        await h.run(lambda: all(done(c, i)() for c, i in ids))
    run(main())


class RecordingTransport:
    """The harness's in-memory transport, noting how many datagrams each flush handed over."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.flushes: list[int] = []

    def send(self, datagrams: list[Any]) -> int:
        self.flushes.append(len(datagrams))
        return int(self.inner.send(datagrams))

    def close(self) -> None:
        self.inner.close()


def test_a_flush_takes_pacer_bursts_that_are_already_due(certs: CertSet) -> None:
    """aioquic's pacer releases one burst per call.  When building a burst
    takes longer than the pacer's gap (here the session clock moves 1 ms per
    reading), the same flush takes the next bursts, up to one GSO batch,
    instead of arming a timer that is already due; the download still arrives whole."""
    size = 2_000_000
    ticks = [0]

    def clock() -> float:
        ticks[0] += 1
        return h.clock.now + ticks[0] * 0.001

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * size})

    h = harness(certs, app)
    h.endpoint = build_endpoint(loop=h.loop,  # type: ignore[arg-type]
                                ctx=h.ctx, config=h.config, secrets=h.secrets,
                                server=SERVER_ADDR, clock=clock)
    recorder = RecordingTransport(h.transport)
    h.endpoint.attach(recorder, SERVER_ADDR)  # type: ignore[arg-type]

    async def main() -> None:
        client = h.client()
        stream_id = client.request("GET", "/")
        await h.run(done(client, stream_id), max_rounds=5000)
        assert len(client.response(stream_id).body) == size
        assert max(recorder.flushes) > 17, "no flush went past one pacer burst"
        assert max(recorder.flushes) <= FLUSH_BUDGET + 17
    run(main())


# --------------------------------------------------------------------------
# Shutdown


def goaway_ids(client: H3Client) -> list[int]:
    """Stream IDs named by GOAWAY frames on the server's control stream (ID 3)."""
    data = b"".join(e.data for e in client.quic_events
                    if isinstance(e, StreamDataReceived) and e.stream_id == 3)
    buf = Buffer(data=data)
    buf.pull_uint_var()  # stream type
    found = []
    while not buf.eof():
        frame_type, length = buf.pull_uint_var(), buf.pull_uint_var()
        payload = buf.pull_bytes(length)
        if frame_type == FrameType.GOAWAY:
            found.append(Buffer(data=payload).pull_uint_var())
    return found


def test_shutdown_sends_two_goaways_finishes_streams_then_closes(certs: CertSet) -> None:
    gate = asyncio.Event()

    async def main() -> None:
        h = harness(certs, apps.slow_reader(gate))
        client = h.client()
        first = client.request("POST", "/", body=b"in flight")
        await h.run(lambda: h.stats.app_tasks == 1)
        h.endpoint.shutdown()
        await h.settle(5)
        # RFC 9114's two steps: first the largest stream ID, which refuses
        # nothing; a round trip later the first stream not seen.
        assert goaway_ids(client) == [MAX_GOAWAY_STREAM_ID]
        between = client.request("POST", "/", body=b"between")
        await h.run(lambda: len(goaway_ids(client)) == 2)
        assert goaway_ids(client) == [MAX_GOAWAY_STREAM_ID, 8]
        late = client.request("POST", "/", body=b"too late")
        await h.run(done(client, late))
        assert client.response(late).reset_code == H3ErrorCode.H3_REQUEST_REJECTED
        assert client.terminated is None, "in-flight streams go on after GOAWAY"
        gate.set()
        await h.run(lambda: client.terminated is not None)
        assert bytes(client.response(first).body) == b"in flight"
        assert bytes(client.response(between).body) == b"between"
        assert client.terminated.error_code == H3ErrorCode.H3_NO_ERROR
        await h.run(lambda: session_count(h) == 0)
        await asyncio.wait_for(h.endpoint.wait_closed(), 1)
        assert h.transport.closed
    run(main())


def test_abort_closes_every_session_now(certs: CertSet) -> None:
    gate = asyncio.Event()

    async def main() -> None:
        h = harness(certs, apps.slow_reader(gate))
        client = h.client()
        client.request("POST", "/", body=b"x")
        await h.run(lambda: h.stats.app_tasks == 1)
        h.endpoint.abort()
        assert session_count(h) == 0 and h.stats.quic_sessions == 0
        await h.run(lambda: client.terminated is not None)
        assert client.terminated.error_code == H3ErrorCode.H3_NO_ERROR
        gate.set()  # the app now reads: http.disconnect, and it ends
        await h.run(lambda: h.stats.app_tasks == 0)
        assert h.stats.streams == 0
    run(main())


def test_new_initials_are_dropped_after_stop_accepting(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello)
        h.endpoint.stop_accepting()
        h.client()
        await h.settle(3)
        assert session_count(h) == 0
        assert h.stats.datagrams_dropped >= 1
    run(main())


def test_connection_cap(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello, quic_max_connections=1)
        first = h.client()
        second = h.client(address=("10.0.0.3", 40000))
        await h.settle(5)
        assert first.handshake is not None and second.handshake is None
        assert session_count(h) == 1
    run(main())


# --------------------------------------------------------------------------
# Address validation, resumption, 0-RTT, versions, migration


def test_retry_then_handshake(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello, quic_retry=True)
        client = h.client()
        stream_id = await get(h, client)
        assert client.response(stream_id).status == 200
        assert h.stats.retries == 1
    run(main())


def test_invalid_retry_token_closes_with_invalid_token(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello, quic_retry=True)
        client = h.client(connect=False)
        client.quic._peer_token = b"R" + os.urandom(60)  # a forged Retry token
        client.connect(SERVER_ADDR, h.clock.now)
        await h.run(lambda: client.terminated is not None)
        assert client.terminated.error_code == QuicErrorCode.INVALID_TOKEN
    run(main())


async def first_ticket(h: QuicHarness) -> Any:
    client = h.client()
    stream_id = client.request("GET", "/")
    await h.run(lambda: done(client, stream_id)() and bool(client.tickets))
    return client.tickets[0]


def test_resumption_and_0rtt_get(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.scope_json)
        ticket = await first_ticket(h)
        client = h.client(address=("10.0.0.2", 50001), connect=False, session_ticket=ticket)
        client.connect(SERVER_ADDR, h.clock.now)
        stream_id = client.request("GET", "/early")
        await h.run(done(client, stream_id))
        assert client.handshake.session_resumed and client.handshake.early_data_accepted
        assert client.response(stream_id).status == 200
    run(main())


def test_unsafe_0rtt_request_gets_425(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.echo)
        ticket = await first_ticket(h)
        client = h.client(address=("10.0.0.2", 50001), connect=False, session_ticket=ticket)
        client.connect(SERVER_ADDR, h.clock.now)
        early = client.request("POST", "/", body=b"unsafe")
        await h.run(done(client, early))
        assert client.handshake.early_data_accepted
        assert client.response(early).status == 425
        # The same request after the handshake is served.
        later = client.request("POST", "/", body=b"unsafe")
        await h.run(done(client, later))
        assert client.response(later).status == 200
    run(main())


def test_unsafe_0rtt_request_served_with_0rtt_unsafe(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.echo, quic_0rtt_unsafe=True)
        ticket = await first_ticket(h)
        client = h.client(address=("10.0.0.2", 50001), connect=False, session_ticket=ticket)
        client.connect(SERVER_ADDR, h.clock.now)
        early = client.request("POST", "/", body=b"unsafe")
        await h.run(done(client, early))
        assert client.handshake.early_data_accepted
        assert client.response(early).status == 200
        assert bytes(client.response(early).body) == b"unsafe"
    run(main())


def test_no_quic_0rtt_resumes_without_early_data(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello, quic_0rtt=False)
        ticket = await first_ticket(h)
        assert ticket.max_early_data_size is None
        client = h.client(address=("10.0.0.2", 50001), connect=False, session_ticket=ticket)
        client.connect(SERVER_ADDR, h.clock.now)
        stream_id = await get(h, client)
        assert client.handshake.session_resumed and not client.handshake.early_data_accepted
        assert client.response(stream_id).status == 200
    run(main())


def test_quic_v2(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello)
        client = h.client(supported_versions=[QuicProtocolVersion.VERSION_2])
        stream_id = await get(h, client)
        assert client.response(stream_id).status == 200
        long_headers = [d for d, src, _ in h.link.log if src == SERVER_ADDR and d[0] & 0x80]
        assert long_headers
        assert all(d[1:5] == (0x6B3343CF).to_bytes(4, "big") for d in long_headers)
    run(main())


def test_scope_client_follows_a_nat_rebinding(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.scope_json)
        client = h.client()
        first = await get(h, client)
        assert json.loads(client.response(first).body)["client"] == list(CLIENT_ADDR)
        h.link.rewrite_source[CLIENT_ADDR] = ("10.0.0.2", 50999)
        second = await get(h, client)
        assert json.loads(client.response(second).body)["client"] == ["10.0.0.2", 50999]
    run(main())


def test_router_follows_issued_and_retired_connection_ids(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello)
        client = h.client()
        await get(h, client)
        before = h.endpoint.router_statistics().connection_ids  # type: ignore[attr-defined]
        assert before > 1, "the CIDs announced in NEW_CONNECTION_ID must be routed"
        client.quic.change_connection_id()
        second = await get(h, client)
        assert client.response(second).status == 200
    run(main())


def test_stream_send_buffered_reads_unacknowledged_bytes(certs: CertSet) -> None:
    """Pins the aioquic private names connection.py reads."""
    async def main() -> None:
        h = harness(certs, apps.hello)
        client = h.client()
        await get(h, client)
        (session,) = h.endpoint.sessions
        quic = session._quic
        assert stream_send_buffered(quic, 999_996) == 0
        sid = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(sid, b"z" * 5000)
        assert stream_send_buffered(quic, sid) == 5000
        assert stream_send_pending(quic, sid) == 5000
        session.mark_dirty()
        h.loop.run_ready()  # the flush sends (some of) it; no ACK has come back yet
        assert stream_send_pending(quic, sid) < 5000
        assert stream_send_buffered(quic, sid) == 5000
        await h.run_for(1.0)
        assert stream_send_pending(quic, sid) == 0
        assert stream_send_buffered(quic, sid) == 0
    run(main())


def test_unknown_alpn_is_refused(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello)
        client = h.client(alpn=["h2"])
        await h.run(lambda: client.terminated is not None)
        assert client.handshake is None
    run(main())


# --------------------------------------------------------------------------
# Client certificates (--ca-certs / --verify-mode), as on TCP


def self_signed(tmp: Any) -> tuple[str, str]:
    """A client certificate no CA vouches for."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "stranger.pem", tmp / "stranger.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


CERTIFICATE_REQUIRED = 0x100 + 116
BAD_CERTIFICATE = 0x100 + 42


def test_required_client_certificate_is_verified_and_exposed(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello, ca_certs=str(certs.ca))
        client = h.client(certificate=(str(certs.client_cert), str(certs.client_key)))
        stream_id = await get(h, client)
        assert client.response(stream_id).status == 200
        (session,) = h.endpoint.sessions
        subject = session.connection_info().client_cert
        assert subject is not None
        assert any(key == "commonName" for rdn in subject for key, _ in rdn)
        assert client.tickets == [], "no resumption: it would skip the client certificate"
    run(main())


def test_required_client_certificate_missing_closes_the_connection(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello, ca_certs=str(certs.ca), verify_mode="required")
        client = h.client()
        client.request("GET", "/")
        await h.run(lambda: client.terminated is not None)
        assert client.terminated.error_code == CERTIFICATE_REQUIRED
        assert h.stats.requests == 0
    run(main())


def test_untrusted_client_certificate_is_refused(certs: CertSet, tmp_path: Any) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello, ca_certs=str(certs.ca), verify_mode="optional")
        client = h.client(certificate=self_signed(tmp_path))
        client.request("GET", "/")
        await h.run(lambda: client.terminated is not None)
        assert client.terminated.error_code == BAD_CERTIFICATE
        assert h.stats.requests == 0
    run(main())


def test_optional_client_certificate_may_be_absent(certs: CertSet) -> None:
    async def main() -> None:
        h = harness(certs, apps.hello, ca_certs=str(certs.ca), verify_mode="optional")
        client = h.client()
        stream_id = await get(h, client)
        assert client.response(stream_id).status == 200
        (session,) = h.endpoint.sessions
        assert session.connection_info().client_cert is None
    run(main())
