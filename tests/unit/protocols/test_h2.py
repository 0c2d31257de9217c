"""Sans-IO tests of H2Adapter: a real h2 client state machine over an in-memory link.

The stream side is a RecordingHandler (a real StreamHandler with no app), so
each test decides when body bytes are credited and what goes back; the last
tests run the real ASGI dispatcher behind the adapter.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.errors import ErrorCodes
import pytest
from h2.errors import ErrorCodes

from quicserve.errors import StreamClosed
from quicserve.interfaces import RequestHead, ResetReason, ResponseDefaults
from quicserve.protocols.base import SwitchTo
from quicserve.protocols.h2 import H2Adapter
from tests.support.bytelink import ByteLink, FakeClock, make_conn, make_context, run_now
from tests.support.h2_peers import H2Client, RecordingFactory, frame, make_settings


@dataclass
class Pair:
    link: ByteLink
    adapter: H2Adapter
    client: H2Client
    factory: RecordingFactory
    clock: FakeClock


def connect(*, exchange: bool = True, secure: bool = True, auto_ack: bool = True,
            client_settings: dict[int, int] | None = None,
            defaults: ResponseDefaults | None = None, credit_on_receive: bool = False,
            **options: Any) -> Pair:
    clock = FakeClock()
    link = ByteLink(clock)
    factory = RecordingFactory(credit_on_receive=credit_on_receive)
    ctx = make_context(factory, clock=clock, defaults=defaults, **options)
    adapter = H2Adapter(ctx=ctx, transport=link, conn=make_conn(secure=secure))
    link.attach(adapter)
    client = H2Client(link, auto_ack=auto_ack, settings=client_settings)
    if exchange:
        client.exchange()
    return Pair(link, adapter, client, factory, clock)


async def settle() -> None:
    """Let the loop run what is ready: tasks, then the adapter's end-of-turn flush."""
    for _ in range(3):
        await asyncio.sleep(0)


# -- connection start ------------------------------------------------------------------


def test_settings_are_advertised_from_options() -> None:
    pair = connect(h2_max_concurrent_streams=7, h2_initial_window_size=5000,
                   h2_max_frame_size=32768, h2_max_header_list_size=9000)
    remote = pair.client.conn.remote_settings
    assert remote.max_concurrent_streams == 7
    assert remote.initial_window_size == 5000
    assert remote.max_frame_size == 32768
    assert remote.max_header_list_size == 9000
    assert remote.enable_connect_protocol == 1


def test_connection_window_is_enlarged_beyond_the_default() -> None:
    pair = connect(h2_initial_window_size=262144)
    assert pair.client.conn.outbound_flow_control_window == 4 * 262144


# -- requests and responses ---------------------------------------------------------------


def test_get_is_started_with_an_http2_connection_info() -> None:
    pair = connect()
    pair.client.request("GET", "/hello?x=1", headers=[(b"accept", b"*/*")])
    pair.client.exchange()
    handler = pair.factory.last
    assert handler.head.method == "GET"
    assert handler.head.target == b"/hello?x=1"
    assert (b"host", b"example.com") in handler.head.headers
    assert handler.ended and handler.body == b""
    assert handler.conn is not None
    assert (handler.conn.http_version, handler.conn.protocol) == ("2", "HTTP/2")
    assert "http.response.trailers" in handler.conn.extensions


def test_response_head_and_body_reach_the_client() -> None:
    pair = connect(defaults=ResponseDefaults(server=b"quicserve", date=False, alt_svc=b'h3=":443"'))
    stream_id = pair.client.request("GET", "/")
    pair.client.exchange()
    sink = pair.factory.last.sink
    sink.send_head(200, [(b"content-type", b"text/plain")])
    run_now(sink.send_body(b"hello", True))
    pair.client.exchange()
    response = pair.client.responses[stream_id]
    assert response.status == 200
    assert bytes(response.data) == b"hello"
    assert response.ended
    assert response.header(b"server") == b"quicserve"
    assert response.header(b"alt-svc") == b'h3=":443"'


def test_no_alt_svc_on_cleartext() -> None:
    pair = connect(secure=False, defaults=ResponseDefaults(date=False, alt_svc=b'h3=":443"'))
    stream_id = pair.client.request("GET", "/", scheme=b"http")
    pair.client.exchange()
    sink = pair.factory.last.sink
    sink.send_head(204, [])
    run_now(sink.send_body(b"", True))
    pair.client.exchange()
    assert pair.client.responses[stream_id].header(b"alt-svc") is None


