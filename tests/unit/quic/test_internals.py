"""ManagedQuicConnection against a real aioquic client, in memory, with a fake clock.

The first group pins every aioquic private name quic/internals.py touches:
when aioquic changes one, the failure names it.  The rest prove the
behaviour end to end: connection IDs, reset tokens, the stream limit,
withheld receive credit and stateless session tickets with 0-RTT.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import logging
import os
import re
import textwrap
from typing import Any, Callable

import pytest
from aioquic import tls
from aioquic.quic import connection as aioquic_connection
from aioquic.quic import stream as aioquic_stream
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionId
from aioquic.quic.events import (
    ConnectionIdIssued, HandshakeCompleted, QuicEvent, StreamDataReceived,
)
from aioquic.quic.logger import QuicLogger

from quicserve.quic.cid import CidIssuer, StatelessResetKeys
from quicserve.quic.internals import (
    ManagedQuicConnection, grant_stream_credit, stream_send_buffered, withhold_stream_credit,
)
from quicserve.quic.router import CidRouter, Create, Reply
from quicserve.quic.tokens import TICKET_MARKER, RetryTokens, SessionTicketStore
from tests.support.certs import CertSet

CLIENT_ADDR = ("127.0.0.1", 50000)
SERVER_ADDR = ("127.0.0.1", 4433)
RESET_KEYS = StatelessResetKeys(b"s" * 32)


# -- pins -------------------------------------------------------------------------------

def pin(obj: object, name: str) -> Any:
    if not hasattr(obj, name):
        pytest.fail(f"aioquic changed: {getattr(obj, '__name__', type(obj).__name__)}.{name} "
                    f"is gone; update quicserve/quic/internals.py")
    return getattr(obj, name)


@pytest.mark.parametrize("name", [
    "_replenish_connection_ids", "_write_stream_limits", "_push_crypto_data",
    "_on_max_stream_data_delivery", "datagrams_to_send",
])
def test_pinned_methods(name: str) -> None:
    assert callable(pin(QuicConnection, name))


def test_pinned_method_signatures() -> None:
    params = list(inspect.signature(QuicConnection._write_stream_limits).parameters)
    assert params == ["self", "builder", "space", "stream"], \
        f"aioquic changed QuicConnection._write_stream_limits signature: {params}"
    assert list(inspect.signature(QuicConnection._replenish_connection_ids).parameters) \
        == ["self"], "aioquic changed QuicConnection._replenish_connection_ids signature"
    assert list(inspect.signature(QuicConnection._push_crypto_data).parameters) == ["self"], \
        "aioquic changed QuicConnection._push_crypto_data signature"


def test_pinned_module_names() -> None:
    assert isinstance(pin(aioquic_connection, "MAX_STREAM_DATA_FRAME_CAPACITY"), int)
    assert callable(pin(tls, "push_new_session_ticket"))
    fields = {f.name for f in dataclasses.fields(tls.NewSessionTicket)}
    assert {"ticket_lifetime", "ticket_age_add", "ticket_nonce", "ticket",
            "max_early_data_size"} <= fields, f"aioquic changed tls.NewSessionTicket: {fields}"
    fields = {f.name for f in dataclasses.fields(QuicConnectionId)}
    assert {"cid", "sequence_number", "stateless_reset_token", "was_sent"} <= fields, \
        f"aioquic changed QuicConnectionId: {fields}"


def test_pinned_instance_attributes(certs: CertSet) -> None:
    conn = QuicConnection(configuration=server_configuration(certs),
                          original_destination_connection_id=os.urandom(8))
    for name in ("_host_cids", "_local_initial_source_connection_id", "_local_max_streams_bidi",
                 "_crypto_buffers", "_streams", "_quic_logger", "_configuration", "_pacing_at"):
        pin(conn, name)
    limit = conn._local_max_streams_bidi
    for name in ("value", "sent", "used"):
        pin(limit, name)
    assert limit.value == 128, (
        "aioquic changed its default initial max_streams_bidi "
        f"(_local_max_streams_bidi.value = {limit.value})")
    assert len(conn._host_cids) == 1 and conn._host_cids[0].cid == conn.host_cid


def test_pinned_stream_internals() -> None:
    stream = aioquic_stream.QuicStream(stream_id=0, max_stream_data_local=100,
                                       max_stream_data_remote=100)
    for name in ("max_stream_data_local", "max_stream_data_local_sent", "receiver", "sender",
                 "stream_id"):
        pin(stream, name)
    pin(stream.receiver, "is_finished")
    assert stream.receiver.starting_offset() == 0
    for name in ("_buffer_start", "_buffer_stop"):
        pin(stream.sender, name)
    stream.sender.write(b"abc")
    assert stream.sender._buffer_stop - stream.sender._buffer_start == 3


def test_aioquic_stream_limits_act_only_on_the_conditions_internals_checks() -> None:
    """ManagedQuicConnection skips aioquic's _write_stream_limits for an
    unmanaged stream unless the limit is due to double or differs from what
    was sent: those must stay the only two things it acts on."""
    source = textwrap.dedent(inspect.getsource(QuicConnection._write_stream_limits))
    assert "stream.receiver.highest_offset * 2 > stream.max_stream_data_local" in source
    assert "stream.max_stream_data_local_sent != stream.max_stream_data_local" in source
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    steps = [node for node in body if not isinstance(node, ast.Expr)]  # the docstring
    assert len(steps) == 2 and all(isinstance(node, ast.If) for node in steps), \
        "aioquic's _write_stream_limits does more than its two conditional steps"
    pin(aioquic_stream.QuicStreamReceiver(stream_id=0, readable=True), "highest_offset")


def test_aioquic_server_tls_writes_nothing_after_its_handshake() -> None:
    """internals.py drops the crypto output buffers once the server's TLS
    state is SERVER_POST_HANDSHAKE, relying on aioquic refusing every message
    in that state before writing anything."""
    pin(tls.State, "SERVER_POST_HANDSHAKE")
    source = inspect.getsource(pin(tls.Context, "_handle_reassembled_message"))
    assert re.search(r"elif self\.state == State\.SERVER_POST_HANDSHAKE:\s+raise AlertUnexpectedMessage",
                     source), "aioquic's server TLS now handles post-handshake messages"


def test_frame_handler_table_shape() -> None:
    """internals.py shares the epoch sets of aioquic's per-connection frame table."""
    source = inspect.getsource(QuicConnection.__init__)
    assert "self.__frame_handlers = {" in source
    assert 'EPOCHS("IH01")' in source


