"""CidRouter against crafted datagrams: one datagram in, one action out."""

from __future__ import annotations

import os
import random

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.packet import (
    QuicPacketType, get_retry_integrity_tag, pull_quic_header,
)

from quicserve.quic.cid import CidIssuer, StatelessResetKeys
from quicserve.quic.router import (
    CidRouter, Create, Deliver, Drop, DropReason, Reply,
)
from quicserve.quic.tokens import NewTokens, RetryTokens
from tests.support.quic_packets import (
    CLIENT_ADDR, VERSION_1, VERSION_2, client_initial, initial, long_header, short_header,
)

RESET_KEY = b"k" * 32
RETRY_KEY = b"r" * 32


class Session:
    """A stand-in session: the router treats sessions as opaque values."""

    def __init__(self, name: str) -> None:
        self.name = name


def make_router(*, retry: bool = False, reset_rate: int = 100, max_sessions: int = 100,
                issuer: CidIssuer | None = None,
                versions: tuple[int, ...] = (VERSION_1, VERSION_2)) -> CidRouter[Session]:
    return CidRouter(issuer=issuer or CidIssuer(), reset_keys=StatelessResetKeys(RESET_KEY),
                     retry=RetryTokens(RETRY_KEY) if retry else None,
                     supported_versions=versions, reset_rate=reset_rate,
                     max_sessions=max_sessions)


def parse(data: bytes) -> object:
    return pull_quic_header(Buffer(data=data), host_cid_length=8)


# -- Initials ----------------------------------------------------------------------

def test_small_initial_gets_no_reply() -> None:
    router = make_router()
    action = router.route(initial(size=1000), CLIENT_ADDR, 0.0)
    assert action == Drop(DropReason.INITIAL_TOO_SMALL)
    assert router.statistics().dropped == {"initial_too_small": 1}


def test_initial_of_1199_bytes_dropped_1200_accepted() -> None:
    router = make_router()
    assert isinstance(router.route(initial(size=1199), CLIENT_ADDR, 0.0), Drop)
    assert isinstance(router.route(initial(size=1200), CLIENT_ADDR, 0.0), Create)


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2])
def test_initial_without_retry_creates(version: int) -> None:
    router = make_router()
    dcid, scid = os.urandom(8), os.urandom(5)
    action = router.route(initial(version=version, dcid=dcid, scid=scid, token=b"ignored"),
                          CLIENT_ADDR, 0.0)
    assert action == Create(version=version, dcid=dcid, scid=scid, original_dcid=dcid,
                            retry_source_cid=None, token_invalid=False)
    assert router.statistics().created == 1


def test_real_v2_client_initial_creates() -> None:
    data, client = client_initial(version=VERSION_2)
    action = make_router().route(data, CLIENT_ADDR, 0.0)
    assert isinstance(action, Create)
    assert action.version == VERSION_2
    assert action.original_dcid == client.original_destination_connection_id


def test_v2_type_bits_are_not_v1s() -> None:
    """In v2 the bits 0b00 mean Retry, not Initial: no session for it."""
    dcid = os.urandom(8)
    v1_initial_bits = bytearray(initial(version=VERSION_2, dcid=dcid))
    v1_initial_bits[0] &= 0xCF  # type bits 00
    action = make_router().route(bytes(v1_initial_bits), CLIENT_ADDR, 0.0)
    assert isinstance(action, Drop)


def test_short_dcid_initial_dropped() -> None:
    action = make_router().route(initial(dcid=os.urandom(7)), CLIENT_ADDR, 0.0)
    assert action == Drop(DropReason.INITIAL_DCID_TOO_SHORT)


@pytest.mark.parametrize("packet_type", [QuicPacketType.ZERO_RTT, QuicPacketType.HANDSHAKE])
def test_other_long_packets_for_unknown_cids_dropped(packet_type: QuicPacketType) -> None:
    action = make_router().route(long_header(packet_type=packet_type), CLIENT_ADDR, 0.0)
    assert action == Drop(DropReason.UNKNOWN_CONNECTION_ID)


def test_not_accepting_drops_new_initials_but_delivers_known() -> None:
    router = make_router()
    session, cid = Session("a"), router.issuer.new_cid()
    router.add(cid, session)
    router.accepting = False
    assert router.route(initial(), CLIENT_ADDR, 0.0) == Drop(DropReason.NOT_ACCEPTING)
    assert router.route(short_header(cid), CLIENT_ADDR, 0.0) == Deliver(session)


