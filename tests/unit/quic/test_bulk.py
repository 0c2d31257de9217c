"""quic/bulk.py: the bulk send path, against a real aioquic client in memory.

The first group pins the aioquic private names the bulk path reads and the
set of things aioquic's ``_write_application`` can write, so an aioquic
upgrade that adds a frame kind fails here instead of being skipped silently
by the bulk path.  The rest move real data over a seeded lossy, reordering
in-memory link on a fake clock and check it arrives intact, that the bulk
path built most of the packets, and that it steps aside for what it does not
handle (control frames other than ACK and connection limits, qlog).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import inspect
import os
import random
import textwrap
from typing import Any, Callable

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.logger import QuicLogger
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.stream import QuicStream

from quicserve.quic import bulk, internals
from quicserve.quic.cid import CidIssuer, StatelessResetKeys
from quicserve.quic.internals import ManagedQuicConnection
from tests.support.certs import CertSet

CLIENT_ADDR = ("127.0.0.1", 50000)
SERVER_ADDR = ("127.0.0.1", 4433)

#: Every ``self.<name>`` aioquic 1.7's _write_application reads.  The bulk
#: path checks each pending-work flag among them; a new name means aioquic
#: may write a new kind of frame there, and bulk.py must learn about it.
KNOWN_WRITE_APPLICATION_NAMES = {
    "_cryptos", "_crypto_streams", "_spaces", "_pacing_at", "_loss", "_write_ack_frame",
    "_handshake_complete", "_write_path_challenge_frame", "_configuration",
    "_handshake_done_pending", "_write_handshake_done_frame", "_write_path_response_frame",
    "_host_cids", "_write_new_connection_id_frame", "_retire_connection_ids",
    "_write_retire_connection_id_frame", "_streams_blocked_pending",
    "_streams_blocked_bidi", "_write_streams_blocked_frame", "_remote_max_streams_bidi",
    "_streams_blocked_uni", "_remote_max_streams_uni", "_write_connection_limits",
    "_streams", "_write_stream_limits", "_ping_pending", "_write_ping_frame",
    "_probe_pending", "_write_crypto_frame", "_datagrams_pending", "_write_datagram_frame",
    "_streams_queue", "_logger", "_is_client", "_stream_limit", "_write_stop_sending_frame",
    "_write_reset_stream_frame", "_write_stream_frame", "_remote_max_data",
    "_remote_max_data_used",
}


# -- pins -------------------------------------------------------------------------------

def test_write_application_reads_only_known_state() -> None:
    tree = ast.parse(textwrap.dedent(inspect.getsource(QuicConnection._write_application)))
    names = {node.attr for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
             and node.value.id == "self"}
    new = names - KNOWN_WRITE_APPLICATION_NAMES
    assert not new, (f"aioquic's _write_application now reads {sorted(new)}: check whether "
                     f"quicserve/quic/bulk.py must step aside for it")


def test_pinned_packet_and_crypto_internals(certs: CertSet) -> None:
    fields = {f.name for f in dataclasses.fields(QuicSentPacket)}
    assert {"epoch", "in_flight", "is_ack_eliciting", "is_crypto_packet", "packet_number",
            "packet_type", "sent_bytes", "delivery_handlers"} <= fields
    pair = Pair(certs)
    pair.handshake()
    server = pair.server
    for name in ("_handshake_confirmed", "_quic_logger", "_local_max_data",
                 "_local_max_streams_bidi", "_local_max_streams_uni", "_on_ack_delivery",
                 "_local_ack_delay_exponent", "_spin_bit", "_on_connection_limit_delivery",
                 "_stream_limit"):
        assert hasattr(server, name), f"aioquic QuicConnection.{name} is gone"
    for limit in (server._local_max_data, server._local_max_streams_bidi):
        assert {"frame_type", "value", "sent", "used"} <= set(dir(limit))
    sender = QuicStream(stream_id=0).sender
    assert len(sender._pending) == 0 and sender._pending_eof is False
    crypto = server._cryptos[bulk._ONE_RTT]
    assert callable(crypto.send.aead.encrypt) and callable(crypto.send.hp._mask)
    assert crypto.send.hp._is_chacha20 is False
    assert crypto._update_key_requested is False and crypto.aead_tag_size == 16
    space = server._spaces[bulk._ONE_RTT]
    for name in ("ack_at", "ack_queue", "largest_received_time", "largest_received_packet"):
        assert hasattr(space, name), f"aioquic QuicPacketSpace.{name} is gone"
    pacer = server._loss._pacer
    assert callable(pacer.update_bucket)
    for name in ("packet_time", "bucket_time", "bucket_max", "evaluation_time"):
        assert hasattr(pacer, name), f"aioquic QuicPacketPacer.{name} is gone"
    # bulk.py seals with the cipher directly and makes the nonce as AEAD does.
    aead = crypto.send.aead
    for number in (0, 1, 0xFFFF, 2 ** 40 + 7):
        assert aead._aead.encrypt((aead._iv ^ number).to_bytes(12, "big"), b"payload",
                                  b"header") == aead.encrypt(b"payload", b"header", number)


@pytest.mark.parametrize("value", [0, 1, 0x3F, 0x40, 0x3FFF, 0x4000, 0x3FFFFFFF, 0x40000000,
                                   2 ** 62 - 1])
def test_varint_matches_aioquics(value: int) -> None:
    from aioquic.buffer import encode_uint_var

    assert bulk._varint(value) == encode_uint_var(value)


# -- an in-memory link ------------------------------------------------------------------

def server_configuration(certs: CertSet, **kwargs: Any) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=["h3"], **kwargs)
    configuration.load_cert_chain(str(certs.cert), str(certs.key))
    return configuration


class Pair:
    """An aioquic client and a ManagedQuicConnection over a seeded link that
    drops datagrams at random and swaps the first two of each server flush,
    on a fake clock."""

    def __init__(self, certs: CertSet, *, loss: float = 0.0, seed: int = 1,
                 client_kwargs: dict[str, Any] | None = None,
                 server_kwargs: dict[str, Any] | None = None) -> None:
        client_configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                                 server_name="localhost",
                                                 **(client_kwargs or {}))
        client_configuration.load_verify_locations(cafile=str(certs.ca))
        self.client = QuicConnection(configuration=client_configuration)
        self.server_configuration = server_configuration(certs, **(server_kwargs or {}))
        self.server: ManagedQuicConnection = None  # type: ignore[assignment]
        self.loss = loss
        self.random = random.Random(seed)
        self.now = 0.0
        self.received: dict[int, bytearray] = {}
        self.finished: set[int] = set()
        self.dropped = 0
        #: Called with each event the server connection produces.
        self.on_server_event: Callable[[Any], None] | None = None

    def _make_server(self, first: bytes) -> None:
        self.server = ManagedQuicConnection(
            configuration=self.server_configuration, cid_issuer=CidIssuer(length=8),
            reset_keys=StatelessResetKeys(b"k" * 32),
            original_destination_connection_id=first[6:6 + first[5]])

    def _lost(self) -> bool:
        if self.loss and self.random.random() < self.loss:
            self.dropped += 1
            return True
        return False

    def step(self) -> int:
        moved = 0
        for data, _ in self.client.datagrams_to_send(now=self.now):
            if self.server is None:
                self._make_server(data)
            elif self._lost():
                continue
            self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
            moved += 1
        if self.server is not None:
            event = self.server.next_event()
            while event is not None:
                if self.on_server_event is not None:
                    self.on_server_event(event)
                event = self.server.next_event()
            outgoing = self.server.datagrams_to_send(now=self.now)
            if len(outgoing) > 2:  # reorder a little, as a real path may
                outgoing[0], outgoing[1] = outgoing[1], outgoing[0]
            for data, _ in outgoing:
                assert len(data) <= self.server_configuration.max_datagram_size
                if self._lost():
                    continue
                self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
                moved += 1
        event = self.client.next_event()
        while event is not None:
            if isinstance(event, StreamDataReceived):
                self.received.setdefault(event.stream_id, bytearray()).extend(event.data)
                if event.end_stream:
                    self.finished.add(event.stream_id)
            event = self.client.next_event()
        return moved

    def run(self, until: Callable[[], bool], rounds: int = 20000) -> None:
        """Exchange until ``until()`` (bounded), waking timers on the fake clock."""
        for _ in range(rounds):
            if until():
                return
            if self.step() == 0:
                timers = [t for t in (self.client.get_timer(),
                                      self.server.get_timer() if self.server else None)
                          if t is not None]
                self.now = max(self.now + 0.001, min(timers)) if timers else self.now + 0.001
                for conn in (self.client, self.server):
                    timer = conn.get_timer() if conn is not None else None
                    if timer is not None and timer <= self.now:
                        conn.handle_timer(now=self.now)
            else:
                self.now += 0.0005
        raise AssertionError("the exchange did not finish in the allotted rounds")

    def handshake(self) -> None:
        self.client.connect(SERVER_ADDR, now=self.now)
        self.run(lambda: self.server is not None and self.server._handshake_confirmed
                 and self.client._handshake_confirmed)


class Counting:
    """Counts write_bulk calls that took the bulk path, and the packets it built."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.taken = 0
        self.declined = 0
        real = bulk.write_bulk

        def counted(conn: Any, builder: Any, network_path: Any, now: float) -> bool:
            if real(conn, builder, network_path, now):
                self.taken += 1
                return True
            self.declined += 1
            return False
        monkeypatch.setattr(internals, "write_bulk", counted)


