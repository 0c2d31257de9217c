"""H3Adapter against aioquic's own HTTP/3 client, over a fake QUIC layer.

The client is aioquic's real ``H3Connection``; the server is quicserve's
``H3Adapter`` with the real ASGI dispatcher and test apps.  Between them sits
:class:`FakeQuic` (aioquic's ``FakeQuicConnection`` idea): it records what each
side writes per stream, so a test can deliver it in any chunking -- one byte at
a time -- and decide when sent bytes count as acknowledged.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Coroutine

import pytest
import wsproto
import wsproto.events
from aioquic.buffer import Buffer, encode_uint_var
from aioquic.h3.connection import ErrorCode, FrameType, H3Connection, H3Stream, HeadersState
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StopSendingReceived, StreamDataReceived, StreamReset

from quicserve.config import Config
from quicserve.interfaces import ConnectionInfo
from quicserve.protocols import h3_wire
from quicserve.protocols.h3 import (
    H3Adapter,
    RequestStream,
    StreamEvent,
    StreamState,
    StreamStateError,
)
from tests.support import apps
from tests.support.quic_peers import Response, make_context


def run(coro: Coroutine[Any, Any, None], timeout: float = 20.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


class FakeQuic:
    """The slice of ``QuicConnection`` H3Connection and H3Adapter use.

    Writes become ``StreamDataReceived`` events for the peer; ``unacked``
    counts bytes written per stream until :meth:`ack` is called.
    """

    def __init__(self, *, is_client: bool) -> None:
        self.configuration = QuicConfiguration(is_client=is_client)
        self._quic_logger = None
        self._remote_max_datagram_frame_size = None
        self._next_bidi = 0 if is_client else 1
        self._next_uni = 2 if is_client else 3
        self.outbox: list[QuicEvent] = []
        #: Every event ever written, for inspecting the wire afterwards.
        self.log: list[QuicEvent] = []
        self.unacked: dict[int, int] = {}
        self.written: dict[int, int] = {}
        self.resets: dict[int, int] = {}
        self.stops: dict[int, int] = {}
        self.closed: tuple[int, str] | None = None

    def get_next_available_stream_id(self, is_unidirectional: bool = False) -> int:
        if is_unidirectional:
            stream_id, self._next_uni = self._next_uni, self._next_uni + 4
        else:
            stream_id, self._next_bidi = self._next_bidi, self._next_bidi + 4
        return stream_id

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if stream_id in self.resets:
            raise ValueError("Cannot send data on a finished stream")
        event = StreamDataReceived(data=bytes(data), end_stream=end_stream, stream_id=stream_id)
        self.outbox.append(event)
        self.log.append(event)
        self.unacked[stream_id] = self.unacked.get(stream_id, 0) + len(data)
        self.written[stream_id] = self.written.get(stream_id, 0) + len(data)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        if stream_id not in self.resets:
            self.resets[stream_id] = error_code
            self.outbox.append(StreamReset(error_code=error_code, stream_id=stream_id))

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        self.stops.setdefault(stream_id, error_code)

    def close(self, error_code: int = 0, frame_type: int | None = None,
              reason_phrase: str = "") -> None:
        if self.closed is None:
            self.closed = (error_code, reason_phrase)

    def ack(self) -> None:
        self.unacked.clear()

    def take(self) -> list[QuicEvent]:
        events, self.outbox = self.outbox, []
        return events


class FakeSession:
    """A QuicSessionHandle that records what the adapter asks for."""

    def __init__(self, quic: FakeQuic) -> None:
        self.quic = quic
        self.dirty = 0
        self.early = False
        self.withheld: dict[int, int] = {}

    def mark_dirty(self) -> None:
        self.dirty += 1

    def connection_info(self, *, early_data: bool = False) -> ConnectionInfo:
        return ConnectionInfo(http_version="3", protocol="HTTP/3", scheme="https",
                              client=("::1", 50000), server=("::1", 443), secure=True,
                              connection_id="00", extensions=("http.response.trailers",))

    def withhold_credit(self, stream_id: int, n: int) -> None:
        self.withheld[stream_id] = self.withheld.get(stream_id, 0) + n

    def return_credit(self, stream_id: int, n: int) -> None:
        self.withheld[stream_id] -= n

    def stream_send_buffered(self, stream_id: int) -> int:
        return self.quic.unacked.get(stream_id, 0)

    def stream_send_pending(self, stream_id: int) -> int:
        # FakeQuic has no packets: written bytes count as unsent until acked.
        return self.quic.unacked.get(stream_id, 0)

    def in_early_data(self) -> bool:
        return self.early


class Pair:
    """aioquic's H3 client and quicserve's H3Adapter, wired through FakeQuic."""

    def __init__(self, app: Any, *, chunk: int | None = None, **options: Any) -> None:
        self.config = Config(**options)
        self.ctx, self.dispatcher = make_context(self.config, app, clock=lambda: 0.0)
        self.client_quic = FakeQuic(is_client=True)
        self.client = H3Connection(self.client_quic)  # type: ignore[arg-type]
        self.server_quic = FakeQuic(is_client=False)
        self.session = FakeSession(self.server_quic)
        self.adapter = H3Adapter(ctx=self.ctx, quic=self.server_quic,  # type: ignore[arg-type]
                                 session=self.session)
        #: Deliver client bytes in pieces of this size (None: as written).
        self.chunk = chunk
        self.responses: dict[int, Response] = {}

    def to_server(self) -> bool:
        events = self.client_quic.take()
        for event in events:
            for piece in self._split(event):
                self.adapter.handle_event(piece)
        return bool(events)

    def _split(self, event: QuicEvent) -> list[QuicEvent]:
        if self.chunk is None or not isinstance(event, StreamDataReceived) or not event.data:
            return [event]
        data, n = event.data, self.chunk
        pieces: list[QuicEvent] = [
            StreamDataReceived(data=data[i:i + n], end_stream=False, stream_id=event.stream_id)
            for i in range(0, len(data), n)]
        if event.end_stream:
            pieces.append(StreamDataReceived(data=b"", end_stream=True, stream_id=event.stream_id))
        return pieces

    def to_client(self) -> bool:
        self.adapter.flush_held()  # what QuicSession does before each flush
        events = self.server_quic.take()
        for event in events:
            if isinstance(event, StreamReset) and event.stream_id % 4 == 0:
                self.responses.setdefault(event.stream_id, Response()).reset_code = event.error_code
            for http_event in self.client.handle_event(event):
                self._record(http_event)
        return bool(events)

    def _record(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            response = self.responses.setdefault(event.stream_id, Response())
            if response.headers:
                response.trailers = list(event.headers)
            else:
                response.headers = list(event.headers)
            response.ended = response.ended or event.stream_ended
        elif isinstance(event, DataReceived):
            response = self.responses.setdefault(event.stream_id, Response())
            response.body += event.data
            response.ended = response.ended or event.stream_ended

    async def pump(self, until: Callable[[], bool], *, ack: bool = True, rounds: int = 3000) -> None:
        for _ in range(rounds):
            self.to_server()
            await asyncio.sleep(0)
            self.to_client()
            if ack:
                self.server_quic.ack()
                self.adapter.on_send_capacity()
            if until():
                return
        raise AssertionError(f"never reached the expected state: {self.responses}")

    def request(self, method: str = "GET", path: str = "/", *, body: bytes | None = None,
                headers: list[tuple[bytes, bytes]] | None = None, end: bool = True) -> int:
        stream_id = self.client_quic.get_next_available_stream_id()
        fields = headers if headers is not None else [
            (b":method", method.encode()), (b":scheme", b"https"),
            (b":authority", b"localhost"), (b":path", path.encode())]
        self.client.send_headers(stream_id, fields, end_stream=end and body is None)
        if body is not None:
            self.client.send_data(stream_id, body, end_stream=end)
        self.responses[stream_id] = Response()
        return stream_id

    def done(self, stream_id: int) -> Callable[[], bool]:
        return lambda: self.responses[stream_id].done


def status(response: Response) -> int | None:
    return response.status


# --------------------------------------------------------------------------
# Requests, byte by byte


def test_get_delivered_one_byte_at_a_time() -> None:
    async def main() -> None:
        pair = Pair(apps.hello, chunk=1)
        stream_id = pair.request("GET", "/")
        await pair.pump(pair.done(stream_id))
        response = pair.responses[stream_id]
        assert status(response) == 200 and bytes(response.body) == b"hello"
        assert response.header(b"server") == b"quicserve"
        assert pair.adapter.active_streams() == 0
    run(main())


def test_finished_request_streams_leave_no_h3_state_behind() -> None:
    """The slotted stream scope forgets a stream once both halves ended, as
    aioquic's context manager does: only unidirectional streams stay."""
    async def main() -> None:
        pair = Pair(apps.echo)
        ids = [pair.request("POST", f"/{i}", body=b"x" * i) for i in range(20)]
        for stream_id in ids:
            await pair.pump(pair.done(stream_id))
        h3 = pair.adapter._h3
        assert h3._stream and all(sid % 4 != 0 for sid in h3._stream), sorted(h3._stream)
        assert [bytes(pair.responses[sid].body) for sid in ids] == [b"x" * i for i in range(20)]
    run(main())