def test_connection_specific_response_headers_are_dropped() -> None:
    pair = connect()
    stream_id = pair.client.request("GET", "/")
    pair.client.exchange()
    sink = pair.factory.last.sink
    sink.send_head(200, [(b"connection", b"keep-alive"), (b"transfer-encoding", b"chunked"),
                         (b"x-kept", b"1"), (b"x-padded", b"  value\t")])
    run_now(sink.send_body(b"ok", True))
    pair.client.exchange()
    response = pair.client.responses[stream_id]
    assert response.status == 200 and response.header(b"x-kept") == b"1"
    assert response.header(b"connection") is None
    assert response.header(b"transfer-encoding") is None
    assert response.header(b"x-padded") == b"value", "RFC 9113 8.2.1: no surrounding whitespace"


def test_post_body_delivered_one_byte_at_a_time() -> None:
    pair = connect(credit_on_receive=True)
    body = bytes(range(256)) * 20
    pair.client.request("POST", "/upload", body=body)
    pair.client.exchange(bytewise=True, rounds=200)
    handler = pair.factory.last
    assert bytes(handler.body) == body
    assert handler.ended


def test_whole_exchange_one_byte_at_a_time() -> None:
    pair = connect(exchange=False)
    stream_id = pair.client.request("GET", "/")
    pair.client.exchange(bytewise=True)
    sink = pair.factory.last.sink
    sink.send_head(200, [])
    run_now(sink.send_body(b"x" * 100, True))
    pair.client.exchange(bytewise=True)
    assert bytes(pair.client.responses[stream_id].data) == b"x" * 100


def test_streaming_head_is_written_at_once() -> None:
    """No Content-Length: the body may be long in coming, so the head goes now."""
    pair = connect()
    stream_id = pair.client.request("GET", "/")
    pair.client.exchange()
    pair.factory.last.sink.send_head(200, [(b"content-type", b"text/event-stream")])
    pair.client.exchange()
    assert pair.client.responses[stream_id].status == 200


def test_sized_head_leaves_with_the_first_data_in_one_write() -> None:
    pair = connect()
    stream_id = pair.client.request("GET", "/")
    pair.client.exchange()
    sink = pair.factory.last.sink
    sink.send_head(200, [(b"content-length", b"2")])
    assert pair.link.take() == b"", "held for the body"
    run_now(sink.send_body(b"ok", True))
    pair.client.receive(pair.link.take())
    response = pair.client.responses[stream_id]
    assert response.status == 200 and bytes(response.data) == b"ok" and response.ended


class CountingLink(ByteLink):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def test_responses_of_one_loop_turn_leave_in_one_write() -> None:
    clock = FakeClock()
    link = CountingLink(clock)
    factory = RecordingFactory()
    scheduled: list[Any] = []
    adapter = H2Adapter(ctx=make_context(factory, clock=clock), transport=link,
                        conn=make_conn(), schedule=scheduled.append)
    link.attach(adapter)
    client = H2Client(link)
    ids = [client.request("GET", f"/{n}") for n in range(3)]
    client.exchange()
    before = link.writes
    for handler in factory.handlers:
        handler.sink.send_head(200, [(b"content-length", b"2")])
        run_now(handler.sink.send_body(b"ok", True))
    assert link.writes == before and len(scheduled) == 1, "one flush for the whole turn"
    scheduled.pop()()
    assert link.writes == before + 1
    client.receive(link.take())
    assert all(bytes(client.responses[i].data) == b"ok" for i in ids)


def test_a_turn_of_bulk_data_goes_to_the_transport_past_the_high_water_mark() -> None:
    """Deferring writes must not hide bytes from the transport's backpressure."""
    clock = FakeClock()
    link = CountingLink(clock)
    factory = RecordingFactory()
    scheduled: list[Any] = []
    adapter = H2Adapter(ctx=make_context(factory, clock=clock, stream_high_water=50000),
                        transport=link, conn=make_conn(), schedule=scheduled.append)
    link.attach(adapter)
    client = H2Client(link, settings=make_settings(initial_window_size=2**31 - 1))
    client.conn.increment_flow_control_window(2**31 - 1 - 65535)
    client.request("GET", "/")
    client.exchange()
    sink = factory.last.sink
    sink.send_head(200, [])
    before = len(link.written)
    for _ in range(10):
        run_now(sink.send_body(b"d" * 20000, False))
    assert len(link.written) - before >= 150000, "most of the 200 kB reached the transport"


