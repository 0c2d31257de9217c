"""Sans-IO tests of :class:`quicserve.protocols.h11.H11Adapter`.

The adapter runs over ``tests/support/bytelink.ByteLink`` (an in-memory
transport with a recorded timer and controllable write backpressure).  The
client side is a real ``h11.Connection(CLIENT)`` wherever a well-formed client
is meant, so every response is parsed by an independent implementation; raw
bytes are used for hostile input.  Streams are small recorders: the test
plays the application by calling the sink directly.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import hashlib
from typing import Any

import h11
import pytest

from quicserve.errors import ASGIProtocolError, ProtocolError, StreamClosed
from quicserve.interfaces import ConnectionInfo, RequestHead, ResetReason, ResponseDefaults, StreamSink
from quicserve.protocols.h11 import H11Adapter, Phase
from tests.support.bytelink import ByteLink, FakeClock, make_conn, make_context, run, run_now

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Stream:
    """A StreamHandler that records what the adapter tells it."""

    def __init__(self, head: RequestHead, sink: StreamSink) -> None:
        self.head = head
        self.sink = sink
        self.conn: ConnectionInfo | None = None
        self.chunks: list[bytes] = []
        self.calls: list[tuple[bytes, bool]] = []
        self.ended = False
        self.aborted: str | None = None

    def start(self, head: RequestHead, conn: ConnectionInfo) -> None:
        self.conn = conn

    def receive_body(self, data: bytes, more: bool) -> None:
        self.calls.append((data, more))
        self.chunks.append(data)
        if not more:
            self.ended = True

    def abort(self, reason: str) -> None:
        self.aborted = reason

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def respond(self, status: int = 200, body: bytes = b"ok",
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if headers is None:
            headers = [(b"content-length", b"%d" % len(body))]
        self.sink.send_head(status, headers)
        run_now(self.sink.send_body(body, True))


class Harness:
    def __init__(self, *, h2c: bool = True, secure: bool = False,
                 defaults: ResponseDefaults | None = None, **options: Any) -> None:
        self.clock = FakeClock()
        self.streams: list[Stream] = []
        self.ctx = make_context(self._factory, clock=self.clock, defaults=defaults, **options)
        self.link = ByteLink(self.clock)
        self.adapter = H11Adapter(ctx=self.ctx, transport=self.link,
                                  conn=make_conn(secure=secure), h2c=h2c)
        self.link.attach(self.adapter)
        self.client = h11.Connection(h11.CLIENT)

    def _factory(self, head: RequestHead, sink: StreamSink) -> Stream:
        stream = Stream(head, sink)
        self.streams.append(stream)
        return stream

    @property
    def stream(self) -> Stream:
        return self.streams[-1]

    def send(self, *events: Any, bytewise: bool = False) -> None:
        data = b"".join(self.client.send(event) or b"" for event in events)
        self.link.feed(data, bytewise=bytewise)

    def get(self, target: str = "/", headers: list[tuple[str, str]] | None = None,
            method: str = "GET", body: bytes | None = None, bytewise: bool = False) -> None:
        hdrs = [("host", "example")] + (headers or [])
        if body is not None:
            hdrs.append(("content-length", str(len(body))))
        events: list[Any] = [h11.Request(method=method, target=target, headers=hdrs)]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        self.send(*events, bytewise=bytewise)

    def responses(self) -> list[Any]:
        """Parse what the server wrote with the client h11 connection."""
        data = self.link.take()
        if data:  # h11 reads b"" as EOF
            self.client.receive_data(data)
        if self.link.closed and self.client.their_state is h11.SEND_BODY:
            self.client.receive_data(b"")
        events = []
        while True:
            event = self.client.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return events
            events.append(event)
            if type(event) is h11.ConnectionClosed:
                return events

    def next_cycle(self) -> None:
        self.client.start_next_cycle()


def response_of(events: list[Any]) -> tuple[int, dict[bytes, bytes], bytes, bytes]:
    response = next(e for e in events if type(e) is h11.Response)
    body = b"".join(bytes(e.data) for e in events if type(e) is h11.Data)
    return response.status_code, dict(response.headers), body, response.reason


# -- the basic exchange -----------------------------------------------------------------


def test_get_is_answered_with_head_and_body_in_one_write() -> None:
    h = Harness()
    h.get("/path?q=1")
    stream = h.stream
    assert stream.head.method == "GET" and stream.head.target == b"/path?q=1"
    assert stream.calls == [(b"", False)]
    assert stream.conn is not None and stream.conn.http_version == "1.1"
    assert "http.response.trailers" in stream.conn.extensions
    assert "http.response.early_hint" in stream.conn.extensions
    stream.sink.send_head(200, [(b"content-type", b"text/plain"), (b"content-length", b"5")])
    assert h.link.written == b""  # the head waits for the body
    run_now(stream.sink.send_body(b"hello", True))
    raw = bytes(h.link.written)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\nhello")
    status, headers, body, reason = response_of(h.responses())
    assert (status, body, reason) == (200, b"hello", b"OK")
    assert headers[b"server"] == b"quicserve" and headers[b"content-length"] == b"5"


def test_request_delivered_one_byte_at_a_time() -> None:
    h = Harness()
    h.get("/x", method="POST", body=b"abcdef", bytewise=True)
    assert h.stream.head.method == "POST"
    assert h.stream.body == b"abcdef" and h.stream.ended
    h.stream.respond(body=b"done")
    assert response_of(h.responses())[2] == b"done"


def test_keep_alive_serves_a_second_request_and_arms_the_idle_timer() -> None:
    h = Harness(keep_alive=7.0)
    assert h.link.timer == 7.0
    h.get("/one")
    assert h.link.timer is None  # the app takes its time: no timer
    h.stream.respond(body=b"1")
    assert h.link.timer == 7.0 and not h.link.closed
    assert response_of(h.responses())[2] == b"1"
    h.next_cycle()
    h.get("/two")
    assert len(h.streams) == 2 and h.stream.head.target == b"/two"
    h.stream.respond(body=b"2")
    assert response_of(h.responses())[2] == b"2"


def test_keep_alive_timeout_closes_an_idle_connection_silently() -> None:
    h = Harness(keep_alive=2.0)
    h.get()
    h.stream.respond()
    h.responses()
    h.link.fire_timer()
    assert h.link.closed and h.link.take() == b""


def test_pipelined_requests_are_answered_in_order() -> None:
    h = Harness()
    raw = b"".join(
        b"GET /%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in range(3))
    h.link.feed(raw)
    assert [s.head.target for s in h.streams] == [b"/0"]  # one at a time
    for i in range(3):
        assert h.stream.head.target == b"/%d" % i
        h.stream.respond(body=b"r%d" % i)
    assert [s.head.target for s in h.streams] == [b"/0", b"/1", b"/2"]
    out = h.link.take()
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.index(b"r0") < out.index(b"r1") < out.index(b"r2")


def test_pipelined_bytes_beyond_the_head_limit_pause_reading() -> None:
    h = Harness(h11_max_incomplete_size=1024)
    h.get("/first")
    pad = b"a" * 600
    h.link.feed(b"GET /2 HTTP/1.1\r\nhost: x\r\nx-pad: " + pad + b"\r\n\r\n")
    assert not h.link.reading_paused
    h.link.feed(b"GET /3 HTTP/1.1\r\nhost: x\r\nx-pad: " + pad + b"\r\n\r\n")
    assert h.link.reading_paused
    assert len(h.streams) == 1
    h.stream.respond()
    assert h.stream.head.target == b"/2"
    h.stream.respond()
    assert h.stream.head.target == b"/3" and not h.link.reading_paused


def test_a_bulk_read_of_many_pipelined_requests_is_served_in_order() -> None:
    """300 requests (larger than h11's slice and the head limit) in one read."""
    h = Harness(h11_max_incomplete_size=4096)
    h.link.feed(b"".join(b"GET /%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in range(300)))
    for i in range(300):
        assert h.stream.head.target == b"/%d" % i
        h.stream.respond(body=b"%d" % i)
    assert len(h.streams) == 300
    assert h.link.take().count(b"HTTP/1.1 200 OK\r\n") == 300
    assert not h.link.reading_paused


def test_pipelined_requests_after_a_body_in_the_same_read() -> None:
    h = Harness()
    body = b"b" * 20000
    tail = b"".join(b"GET /%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in range(500))
    h.link.feed(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 20000\r\n\r\n" + body + tail)
    assert h.stream.body == body
    h.stream.respond()
    for i in range(500):
        assert h.stream.head.target == b"/%d" % i
        h.stream.respond()


def test_http10_request_gets_connection_info_1_0_and_no_keep_alive() -> None:
    h = Harness()
    h.link.feed(b"GET / HTTP/1.0\r\n\r\n")
    assert h.stream.conn is not None and h.stream.conn.http_version == "1.0"
    assert h.stream.conn.protocol == "HTTP/1.0"
    h.stream.respond(headers=[], body=b"")  # no Content-Length: close-delimited
    out = h.link.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in out and b"transfer-encoding" not in out
    assert h.link.closed


def test_http10_streaming_body_is_close_delimited() -> None:
    h = Harness()
    h.link.feed(b"GET / HTTP/1.0\r\n\r\n")
    h.stream.sink.send_head(200, [])
    run_now(h.stream.sink.send_body(b"abc", False))
    run_now(h.stream.sink.send_body(b"def", True))
    out = h.link.take()
    assert out.endswith(b"\r\n\r\nabcdef") and h.link.closed


def test_unknown_length_on_http11_is_chunked() -> None:
    h = Harness()
    h.get()
    h.stream.sink.send_head(200, [(b"content-type", b"text/plain")])
    run_now(h.stream.sink.send_body(b"hello ", False))
    run_now(h.stream.sink.send_body(b"world", False))
    run_now(h.stream.sink.send_body(b"", True))
    events = h.responses()
    status, headers, body, _ = response_of(events)
    assert headers[b"transfer-encoding"] == b"chunked" and body == b"hello world"
    assert type(events[-1]) is h11.EndOfMessage
    assert not h.link.closed


def test_empty_body_write_flushes_the_held_head() -> None:
    h = Harness()
    h.get()
    h.stream.sink.send_head(200, [(b"content-type", b"text/event-stream")])
    run_now(h.stream.sink.send_body(b"", False))
    out = h.link.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\n")
    run_now(h.stream.sink.send_body(b"data: 1\n\n", False))
    assert h.link.take() == b"9\r\ndata: 1\n\n\r\n"


def test_app_transfer_encoding_is_replaced_by_our_framing() -> None:
    h = Harness()
    h.get()
    h.stream.respond(headers=[(b"Transfer-Encoding", b"gzip")], body=b"xyz")
    status, headers, body, _ = response_of(h.responses())
    assert headers[b"transfer-encoding"] == b"chunked" and body == b"xyz"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_write_no_body(status: int) -> None:
    h = Harness()
    h.get()
    h.stream.sink.send_head(status, [])
    run_now(h.stream.sink.send_body(b"ignored", True))
    out = h.link.take()
    assert out.endswith(b"\r\n\r\n") and b"ignored" not in out
    assert b"transfer-encoding" not in out
    if status == 204:
        assert b"content-length" not in out


def test_head_keeps_content_length_and_writes_no_body() -> None:
    h = Harness()
    h.get(method="HEAD")
    h.stream.respond(body=b"twelve bytes", headers=[(b"content-length", b"12")])
    out = h.link.take()
    assert b"content-length: 12\r\n" in out and out.endswith(b"\r\n\r\n")
    # The connection stays usable.
    h.link.feed(b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n")
    assert h.stream.head.target == b"/next"


@pytest.mark.parametrize("status,phrase", [
    (200, b"OK"), (404, b"Not Found"), (418, b"I'm a Teapot"), (425, b"Too Early"),
    (299, b"Success"), (599, b"Server Error"),
])
def test_status_line_carries_a_reason_phrase(status: int, phrase: bytes) -> None:
    h = Harness()
    h.get()
    h.stream.respond(status=status)
    assert h.link.take().startswith(b"HTTP/1.1 %d %s\r\n" % (status, phrase))


def test_alt_svc_only_over_tls() -> None:
    defaults = ResponseDefaults(server=None, date=False, alt_svc=b'h3=":443"; ma=60')
    for secure in (False, True):
        h = Harness(secure=secure, defaults=defaults)
        h.get()
        h.stream.respond()
        assert (b'alt-svc: h3=":443"; ma=60' in h.link.take()) is secure


def test_date_header_is_sent_by_default() -> None:
    h = Harness(defaults=ResponseDefaults())
    h.get()
    h.stream.respond()
    headers = response_of(h.responses())[1]
    assert headers[b"date"].endswith(b" GMT")


# -- request bodies --------------------------------------------------------------------------


def test_content_length_body_last_chunk_carries_the_end() -> None:
    h = Harness()
    h.get(method="POST", body=b"x" * 100)
    assert h.stream.calls == [(b"x" * 100, False)]


def test_chunked_request_body_is_reassembled() -> None:
    h = Harness()
    h.send(h11.Request(method="POST", target="/", headers=[
        ("host", "x"), ("transfer-encoding", "chunked")]))
    h.send(h11.Data(data=b"abc"))
    assert h.stream.calls == [(b"abc", True)]
    h.send(h11.Data(data=b"defg"), h11.EndOfMessage())
    assert h.stream.body == b"abcdefg" and h.stream.ended


def test_chunked_request_body_bytewise() -> None:
    h = Harness()
    h.link.feed(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", bytewise=True)
    assert h.stream.body == b"abcde" and h.stream.ended


def test_content_length_and_transfer_encoding_together_is_400() -> None:
    h = Harness()
    h.link.feed(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n"
                b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n")
    assert h.link.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert h.link.closed and not h.streams


def test_response_before_the_body_drains_it_and_keeps_the_connection() -> None:
    h = Harness()
    h.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "10")]))
    h.stream.respond(status=413, body=b"no")
    assert not h.link.closed and h.adapter.phase is Phase.DRAINING
    h.link.feed(b"0123456789GET /next HTTP/1.1\r\nhost: x\r\n\r\n")
    assert h.stream.head.target == b"/next"
    assert h.streams[0].body == b""  # nothing delivered after the response


def test_draining_a_stalled_body_times_out() -> None:
    h = Harness(read_timeout=3.0)
    h.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "10")]))
    h.stream.respond(status=413, body=b"no")
    h.link.take()
    assert h.link.timer == 3.0
    h.link.fire_timer()
    assert h.link.closed and h.link.take() == b""