def download(pair: Pair, body: bytes, stream_id: int | None = None) -> int:
    """The client asks on a new stream; the server answers ``body`` with FIN."""
    sid = pair.client.get_next_available_stream_id() if stream_id is None else stream_id
    pair.client.send_stream_data(sid, b"GET", end_stream=True)
    pair.run(lambda: sid in pair.server._streams
             and pair.server._streams[sid].receiver.is_finished)
    pair.server.send_stream_data(sid, body, end_stream=True)
    return sid


# -- behaviour --------------------------------------------------------------------------

@pytest.mark.parametrize("loss", [0.0, 0.03])
def test_download_arrives_intact_and_mostly_through_the_bulk_path(
        certs: CertSet, monkeypatch: pytest.MonkeyPatch, loss: float) -> None:
    counting = Counting(monkeypatch)
    pair = Pair(certs, loss=loss, seed=7)
    pair.handshake()
    body = os.urandom(2 * 1024 * 1024)
    sid = download(pair, body)
    pair.run(lambda: sid in pair.finished)
    assert hashlib.sha256(pair.received[sid]).digest() == hashlib.sha256(body).digest()
    assert counting.taken > counting.declined, (counting.taken, counting.declined)
    # Packets the client could not open would be declared lost and sent again:
    # the server sent about as many packets as the data needs, and quickly.
    needed = len(body) / 1150  # (aioquic's default 1200-byte datagrams)
    assert pair.server._packet_number < needed * (1.3 if loss else 1.1)
    assert pair.now < (2.0 if loss else 0.5)
    if loss:
        assert pair.dropped > 10
    # Everything sent was acknowledged: nothing left in flight on either side.
    pair.run(lambda: pair.server._loss.bytes_in_flight == 0
             and not pair.server._streams.get(sid))