def test_max_sessions() -> None:
    router = make_router(max_sessions=2)
    router.add(router.issuer.new_cid(), Session("a"))
    assert isinstance(router.route(initial(), CLIENT_ADDR, 0.0), Create)
    router.add(router.issuer.new_cid(), Session("b"))
    assert router.route(initial(), CLIENT_ADDR, 0.0) == Drop(DropReason.MAX_SESSIONS)


# -- Version Negotiation -------------------------------------------------------------

def test_unknown_version_gets_version_negotiation() -> None:
    dcid, scid = os.urandom(8), os.urandom(6)
    data = long_header(version=0x1A2A3A4A, dcid=dcid, scid=scid, size=1200)
    action = make_router().route(data, CLIENT_ADDR, 0.0)
    assert isinstance(action, Reply) and action.kind == "version_negotiation"
    header = parse(action.data)
    assert header.packet_type == QuicPacketType.VERSION_NEGOTIATION  # type: ignore[attr-defined]
    assert header.supported_versions == [VERSION_1, VERSION_2]  # type: ignore[attr-defined]
    assert header.destination_cid == scid  # type: ignore[attr-defined]
    assert header.source_cid == dcid  # type: ignore[attr-defined]
    assert action.data[0] & 0x80


def test_version_negotiation_echoes_long_cids() -> None:
    """RFC 8999: an unknown version may carry CIDs up to 255 bytes; VN echoes them."""
    dcid, scid = os.urandom(40), os.urandom(33)
    action = make_router().route(long_header(version=0xFF000099, dcid=dcid, scid=scid),
                                 CLIENT_ADDR, 0.0)
    assert isinstance(action, Reply)
    assert action.data[5] == len(scid) and action.data[6:6 + len(scid)] == scid


def test_unknown_version_too_small_dropped() -> None:
    router = make_router()
    action = router.route(long_header(version=0x1A2A3A4A, size=1199), CLIENT_ADDR, 0.0)
    assert action == Drop(DropReason.UNSUPPORTED_VERSION_TOO_SMALL)
    assert router.statistics().version_negotiations == 0


def test_version_negotiation_packet_never_answered() -> None:
    data = long_header(version=0, size=1200)
    assert make_router().route(data, CLIENT_ADDR, 0.0) == \
        Drop(DropReason.VERSION_NEGOTIATION_PACKET)


def test_v2_unsupported_when_not_configured() -> None:
    router = make_router(versions=(VERSION_1,))
    action = router.route(initial(version=VERSION_2), CLIENT_ADDR, 0.0)
    assert isinstance(action, Reply) and action.kind == "version_negotiation"
    assert parse(action.data).supported_versions == [VERSION_1]  # type: ignore[attr-defined]


# -- Retry ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [VERSION_1, VERSION_2])
def test_retry_without_token(version: int) -> None:
    router = make_router(retry=True)
    dcid, scid = os.urandom(8), os.urandom(8)
    action = router.route(initial(version=version, dcid=dcid, scid=scid), CLIENT_ADDR, 0.0)
    assert isinstance(action, Reply) and action.kind == "retry"
    header = parse(action.data)
    assert header.packet_type == QuicPacketType.RETRY  # type: ignore[attr-defined]
    assert header.version == version  # type: ignore[attr-defined]
    assert header.destination_cid == scid  # type: ignore[attr-defined]
    assert router.issuer.owns(header.source_cid)  # type: ignore[attr-defined]
    expected_tag = get_retry_integrity_tag(action.data[:-16], dcid, version=version)
    assert header.integrity_tag == expected_tag  # type: ignore[attr-defined]
    assert router.statistics().retries == 1


def retry_then_token(router: CidRouter[Session], dcid: bytes) -> tuple[bytes, bytes]:
    """Route a tokenless Initial; return (retry SCID, token) from the Retry."""
    action = router.route(initial(dcid=dcid), CLIENT_ADDR, 10.0)
    assert isinstance(action, Reply) and action.kind == "retry"
    header = parse(action.data)
    return header.source_cid, header.token  # type: ignore[attr-defined]


def test_valid_token_creates_with_original_dcid() -> None:
    router = make_router(retry=True)
    odcid = os.urandom(8)
    retry_scid, token = retry_then_token(router, odcid)
    action = router.route(initial(dcid=retry_scid, token=token), CLIENT_ADDR, 12.0)
    assert isinstance(action, Create)
    assert (action.original_dcid, action.retry_source_cid, action.dcid, action.token_invalid) \
        == (odcid, retry_scid, retry_scid, False)


