"""Flood defences: FloodGuard on its own, then each flood against H2Adapter.

Every adapter test checks the wire: the offender gets GOAWAY ENHANCE_YOUR_CALM
and the connection closes, and what the server wrote stays small.
"""

from __future__ import annotations

import h2.config
import h2.connection
import pytest
from h2.errors import ErrorCodes

from quicserve.protocols.h2 import H2Adapter
from quicserve.protocols.h2_flood import (
    PREFACE_LENGTH,
    FloodGuard,
    FloodKind,
    FloodLimits,
    count_error_resets,
)
from tests.support.bytelink import ByteLink, FakeClock, make_conn, make_context
from tests.support.h2_peers import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    HEADERS,
    PRIORITY,
    H2Client,
    RecordingFactory,
    frame,
    goaway_code,
    ping_frame,
    rst_frame,
    settings_frame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LIMITS = FloodLimits(max_resets=5, max_control_frames=10, window=10.0, max_header_block=1000)


def guard() -> FloodGuard:
    g = FloodGuard(LIMITS, expect_preface=True)
    assert g.scan_untrusted(PREFACE, 0.0) is None
    return g


# -- FloodGuard -------------------------------------------------------------------------------


def test_control_frames_within_the_budget_pass() -> None:
    assert guard().scan_untrusted(ping_frame() * 10, 0.0) is None


def test_one_control_frame_too_many_is_a_flood() -> None:
    flood = guard().scan_untrusted(ping_frame() * 11, 0.0)
    assert flood is not None and flood.kind is FloodKind.CONTROL_FRAMES


@pytest.mark.parametrize("make", [
    lambda: settings_frame(),
    lambda: frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
    lambda: frame(DATA, 0, 1, b""),
    lambda: frame(0xFA, 0, 0, b"unknown extension"),
], ids=["settings", "priority", "empty-data", "unknown"])
def test_every_kind_of_cheap_frame_counts(make: object) -> None:
    data = b"".join(make() for _ in range(11))  # type: ignore[operator]
    flood = guard().scan_untrusted(data, 0.0)
    assert flood is not None and flood.kind is FloodKind.CONTROL_FRAMES


def test_data_with_end_stream_and_window_updates_do_not_count() -> None:
    g = guard()
    data = frame(DATA, 0x1, 1, b"") * 50 + frame(0x8, 0, 0, (1).to_bytes(4, "big")) * 50
    assert g.scan_untrusted(data, 0.0) is None


def test_resets_are_counted_apart() -> None:
    g = guard()
    assert g.scan_untrusted(b"".join(rst_frame(2 * n + 1) for n in range(5)), 0.0) is None
    flood = g.scan_untrusted(rst_frame(99), 0.0)
    assert flood is not None and flood.kind is FloodKind.RESETS


def test_server_resets_share_the_reset_budget() -> None:
    g = guard()
    g.scan_untrusted(rst_frame(1) * 3, 0.0)
    assert g.count_server_resets(1, 0.0) is None
    assert g.count_server_resets(1, 0.0) is None
    assert g.count_server_resets(1, 0.0) is not None


def test_error_resets_are_found_in_server_output() -> None:
    output = (frame(0x4, 0x1, 0, b"") + rst_frame(1, 0x7) + frame(DATA, 0, 3, b"x" * 100)
              + rst_frame(5, 0x0) + rst_frame(7, 0x1))
    assert count_error_resets(output) == 2, "NO_ERROR resets are not the client's doing"


def test_the_window_restarts() -> None:
    g = guard()
    assert g.scan_untrusted(ping_frame() * 10, 0.0) is None
    assert g.scan_untrusted(ping_frame() * 10, 10.5) is None
    assert g.scan_untrusted(ping_frame(), 11.0) is not None


def test_frames_split_across_chunks_are_counted_once() -> None:
    g = guard()
    data = ping_frame() * 10 + frame(DATA, 0x1, 1, b"x" * 500) + ping_frame()
    # The verdict comes with the ninth byte of the eleventh PING's header.
    verdict_at = len(data) - 8 - 1
    for i in range(verdict_at):
        assert g.scan_untrusted(data[i:i + 1], 0.0) is None, f"flood declared early at byte {i}"
    flood = g.scan_untrusted(data[verdict_at:verdict_at + 1], 0.0)
    assert flood is not None and flood.count == 11


def test_preface_split_one_byte_at_a_time() -> None:
    g = FloodGuard(LIMITS, expect_preface=True)
    for i in range(PREFACE_LENGTH):
        assert g.scan_untrusted(PREFACE[i:i + 1], 0.0) is None
    assert g.scan_untrusted(ping_frame() * 11, 0.0) is not None


def test_payloads_are_skipped_not_parsed() -> None:
    """A DATA payload that looks like PING frames is not counted."""
    g = guard()
    fake = ping_frame() * 100
    assert g.scan_untrusted(frame(DATA, 0x1, 1, fake), 0.0) is None


def test_unfinished_header_block_is_bounded() -> None:
    g = guard()
    assert g.scan_untrusted(frame(HEADERS, 0, 1, b"a" * 400), 0.0) is None
    assert g.scan_untrusted(frame(CONTINUATION, 0, 1, b"b" * 400), 0.0) is None
    flood = g.scan_untrusted(frame(CONTINUATION, 0, 1, b"c" * 400), 0.0)
    assert flood is not None and flood.kind is FloodKind.HEADER_BLOCK


def test_finished_header_blocks_reset_the_count() -> None:
    g = guard()
    for n in range(10):
        block = frame(HEADERS, 0, 2 * n + 1, b"a" * 600) + frame(CONTINUATION, END_HEADERS,
                                                                  2 * n + 1, b"b" * 300)
        assert g.scan_untrusted(block, 0.0) is None