def test_each_bulk_flush_is_paced_as_aioquics_pacer_would(
        certs: CertSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """bulk.py keeps the pacer's token bucket itself: on every flush of a
    download, a copy of aioquic's own pacer, asked packet by packet as
    aioquic asks it, allows exactly the packets bulk.py sent (the first one
    unasked when it carries a due ACK), ends with the same bucket, and names
    the same next send time when the flush stopped for pacing."""
    real = bulk._write_packets
    checked = {"flushes": 0, "paced_stops": 0}

    def checked_write(conn: Any, builder: Any, ready: Any, limits: Any, now: float) -> None:
        reference = copy.copy(conn._loss._pacer)
        space = conn._spaces[bulk._ONE_RTT]
        ack_first = space.ack_at is not None and space.ack_at <= now
        before = len(builder._packets)
        real(conn, builder, ready, limits, now)
        sent = len(builder._packets) - before
        # Every flush asks the pacer at least once at ``now`` (the first
        # packet, or the look that found nothing to send), which refills it.
        if reference.packet_time is not None:
            reference.update_bucket(now=now)
        for index in range(sent):
            if not (index == 0 and ack_first):
                assert reference.next_send_time(now=now) is None
            reference.update_after_send(now=now)
        assert conn._loss._pacer.bucket_time == reference.bucket_time
        if conn._pacing_at is not None:
            assert conn._pacing_at == reference.next_send_time(now=now)
            checked["paced_stops"] += 1
        checked["flushes"] += 1

    monkeypatch.setattr(bulk, "_write_packets", checked_write)
    pair = Pair(certs, seed=3)
    pair.handshake()
    body = os.urandom(1024 * 1024)
    sid = download(pair, body)
    pair.run(lambda: sid in pair.finished)
    assert bytes(pair.received[sid]) == body
    assert checked["flushes"] > 20 and checked["paced_stops"] > 5, checked


def test_chacha20_and_a_key_update_mid_download(certs: CertSet,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from aioquic.tls import CipherSuite

    counting = Counting(monkeypatch)
    pair = Pair(certs, server_kwargs={"cipher_suites": [CipherSuite.CHACHA20_POLY1305_SHA256]})
    pair.handshake()
    body = os.urandom(1024 * 1024)
    sid = download(pair, body)
    pair.run(lambda: len(pair.received.get(sid, b"")) > len(body) // 3)
    pair.client.request_key_update()
    pair.run(lambda: sid in pair.finished)
    assert bytes(pair.received[sid]) == body
    assert pair.server._cryptos[bulk._ONE_RTT].key_phase == 1
    assert counting.taken > 0


def test_acks_for_the_client_ride_in_bulk_packets(certs: CertSet,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The client uploads while it downloads: its data is ack-eliciting, so
    ACKs are due during the download and the bulk path carries them."""
    counting = Counting(monkeypatch)
    pair = Pair(certs, loss=0.01, seed=3)
    pair.handshake()
    body = os.urandom(1024 * 1024)
    sid = download(pair, body)
    upload = pair.client.get_next_available_stream_id(is_unidirectional=True)
    chunk = os.urandom(1000)
    for _ in range(200):
        pair.client.send_stream_data(upload, chunk)
        pair.step()
        pair.now += 0.0005
    pair.run(lambda: sid in pair.finished)
    assert bytes(pair.received[sid]) == body
    pair.run(lambda: pair.client._loss.bytes_in_flight == 0)
    assert counting.taken > 0


@pytest.mark.parametrize("limit", ["connection", "stream"])
def test_flow_control_limits_are_respected(certs: CertSet, monkeypatch: pytest.MonkeyPatch,
                                           limit: str) -> None:
    """The peer's MAX_DATA and MAX_STREAM_DATA bound what one flush sends,
    and the connection's credit use is accounted as aioquic does."""
    pair = Pair(certs)
    pair.handshake()
    sid = download(pair, b"")
    pair.run(lambda: sid in pair.finished)
    counting = Counting(monkeypatch)
    other = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(other, b"GET", end_stream=True)
    pair.run(lambda: other in pair.server._streams
             and pair.server._streams[other].receiver.is_finished)
    server = pair.server
    stream = server._streams[other]
    used = server._remote_max_data_used
    if limit == "connection":
        server._remote_max_data = used + 7000
    else:
        stream.max_stream_data_remote = 7000
    server._loss._cc.congestion_window = 10 ** 6  # (the window is not what is tested)
    server.send_stream_data(other, b"f" * 50000, end_stream=True)
    for _ in range(50):  # flush after flush (the pacer spreads them), never delivered
        pair.now += 0.005
        server.datagrams_to_send(now=pair.now)
    assert counting.taken > counting.declined
    assert stream.sender.highest_offset == 7000
    assert server._remote_max_data_used == used + 7000


def test_a_due_ack_goes_out_in_the_first_bulk_packet(certs: CertSet,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pair = Pair(certs)
    pair.handshake()
    sid = download(pair, b"")
    pair.run(lambda: sid in pair.finished)
    pair.run(lambda: pair.client._loss.bytes_in_flight == 0)
    counting = Counting(monkeypatch)
    # The client sends ack-eliciting data; the server's ACK comes due.
    upload = pair.client.get_next_available_stream_id(is_unidirectional=True)
    pair.client.send_stream_data(upload, b"u" * 500)
    for data, _ in pair.client.datagrams_to_send(now=pair.now):
        pair.server.receive_datagram(data, CLIENT_ADDR, now=pair.now)
    assert pair.client._loss.bytes_in_flight > 0
    space = pair.server._spaces[bulk._ONE_RTT]
    assert space.ack_at is not None
    # ... and a download is pending when it is due.
    other = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(other, b"GET", end_stream=True)
    for data, _ in pair.client.datagrams_to_send(now=pair.now):
        pair.server.receive_datagram(data, CLIENT_ADDR, now=pair.now)
    while pair.server.next_event() is not None:
        pass
    pair.server.send_stream_data(other, b"d" * 20000, end_stream=True)
    pair.now = space.ack_at + 0.001
    outgoing = pair.server.datagrams_to_send(now=pair.now)
    assert counting.taken == 1 and space.ack_at is None
    pair.client.receive_datagram(outgoing[0][0], SERVER_ADDR, now=pair.now)
    assert pair.client._loss.bytes_in_flight == 0, "the first packet carried no ACK"
    for data, _ in outgoing[1:]:
        pair.client.receive_datagram(data, SERVER_ADDR, now=pair.now)
    pair.run(lambda: other in pair.finished)
    assert bytes(pair.received[other]) == b"d" * 20000


@pytest.mark.parametrize("loss", [0.0, 0.03])
def test_two_streams_share_the_bulk_path_and_both_arrive(
        certs: CertSet, monkeypatch: pytest.MonkeyPatch, loss: float) -> None:
    pair = Pair(certs, loss=loss, seed=11)
    pair.handshake()
    a = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(a, b"GET", end_stream=True)
    b = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(b, b"GET", end_stream=True)
    pair.run(lambda: all(s in pair.server._streams and
                         pair.server._streams[s].receiver.is_finished for s in (a, b)))
    counting = Counting(monkeypatch)
    body_a, body_b = os.urandom(300000), os.urandom(200000)
    pair.server.send_stream_data(a, body_a, end_stream=True)
    pair.server.send_stream_data(b, body_b, end_stream=True)
    pair.run(lambda: {a, b} <= pair.finished)
    assert bytes(pair.received[a]) == body_a and bytes(pair.received[b]) == body_b
    assert counting.taken > counting.declined, (counting.taken, counting.declined)
    needed = (len(body_a) + len(body_b)) / 1150
    assert pair.server._packet_number < needed * (1.3 if loss else 1.1) + 20
    pair.run(lambda: pair.server._loss.bytes_in_flight == 0 and not pair.server._streams)


@pytest.mark.parametrize("loss", [0.0, 0.02])
def test_many_small_responses_share_packets_and_streams_are_recycled(
        certs: CertSet, monkeypatch: pytest.MonkeyPatch, loss: float) -> None:
    """Small responses on many streams at once, more streams than the
    initial limit: the bulk path packs several responses per packet,
    discards the finished streams and writes the MAX_STREAMS frames that let
    the client open the rest."""
    pair = Pair(certs, loss=loss, seed=5)
    pair.handshake()
    server = pair.server
    initial_limit = server._local_max_streams_bidi.value
    answered: set[int] = set()

    def answer(event: Any) -> None:
        if isinstance(event, StreamDataReceived) and event.end_stream:
            body = b"response %d" % event.stream_id
            server.send_stream_data(event.stream_id, body, end_stream=True)
            answered.add(event.stream_id)
    pair.on_server_event = answer
    counting = Counting(monkeypatch)
    wanted = []
    for _ in range(initial_limit * 3):
        sid = pair.client.get_next_available_stream_id()
        pair.client.send_stream_data(sid, b"GET /", end_stream=True)
        wanted.append(sid)
    packets_before = server._packet_number
    pair.run(lambda: set(wanted) <= pair.finished)
    for sid in wanted:
        assert bytes(pair.received[sid]) == b"response %d" % sid
    assert counting.taken > counting.declined, (counting.taken, counting.declined)
    assert server._local_max_streams_bidi.sent >= initial_limit * 3
    if not loss:  # (about 40 bytes per response: dozens share each packet)
        assert server._packet_number - packets_before < len(wanted) / 4
    pair.run(lambda: pair.server._loss.bytes_in_flight == 0 and not pair.server._streams)
    assert len(server._streams_queue) == 0


def test_qlog_means_aioquic_builds_every_packet(certs: CertSet,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    counting = Counting(monkeypatch)
    pair = Pair(certs, server_kwargs={"quic_logger": QuicLogger()})
    pair.handshake()
    body = os.urandom(200 * 1024)
    sid = download(pair, body)
    pair.run(lambda: sid in pair.finished)
    assert bytes(pair.received[sid]) == body
    assert counting.taken == 0 and counting.declined > 0


def test_declining_changes_nothing(certs: CertSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_bulk returns False without touching the builder when a control
    frame is due (here a PING the application asked for)."""
    pair = Pair(certs)
    pair.handshake()
    sid = download(pair, b"z" * 10000)
    pair.server.send_ping(1)
    seen: list[tuple[bool, bool]] = []
    real = bulk.write_bulk

    def spy(conn: Any, builder: Any, network_path: Any, now: float) -> bool:
        before = (builder._packet_number, len(builder._datagrams), builder._buffer.tell())
        taken = real(conn, builder, network_path, now)
        after = (builder._packet_number, len(builder._datagrams), builder._buffer.tell())
        seen.append((taken, before != after))
        return taken
    monkeypatch.setattr(internals, "write_bulk", spy)
    pair.run(lambda: sid in pair.finished)
    assert bytes(pair.received[sid]) == b"z" * 10000
    assert seen[0] == (False, False)
    assert not any(changed for taken, changed in seen if not taken)