def test_real_client_follows_retry() -> None:
    """aioquic's client accepts our Retry (it checks the integrity tag) and
    comes back with the token; the router then creates the connection."""
    router = make_router(retry=True)
    data, client = client_initial()
    action = router.route(data, CLIENT_ADDR, 0.0)
    assert isinstance(action, Reply) and action.kind == "retry"
    client.receive_datagram(action.data, ("127.0.0.1", 4433), now=0.01)
    second = client.datagrams_to_send(now=0.01)
    assert second, "the client did not answer the Retry"
    created = router.route(second[0][0], CLIENT_ADDR, 0.02)
    assert isinstance(created, Create) and not created.token_invalid
    assert created.original_dcid == client.original_destination_connection_id
    assert created.retry_source_cid == parse(action.data).source_cid  # type: ignore[attr-defined]


def test_tampered_token_is_invalid() -> None:
    router = make_router(retry=True)
    retry_scid, token = retry_then_token(router, os.urandom(8))
    bad = bytearray(token)
    bad[-1] ^= 0x80
    action = router.route(initial(dcid=retry_scid, token=bytes(bad)), CLIENT_ADDR, 10.0)
    assert isinstance(action, Create) and action.token_invalid
    assert action.retry_source_cid is None


def test_token_from_other_address_is_invalid() -> None:
    router = make_router(retry=True)
    retry_scid, token = retry_then_token(router, os.urandom(8))
    action = router.route(initial(dcid=retry_scid, token=token), ("192.0.2.99", 45678), 10.0)
    assert isinstance(action, Create) and action.token_invalid


def test_expired_token_is_invalid() -> None:
    router = make_router(retry=True)
    retry_scid, token = retry_then_token(router, os.urandom(8))
    assert not router.route(initial(dcid=retry_scid, token=token), CLIENT_ADDR, 20.0) \
        .token_invalid  # type: ignore[union-attr]
    action = router.route(initial(dcid=retry_scid, token=token), CLIENT_ADDR, 20.5)
    assert isinstance(action, Create) and action.token_invalid


def test_token_for_another_dcid_is_invalid() -> None:
    router = make_router(retry=True)
    _, token = retry_then_token(router, os.urandom(8))
    action = router.route(initial(dcid=os.urandom(8), token=token), CLIENT_ADDR, 10.0)
    assert isinstance(action, Create) and action.token_invalid


def test_foreign_token_gets_a_retry() -> None:
    """A token that is not shaped like our Retry tokens (e.g. another server's
    NEW_TOKEN token) is treated as absent."""
    router = make_router(retry=True)
    action = router.route(initial(token=b"N" + os.urandom(40)), CLIENT_ADDR, 0.0)
    assert isinstance(action, Reply) and action.kind == "retry"


# -- stateless reset --------------------------------------------------------------------

@pytest.mark.parametrize("size, expected", [(22, 21), (30, 29), (44, 43), (45, 43), (1200, 43)])
def test_stateless_reset_for_unknown_cid(size: int, expected: int) -> None:
    router = make_router()
    cid = router.issuer.new_cid()
    action = router.route(short_header(cid, size=size), CLIENT_ADDR, 0.0)
    assert isinstance(action, Reply) and action.kind == "stateless_reset"
    assert len(action.data) == expected < size
    assert action.data[-16:] == StatelessResetKeys(RESET_KEY).token(cid)
    assert action.data[0] & 0xC0 == 0x40, "short header form with the fixed bit"
    assert router.statistics().stateless_resets == 1


def test_resets_are_unpredictable() -> None:
    router = make_router()
    cid = router.issuer.new_cid()
    a = router.route(short_header(cid, size=100), CLIENT_ADDR, 0.0)
    b = router.route(short_header(cid, size=100), CLIENT_ADDR, 0.0)
    assert isinstance(a, Reply) and isinstance(b, Reply)
    assert a.data[1:-16] != b.data[1:-16]
    assert a.data[-16:] == b.data[-16:]


def test_no_reset_when_it_could_not_be_shorter_than_21() -> None:
    router = make_router()
    action = router.route(short_header(router.issuer.new_cid(), size=21), CLIENT_ADDR, 0.0)
    assert action == Drop(DropReason.TOO_SMALL_FOR_RESET)