def test_aioquic_still_raises_max_streams_as_streams_close() -> None:
    """internals.py relies on aioquic raising the bidi limit itself."""
    source = inspect.getsource(QuicConnection._write_application)
    assert "_stream_limit(stream.stream_id).value += 1" in source, (
        "aioquic no longer raises _local_max_streams_bidi when a stream is discarded; "
        "quicserve/quic/internals.py must do it")


# -- an in-memory client/server pair ---------------------------------------------------

def server_configuration(certs: CertSet, **kwargs: Any) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=["h3"], **kwargs)
    configuration.load_cert_chain(str(certs.cert), str(certs.key))
    return configuration


def client_configuration(certs: CertSet, **kwargs: Any) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                      server_name="localhost", **kwargs)
    configuration.load_verify_locations(cafile=str(certs.ca))
    return configuration


class Pair:
    """A client and a ManagedQuicConnection server over a lossless in-memory link."""

    def __init__(self, client: QuicConnection,
                 make_server: Callable[[bytes], ManagedQuicConnection]) -> None:
        self.client = client
        self.make_server = make_server
        self.server: ManagedQuicConnection | None = None
        self.now = 0.0
        self.server_events: list[QuicEvent] = []
        self.client_events: list[QuicEvent] = []
        self.on_server_event: Callable[[QuicEvent], None] = lambda event: None

    def start(self) -> None:
        self.client.connect(SERVER_ADDR, now=self.now)

    def step(self) -> int:
        """Move every pending datagram once each way; return how many moved."""
        moved = 0
        for data, _ in self.client.datagrams_to_send(now=self.now):
            if self.server is None:
                self.server = self.make_server(data)
            self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
            moved += 1
        self._drain(self.server, self.server_events, self.on_server_event)
        if self.server is not None:
            for data, _ in self.server.datagrams_to_send(now=self.now):
                self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
                moved += 1
        self._drain(self.client, self.client_events, lambda event: None)
        return moved

    def run(self, rounds: int = 200) -> None:
        """Exchange until quiet (bounded), advancing the fake clock 5 ms per round."""
        for _ in range(rounds):
            self.now += 0.005
            if self.step() == 0:
                self.now += 0.005
                if self.step() == 0:
                    return

    @staticmethod
    def _drain(conn: QuicConnection | None, into: list[QuicEvent],
               hook: Callable[[QuicEvent], None]) -> None:
        if conn is None:
            return
        event = conn.next_event()
        while event is not None:
            into.append(event)
            hook(event)
            event = conn.next_event()

    def handshake_event(self, events: list[QuicEvent]) -> HandshakeCompleted:
        found = [e for e in events if isinstance(e, HandshakeCompleted)]
        assert found, "handshake did not complete"
        return found[0]