def test_informational_head_then_final() -> None:
    pair = connect()
    stream_id = pair.client.request("GET", "/")
    pair.client.exchange()
    sink = pair.factory.last.sink
    sink.send_head(103, [(b"link", b"</style.css>; rel=preload")])
    pair.client.exchange()
    assert pair.client.responses[stream_id].informational
    sink.send_head(200, [])
    run_now(sink.send_body(b"", True))
    pair.client.exchange()
    response = pair.client.responses[stream_id]
    assert response.status == 200 and response.ended


def test_trailers_end_the_stream() -> None:
    pair = connect()
    stream_id = pair.client.request("GET", "/", headers=[(b"te", b"trailers")])
    pair.client.exchange()
    sink = pair.factory.last.sink
    sink.send_head(200, [(b"trailer", b"x-checksum")])
    run_now(sink.send_body(b"data", False))
    sink.send_trailers([(b"x-checksum", b"abc")])
    pair.client.exchange()
    response = pair.client.responses[stream_id]
    assert bytes(response.data) == b"data"
    assert response.trailers == [(b"x-checksum", b"abc")]
    assert response.ended


def test_body_after_end_raises_stream_closed() -> None:
    pair = connect()
    pair.client.request("GET", "/")
    pair.client.exchange()
    sink = pair.factory.last.sink
    sink.send_head(200, [])
    run_now(sink.send_body(b"", True))
    with pytest.raises(StreamClosed):
        run_now(sink.send_body(b"more", False))


def test_app_reset_sends_rst_stream() -> None:
    pair = connect()
    stream_id = pair.client.request("GET", "/")
    pair.client.exchange()
    sink = pair.factory.last.sink
    sink.send_head(200, [])
    run_now(sink.send_body(b"partial", False))
    sink.reset(ResetReason.APP_ERROR)
    pair.client.exchange()
    assert pair.client.responses[stream_id].reset == ErrorCodes.INTERNAL_ERROR


def test_complete_response_stops_the_rest_of_the_upload() -> None:
    """RFC 9113 8.1: a response sent before the request ended -> RST_STREAM NO_ERROR."""
    pair = connect()
    stream_id = pair.client.request("POST", "/", body=b"abc", end=False)
    pair.client.exchange()
    sink = pair.factory.last.sink
    sink.send_head(413, [])
    run_now(sink.send_body(b"", True))
    pair.client.exchange()
    response = pair.client.responses[stream_id]
    assert response.status == 413
    assert response.reset == ErrorCodes.NO_ERROR


# -- flow control -------------------------------------------------------------------------


def test_receive_window_reopens_only_when_the_app_consumes() -> None:
    pair = connect(h2_initial_window_size=1000)
    body = b"a" * 3000
    pair.client.request("POST", "/", body=body)
    pair.client.exchange()
    handler = pair.factory.last
    assert len(handler.body) == 1000, "the client may send one window and no more"
    pair.client.exchange()
    assert len(handler.body) == 1000, "nothing credited: the window stays shut"
    handler.sink.credit(1000)
    pair.client.exchange()
    assert len(handler.body) == 2000
    handler.sink.credit(1000)
    pair.client.exchange()
    handler.sink.credit(1000)
    pair.client.exchange()
    assert bytes(handler.body) == body and handler.ended


def test_send_body_waits_on_zero_window_and_resumes_on_window_update() -> None:
    async def main() -> None:
        pair = connect(auto_ack=False, client_settings=make_settings(initial_window_size=100))
        stream_id = pair.client.request("GET", "/")
        pair.client.exchange()
        sink = pair.factory.last.sink
        sink.send_head(200, [])
        task = asyncio.create_task(sink.send_body(b"z" * 250, True))
        await settle()
        pair.client.exchange()
        response = pair.client.responses[stream_id]
        assert len(response.data) == 100 and not task.done()
        assert pair.link.timer is not None, "a stalled stream arms the timer"
        for _ in range(3):
            pair.client.conn.acknowledge_received_data(100, stream_id)
            pair.client.exchange()
            await settle()
            pair.client.exchange()
        await asyncio.wait_for(task, 1)
        assert bytes(response.data) == b"z" * 250 and response.ended

    asyncio.run(main())