def test_reset_rate_limit() -> None:
    router = make_router(reset_rate=3)
    cid = router.issuer.new_cid()
    kinds = [type(router.route(short_header(cid), CLIENT_ADDR, 5.0)).__name__ for _ in range(5)]
    assert kinds == ["Reply"] * 3 + ["Drop"] * 2
    assert router.statistics().dropped == {"reset_rate_limited": 2}
    # One token comes back every 1/3 s; never more than the one-second burst.
    assert isinstance(router.route(short_header(cid), CLIENT_ADDR, 5.2), Drop)
    assert isinstance(router.route(short_header(cid), CLIENT_ADDR, 5.34), Reply)
    assert isinstance(router.route(short_header(cid), CLIENT_ADDR, 5.35), Drop)
    burst = [router.route(short_header(cid), CLIENT_ADDR, 1000.0) for _ in range(5)]
    assert [isinstance(a, Reply) for a in burst] == [True] * 3 + [False] * 2


def test_reset_rate_zero_disables_resets() -> None:
    router = make_router(reset_rate=0)
    action = router.route(short_header(router.issuer.new_cid()), CLIENT_ADDR, 0.0)
    assert action == Drop(DropReason.RESET_RATE_LIMITED)


def test_no_reset_for_another_workers_cid() -> None:
    mine = CidIssuer(worker_id=0, worker_count=2)
    theirs = CidIssuer(worker_id=1, worker_count=2)
    router = make_router(issuer=mine)
    action = router.route(short_header(theirs.new_cid()), CLIENT_ADDR, 0.0)
    assert action == Drop(DropReason.NOT_OWNED)


# -- known connection IDs ------------------------------------------------------------

def test_every_added_cid_delivers_until_removed() -> None:
    router = make_router()
    a, b = Session("a"), Session("b")
    cids_a = [router.issuer.new_cid() for _ in range(4)]
    cid_b = router.issuer.new_cid()
    for cid in cids_a:
        router.add(cid, a)
    router.add(cid_b, b)
    for cid in cids_a:
        action = router.route(short_header(cid), CLIENT_ADDR, 0.0)
        assert isinstance(action, Deliver) and action.session is a
    assert router.route(short_header(cid_b), CLIENT_ADDR, 0.0) == Deliver(b)
    router.remove(cids_a[0])
    assert not isinstance(router.route(short_header(cids_a[0]), CLIENT_ADDR, 0.0), Deliver)
    assert router.route(short_header(cids_a[1]), CLIENT_ADDR, 0.0) == Deliver(a)
    router.remove_session(a)
    for cid in cids_a:
        assert not isinstance(router.route(short_header(cid), CLIENT_ADDR, 0.0), Deliver)
    assert router.route(short_header(cid_b), CLIENT_ADDR, 0.0) == Deliver(b)
    stats = router.statistics()
    assert (stats.sessions, stats.connection_ids, stats.delivered) == (1, 1, 7)


def test_long_headers_to_known_cids_deliver() -> None:
    """Client Initials retransmitted to the original DCID, and Handshake packets."""
    router = make_router()
    session, odcid = Session("a"), os.urandom(8)
    router.add(odcid, session)
    assert router.route(initial(dcid=odcid, size=1250), CLIENT_ADDR, 0.0) == Deliver(session)
    hs = long_header(packet_type=QuicPacketType.HANDSHAKE, dcid=odcid, size=100)
    assert router.route(hs, CLIENT_ADDR, 0.0) == Deliver(session)


def test_client_chosen_cids_of_other_lengths_route() -> None:
    router = make_router()
    session, odcid = Session("a"), os.urandom(18)
    router.add(odcid, session)
    assert router.route(initial(dcid=odcid), CLIENT_ADDR, 0.0) == Deliver(session)


def test_deliver_is_cached_per_session() -> None:
    router = make_router()
    session = Session("a")
    cids = [router.issuer.new_cid() for _ in range(2)]
    for cid in cids:
        router.add(cid, session)
    first = router.route(short_header(cids[0]), CLIENT_ADDR, 0.0)
    assert router.route(short_header(cids[1]), CLIENT_ADDR, 0.0) is first


def test_cid_of_another_session_is_refused() -> None:
    router = make_router()
    cid = router.issuer.new_cid()
    router.add(cid, Session("a"))
    with pytest.raises(ValueError):
        router.add(cid, Session("b"))


# -- hostile bytes ---------------------------------------------------------------------