def managed_factory(certs: CertSet, *, issuer: CidIssuer, **kwargs: Any
                    ) -> Callable[[bytes], ManagedQuicConnection]:
    configuration = server_configuration(certs, **kwargs.pop("configuration", {}))

    def make(first_datagram: bytes) -> ManagedQuicConnection:
        odcid = first_datagram[6:6 + first_datagram[5]]
        return ManagedQuicConnection(configuration=configuration, cid_issuer=issuer,
                                     reset_keys=RESET_KEYS,
                                     original_destination_connection_id=odcid, **kwargs)
    return make


# -- connection IDs and reset tokens ---------------------------------------------------

def qlog_events(logger: QuicLogger, name: str) -> list[dict[str, Any]]:
    return [e for trace in logger.to_dict()["traces"] for e in trace["events"]
            if e["name"] == name]


@pytest.mark.parametrize("worker_id, worker_count", [(0, 1), (3, 4), (1, 7)])
def test_every_issued_cid_comes_from_the_issuer(certs: CertSet, worker_id: int,
                                                worker_count: int) -> None:
    issuer = CidIssuer(worker_id=worker_id, worker_count=worker_count)
    logger = QuicLogger()
    pair = Pair(QuicConnection(configuration=client_configuration(certs, quic_logger=logger)),
                managed_factory(certs, issuer=issuer))
    pair.start()
    pair.run()
    pair.handshake_event(pair.server_events)
    assert pair.server is not None
    issued = [e.connection_id for e in pair.server_events if isinstance(e, ConnectionIdIssued)]
    assert len(issued) >= 1, "the server announced no NEW_CONNECTION_ID"
    all_cids = [pair.server.host_cid] + issued
    assert len(set(all_cids)) == len(all_cids)
    for cid in all_cids:
        assert issuer.owns(cid), f"{cid.hex()} is not the issuer's"

    # What the client was told, read from its qlog: the transport parameters
    # (sequence 0) and every NEW_CONNECTION_ID frame.
    params = [e["data"] for e in qlog_events(logger, "transport:parameters_set")
              if e["data"].get("owner") == "remote"]
    assert params, "client logged no remote transport parameters"
    assert params[0]["initial_source_connection_id"] == pair.server.host_cid.hex()
    assert params[0]["stateless_reset_token"] == RESET_KEYS.token(pair.server.host_cid).hex()
    frames = [f for e in qlog_events(logger, "transport:packet_received")
              for f in e["data"].get("frames", []) if f.get("frame_type") == "new_connection_id"]
    announced = {bytes.fromhex(f["connection_id"]): bytes.fromhex(f["reset_token"])
                 for f in frames}
    assert set(announced) == set(issued)
    for cid, token in announced.items():
        assert token == RESET_KEYS.token(cid)