def test_qpack_acknowledgements_of_one_batch_leave_in_one_write() -> None:
    """Request heads that use the client's dynamic table are acknowledged on
    the decoder stream; the acknowledgements of everything handled before
    ``on_send_capacity`` (one datagram's events) go out in one write."""
    async def main() -> None:
        pair = Pair(apps.hello)
        pair.to_server()
        pair.to_client()  # the client learns our QPACK table capacity
        pair.to_server()
        fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
                  (b":path", b"/"), (b"x-repeated", b"the same value every time")]
        ids = [pair.request(headers=fields) for _ in range(5)]
        h3 = pair.adapter._h3
        decoder_stream = h3._local_decoder_stream_id
        before = len(pair.server_quic.log)
        pair.to_server()
        pair.adapter.on_send_capacity()
        writes = [e for e in pair.server_quic.log[before:]
                  if isinstance(e, StreamDataReceived) and e.stream_id == decoder_stream]
        assert len(writes) == 1 and writes[0].data, writes
        for stream_id in ids:
            await pair.pump(pair.done(stream_id))
        assert h3._decoder_bytes_sent > 0
        assert pair.client._decoder_bytes_received == h3._decoder_bytes_sent
    run(main())


def test_small_response_leaves_in_one_stream_write() -> None:
    """The response head is held until the body: HEADERS, DATA and FIN go
    to QUIC in one write (one stream frame on the wire, not two)."""
    async def main() -> None:
        pair = Pair(apps.hello)
        stream_id = pair.request("GET", "/")
        await pair.pump(pair.done(stream_id))
        writes = [e for e in pair.server_quic.log
                  if isinstance(e, StreamDataReceived) and e.stream_id == stream_id]
        assert len(writes) == 1 and writes[0].end_stream, writes
        assert writes[0].data[:1] == bytes([FrameType.HEADERS])
        assert status(pair.responses[stream_id]) == 200
        assert bytes(pair.responses[stream_id].body) == b"hello"
    run(main())