def test_send_body_waits_for_the_transport() -> None:
    async def main() -> None:
        pair = connect()
        pair.client.request("GET", "/")
        pair.client.exchange()
        sink = pair.factory.last.sink
        sink.send_head(200, [])
        pair.link.block_writes()
        task = asyncio.create_task(sink.send_body(b"x", False))
        await settle()
        assert not task.done()
        pair.link.unblock_writes()
        await asyncio.wait_for(task, 1)

    asyncio.run(main())


def test_a_large_body_is_handed_over_in_high_water_steps() -> None:
    """With the transport blocked, a 1 MB send_body buffers one step, not 1 MB."""
    async def main() -> None:
        pair = connect(stream_high_water=16384,
                       client_settings=make_settings(initial_window_size=2**31 - 1))
        pair.client.conn.increment_flow_control_window(2**31 - 1 - 65535)
        pair.client.request("GET", "/")
        pair.client.exchange()
        sink = pair.factory.last.sink
        sink.send_head(200, [])
        await settle()
        pair.link.take()
        pair.link.block_writes()
        task = asyncio.create_task(sink.send_body(b"L" * 1_000_000, True))
        await settle()
        assert not task.done()
        assert len(pair.link.take()) < 3 * 16384
        pair.link.unblock_writes()
        await asyncio.wait_for(task, 2)
        assert len(pair.link.take()) > 900_000

    asyncio.run(main())


def test_stalled_stream_is_reset_after_the_timeout() -> None:
    async def main() -> None:
        pair = connect(auto_ack=False, client_settings=make_settings(initial_window_size=0),
                       h2_stalled_window_timeout=3.0)
        stream_id = pair.client.request("GET", "/")
        pair.client.exchange()
        handler = pair.factory.last
        handler.sink.send_head(200, [])
        task = asyncio.create_task(handler.sink.send_body(b"never", True))
        await settle()
        assert pair.link.timer == 3.0
        pair.link.fire_timer()
        with pytest.raises(StreamClosed):
            await asyncio.wait_for(task, 1)
        pair.client.exchange()
        assert pair.client.responses[stream_id].reset == ErrorCodes.CANCEL
        assert handler.aborted is not None
        assert not pair.link.closed, "only the stream window was stuck"

    asyncio.run(main())


def test_stalled_connection_window_closes_the_connection() -> None:
    async def main() -> None:
        pair = connect(auto_ack=False, client_settings=make_settings(initial_window_size=1 << 20),
                       h2_stalled_window_timeout=3.0)
        stream_id = pair.client.request("GET", "/")
        pair.client.exchange()
        sink = pair.factory.last.sink
        sink.send_head(200, [])
        task = asyncio.create_task(sink.send_body(b"y" * 70000, True))
        await settle()
        pair.client.exchange()
        assert len(pair.client.responses[stream_id].data) == 65535
        pair.link.fire_timer()
        with pytest.raises(StreamClosed):
            await asyncio.wait_for(task, 1)
        pair.client.exchange()
        assert pair.client.goaway is not None
        assert pair.client.goaway.error_code == ErrorCodes.FLOW_CONTROL_ERROR
        assert pair.link.closed

    asyncio.run(main())


def test_uncredited_bytes_of_finished_streams_return_to_the_connection_window() -> None:
    pair = connect(h2_initial_window_size=16000)
    start = pair.client.conn.outbound_flow_control_window
    assert start == 65535
    for _ in range(40):
        pair.client.request("POST", "/", body=b"q" * 1000, end=False)
        pair.client.exchange()
        sink = pair.factory.last.sink
        sink.send_head(200, [])
        run_now(sink.send_body(b"", True))
        pair.client.exchange()
    assert pair.client.conn.outbound_flow_control_window > start - 40 * 1000


# -- resets, refusals, shutdown ----------------------------------------------------------------


def test_client_reset_aborts_the_stream() -> None:
    pair = connect()
    stream_id = pair.client.request("GET", "/")
    pair.client.exchange()
    handler = pair.factory.last
    pair.client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
    pair.client.exchange()
    assert handler.aborted is not None
    with pytest.raises(StreamClosed):
        handler.sink.send_head(200, [])