def test_draining_too_much_closes() -> None:
    h = Harness(stream_high_water=1000, h11_max_incomplete_size=1000)
    h.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "100000")]))
    h.stream.respond(status=413, body=b"no")
    h.link.feed(b"z" * 5000)
    assert h.link.closed


# -- 100-continue ---------------------------------------------------------------------------


def test_100_continue_is_sent_only_when_the_stream_asks_and_only_once() -> None:
    h = Harness()
    h.send(h11.Request(method="POST", target="/", headers=[
        ("host", "x"), ("content-length", "3"), ("expect", "100-continue")]))
    assert h.link.take() == b""
    h.stream.sink.send_head(100, [])
    assert h.link.written == b"HTTP/1.1 100 Continue\r\n\r\n"
    h.stream.sink.send_head(100, [])
    assert h.link.written == b"HTTP/1.1 100 Continue\r\n\r\n"
    h.send(h11.Data(data=b"abc"), h11.EndOfMessage())
    h.stream.respond(body=b"ok")
    events = h.responses()
    assert type(events[0]) is h11.InformationalResponse and events[0].status_code == 100
    assert response_of(events)[0] == 200


def test_no_read_timeout_while_the_client_waits_for_100_continue() -> None:
    h = Harness(read_timeout=3.0)
    h.send(h11.Request(method="POST", target="/", headers=[
        ("host", "x"), ("content-length", "3"), ("expect", "100-continue")]))
    assert h.link.timer is None  # the app has not asked for the body yet
    h.stream.sink.send_head(100, [])
    assert h.link.timer == 3.0