def test_every_prefix_of_valid_packets_is_handled() -> None:
    router = make_router(retry=True)
    packets = [initial(token=b"R" * 40), initial(version=VERSION_2),
               long_header(version=0x0A0A0A0A), long_header(packet_type=QuicPacketType.HANDSHAKE)]
    for packet in packets:
        for end in range(len(packet) + 1):
            assert isinstance(router.route(packet[:end], CLIENT_ADDR, 0.0),
                              (Drop, Reply, Create))


def test_random_garbage_never_raises() -> None:
    rng = random.Random(1234)
    router = make_router(retry=True)
    for _ in range(3000):
        size = rng.choice((1, 2, 7, 20, 50, 1200, 1500))
        data = bytes(rng.getrandbits(8) for _ in range(size))
        assert isinstance(router.route(data, CLIENT_ADDR, 0.0), (Drop, Reply, Create))


@pytest.mark.parametrize("data, reason", [
    (b"", DropReason.EMPTY),
    (b"\xc0\x00\x00\x00\x01", DropReason.MALFORMED),
    (b"\x40\x01\x02", DropReason.MALFORMED),
    (b"\x00" + os.urandom(40), DropReason.MALFORMED),  # short header without the fixed bit
])
def test_malformed(data: bytes, reason: DropReason) -> None:
    assert make_router().route(data, CLIENT_ADDR, 0.0) == Drop(reason)


def test_truncated_initial_payload_is_malformed() -> None:
    data = bytearray(initial(size=1200))
    # Claim a Length longer than the datagram.
    length_at = 1 + 4 + 1 + 8 + 1 + 8 + 1
    data[length_at:length_at + 2] = (0x4000 | 5000).to_bytes(2, "big")
    assert make_router().route(bytes(data), CLIENT_ADDR, 0.0) == Drop(DropReason.MALFORMED)


def test_statistics_count_everything() -> None:
    router = make_router(retry=True)
    router.route(initial(size=1000), CLIENT_ADDR, 0.0)
    router.route(initial(), CLIENT_ADDR, 0.0)
    router.route(long_header(version=7), CLIENT_ADDR, 0.0)
    router.route(short_header(router.issuer.new_cid()), CLIENT_ADDR, 0.0)
    router.route(b"", CLIENT_ADDR, 0.0)
    stats = router.statistics()
    assert (stats.retries, stats.version_negotiations, stats.stateless_resets) == (1, 1, 1)
    assert stats.dropped == {"initial_too_small": 1, "empty": 1}
    assert stats.dropped_total == 2


# -- NEW_TOKEN tokens ----------------------------------------------------------------

def router_with_new_tokens(*, retry: bool = True) -> tuple[CidRouter[Session], NewTokens]:
    tokens = NewTokens(os.urandom(32))
    router: CidRouter[Session] = CidRouter(
        issuer=CidIssuer(), reset_keys=StatelessResetKeys(RESET_KEY),
        retry=RetryTokens(RETRY_KEY) if retry else None, supported_versions=(VERSION_1,),
        reset_rate=100, max_sessions=100, new_tokens=tokens)
    return router, tokens


def test_a_valid_new_token_skips_the_retry() -> None:
    router, tokens = router_with_new_tokens()
    dcid = os.urandom(8)
    action = router.route(initial(dcid=dcid, token=tokens.create(CLIENT_ADDR[0])),
                          CLIENT_ADDR, 0.0)
    assert isinstance(action, Create)
    assert (action.original_dcid, action.retry_source_cid, action.token_invalid) == \
        (dcid, None, False)
    assert router.statistics().new_tokens_accepted == 1
    assert router.statistics().retries == 0


def test_a_new_token_that_does_not_validate_counts_as_none() -> None:
    router, tokens = router_with_new_tokens()
    other_ip = tokens.create("203.0.113.9")
    action = router.route(initial(token=other_ip), CLIENT_ADDR, 0.0)
    assert isinstance(action, Reply) and action.kind == "retry"
    assert router.statistics().new_tokens_accepted == 0


def test_without_retry_a_new_token_changes_nothing() -> None:
    router, tokens = router_with_new_tokens(retry=False)
    dcid = os.urandom(8)
    action = router.route(initial(dcid=dcid, token=tokens.create(CLIENT_ADDR[0])),
                          CLIENT_ADDR, 0.0)
    assert isinstance(action, Create) and action.original_dcid == dcid
    assert router.statistics().new_tokens_accepted == 0