def test_client_reset_wakes_a_stalled_writer() -> None:
    async def main() -> None:
        pair = connect(auto_ack=False, client_settings=make_settings(initial_window_size=0))
        stream_id = pair.client.request("GET", "/")
        pair.client.exchange()
        sink = pair.factory.last.sink
        sink.send_head(200, [])
        task = asyncio.create_task(sink.send_body(b"blocked", True))
        await settle()
        pair.client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
        pair.client.exchange()
        with pytest.raises(StreamClosed):
            await asyncio.wait_for(task, 1)

    asyncio.run(main())


def test_streams_beyond_the_limit_are_refused() -> None:
    pair = connect(exchange=False, h2_max_concurrent_streams=2)
    ids = [pair.client.request("GET", f"/{n}") for n in range(3)]
    pair.client.exchange()
    assert len(pair.factory.handlers) == 2
    assert pair.client.responses[ids[2]].reset == ErrorCodes.REFUSED_STREAM
    assert pair.client.responses[ids[0]].reset is None
    assert not pair.link.closed


def test_a_finished_stream_frees_its_slot() -> None:
    pair = connect(h2_max_concurrent_streams=1)
    pair.client.request("GET", "/a")
    pair.client.exchange()
    sink = pair.factory.last.sink
    sink.send_head(200, [])
    run_now(sink.send_body(b"", True))
    pair.client.exchange()
    second = pair.client.request("GET", "/b")
    pair.client.exchange()
    assert len(pair.factory.handlers) == 2
    assert pair.client.responses[second].reset is None


def test_malformed_head_is_reset_with_protocol_error() -> None:
    pair = connect()
    stream_id = pair.client.conn.get_next_available_stream_id()
    # A plain CONNECT: valid HTTP/2, refused by head.py (quicserve is no proxy).
    pair.client.conn.send_headers(stream_id, [(b":method", b"CONNECT"),
                                              (b":authority", b"example.com:443")])
    from tests.support.h2_peers import Response
    pair.client.responses[stream_id] = Response()
    pair.client.exchange()
    assert pair.client.responses[stream_id].reset == ErrorCodes.PROTOCOL_ERROR
    assert not pair.factory.handlers
    assert not pair.link.closed


def test_connection_error_sends_goaway_protocol_error() -> None:
    pair = connect()
    pair.client.raw(frame(0x0, 0, 0, b"data on stream zero"))
    pair.client.exchange()
    assert pair.client.goaway is not None
    assert pair.client.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert pair.link.closed


def test_bad_preface_closes_quietly() -> None:
    clock = FakeClock()
    link = ByteLink(clock)
    adapter = H2Adapter(ctx=make_context(RecordingFactory(), clock=clock), transport=link,
                        conn=make_conn())
    link.attach(adapter)
    link.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert link.closed


def test_shutdown_sends_goaway_and_lets_streams_finish() -> None:
    pair = connect()
    stream_id = pair.client.request("GET", "/")
    pair.client.exchange()
    pair.adapter.shutdown()
    pair.client.exchange()
    assert pair.client.goaway is not None
    assert pair.client.goaway.last_stream_id == stream_id
    assert pair.client.goaway.error_code == ErrorCodes.NO_ERROR
    assert not pair.link.closed
    sink = pair.factory.last.sink
    sink.send_head(200, [])
    run_now(sink.send_body(b"done", True))
    assert pair.link.closed
    # The h2 client stops reading after GOAWAY; decode what was written raw.
    assert b"done" in pair.link.take()


def test_streams_after_goaway_are_refused() -> None:
    pair = connect()
    pair.client.request("GET", "/first")
    pair.client.exchange()
    pair.adapter.shutdown()
    pair.link.take()
    late = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    block = late.encoder.encode([(b":method", b"GET"), (b":scheme", b"https"),
                                 (b":authority", b"x"), (b":path", b"/late")])
    pair.link.feed(frame(0x1, 0x5, 3, block))
    assert len(pair.factory.handlers) == 1
    assert frame(0x3, 0, 3, int(ErrorCodes.REFUSED_STREAM).to_bytes(4, "big")) in pair.link.take()


def test_shutdown_when_idle_closes_at_once() -> None:
    pair = connect()
    pair.adapter.shutdown()
    pair.client.exchange()
    assert pair.client.goaway is not None and pair.link.closed