def test_no_100_continue_once_the_body_started() -> None:
    h = Harness()
    h.link.feed(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\na")
    h.stream.sink.send_head(100, [])
    assert h.link.take() == b""


def test_final_response_without_100_continue_closes_the_connection() -> None:
    """The client may or may not send the announced body: the connection
    cannot be reused safely."""
    h = Harness()
    h.send(h11.Request(method="POST", target="/", headers=[
        ("host", "x"), ("content-length", "3"), ("expect", "100-continue")]))
    h.stream.respond(status=417, body=b"")
    assert b"connection: close\r\n" in h.link.take()
    assert h.link.closed


def test_103_early_hints() -> None:
    h = Harness()
    h.get()
    h.stream.sink.send_head(103, [(b"link", b"</style.css>; rel=preload")])
    h.stream.respond()
    events = h.responses()
    assert events[0].status_code == 103 and dict(events[0].headers)[b"link"] == b"</style.css>; rel=preload"


def test_103_is_not_sent_to_http10_clients() -> None:
    h = Harness()
    h.link.feed(b"GET / HTTP/1.0\r\n\r\n")
    h.stream.sink.send_head(103, [(b"link", b"</a>")])
    assert h.link.take() == b""


# -- trailers ---------------------------------------------------------------------------------


def test_trailers_on_a_chunked_response() -> None:
    h = Harness()
    h.get()
    h.stream.sink.send_head(200, [(b"trailer", b"x-checksum")])
    run_now(h.stream.sink.send_body(b"data", False))
    h.stream.sink.send_trailers([(b"x-checksum", b"abc")])
    events = h.responses()
    assert response_of(events)[2] == b"data"
    assert type(events[-1]) is h11.EndOfMessage
    assert dict(events[-1].headers) == {b"x-checksum": b"abc"}
    assert not h.link.closed


def test_trailers_are_dropped_without_chunked_framing() -> None:
    h = Harness()
    h.get()
    h.stream.sink.send_head(200, [(b"content-length", b"4")])
    run_now(h.stream.sink.send_body(b"data", False))
    h.stream.sink.send_trailers([(b"x-checksum", b"abc")])
    out = h.link.take()
    assert out.endswith(b"\r\n\r\ndata") and b"x-checksum" not in out
    assert not h.link.closed


def test_trailers_right_after_the_head() -> None:
    h = Harness()
    h.get()
    h.stream.sink.send_head(200, [])
    h.stream.sink.send_trailers([(b"x-t", b"1")])
    events = h.responses()
    assert response_of(events)[0] == 200 and dict(events[-1].headers) == {b"x-t": b"1"}


# -- errors and limits ------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # TLS on cleartext
    b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no host
    b"GET nopath HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: x\r\n\r\n",
])
def test_malformed_request_gets_400_and_close(garbage: bytes) -> None:
    h = Harness()
    h.link.feed(garbage)
    out = h.link.take()
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close\r\n" in out and h.link.closed and not h.streams