def test_held_head_goes_out_with_the_flush_when_no_body_follows() -> None:
    """A head whose body is not written in the same turn (a WebSocket accept,
    here a raw sink call) is written by the flush that follows."""
    async def main() -> None:
        pair = Pair(apps.hello)
        pair.to_server()
        stream = RequestStream(pair.adapter, 0)
        pair.adapter.write_head(stream, 200, [])
        assert pair.server_quic.written.get(0, 0) == 0, "held until the flush"
        pair.adapter.flush_held()
        (write,) = [e for e in pair.server_quic.log
                    if isinstance(e, StreamDataReceived) and e.stream_id == 0]
        assert write.data[:1] == bytes([FrameType.HEADERS]) and not write.end_stream
    run(main())


def test_post_body_delivered_one_byte_at_a_time() -> None:
    body = os.urandom(3000)

    async def main() -> None:
        pair = Pair(apps.echo, chunk=1)
        stream_id = pair.request("POST", "/", body=body)
        await pair.pump(pair.done(stream_id))
        assert bytes(pair.responses[stream_id].body) == body
        assert pair.session.withheld[stream_id] == 0, "every body byte read is credited back"
    run(main())


def test_body_credit_is_withheld_until_the_app_reads() -> None:
    gate = asyncio.Event()
    body = b"q" * 50000

    async def main() -> None:
        pair = Pair(apps.slow_reader(gate))
        stream_id = pair.request("POST", "/", body=body)
        for _ in range(20):
            pair.to_server()
            await asyncio.sleep(0)
        assert pair.session.withheld[stream_id] == len(body)
        gate.set()
        await pair.pump(pair.done(stream_id))
        assert bytes(pair.responses[stream_id].body) == body
        assert pair.session.withheld[stream_id] == 0
    run(main())