def test_idle_connection_is_closed_after_keep_alive() -> None:
    pair = connect(keep_alive=7.0)
    assert pair.link.timer == 7.0
    pair.link.fire_timer()
    pair.client.exchange()
    assert pair.client.goaway is not None
    assert pair.client.goaway.error_code == ErrorCodes.NO_ERROR
    assert pair.link.closed


def test_busy_connection_is_not_closed_by_the_idle_timer() -> None:
    pair = connect(keep_alive=7.0)
    pair.client.request("GET", "/")
    pair.client.exchange()
    pair.link.fire_timer()
    assert not pair.link.closed
    sink = pair.factory.last.sink
    sink.send_head(200, [])
    run_now(sink.send_body(b"", True))
    assert pair.link.timer == 7.0, "idle again: the keep-alive timer is re-armed"


def test_client_goaway_lets_open_streams_finish_then_closes() -> None:
    """RFC 9113 section 6.8: the client opens no more streams, but the one it
    opened still gets its response; then the connection closes."""
    pair = connect()
    pair.client.request("GET", "/")
    pair.client.exchange()
    pair.client.conn.close_connection()
    pair.client.exchange()
    handler = pair.factory.last
    assert handler.aborted is None and not pair.link.closed
    pair.link.take()
    handler.sink.send_head(200, [(b"content-length", b"2")])
    run_now(handler.sink.send_body(b"ok", True))
    # (the h2 library's client stops parsing after its own GOAWAY: raw bytes)
    written = pair.link.take()
    assert written.endswith(b"\x00\x00\x02\x00\x01\x00\x00\x00\x01ok")  # DATA, END_STREAM
    assert pair.link.closed and handler.aborted is None


def test_client_goaway_with_an_error_aborts_streams_and_closes() -> None:
    pair = connect()
    pair.client.request("GET", "/")
    pair.client.exchange()
    pair.client.conn.close_connection(error_code=ErrorCodes.PROTOCOL_ERROR)
    pair.client.exchange()
    assert pair.factory.last.aborted is not None
    assert pair.link.closed


def test_connection_lost_aborts_streams() -> None:
    pair = connect()
    pair.client.request("GET", "/")
    pair.client.exchange()
    pair.link.lose()
    handler = pair.factory.last
    assert handler.aborted is not None
    with pytest.raises(StreamClosed):
        handler.sink.send_head(200, [])


# -- h2c ---------------------------------------------------------------------------------------


def test_prior_knowledge_bytes_in_the_switch_are_served() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                            (b":path", b"/pk")], end_stream=True)
    clock = FakeClock()
    link = ByteLink(clock)
    factory = RecordingFactory()
    switch = SwitchTo("h2", data=client.data_to_send())
    adapter = H2Adapter(ctx=make_context(factory, clock=clock), transport=link, conn=make_conn(),
                        switch=switch)
    link.attach(adapter)
    link.feed(switch.data)  # as transport/tcp.py does after building the adapter
    assert factory.last.head.target == b"/pk" and factory.last.ended


def test_upgrade_request_becomes_stream_one() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                  header_encoding=None))
    settings = client.initiate_upgrade_connection()
    assert settings is not None
    decoded = base64.urlsafe_b64decode(settings)
    head = RequestHead(method="POST", target=b"/up", headers=(
        (b"host", b"example.com"), (b"connection", b"Upgrade, HTTP2-Settings"),
        (b"upgrade", b"h2c"), (b"http2-settings", settings), (b"content-length", b"3")),
        protocol="h2c")
    clock = FakeClock()
    link = ByteLink(clock)
    factory = RecordingFactory()
    switch = SwitchTo("h2", data=client.data_to_send(), upgrade_head=head,
                      upgrade_settings=decoded, upgrade_body=b"abc")
    adapter = H2Adapter(ctx=make_context(factory, clock=clock), transport=link, conn=make_conn(),
                        switch=switch)
    link.attach(adapter)
    link.feed(switch.data)
    handler = factory.last
    assert handler.head.target == b"/up" and handler.head.protocol is None
    assert bytes(handler.body) == b"abc" and handler.ended
    assert b"upgrade" not in dict(handler.head.headers)
    handler.sink.send_head(200, [])
    run_now(handler.sink.send_body(b"upgraded", True))
    events = client.receive_data(link.take())
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert data == b"upgraded"
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 1 for e in events)