def test_connection_id_length_must_match(certs: CertSet) -> None:
    with pytest.raises(ValueError, match="connection_id_length"):
        ManagedQuicConnection(configuration=server_configuration(certs, connection_id_length=10),
                              cid_issuer=CidIssuer(length=8), reset_keys=RESET_KEYS,
                              original_destination_connection_id=os.urandom(8))


def test_longer_cids(certs: CertSet) -> None:
    issuer = CidIssuer(length=12, worker_id=1, worker_count=2)
    pair = Pair(QuicConnection(configuration=client_configuration(certs)),
                managed_factory(certs, issuer=issuer,
                                configuration={"connection_id_length": 12}))
    pair.start()
    pair.run()
    pair.handshake_event(pair.client_events)
    assert pair.server is not None and issuer.owns(pair.server.host_cid)


def test_client_configuration_refused(certs: CertSet) -> None:
    with pytest.raises(ValueError):
        ManagedQuicConnection(configuration=client_configuration(certs), cid_issuer=CidIssuer(),
                              reset_keys=RESET_KEYS)


def test_retry_through_the_router(certs: CertSet) -> None:
    """Router Retry -> client -> Create -> ManagedQuicConnection with the
    original and retry CIDs: the client validates both transport parameters."""
    issuer = CidIssuer()
    router: CidRouter[object] = CidRouter(
        issuer=issuer, reset_keys=RESET_KEYS, retry=RetryTokens(b"r" * 32),
        supported_versions=[1], reset_rate=10, max_sessions=10)
    client = QuicConnection(configuration=client_configuration(certs))
    configuration = server_configuration(certs)
    created: list[Create] = []

    def make(first_datagram: bytes) -> ManagedQuicConnection:
        action = router.route(first_datagram, CLIENT_ADDR, 0.0)
        assert isinstance(action, Create) and not action.token_invalid
        created.append(action)
        return ManagedQuicConnection(configuration=configuration, cid_issuer=issuer,
                                     reset_keys=RESET_KEYS,
                                     original_destination_connection_id=action.original_dcid,
                                     retry_source_connection_id=action.retry_source_cid)

    client.connect(SERVER_ADDR, now=0.0)
    (first, _), = client.datagrams_to_send(now=0.0)
    retry = router.route(first, CLIENT_ADDR, 0.0)
    assert isinstance(retry, Reply) and retry.kind == "retry"
    client.receive_datagram(retry.data, SERVER_ADDR, now=0.001)
    pair = Pair(client, make)
    pair.now = 0.001
    pair.run()
    assert pair.handshake_event(pair.client_events)
    assert created[0].original_dcid == client.original_destination_connection_id


# -- the bidirectional stream limit ---------------------------------------------------