def test_partial_headers_frame_stays_charged_to_the_stream() -> None:
    """Bytes of a HEADERS frame that is not complete yet sit in memory: they
    are withheld from the stream window until the frame is parsed."""
    async def main() -> None:
        pair = Pair(apps.hello, chunk=1)
        stream_id = pair.request("GET", "/")
        events = pair.client_quic.take()
        request = next(e for e in events if isinstance(e, StreamDataReceived) and e.stream_id == 0)
        for event in events:
            if event is not request:
                pair.adapter.handle_event(event)
        half = len(request.data) // 2
        pair.adapter.handle_event(StreamDataReceived(data=request.data[:half], end_stream=False,
                                                     stream_id=0))
        parsed_frame_header = 2
        assert pair.session.withheld[0] == half - parsed_frame_header
        pair.adapter.handle_event(StreamDataReceived(data=request.data[half:], end_stream=True,
                                                     stream_id=0))
        assert pair.session.withheld[0] == 0
        await pair.pump(pair.done(stream_id))
        assert status(pair.responses[stream_id]) == 200
    run(main())


def test_trailers() -> None:
    async def main() -> None:
        pair = Pair(apps.trailers_app([(b"x-checksum", b"abc")]))
        stream_id = pair.request("GET", "/", headers=[
            (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
            (b":path", b"/"), (b"te", b"trailers")])
        await pair.pump(pair.done(stream_id))
        response = pair.responses[stream_id]
        assert bytes(response.body) == b"data"
        assert response.trailers == [(b"x-checksum", b"abc")]
    run(main())


def test_request_in_early_data_is_flagged_and_unsafe_methods_get_425() -> None:
    async def main() -> None:
        pair = Pair(apps.echo)
        pair.session.early = True
        unsafe = pair.request("POST", "/", body=b"x")
        safe = pair.request("GET", "/")
        await pair.pump(lambda: pair.responses[unsafe].done and pair.responses[safe].done)
        assert status(pair.responses[unsafe]) == 425
        assert status(pair.responses[safe]) == 200
    run(main())


# --------------------------------------------------------------------------
# Malformed requests: that stream only


BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
        (b":path", b"/")]