def test_upgraded_response_body_waits_for_the_client_preface() -> None:
    """Until the client's SETTINGS arrive it still reads HTTP/1.1 and buffers
    what follows the 101 (curl: 32 KiB); a large body must not flood it."""
    async def main() -> None:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                      header_encoding=None))
        settings = client.initiate_upgrade_connection()
        assert settings is not None
        head = RequestHead(method="GET", target=b"/big", headers=((b"host", b"x"),))
        link = ByteLink(FakeClock())
        factory = RecordingFactory()
        switch = SwitchTo("h2", data=b"", upgrade_head=head,
                          upgrade_settings=base64.urlsafe_b64decode(settings))
        link.attach(H2Adapter(ctx=make_context(factory, clock=link.clock), transport=link,
                              conn=make_conn(), switch=switch))
        sink = factory.last.sink
        sink.send_head(200, [])
        task = asyncio.create_task(sink.send_body(b"b" * 100000, True))
        await settle()
        early = client.receive_data(link.take())
        assert not any(isinstance(e, h2.events.DataReceived) for e in early)
        link.feed(client.data_to_send())  # the preface and SETTINGS
        data = bytearray()
        for _ in range(20):
            await settle()
            for event in client.receive_data(link.take()):
                if isinstance(event, h2.events.DataReceived):
                    data += event.data
                    client.acknowledge_received_data(event.flow_controlled_length, 1)
            link.feed(client.data_to_send())
            if task.done():
                break
        await asyncio.wait_for(task, 1)
        assert bytes(data) == b"b" * 100000

    asyncio.run(main())


# -- extended CONNECT (RFC 8441) -----------------------------------------------------------------


def test_extended_connect_websocket_is_accepted_with_200_and_streams_both_ways() -> None:
    pair = connect(credit_on_receive=True)
    stream_id = pair.client.request(
        "CONNECT", "/chat", extra_pseudo=[(b":protocol", b"websocket")],
        headers=[(b"sec-websocket-version", b"13")], end=False)
    pair.client.exchange()
    handler = pair.factory.last
    assert handler.head.protocol == "websocket" and handler.head.target == b"/chat"
    handler.sink.send_head(200, [])
    pair.client.exchange()
    assert pair.client.responses[stream_id].status == 200, "the accept is flushed at once"
    pair.client.send_data(stream_id, b"\x81\x02hi")
    pair.client.exchange()
    assert bytes(handler.body) == b"\x81\x02hi" and not handler.ended
    run_now(handler.sink.send_body(b"\x81\x02yo", False))
    pair.client.exchange()
    assert bytes(pair.client.responses[stream_id].data) == b"\x81\x02yo"


def test_connect_with_another_protocol_is_refused() -> None:
    pair = connect()
    stream_id = pair.client.request("CONNECT", "/", extra_pseudo=[(b":protocol", b"bogus")],
                                    end=False)
    pair.client.exchange()
    assert not pair.factory.handlers
    assert pair.client.responses[stream_id].reset == ErrorCodes.PROTOCOL_ERROR


# -- the real ASGI layer behind the adapter ------------------------------------------------------


def test_asgi_echo_through_the_dispatcher() -> None:
    from quicserve.asgi.app import wrap_app
    from quicserve.asgi.dispatch import Dispatcher
    from quicserve.config import Config
    from quicserve.interfaces import Statistics
    from quicserve.log import AccessLog
    from tests.support import apps

    async def main() -> None:
        dispatcher = Dispatcher(app=wrap_app(apps.echo), options=Config(), state={},
                                stats=Statistics(), access_log=AccessLog("%(r)s"))
        clock = FakeClock()
        link = ByteLink(clock)
        adapter = H2Adapter(ctx=make_context(dispatcher, clock=clock), transport=link,
                            conn=make_conn(secure=True))
        link.attach(adapter)
        client = H2Client(link)
        body = b"0123456789" * 50000
        stream_id = client.request("POST", "/echo", body=body)
        for _ in range(200):
            client.exchange(rounds=500)
            await settle()
            if client.responses[stream_id].ended:
                break
        response = client.responses[stream_id]
        assert response.status == 200
        assert bytes(response.data) == body
        await asyncio.wait_for(dispatcher.wait_idle(), 2)

    asyncio.run(main())