def test_a_flood_verdict_sticks() -> None:
    g = guard()
    assert g.scan_untrusted(ping_frame() * 11, 0.0) is not None
    assert g.scan_untrusted(b"", 100.0) is not None


# -- against the adapter ------------------------------------------------------------------------


def open_adapter(**options: object) -> tuple[ByteLink, H2Client, RecordingFactory]:
    clock = FakeClock()
    link = ByteLink(clock)
    factory = RecordingFactory()
    ctx = make_context(factory, clock=clock, **options)
    link.attach(H2Adapter(ctx=ctx, transport=link, conn=make_conn()))
    client = H2Client(link)
    client.exchange()
    return link, client, factory


def assert_calmed(link: ByteLink, written: bytes) -> None:
    assert goaway_code(written) == ErrorCodes.ENHANCE_YOUR_CALM
    assert link.closed


def test_ping_flood_gets_goaway_and_bounded_acks() -> None:
    link, client, _ = open_adapter(h2_max_control_frames_per_window=50)
    client.raw(ping_frame() * 10000)
    written = link.take()
    assert_calmed(link, written)
    assert len(written) < 200, "the flood chunk produced no PING ACKs"


def test_pings_spread_over_windows_are_answered() -> None:
    link, client, _ = open_adapter(h2_max_control_frames_per_window=50, h2_flood_window=1.0)
    for _ in range(5):
        client.raw(ping_frame() * 40)
        link.clock.now += 1.5
    written = link.take()
    assert not link.closed
    assert written.count(frame(0x6, 0x1, 0, (0).to_bytes(8, "big"))) == 200


def test_settings_flood_gets_goaway() -> None:
    link, client, _ = open_adapter(h2_max_control_frames_per_window=50)
    for _ in range(60):
        client.raw(settings_frame())
    assert_calmed(link, link.take())


def test_empty_data_flood_gets_goaway() -> None:
    link, client, factory = open_adapter(h2_max_control_frames_per_window=50)
    stream_id = client.request("POST", "/", end=False)
    client.exchange()
    client.raw(frame(DATA, 0, stream_id, b"") * 60)
    assert_calmed(link, link.take())
    assert factory.last.aborted is not None


def test_priority_flood_gets_goaway() -> None:
    link, client, _ = open_adapter(h2_max_control_frames_per_window=50)
    client.raw(b"".join(frame(PRIORITY, 0, 2 * n + 1, b"\x00\x00\x00\x00\x10")
                        for n in range(60)))
    assert_calmed(link, link.take())


def test_rapid_reset_gets_goaway() -> None:
    link, client, factory = open_adapter(h2_max_resets_per_window=20)
    for _ in range(30):
        stream_id = client.request("GET", "/")
        client.conn.reset_stream(stream_id)
        client.raw(b"")
        if link.closed:
            break
    assert_calmed(link, link.take())
    assert len(factory.handlers) <= 21


def test_streams_opened_and_reset_in_one_read_never_reach_the_app() -> None:
    link, client, factory = open_adapter()
    for _ in range(10):
        stream_id = client.request("GET", "/")
        client.conn.reset_stream(stream_id)
    client.exchange()
    assert not factory.handlers
    kept = client.request("GET", "/kept")
    client.exchange()
    assert len(factory.handlers) == 1 and factory.last.head.target == b"/kept"
    assert not link.closed


def test_streams_reset_by_the_server_count_too() -> None:
    """Malformed requests the server must reset (MadeYouReset) share the budget."""
    link, client, factory = open_adapter(h2_max_resets_per_window=20)
    for n in range(30):
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, [(b":method", b"CONNECT"),
                                             (b":authority", b"example.com:443")])
        client.raw(b"")
        if link.closed:
            break
    assert_calmed(link, link.take())
    assert not factory.handlers


def test_data_on_closed_streams_flood_gets_goaway() -> None:
    """Each DATA frame on a closed stream makes h2 answer RST_STREAM by itself;
    those resets count, so a client that never reads cannot grow the output."""
    link, client, factory = open_adapter(h2_max_resets_per_window=20)
    stream_id = client.request("POST", "/", end=False)
    client.exchange()
    client.conn.reset_stream(stream_id)
    client.exchange()
    assert factory.last.aborted is not None
    written = b""
    for _ in range(50):
        client.raw(frame(DATA, 0, stream_id, b"z"))
        written += link.take()
        if link.closed:
            break
    assert_calmed(link, written)
    assert written.count(rst_frame(stream_id, 0x5)) <= 20


def test_continuation_flood_gets_goaway() -> None:
    link, client, _ = open_adapter(h2_max_header_list_size=4096)
    encoder = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True)).encoder
    block = encoder.encode([(b":method", b"GET"), (b":scheme", b"https"),
                            (b":authority", b"x"), (b":path", b"/")])
    client.raw(frame(HEADERS, 0, 1, block))
    for _ in range(20):
        client.raw(frame(CONTINUATION, 0, 1, b"\x00" * 1000))
        if link.closed:
            break
    assert_calmed(link, link.take())


def test_well_behaved_traffic_is_never_mistaken_for_a_flood() -> None:
    link, client, factory = open_adapter(h2_max_control_frames_per_window=20,
                                         h2_max_resets_per_window=10)
    for n in range(200):
        stream_id = client.request("POST", "/", body=b"x" * 100)
        client.exchange()
        sink = factory.last.sink
        sink.credit(100)
        sink.send_head(200, [])
        from tests.support.bytelink import run_now
        run_now(sink.send_body(b"ok", True))
        client.exchange()
        assert client.responses[stream_id].ended
    assert not link.closed