MALFORMED = {
    # rejected by aioquic's H3 layer (made a stream error by h3_wire)
    "uppercase name": BASE + [(b"X-Upper", b"1")],
    "connection header": BASE + [(b"connection", b"close")],
    "pseudo after regular": [(b":method", b"GET"), (b"x-a", b"1"), (b":path", b"/"),
                             (b":scheme", b"https"), (b":authority", b"localhost")],
    "missing method": BASE[1:],
    # rejected by protocols/head.py
    "protocol without CONNECT": BASE + [(b":protocol", b"websocket")],
    "missing path": BASE[:3],
    "plain CONNECT": [(b":method", b"CONNECT"), (b":authority", b"example.com:443")],
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_head_resets_only_that_stream(name: str) -> None:
    async def main() -> None:
        pair = Pair(apps.echo, chunk=7)
        bad = pair.request(headers=MALFORMED[name], body=b"ignored")
        good = pair.request("POST", "/", body=b"fine")
        await pair.pump(lambda: pair.responses[bad].done and pair.responses[good].done)
        assert pair.server_quic.resets[bad] == ErrorCode.H3_MESSAGE_ERROR
        assert pair.server_quic.stops[bad] == ErrorCode.H3_MESSAGE_ERROR
        assert pair.responses[bad].headers == []
        assert status(pair.responses[good]) == 200
        assert bytes(pair.responses[good].body) == b"fine"
        assert pair.server_quic.closed is None, "a malformed request is a stream error only"
        assert pair.ctx.stats.requests == 1
    run(main())


def test_content_length_mismatch_resets_only_that_stream() -> None:
    async def main() -> None:
        pair = Pair(apps.echo)
        bad = pair.request(headers=[
            (b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"localhost"),
            (b":path", b"/"), (b"content-length", b"10")], body=b"short")
        good = pair.request("POST", "/", body=b"fine")
        await pair.pump(lambda: pair.responses[bad].done and pair.responses[good].done)
        assert pair.server_quic.resets[bad] == ErrorCode.H3_MESSAGE_ERROR
        assert bytes(pair.responses[good].body) == b"fine"
        assert pair.server_quic.closed is None
    run(main())


def test_bytes_after_a_malformed_head_are_dropped_unparsed() -> None:
    async def main() -> None:
        pair = Pair(apps.echo)
        bad = pair.request(headers=MALFORMED["uppercase name"], end=False)
        pair.to_server()
        # Garbage that would be a connection error if it were parsed as frames.
        pair.adapter.handle_event(StreamDataReceived(data=b"\x04\x01\x00", end_stream=True,
                                                     stream_id=bad))
        good = pair.request("GET", "/")
        await pair.pump(pair.done(good))
        assert pair.server_quic.closed is None
        assert status(pair.responses[good]) == 200
    run(main())


# --------------------------------------------------------------------------
# Backpressure


def test_send_body_waits_while_the_stream_is_above_the_high_water_mark() -> None:
    size = 1024 * 1024
    high_water = 64 * 1024

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"z" * size})

    async def main() -> None:
        pair = Pair(app, stream_high_water=high_water)
        stream_id = pair.request("GET", "/")
        for _ in range(50):  # nothing is ever acknowledged
            pair.to_server()
            await asyncio.sleep(0)
        written = pair.server_quic.written[stream_id]
        assert written <= high_water + 1024, "a whole response must never be buffered"
        assert written >= high_water
        # Acknowledge, one round at a time: the response keeps moving.
        await pair.pump(pair.done(stream_id), ack=True)
        assert len(pair.responses[stream_id].body) == size
    run(main())


# --------------------------------------------------------------------------
# Resets and disconnects


def test_client_reset_tells_the_app_and_resets_our_side() -> None:
    seen: list[str] = []

    async def main() -> None:
        pair = Pair(apps.wait_for_disconnect(seen))
        stream_id = pair.request("POST", "/", body=b"partial", end=False)
        await pair.pump(lambda: seen == ["http.request"])
        pair.adapter.handle_event(StreamReset(error_code=ErrorCode.H3_REQUEST_CANCELLED,
                                              stream_id=stream_id))
        await pair.pump(lambda: pair.ctx.stats.app_tasks == 0)
        assert seen == ["http.request", "http.disconnect"]
        assert pair.server_quic.resets[stream_id] == ErrorCode.H3_REQUEST_CANCELLED
        assert pair.adapter.active_streams() == 0
    run(main())


def test_stop_sending_aborts_a_streaming_response() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})

    async def main() -> None:
        pair = Pair(app)
        stream_id = pair.request("GET", "/")
        await pair.pump(lambda: len(pair.responses[stream_id].body) > 5000)
        pair.adapter.handle_event(StopSendingReceived(error_code=ErrorCode.H3_REQUEST_CANCELLED,
                                                      stream_id=stream_id))
        await pair.pump(lambda: pair.ctx.stats.app_tasks == 0)
        assert pair.adapter.active_streams() == 0
    run(main())


def test_connection_lost_wakes_blocked_senders() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"z" * 500000})

    async def main() -> None:
        pair = Pair(app, stream_high_water=16384)
        pair.request("GET", "/")
        for _ in range(20):
            pair.to_server()
            await asyncio.sleep(0)
        assert pair.ctx.stats.app_tasks == 1
        pair.adapter.connection_lost()
        for _ in range(20):
            await asyncio.sleep(0)
        assert pair.ctx.stats.app_tasks == 0
    run(main())


# --------------------------------------------------------------------------
# GOAWAY