def test_malformed_chunked_body_aborts_the_stream_and_answers_400() -> None:
    h = Harness()
    h.link.feed(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
    assert h.stream.aborted is not None
    assert h.link.take().startswith(b"HTTP/1.1 400 ") and h.link.closed


def test_head_larger_than_the_limit_gets_431() -> None:
    h = Harness(h11_max_incomplete_size=1024)
    h.link.feed(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 2000)
    assert h.link.take().startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert h.link.closed


@pytest.mark.parametrize("bytewise", [False, True])
def test_whole_oversized_head_in_one_write_gets_431(bytewise: bool) -> None:
    h = Harness(h11_max_incomplete_size=1024)
    h.link.feed(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 2000 + b"\r\n\r\n",
                bytewise=bytewise)
    assert h.link.take().startswith(b"HTTP/1.1 431 ") and h.link.closed and not h.streams


def test_head_under_the_limit_with_a_big_body_in_the_same_write_is_fine() -> None:
    h = Harness(h11_max_incomplete_size=1024)
    h.link.feed(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n" + b"b" * 5000)
    assert h.stream.body == b"b" * 5000 and h.stream.ended


def test_too_many_header_fields_gets_431() -> None:
    h = Harness()
    h.link.feed(b"GET / HTTP/1.1\r\nhost: x\r\n" + b"x-a: 1\r\n" * 300 + b"\r\n")
    assert h.link.take().startswith(b"HTTP/1.1 431 ")


def test_transfer_encoding_other_than_chunked_gets_501() -> None:
    h = Harness()
    h.link.feed(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n")
    assert h.link.take().startswith(b"HTTP/1.1 501 ")


def test_slowloris_head_gets_408_after_the_read_timeout() -> None:
    h = Harness(read_timeout=3.0, keep_alive=5.0)
    h.link.feed(b"GET / HT")
    assert h.link.timer == 3.0
    deadline = h.link.timer_deadline
    h.clock.now += 1
    h.link.feed(b"TP/1.1\r\nho")  # more dribble does not extend the deadline
    assert h.link.timer_deadline == deadline
    h.link.fire_timer()
    out = h.link.take()
    assert out.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and h.link.closed


def test_stalled_body_gets_408_and_aborts_the_stream() -> None:
    h = Harness(read_timeout=3.0)
    h.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "10")]))
    h.send(h11.Data(data=b"abc"))
    assert h.link.timer == 3.0
    h.link.fire_timer()
    assert h.stream.aborted is not None
    assert h.link.take().startswith(b"HTTP/1.1 408 ") and h.link.closed