def test_initial_stream_limit_and_raise_on_close(certs: CertSet) -> None:
    logger = QuicLogger()
    pair = Pair(QuicConnection(configuration=client_configuration(certs, quic_logger=logger)),
                managed_factory(certs, issuer=CidIssuer(), max_streams_bidi=3))
    finished: set[int] = set()

    def answer(event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.end_stream:
            assert pair.server is not None
            pair.server.send_stream_data(event.stream_id, b"ok", end_stream=True)
            finished.add(event.stream_id)

    pair.on_server_event = answer
    pair.start()
    pair.run()
    params = [e["data"] for e in qlog_events(logger, "transport:parameters_set")
              if e["data"].get("owner") == "remote"]
    assert params[0]["initial_max_streams_bidi"] == 3

    for _ in range(3):
        pair.client.send_stream_data(pair.client.get_next_available_stream_id(), b"x",
                                     end_stream=True)
    pair.run()
    assert finished == {0, 4, 8}
    # Three more streams only reach the server if it raised MAX_STREAMS.
    for _ in range(3):
        pair.client.send_stream_data(pair.client.get_next_available_stream_id(), b"y",
                                     end_stream=True)
    pair.run()
    assert finished == {0, 4, 8, 12, 16, 20}


def test_stream_limit_default_is_aioquics(certs: CertSet) -> None:
    conn = ManagedQuicConnection(configuration=server_configuration(certs),
                                 cid_issuer=CidIssuer(), reset_keys=RESET_KEYS,
                                 original_destination_connection_id=os.urandom(8))
    assert conn._local_max_streams_bidi.value == 128
    with pytest.raises(ValueError):
        ManagedQuicConnection(configuration=server_configuration(certs), cid_issuer=CidIssuer(),
                              reset_keys=RESET_KEYS, max_streams_bidi=0,
                              original_destination_connection_id=os.urandom(8))


# -- receive credit ------------------------------------------------------------------------

WINDOW = 64 * 1024
UPLOAD = 1024 * 1024


def upload_pair(certs: CertSet, *, managed: bool) -> tuple[Pair, dict[str, int]]:
    pair = Pair(QuicConnection(configuration=client_configuration(certs)),
                managed_factory(certs, issuer=CidIssuer(),
                                configuration={"max_stream_data": WINDOW,
                                               "max_data": 64 * UPLOAD}))
    seen = {"received": 0, "fin": 0}

    def hold(event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id == 0:
            seen["received"] += len(event.data)
            seen["fin"] += event.end_stream
            if managed:
                assert pair.server is not None
                withhold_stream_credit(pair.server, 0, len(event.data))

    pair.on_server_event = hold
    pair.start()
    pair.run()
    pair.client.send_stream_data(0, os.urandom(UPLOAD), end_stream=True)
    pair.run(rounds=400)
    return pair, seen


def test_withheld_credit_caps_what_a_client_can_send(certs: CertSet) -> None:
    pair, seen = upload_pair(certs, managed=True)
    assert pair.server is not None
    assert seen["received"] == WINDOW, "the client could send past the withheld window"
    assert pair.server.stream_credit_held(0) == WINDOW

    # The application reads half: exactly that much more may arrive.
    grant_stream_credit(pair.server, 0, WINDOW // 2)
    pair.run(rounds=400)
    assert seen["received"] == WINDOW + WINDOW // 2

    # Reading everything as it comes lets the whole upload through.
    def consume(event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id == 0:
            seen["received"] += len(event.data)
            seen["fin"] += event.end_stream

    pair.on_server_event = consume
    assert pair.server.stream_credit_held(0) is not None
    grant_stream_credit(pair.server, 0, 10 * UPLOAD)
    pair.run(rounds=2000)
    assert seen == {"received": UPLOAD, "fin": 1}


def test_without_withholding_aioquic_lets_everything_in(certs: CertSet) -> None:
    """The control: aioquic's own behaviour, which is why the hook exists."""
    _, seen = upload_pair(certs, managed=False)
    assert seen == {"received": UPLOAD, "fin": 1}


def test_pacing_blocked_is_true_exactly_when_the_pacer_held_data_back(certs: CertSet) -> None:
    """aioquic sets ``_pacing_at`` when its pacer stops a flush: with 1 MB
    queued, one call sends a burst and reports the pacer; the next call at
    the pacer's time sends more; once the data is gone, it reports no pacing."""
    pair = Pair(QuicConnection(configuration=client_configuration(certs)),
                managed_factory(certs, issuer=CidIssuer(worker_id=0, worker_count=1)))
    pair.start()
    pair.run()
    server = pair.server
    assert server is not None and not server.pacing_blocked
    stream_id = server.get_next_available_stream_id(is_unidirectional=True)
    # Grow the congestion window on an RTT sample, then queue more than it.
    server.send_stream_data(stream_id, b"x" * 1_000_000)
    pair.now += 0.001
    first = server.datagrams_to_send(now=pair.now)
    assert first and server.pacing_blocked, "a big queue must end a flush on the pacer"
    deadline = server.get_timer()
    assert deadline is not None and deadline <= pair.now + 0.01
    assert server.datagrams_to_send(now=deadline + 0.0001), "the next burst is due"
    for data in first:
        pair.client.receive_datagram(data[0], SERVER_ADDR, now=pair.now)
    pair.run(rounds=2000)
    assert server.datagrams_to_send(now=pair.now) == [] and not server.pacing_blocked


def test_handshake_leftovers_are_released(certs: CertSet) -> None:
    """After the handshake: no 16 KiB crypto output buffers, the Initial and
    Handshake crypto streams replaced by one empty stream, and the frame
    table's epoch sets shared between connections; the connection still
    carries data both ways and resumes with its ticket."""
    store = SessionTicketStore(b"t" * 32)
    make = managed_factory(certs, issuer=CidIssuer(), ticket_store=store)
    pairs = []
    for _ in range(2):
        pair = Pair(QuicConnection(configuration=client_configuration(certs)), make)
        pair.start()
        pair.run()
        pair.handshake_event(pair.server_events)
        pairs.append(pair)
    server = pairs[0].server
    assert server is not None
    assert all(buf.capacity == 0 for buf in server._crypto_buffers.values())
    server.release_handshake_streams()
    streams = server._crypto_streams
    assert streams[tls.Epoch.INITIAL] is streams[tls.Epoch.HANDSHAKE]
    assert streams[tls.Epoch.INITIAL].sender.buffer_is_empty
    ours = server._QuicConnection__frame_handlers  # type: ignore[attr-defined]
    theirs = pairs[1].server._QuicConnection__frame_handlers  # type: ignore[union-attr]
    assert all(ours[t][1] is theirs[t][1] for t in ours)
    client = pairs[0].client
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"ping", end_stream=True)
    pairs[0].on_server_event = lambda e: (
        server.send_stream_data(e.stream_id, b"pong", end_stream=True)
        if isinstance(e, StreamDataReceived) and e.end_stream else None)
    pairs[0].run()
    got = b"".join(e.data for e in pairs[0].client_events
                   if isinstance(e, StreamDataReceived) and e.stream_id == stream_id)
    assert got == b"pong"


def test_unmanaged_streams_keep_aioquics_window_growth(certs: CertSet) -> None:
    """A stream the adapter never manages (HTTP/3's unidirectional ones)
    still gets aioquic's MAX_STREAM_DATA doubling: a client can push 5x the
    initial window through it."""
    pair = Pair(QuicConnection(configuration=client_configuration(certs)),
                managed_factory(certs, issuer=CidIssuer(),
                                configuration={"max_stream_data": 4096}))
    pair.start()
    pair.run()
    stream_id = pair.client.get_next_available_stream_id(is_unidirectional=True)
    pair.client.send_stream_data(stream_id, b"u" * 20480, end_stream=True)
    pair.run(rounds=400)
    got = sum(len(e.data) for e in pair.server_events
              if isinstance(e, StreamDataReceived) and e.stream_id == stream_id)
    assert got == 20480


def test_send_buffered_counts_unacknowledged_bytes(certs: CertSet) -> None:
    pair = Pair(QuicConnection(configuration=client_configuration(certs)),
                managed_factory(certs, issuer=CidIssuer()))
    pair.start()
    pair.run()
    pair.client.send_stream_data(0, b"request", end_stream=True)
    pair.run()
    server = pair.server
    assert server is not None
    assert stream_send_buffered(server, 0) == 0
    server.send_stream_data(0, b"x" * 5000)
    assert stream_send_buffered(server, 0) == 5000
    pair.run()
    assert stream_send_buffered(server, 0) == 0
    assert stream_send_buffered(server, 404) == 0


# -- stateless session tickets --------------------------------------------------------

def first_connection(certs: CertSet, store: SessionTicketStore, *, early_data: bool = True
                     ) -> tls.SessionTicket:
    tickets: list[tls.SessionTicket] = []
    pair = Pair(QuicConnection(configuration=client_configuration(certs),
                               session_ticket_handler=tickets.append),
                managed_factory(certs, issuer=CidIssuer(), ticket_store=store,
                                early_data=early_data))
    pair.start()
    pair.run()
    pair.handshake_event(pair.client_events)
    assert len(tickets) == 1, "the client got no session ticket"
    return tickets[0]


def resume(certs: CertSet, ticket: tls.SessionTicket, store: SessionTicketStore
           ) -> tuple[HandshakeCompleted, list[QuicEvent]]:
    pair = Pair(QuicConnection(configuration=client_configuration(certs, session_ticket=ticket)),
                managed_factory(certs, issuer=CidIssuer(), ticket_store=store))
    pair.start()
    # Sent before the handshake completes: 0-RTT if the ticket allows it.
    pair.client.send_stream_data(0, b"GET /early", end_stream=True)
    pair.run()
    return pair.handshake_event(pair.server_events), pair.server_events


def test_ticket_label_is_sealed_state(certs: CertSet) -> None:
    key = os.urandom(32)
    ticket = first_connection(certs, SessionTicketStore(key))
    assert ticket.ticket[0] == TICKET_MARKER
    assert len(ticket.ticket) > 64, "the label is still aioquic's random 64 bytes"
    opened = SessionTicketStore(key).pop(ticket.ticket)
    assert opened is not None and opened.resumption_secret == ticket.resumption_secret


def test_resumption_with_0rtt_in_another_process(certs: CertSet) -> None:
    key = os.urandom(32)
    ticket = first_connection(certs, SessionTicketStore(key))
    assert ticket.max_early_data_size is not None
    done, events = resume(certs, ticket, SessionTicketStore(key))
    assert done.session_resumed and done.early_data_accepted
    data = [e for e in events if isinstance(e, StreamDataReceived)]
    assert data and data[0].data == b"GET /early"
    first_data = events.index(data[0])
    assert first_data < events.index(done), "the request did not arrive in 0-RTT"


def test_other_key_means_full_handshake(certs: CertSet) -> None:
    ticket = first_connection(certs, SessionTicketStore(os.urandom(32)))
    done, _ = resume(certs, ticket, SessionTicketStore(os.urandom(32)))
    assert not done.session_resumed and not done.early_data_accepted


def test_0rtt_off_still_resumes(certs: CertSet) -> None:
    key = os.urandom(32)
    ticket = first_connection(certs, SessionTicketStore(key), early_data=False)
    assert ticket.max_early_data_size is None
    done, _ = resume(certs, ticket, SessionTicketStore(key))
    assert done.session_resumed and not done.early_data_accepted


def test_ticket_store_and_callbacks_are_exclusive(certs: CertSet) -> None:
    store = SessionTicketStore(os.urandom(32))
    with pytest.raises(ValueError):
        ManagedQuicConnection(configuration=server_configuration(certs), cid_issuer=CidIssuer(),
                              reset_keys=RESET_KEYS, ticket_store=store,
                              session_ticket_fetcher=store.pop,
                              original_destination_connection_id=os.urandom(8))


# -- aioquic's debug log --------------------------------------------------------------------

def test_debug_lines_cost_nothing_when_debug_is_off(certs: CertSet,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """With debug off when the connection is made, its debug calls never
    reach logging -- even once debug is switched on (the choice is made per
    connection); info still logs, and a connection made with debug on logs
    its debug lines."""
    make = managed_factory(certs, issuer=CidIssuer(length=8))
    caplog.set_level(logging.INFO, logger="quic")
    quiet = make(b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8))
    caplog.set_level(logging.DEBUG, logger="quic")
    quiet._logger.debug("quiet stream %d created", 4)
    quiet._logger.info("kept %s", "info")
    assert [r.getMessage() for r in caplog.records if r.name == "quic"] == [
        f"[{quiet._logger.extra['id']}] kept info"]
    caplog.clear()
    loud = make(b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8))
    loud._logger.debug("loud stream %d created", 4)
    assert any("loud stream 4 created" in r.getMessage() for r in caplog.records)