def control_frames(events: list[QuicEvent], control: int = 3) -> list[tuple[int, bytes]]:
    data = b"".join(e.data for e in events
                    if isinstance(e, StreamDataReceived) and e.stream_id == control)
    buf = Buffer(data=data)
    buf.pull_uint_var()
    frames = []
    while not buf.eof():
        frame_type, length = buf.pull_uint_var(), buf.pull_uint_var()
        frames.append((frame_type, buf.pull_bytes(length)))
    return frames


def test_shutdown_sends_goaway_naming_the_next_stream_then_closes_when_idle() -> None:
    gate = asyncio.Event()

    async def main() -> None:
        pair = Pair(apps.slow_reader(gate))
        first = pair.request("POST", "/", body=b"a")
        second = pair.request("POST", "/", body=b"b")
        await pair.pump(lambda: pair.ctx.stats.app_tasks == 2)
        pair.adapter.shutdown()
        pair.adapter.shutdown()  # idempotent
        goaways = [f for f in control_frames(pair.server_quic.log) if f[0] == FrameType.GOAWAY]
        assert goaways == [(FrameType.GOAWAY, encode_uint_var(8))]
        late = pair.request("GET", "/")
        await pair.pump(pair.done(late), ack=False)
        assert pair.server_quic.resets[late] == ErrorCode.H3_REQUEST_REJECTED
        assert pair.server_quic.closed is None
        # GOAWAY is acknowledged while the requests are still running.
        pair.server_quic.ack()
        pair.adapter.on_send_capacity()
        assert pair.server_quic.closed is None
        gate.set()
        await pair.pump(lambda: pair.responses[first].done and pair.responses[second].done,
                        ack=False)
        assert pair.server_quic.closed is None, "close waits until the tail is acknowledged"
        pair.server_quic.ack()
        pair.adapter.on_send_capacity()
        assert pair.server_quic.closed == (ErrorCode.H3_NO_ERROR, "shutdown")
    run(main())


def test_shutdown_of_an_idle_connection_closes_once_goaway_is_acknowledged() -> None:
    async def main() -> None:
        pair = Pair(apps.hello)
        pair.adapter.shutdown()
        assert pair.server_quic.closed is None
        pair.server_quic.ack()
        pair.adapter.on_send_capacity()
        assert pair.server_quic.closed == (ErrorCode.H3_NO_ERROR, "shutdown")
    run(main())


# --------------------------------------------------------------------------
# WebSocket over HTTP/3 (RFC 9220)