def test_stalled_body_after_the_response_started_just_closes() -> None:
    h = Harness(read_timeout=3.0)
    h.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "10")]))
    h.stream.sink.send_head(200, [])
    run_now(h.stream.sink.send_body(b"partial", False))
    h.link.take()
    h.link.fire_timer()
    assert h.stream.aborted is not None and h.link.take() == b"" and h.link.closed


def test_app_header_with_crlf_is_refused() -> None:
    h = Harness()
    h.get()
    with pytest.raises(ProtocolError):
        h.stream.sink.send_head(200, [(b"x-evil", b"a\r\nset-cookie: b")])
    assert h.link.take() == b""


def test_body_longer_than_content_length_raises_and_closes() -> None:
    h = Harness()
    h.get()
    h.stream.sink.send_head(200, [(b"content-length", b"2")])
    with pytest.raises(ProtocolError):
        run_now(h.stream.sink.send_body(b"toolong", True))
    assert h.link.closed


def test_body_shorter_than_content_length_closes_after_writing() -> None:
    h = Harness()
    h.get()
    h.stream.sink.send_head(200, [(b"content-length", b"10")])
    run_now(h.stream.sink.send_body(b"short", True))
    assert h.link.take().endswith(b"short") and h.link.closed


def test_second_final_head_is_a_protocol_error() -> None:
    h = Harness()
    h.get()
    h.stream.respond()
    with pytest.raises(ASGIProtocolError):
        h.stream.sink.send_head(200, [])


# -- disconnects and resets ----------------------------------------------------------------------


def test_client_gone_while_streaming_aborts_and_send_raises() -> None:
    h = Harness()
    h.get()
    h.stream.sink.send_head(200, [])
    run_now(h.stream.sink.send_body(b"chunk", False))
    h.link.lose()
    assert h.stream.aborted is not None
    with pytest.raises(StreamClosed):
        run_now(h.stream.sink.send_body(b"more", False))


def test_eof_before_the_response_aborts_the_stream() -> None:
    h = Harness()
    h.get()
    h.link.eof()
    assert h.stream.aborted is not None


def test_connection_lost_after_the_response_does_not_abort() -> None:
    h = Harness()
    h.get()
    h.stream.respond()
    h.link.lose()
    assert h.streams[0].aborted is None


def test_reset_after_the_head_closes_without_finishing() -> None:
    h = Harness()
    h.get()
    h.stream.sink.send_head(200, [])
    run_now(h.stream.sink.send_body(b"partial", False))
    h.stream.sink.reset(ResetReason.APP_ERROR)
    out = h.link.take()
    assert not out.endswith(b"0\r\n\r\n") and h.link.closed


def test_reset_before_the_head_answers_500() -> None:
    h = Harness()
    h.get()
    h.stream.sink.reset(ResetReason.APP_ERROR)
    assert h.link.take().startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert h.link.closed


def test_stale_sink_cannot_write_into_the_next_exchange() -> None:
    h = Harness()
    h.get()
    first = h.stream
    first.respond()
    h.responses()
    h.next_cycle()
    h.get("/second")
    with pytest.raises((StreamClosed, ASGIProtocolError)):
        run_now(first.sink.send_body(b"late", False))
    assert h.link.take() == b""


# -- backpressure ---------------------------------------------------------------------------------


def test_reading_pauses_above_the_high_water_mark_and_resumes_on_credit() -> None:
    h = Harness(stream_high_water=1000, read_timeout=3.0)
    h.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "5000")]))
    h.send(h11.Data(data=b"a" * 600))
    assert not h.link.reading_paused and h.link.timer == 3.0
    h.send(h11.Data(data=b"b" * 600))
    assert h.link.reading_paused
    assert h.link.timer is None  # the client is not at fault: no read timeout
    h.stream.sink.credit(600)
    assert not h.link.reading_paused and h.link.timer == 3.0


def test_send_body_waits_while_the_transport_is_not_writable() -> None:
    async def main() -> None:
        h = Harness()
        h.get()
        h.stream.sink.send_head(200, [])
        h.link.block_writes()
        task = asyncio.ensure_future(h.stream.sink.send_body(b"x" * 100, False))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not task.done() and h.link.write_waiters == 1
        assert b"x" * 100 in h.link.written  # written, then waits for the drain
        h.link.unblock_writes()
        await asyncio.wait_for(task, 1)

    run(main)


def test_send_body_waiting_raises_when_the_connection_is_lost() -> None:
    async def main() -> None:
        h = Harness()
        h.get()
        h.stream.sink.send_head(200, [])
        h.link.block_writes()
        task = asyncio.ensure_future(h.stream.sink.send_body(b"x", False))
        await asyncio.sleep(0)
        h.link.lose()
        with pytest.raises(StreamClosed):
            await asyncio.wait_for(task, 1)

    run(main)


