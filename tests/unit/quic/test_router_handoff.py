"""CidRouter with a balancer (--workers > 1): which datagrams are handed to
another worker, and which never are."""

from __future__ import annotations

import os

from aioquic.quic.packet import QuicPacketType

from quicserve.quic.cid import CidIssuer, StatelessResetKeys
from quicserve.quic.router import (
    HANDOFF_TTL, MAX_HANDOFFS, CidRouter, Create, Drop, DropReason, Forward, Reply,
)
from quicserve.quic.tokens import RetryTokens
from tests.support.quic_packets import CLIENT_ADDR, initial, long_header, short_header
from tests.unit.quic.test_router import Session, parse


class Balancer:
    """Answers ``target`` and records what it was asked."""

    def __init__(self, target: int | None) -> None:
        self.target = target
        self.asked: list[tuple[int, bool]] = []

    def choose(self, sessions: int, accepting: bool) -> int | None:
        self.asked.append((sessions, accepting))
        return self.target


def make_router(balancer: Balancer, *, retry: bool = False,
                max_sessions: int = 100) -> CidRouter[Session]:
    return CidRouter(issuer=CidIssuer(worker_id=0, worker_count=2),
                     reset_keys=StatelessResetKeys(b"k" * 32),
                     retry=RetryTokens(b"r" * 32) if retry else None,
                     supported_versions=(1,), reset_rate=100, max_sessions=max_sessions,
                     balancer=balancer)


def test_new_initial_goes_where_the_balancer_says_and_its_dcid_follows() -> None:
    balancer = Balancer(1)
    router = make_router(balancer)
    dcid = os.urandom(8)
    assert router.route(initial(dcid=dcid), CLIENT_ADDR, 0.0) == Forward(1, dcid)
    # The client's next Initial and its 0-RTT packets under that DCID follow
    # without asking again (a ClientHello in two datagrams stays together).
    balancer.target = None
    assert router.route(initial(dcid=dcid), CLIENT_ADDR, 0.1) == Forward(1, dcid)
    zero_rtt = long_header(packet_type=QuicPacketType.ZERO_RTT, dcid=dcid, size=300)
    assert router.route(zero_rtt, CLIENT_ADDR, 0.2) == Forward(1, dcid)
    assert balancer.asked == [(0, True)]
    assert router.statistics().handed_off == 1
    assert router.statistics().created == 0


def test_balancer_keeping_the_connection_creates_it_here() -> None:
    balancer = Balancer(None)
    router = make_router(balancer)
    router.add(b"x" * 8, Session("a"))
    action = router.route(initial(), CLIENT_ADDR, 0.0)
    assert isinstance(action, Create)
    assert balancer.asked == [(1, True)]


def test_handed_datagrams_are_never_handed_on() -> None:
    balancer = Balancer(1)
    router = make_router(balancer)
    dcid = os.urandom(8)
    action = router.route(initial(dcid=dcid), CLIENT_ADDR, 0.0, handed=True)
    assert isinstance(action, Create) and action.dcid == dcid
    assert balancer.asked == []


def test_the_handoff_is_forgotten_after_its_ttl() -> None:
    balancer = Balancer(1)
    router = make_router(balancer)
    dcid = os.urandom(8)
    assert isinstance(router.route(initial(dcid=dcid), CLIENT_ADDR, 0.0), Forward)
    balancer.target = None
    zero_rtt = long_header(packet_type=QuicPacketType.ZERO_RTT, dcid=dcid, size=300)
    assert router.route(zero_rtt, CLIENT_ADDR, HANDOFF_TTL + 1) == \
        Drop(DropReason.UNKNOWN_CONNECTION_ID)
    assert isinstance(router.route(initial(dcid=dcid), CLIENT_ADDR, HANDOFF_TTL + 2), Create)


def test_a_failed_handoff_lets_the_connection_be_created_here() -> None:
    router = make_router(Balancer(1))
    dcid = os.urandom(8)
    assert isinstance(router.route(initial(dcid=dcid), CLIENT_ADDR, 0.0), Forward)
    router.handoff_failed(dcid)
    action = router.route(initial(dcid=dcid), CLIENT_ADDR, 0.0, handed=True)
    assert isinstance(action, Create) and action.dcid == dcid


def test_a_worker_that_stopped_accepting_hands_new_connections_over() -> None:
    balancer = Balancer(1)
    router = make_router(balancer)
    router.accepting = False
    assert isinstance(router.route(initial(), CLIENT_ADDR, 0.0), Forward)
    balancer.target = None  # (nobody else accepts either)
    assert router.route(initial(), CLIENT_ADDR, 0.0) == Drop(DropReason.NOT_ACCEPTING)
    assert balancer.asked == [(0, False), (0, False)]


def test_a_full_worker_asks_as_not_accepting() -> None:
    balancer = Balancer(None)
    router = make_router(balancer, max_sessions=1)
    router.add(b"x" * 8, Session("a"))
    assert router.route(initial(), CLIENT_ADDR, 0.0) == Drop(DropReason.MAX_SESSIONS)
    assert balancer.asked == [(1, False)]


def test_retry_chooses_nothing_twice() -> None:
    """A tokenless Initial may be handed over (the other worker then sends
    the Retry); one that carries our Retry token already reached the worker
    its Retry's SCID steers to, and is never handed over."""
    balancer = Balancer(None)
    router = make_router(balancer, retry=True)
    odcid = os.urandom(8)
    reply = router.route(initial(dcid=odcid), CLIENT_ADDR, 10.0)
    assert isinstance(reply, Reply) and reply.kind == "retry"
    header = parse(reply.data)
    balancer.target = 1
    action = router.route(initial(dcid=header.source_cid, token=header.token),  # type: ignore[attr-defined]
                          CLIENT_ADDR, 11.0)
    assert isinstance(action, Create) and action.original_dcid == odcid
    assert balancer.asked == [(0, True)]
    assert isinstance(router.route(initial(), CLIENT_ADDR, 12.0), Forward)


def test_handoffs_remembered_are_bounded() -> None:
    router = make_router(Balancer(1))
    for _ in range(MAX_HANDOFFS):
        assert isinstance(router.route(initial(), CLIENT_ADDR, 0.0), Forward)
    # Full and none expired: the next connection stays here.
    assert isinstance(router.route(initial(), CLIENT_ADDR, 1.0), Create)
    # Once they expire, room is made again.
    assert isinstance(router.route(initial(), CLIENT_ADDR, HANDOFF_TTL + 1), Forward)


def test_short_headers_and_known_cids_never_consult_the_balancer() -> None:
    balancer = Balancer(1)
    router = make_router(balancer)
    session = Session("a")
    dcid = router.issuer.new_cid()
    router.add(dcid, session)
    assert router.route(short_header(dcid), CLIENT_ADDR, 0.0).session is session  # type: ignore[union-attr]
    assert router.route(initial(dcid=dcid), CLIENT_ADDR, 0.0).session is session  # type: ignore[union-attr]
    assert balancer.asked == []