def test_websocket_over_extended_connect() -> None:
    async def main() -> None:
        pair = Pair(apps.websocket_echo, ws_ping_interval=0)
        stream_id = pair.request(headers=[
            (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
            (b":authority", b"localhost"), (b":path", b"/ws"),
            (b"sec-websocket-version", b"13")], end=False)
        await pair.pump(lambda: bool(pair.responses[stream_id].headers))
        assert status(pair.responses[stream_id]) == 200
        ws = wsproto.connection.Connection(wsproto.connection.ConnectionType.CLIENT)
        pair.client.send_data(stream_id, ws.send(wsproto.events.TextMessage("hi over h3")),
                              end_stream=False)
        texts: list[str] = []

        def got_echo() -> bool:
            body = bytes(pair.responses[stream_id].body)
            pair.responses[stream_id].body.clear()
            ws.receive_data(body)
            texts.extend(e.data for e in ws.events() if isinstance(e, wsproto.events.TextMessage))
            return bool(texts)

        await pair.pump(got_echo)
        assert texts == ["hi over h3"]
    run(main())


# --------------------------------------------------------------------------
# The aioquic internals h3_wire relies on


def test_aioquic_h3_internals_used_by_h3_wire_are_present() -> None:
    """Fails loudly, naming the attribute, when aioquic moves one."""
    for name in ("_handle_request_or_push_frame", "_handle_request_or_push_end", "_stream",
                 "_local_control_stream_id", "_is_client", "_quic",
                 # the hot-path overrides
                 "_get_or_create_stream", "_decode_headers", "_encode_headers", "_decoder",
                 "_encoder", "_decoder_bytes_sent", "_encoder_bytes_sent",
                 "_local_decoder_stream_id", "_local_encoder_stream_id", "_quic_logger",
                 "_check_content_length", "_receive_stream_data"):
        assert hasattr(H3Connection(FakeQuic(is_client=False)), name) or hasattr(H3Connection, name), name  # type: ignore[arg-type]
    stream = H3Stream(0)
    for name in ("buffer", "headers_recv_state", "expected_content_length", "sending_ended",
                 "receiving_ended", "push_id", "is_ended"):
        assert hasattr(stream, name), f"H3Stream.{name}"
    assert HeadersState.INITIAL != HeadersState.AFTER_HEADERS
    assert h3_wire.MessageError.__mro__[1].__name__ == "ProtocolError"


def test_stream_state_table_rejects_impossible_moves_by_name() -> None:
    pair = Pair(apps.hello)
    stream = RequestStream(pair.adapter, 0)
    stream.transition(StreamEvent.REQUEST_END)
    assert (stream.receiving, stream.sending) == (False, True)
    stream.transition(StreamEvent.RESPONSE_END)
    assert stream.state is StreamState.CLOSED and stream.finished
    with pytest.raises(StreamStateError, match="stream 0: request end in state closed"):
        stream.transition(StreamEvent.REQUEST_END)


# --------------------------------------------------------------------------
# h3_wire's faster request-head validator against aioquic's


def _random_fields(rng: Any) -> list[tuple[bytes, bytes]]:
    """A request field section that is usually valid and often subtly not."""
    pseudo = [(b":method", b"GET"), (b":scheme", rng.choice([b"https", b"http", b"ftp"])),
              (b":authority", rng.choice([b"localhost", b""])),
              (b":path", rng.choice([b"/", b"/a?b", b""]))]
    rng.shuffle(pseudo)
    if rng.random() < 0.3:
        pseudo.pop(rng.randrange(len(pseudo)))
    if rng.random() < 0.1:
        pseudo.append(rng.choice([(b":protocol", b"websocket"), (b":status", b"200"),
                                  (b":method", b"POST")]))
    names = [b"accept", b"user-agent", b"content-length", b"te", b"connection", b"x-a",
             b"Upper", b"sp ace", b"co:lon", b"\x7f", b"\xc3\xa9", b"", b":late"]
    values = [b"v", b"", b" lead", b"trail\t", b"a\x00b", b"a\rb", b"a\nb", b"\t", b"12",
              b"-1", b"+3", b"x1", b"trailers", b"TRAILERS", b"gzip", b"\x0b7", b"\xff"]
    regular = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randrange(4))]
    fields = pseudo + regular
    if rng.random() < 0.1:
        fields.insert(rng.randrange(len(fields) + 1), (b":path", b"/again"))
    return fields


def test_request_validator_raises_exactly_when_aioquic_does() -> None:
    """Differential: 20 000 seeded field sections, same verdict, same error
    message and same recorded content-length as aioquic's validator."""
    import random

    from aioquic.h3.connection import MessageError, validate_request_headers

    rng = random.Random(9114)
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(20_000):
        fields = _random_fields(rng)
        theirs, ours = H3Stream(0), H3Stream(0)
        expected: str | None = None
        try:
            validate_request_headers(fields, theirs)
        except MessageError as exc:
            expected = exc.reason_phrase
        got: str | None = None
        try:
            h3_wire.validate_request_fields(fields, ours)
        except MessageError as exc:
            got = exc.reason_phrase
        assert got == expected, fields
        assert ours.expected_content_length == theirs.expected_content_length, fields
        outcomes["accepted" if expected is None else "refused"] += 1
    # The generator must exercise both verdicts, or the test proves nothing.
    assert min(outcomes.values()) > 2000, outcomes


# --------------------------------------------------------------------------
# h3_wire's whole-request-head shortcut against aioquic's frame reassembly


class ReassemblingH3(h3_wire.ServerH3Connection):
    """ServerH3Connection with the shortcut off: every byte takes aioquic's path."""

    def _whole_request_head(self, event: StreamDataReceived) -> list[H3Event] | None:
        return None