# -- shutdown --------------------------------------------------------------------------------------


def test_shutdown_closes_an_idle_connection() -> None:
    h = Harness()
    h.adapter.shutdown()
    assert h.link.closed


def test_shutdown_lets_the_current_request_finish_then_closes() -> None:
    h = Harness()
    h.get()
    h.adapter.shutdown()
    assert not h.link.closed
    h.stream.respond()
    assert b"connection: close\r\n" in h.link.take() and h.link.closed


# -- h2c -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bytewise", [False, True])
def test_h2c_prior_knowledge_switches_with_all_bytes(bytewise: bool) -> None:
    h = Harness()
    switch = h.link.feed(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", bytewise=bytewise)
    assert switch is not None and switch.protocol == "h2"
    if bytewise:
        assert switch.data == PREFACE
    else:
        assert switch.data == PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    assert h.link.take() == b""


def test_prefix_of_the_preface_that_diverges_is_http11() -> None:
    h = Harness()
    assert h.link.feed(b"P", bytewise=True) is None
    h.link.feed(b"OST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    assert h.stream.head.method == "POST"


def test_preface_without_h2c_is_a_bad_request() -> None:
    h = Harness(h2c=False)
    assert h.link.feed(PREFACE) is None
    assert h.link.take().startswith(b"HTTP/1.1 400 ")


def _settings_header() -> str:
    # SETTINGS_MAX_CONCURRENT_STREAMS (3) = 100, base64url without padding.
    return base64.urlsafe_b64encode(b"\x00\x03\x00\x00\x00\x64").rstrip(b"=").decode()


def test_h2c_upgrade_answers_101_and_switches() -> None:
    h = Harness()
    request = (b"GET /up HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\n"
               b"upgrade: h2c\r\nhttp2-settings: " + _settings_header().encode() + b"\r\n\r\n")
    switch = h.link.feed(request + PREFACE)
    assert switch is not None and switch.protocol == "h2"
    assert h.link.take() == (b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\n"
                             b"upgrade: h2c\r\n\r\n")
    assert switch.data == PREFACE
    assert switch.upgrade_settings == b"\x00\x03\x00\x00\x00\x64"
    head = switch.upgrade_head
    assert head is not None and head.target == b"/up" and head.protocol is None
    assert {name for name, _ in head.headers} == {b"host"}
    assert not h.streams


def test_h2c_upgrade_with_a_small_body_carries_it() -> None:
    h = Harness()
    request = (b"POST /up HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\n"
               b"upgrade: h2c\r\nhttp2-settings: " + _settings_header().encode()
               + b"\r\ncontent-length: 4\r\n\r\nbody")
    switch = h.link.feed(request, bytewise=True)
    assert switch is not None and switch.upgrade_body == b"body"


def test_h2c_upgrade_is_ignored_without_h2() -> None:
    h = Harness(h2c=False)
    h.link.feed(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\n"
                b"upgrade: h2c\r\nhttp2-settings: " + _settings_header().encode() + b"\r\n\r\n")
    assert h.stream.head.protocol is None
    h.stream.respond(body=b"plain")
    assert h.link.take().startswith(b"HTTP/1.1 200 OK")


# -- WebSocket ---------------------------------------------------------------------------------------

WS_REQUEST = (b"GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
              b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")


def test_websocket_accept_answers_101_and_passes_raw_bytes() -> None:
    h = Harness()
    h.link.feed(WS_REQUEST + b"\x81\x80early")
    stream = h.stream
    assert stream.head.protocol == "websocket"
    stream.sink.send_head(200, [(b"sec-websocket-protocol", b"chat")])
    out = h.link.take()
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    # RFC 6455 section 1.3's worked example.
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in out
    assert b"sec-websocket-protocol: chat\r\n" in out
    assert stream.body == b"\x81\x80early"  # bytes that followed the handshake
    h.link.feed(b"\x82\x00")
    assert stream.chunks[-1] == b"\x82\x00"
    run_now(stream.sink.send_body(b"\x81\x02hi", False))
    assert h.link.take() == b"\x81\x02hi"
    run_now(stream.sink.send_body(b"\x88\x00", True))
    assert h.link.take() == b"\x88\x00" and h.link.closed


def test_websocket_accept_key_matches_the_rfc_formula() -> None:
    key = base64.b64encode(b"0123456789abcdef")
    h = Harness()
    h.link.feed(WS_REQUEST.replace(b"dGhlIHNhbXBsZSBub25jZQ==", key))
    h.stream.sink.send_head(200, [])
    expected = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert b"sec-websocket-accept: " + expected + b"\r\n" in h.link.take()


def test_websocket_frames_pipelined_behind_the_handshake_reach_the_stream() -> None:
    h = Harness(h11_max_incomplete_size=1024)
    h.link.feed(WS_REQUEST + b"a" * 100)
    h.link.feed(b"b" * 2000)  # waits (and pauses reading) until the 101
    assert h.link.reading_paused
    h.stream.sink.send_head(200, [])
    assert h.stream.body == b"a" * 100 + b"b" * 2000 and not h.link.reading_paused


def test_websocket_denial_is_a_normal_response() -> None:
    h = Harness()
    h.link.feed(WS_REQUEST)
    h.stream.respond(status=403, body=b"go away")
    out = h.link.take()
    assert out.startswith(b"HTTP/1.1 403 Forbidden\r\n") and out.endswith(b"go away")
    assert not h.link.closed
    h.link.feed(b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n")
    assert h.stream.head.target == b"/next"


def test_websocket_stream_backpressure() -> None:
    h = Harness(stream_high_water=100)
    h.link.feed(WS_REQUEST)
    h.stream.sink.send_head(200, [])
    h.link.feed(b"x" * 150)
    assert h.link.reading_paused
    h.stream.sink.credit(150)
    assert not h.link.reading_paused


def test_websocket_connection_lost_aborts() -> None:
    h = Harness()
    h.link.feed(WS_REQUEST)
    h.stream.sink.send_head(200, [])
    h.link.lose()
    assert h.stream.aborted is not None


@pytest.mark.parametrize("change", [
    (b"sec-websocket-version: 13", b"sec-websocket-version: 8"),
    (b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""),
    (b"GET /chat", b"POST /chat"),
])
def test_invalid_websocket_handshake_is_400(change: tuple[bytes, bytes]) -> None:
    h = Harness()
    h.link.feed(WS_REQUEST.replace(*change))
    assert h.link.take().startswith(b"HTTP/1.1 400 ") and not h.streams


# -- with the real ASGI layer -------------------------------------------------------------------
#
# The same adapter under quicserve's Dispatcher and test apps, still in memory
# (ByteLink), on a real event loop because the apps run as tasks.

from quicserve.asgi.dispatch import Dispatcher  # noqa: E402
from quicserve.config import Config  # noqa: E402
from quicserve.interfaces import ConnectionContext, Statistics  # noqa: E402
from quicserve.log import AccessLog  # noqa: E402
from tests.support import apps  # noqa: E402


class AppHarness:
    def __init__(self, app: Any, **config: Any) -> None:
        config.setdefault("access_log", False)
        self.config = Config(**config)
        stats = Statistics()
        dispatcher = Dispatcher(app=app, options=self.config, state={}, stats=stats,
                                access_log=AccessLog("%(s)s"))
        self.link = ByteLink()
        ctx = ConnectionContext(options=self.config, stream_factory=dispatcher,
                                response_defaults=ResponseDefaults(date=False), stats=stats,
                                clock=self.link.clock)
        self.adapter = H11Adapter(ctx=ctx, transport=self.link, conn=make_conn(), h2c=False)
        self.link.attach(self.adapter)
        self.client = h11.Connection(h11.CLIENT)

    async def until(self, predicate: Any, turns: int = 200) -> None:
        """Let the app tasks run until predicate() holds (bounded in turns)."""
        for _ in range(turns):
            if predicate():
                return
            await asyncio.sleep(0)
        raise AssertionError("condition not reached")

    async def exchange(self, *events: Any) -> list[Any]:
        self.link.feed(b"".join(self.client.send(e) or b"" for e in events))
        collected: list[Any] = []

        def complete() -> bool:
            data = self.link.take()
            if data:  # h11 reads b"" as EOF
                self.client.receive_data(data)
            while True:
                event = self.client.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return False
                collected.append(event)
                if type(event) is h11.EndOfMessage:
                    return True

        await self.until(complete)
        return collected


def test_real_app_echo_keep_alive_then_chunked_stream() -> None:
    async def main() -> None:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["path"] == "/stream":
                await apps.streaming(3, 2)(scope, receive, send)
            else:
                await apps.echo(scope, receive, send)

        h = AppHarness(app)
        events = await h.exchange(
            h11.Request(method="POST", target="/echo", headers=[("host", "x"), ("content-length", "5")]),
            h11.Data(data=b"hello"), h11.EndOfMessage())
        assert response_of(events)[:1] == (200,) and response_of(events)[2] == b"hello"
        h.client.start_next_cycle()
        events = await h.exchange(h11.Request(method="GET", target="/stream", headers=[("host", "x")]),
                                  h11.EndOfMessage())
        status, headers, body, _ = response_of(events)
        assert status == 200 and headers.get(b"transfer-encoding") == b"chunked" and len(body) == 6

    run(main)


def test_real_app_100_continue_on_first_receive() -> None:
    async def main() -> None:
        h = AppHarness(apps.echo)
        h.link.feed(h.client.send(h11.Request(method="POST", target="/", headers=[
            ("host", "x"), ("content-length", "3"), ("expect", "100-continue")])))
        await h.until(lambda: b"100 Continue" in h.link.written)
        events = await h.exchange(h11.Data(data=b"abc"), h11.EndOfMessage())
        assert events[0].status_code == 100 and response_of(events)[2] == b"abc"

    run(main)


def test_real_app_raising_after_the_head_closes_the_connection() -> None:
    async def main() -> None:
        h = AppHarness(apps.raise_after_head)
        h.link.feed(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        await h.until(lambda: h.link.closed)
        out = h.link.take()
        assert b"partial" in out and not out.endswith(b"0\r\n\r\n")

    run(main)


def test_real_app_raising_before_the_head_gets_500_and_keeps_the_connection() -> None:
    async def main() -> None:
        h = AppHarness(apps.raise_before_head)
        events = await h.exchange(h11.Request(method="GET", target="/", headers=[("host", "x")]),
                                  h11.EndOfMessage())
        assert response_of(events)[0] == 500 and not h.link.closed

    run(main)


def test_real_app_sees_disconnect_when_the_client_goes_away() -> None:
    async def main() -> None:
        seen: list[str] = []
        h = AppHarness(apps.wait_for_disconnect(seen))
        h.link.feed(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nab")
        await h.until(lambda: "http.request" in seen)
        h.link.lose()
        await h.until(lambda: "http.disconnect" in seen)

    run(main)


def test_real_app_trailers() -> None:
    async def main() -> None:
        h = AppHarness(apps.trailers_app([(b"x-digest", b"abc")]))
        events = await h.exchange(h11.Request(method="GET", target="/", headers=[
            ("host", "x"), ("te", "trailers")]), h11.EndOfMessage())
        assert dict(events[-1].headers) == {b"x-digest": b"abc"}

    run(main)


# -- chunking adversary ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_random_splits_of_a_pipelined_mix(seed: int) -> None:
    """Content-Length, chunked and bodiless requests, pipelined, cut at random
    points: every stream gets exactly its body, every response parses, in order."""
    rng = random.Random(seed)
    client = h11.Connection(h11.CLIENT)
    wire = bytearray()
    expected: list[tuple[bytes, bytes]] = []
    for i in range(12):
        kind = rng.choice(["get", "length", "chunked"])
        body = rng.randbytes(rng.randrange(0, 3000)) if kind != "get" else b""
        headers = [("host", "x")]
        if kind == "length":
            headers.append(("content-length", str(len(body))))
        elif kind == "chunked":
            headers.append(("transfer-encoding", "chunked"))
        wire += client.send(h11.Request(method="POST" if body else "GET", target=f"/{i}",
                                        headers=headers)) or b""
        if body:
            cut = rng.randrange(0, len(body) + 1)
            for part in (body[:cut], body[cut:]):
                if part:
                    wire += client.send(h11.Data(data=part)) or b""
        wire += client.send(h11.EndOfMessage()) or b""
        expected.append((f"/{i}".encode(), body))
        client = h11.Connection(h11.CLIENT)  # it pipelines: a fresh client per request

    h = Harness(stream_high_water=1024, h11_max_incomplete_size=2048)
    position = 0
    answered = 0
    credited = 0
    for _ in range(10000):  # bounded
        if answered == len(expected):
            break
        stream = h.streams[answered] if len(h.streams) > answered else None
        if stream is not None and stream.ended:
            target, body = expected[answered]
            assert stream.head.target == target and stream.body == body
            stream.respond(body=b"r%d" % answered)
            answered += 1
            credited = 0
            continue
        if stream is not None and h.link.reading_paused and len(stream.body) > credited:
            stream.sink.credit(len(stream.body) - credited)  # the app reads what it has
            credited = len(stream.body)
            continue
        assert position < len(wire), "stalled"
        step = rng.randrange(1, 700)
        h.link.feed(bytes(wire[position:position + step]))
        position += step
    assert answered == len(expected)
    out = h.link.take()
    assert [int(n) for n in re.findall(rb"\r\n\r\nr(\d+)", out)] == list(range(len(expected)))


# -- the fast path and h11 agree ------------------------------------------------------------------


def _observe(data: bytes, pieces: list[int]) -> tuple[Any, ...]:
    """Feed ``data`` cut after the given lengths, answering each request once
    its body ended; return everything a client or an app could see."""
    h = Harness(h2c=False, h11_max_incomplete_size=512)
    answered = 0
    position = 0
    for size in [*pieces, len(data)]:
        if h.link.closed or position >= len(data):
            break
        h.link.feed(data[position:position + size])
        position += size
        for _ in range(50):  # bounded: answer what is complete, which may parse more
            if answered < len(h.streams) and h.streams[answered].ended and not h.link.closed:
                h.streams[answered].respond(body=b"r%d" % answered)
                answered += 1
            else:
                break
    seen = [(s.head, s.conn.http_version if s.conn else None, s.body, s.ended, s.aborted)
            for s in h.streams]
    return seen, h.link.take(), h.link.closed, h.adapter.phase


AGREEMENT_CASES = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a?b HTTP/1.1\r\nHost: a\r\nX-A:  1 2 \r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloHEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nhello",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 600 + b"\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\nGET http://h/x HTTP/1.1\r\nHost: a\r\n\r\n",
]


@pytest.mark.parametrize("data", AGREEMENT_CASES)
def test_whole_reads_and_byte_by_byte_reads_are_served_alike(data: bytes) -> None:
    """Whole reads take the fast path where the request is simple; single
    bytes never do (a head is incomplete), so h11 parses them.  Apps and
    clients must not see the difference."""
    assert _observe(data, [len(data)]) == _observe(data, [1] * len(data))


@pytest.mark.parametrize("seed", range(6))
def test_random_cuts_of_generated_requests_are_served_alike(seed: int) -> None:
    from tests.unit.protocols.test_h1parse import generated_head

    rng = random.Random(seed)
    for _ in range(60):
        data = b"".join(generated_head(rng) for _ in range(rng.randrange(1, 4)))
        cuts = [rng.randrange(1, 40) for _ in range(len(data) // 10 + 1)]
        assert _observe(data, [len(data)]) == _observe(data, cuts), data