def _client_events(rng: Any) -> list[QuicEvent]:
    """What an aioquic H3 client sends for a few requests (valid and not)."""
    quic = FakeQuic(is_client=True)
    client = H3Connection(quic)  # type: ignore[arg-type]
    server_settings = H3Connection(FakeQuic(is_client=False))  # type: ignore[arg-type]
    for event in server_settings._quic.take():  # type: ignore[attr-defined]
        client.handle_event(event)  # the client may now use its dynamic table
    for _ in range(rng.randrange(1, 5)):
        stream_id = quic.get_next_available_stream_id()
        fields = [(b":method", rng.choice([b"GET", b"POST"])), (b":scheme", b"https"),
                  (b":authority", b"localhost"), (b":path", b"/%d" % rng.randrange(9))]
        fields += rng.choice([[], [(b"x-same", b"value")], [(b"Bad", b"x")],
                              [(b"content-length", b"3")], [(b"content-length", b"5")]])
        if rng.random() < 0.1:
            fields = fields[1:]  # no :method
        body = rng.random() < 0.4
        client.send_headers(stream_id, fields, end_stream=not body)
        if body:
            client.send_data(stream_id, b"abc", end_stream=True)
    events = quic.take()
    return _mangle(rng, events)


def _mangle(rng: Any, events: list[QuicEvent]) -> list[QuicEvent]:
    """Merge a stream's writes, split them anywhere, and let request streams
    overtake the QPACK encoder stream (so a head may arrive blocked)."""
    by_stream: dict[int, tuple[bytes, bool]] = {}
    order: list[int] = []
    for event in events:
        assert isinstance(event, StreamDataReceived)
        data, end = by_stream.get(event.stream_id, (b"", False))
        if event.stream_id not in by_stream:
            order.append(event.stream_id)
        by_stream[event.stream_id] = (data + event.data, end or event.end_stream)
    if rng.random() < 0.5:
        order.sort(key=lambda sid: (sid % 4 != 0, sid))  # requests before uni streams
    out: list[QuicEvent] = []
    for stream_id in order:
        data, end = by_stream[stream_id]
        cuts = sorted(rng.sample(range(1, len(data)), min(rng.randrange(3), len(data) - 1)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        if rng.random() < 0.1:
            pieces[-1] += b"\x01"  # a truncated frame
        for i, piece in enumerate(pieces):
            out.append(StreamDataReceived(data=piece, end_stream=end and i == len(pieces) - 1,
                                          stream_id=stream_id))
    return out


def _h3_state(h3: h3_wire.ServerH3Connection) -> dict[str, Any]:
    quic: FakeQuic = h3._quic  # type: ignore[assignment]
    return {
        "streams": {sid: dict(vars(s)) for sid, s in h3._stream.items()},
        "done": h3._is_done, "closed": quic.closed, "resets": dict(quic.resets),
        "stops": dict(quic.stops), "discarded": set(h3._discarded),
        "decoder_pending": list(h3._decoder_pending),
        "writes": [(e.stream_id, e.data, getattr(e, "end_stream", None)) for e in quic.log],
    }


def test_whole_request_head_shortcut_matches_aioquics_reassembly() -> None:
    """Differential: 400 seeded client byte streams (split, merged, reordered,
    malformed, QPACK-blocked) give the same events and the same connection
    state with the shortcut as through aioquic's general path."""
    import random

    rng = random.Random(4114)
    took_shortcut = 0
    for _ in range(400):
        events = _client_events(rng)
        fast = h3_wire.ServerH3Connection(FakeQuic(is_client=False))
        slow = ReassemblingH3(FakeQuic(is_client=False))
        for event in events:
            got, want = fast.handle_event(event), slow.handle_event(event)
            assert repr(got) == repr(want), event
            fast.flush_decoder()
            slow.flush_decoder()
        assert _h3_state(fast) == _h3_state(slow)
        took_shortcut += sum(1 for e in events if isinstance(e, StreamDataReceived)
                             and e.stream_id % 4 == 0 and e.data[:1] == b"\x01")
    assert took_shortcut > 200, "the generator must exercise the shortcut"


def test_frame_bytes_is_aioquics_encode_frame() -> None:
    from aioquic.h3.connection import encode_frame

    for size in (0, 1, 13, 63, 64, 65, 300, 16383, 16384, 16385, 70000):
        payload = os.urandom(size)
        for frame_type in (FrameType.DATA, FrameType.HEADERS):
            assert h3_wire.frame_bytes(frame_type, payload) == encode_frame(frame_type, payload)
