"""transport/handoff.py: the load board, the choice, and the inboxes (real
AF_UNIX socket pairs, a real fork for the shared board)."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from quicserve.transport.handoff import UNAVAILABLE, Handoff, HandoffGroup


@pytest.fixture
def group() -> Iterator[HandoffGroup]:
    made = HandoffGroup(3)
    yield made
    made.close()


def serving(group: HandoffGroup, **sessions: int) -> list[Handoff]:
    """Every worker's Handoff, each having published its session count
    (``w0=5`` ...); a worker not named stays unavailable."""
    handoffs = [group.for_worker(w) for w in range(group.count)]
    for name, count in sessions.items():
        handoffs[int(name[1:])].publish(count)
    return handoffs


def test_workers_are_unavailable_until_they_publish(group: HandoffGroup) -> None:
    w0, w1, w2 = serving(group, w0=4)
    assert list(group.board.slots) == [4, UNAVAILABLE, UNAVAILABLE]
    assert w0.choose(4, accepting=True) is None  # nobody to hand to
    w1.publish(0)
    assert w0.choose(4, accepting=True) == 1


def test_the_least_loaded_worker_is_chosen_past_the_slack(group: HandoffGroup) -> None:
    w0, _, _ = serving(group, w0=0, w1=3, w2=2)
    assert w0.choose(2, accepting=True) is None  # (2 <= 2: even enough)
    assert w0.choose(3, accepting=True) == 2
    # 100 sessions against 90: within an eighth, kept; against 87, handed.
    other = HandoffGroup(3)
    try:
        w0b, w1b, _ = serving(other, w0=100, w1=90, w2=95)
        assert w0b.choose(100, accepting=True) is None
        w1b.publish(87)
        assert w0b.choose(100, accepting=True) == 1
    finally:
        other.close()


def test_connections_handed_but_not_yet_counted_weigh_on_the_choice(
        group: HandoffGroup) -> None:
    """A burst of Initials read in one batch is spread, not all sent to the
    worker that looked emptiest before the burst."""
    w0, w1, w2 = serving(group, w0=0, w1=0, w2=UNAVAILABLE)
    choices = []
    sessions = 0
    for _ in range(8):
        worker = w0.choose(sessions, accepting=True)
        if worker is None:
            sessions += 1  # created here
        choices.append(worker)
    assert choices.count(1) == 4 and sessions == 4
    # Worker 1 counts them itself: what was pending is dropped, not added twice.
    w1.publish(4)
    assert w0.choose(4, accepting=True) is None
    assert w0.choose(5, accepting=True) == 1


def test_a_worker_not_accepting_hands_everything_to_an_available_one(
        group: HandoffGroup) -> None:
    w0, w1, w2 = serving(group, w0=0, w1=50, w2=7)
    w2.publish(UNAVAILABLE)
    assert w0.choose(0, accepting=False) == 1
    w1.publish(UNAVAILABLE)
    assert w0.choose(0, accepting=False) is None


def test_a_worker_that_exited_is_marked_unavailable(group: HandoffGroup) -> None:
    w0, _, _ = serving(group, w0=3, w1=0, w2=0)
    group.mark_unavailable(1)
    group.mark_unavailable(2)
    assert w0.choose(3, accepting=True) is None


def test_the_board_is_shared_with_forked_workers(group: HandoffGroup) -> None:
    w0 = group.for_worker(0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        group.for_worker(1).publish(7)
        os._exit(0)
    os.waitpid(pid, 0)
    assert group.board.slots[1] == 7
    assert w0.choose(9, accepting=True) == 1


@pytest.mark.parametrize("addr", [("127.0.0.1", 51234), ("::1", 443, 0, 0),
                                  ("fe80::1", 8443, 0, 3)])
def test_a_handed_datagram_arrives_with_its_client_address(group: HandoffGroup,
                                                           addr: tuple[object, ...]) -> None:
    w0, w1, w2 = serving(group)
    datagram = os.urandom(1350)
    assert w0.forward(2, datagram, addr)
    assert list(w1.receive()) == []
    received = list(w2.receive())
    expected = addr if len(addr) == 2 else (addr[0], addr[1], 0, addr[3])
    assert received == [(datagram, expected)]


def test_forward_to_yourself_or_a_stranger_fails(group: HandoffGroup) -> None:
    w0, _, _ = serving(group)
    assert not w0.forward(0, b"x", ("127.0.0.1", 1))
    assert not w0.forward(7, b"x", ("127.0.0.1", 1))


def test_a_full_inbox_refuses_instead_of_blocking(group: HandoffGroup) -> None:
    w0, w1, _ = serving(group)
    sent = 0
    while w0.forward(1, os.urandom(1200), ("127.0.0.1", 9)):
        sent += 1
        assert sent < 100_000, "the inbox never filled"
    assert sent > 10
    assert len(list(w1.receive())) == min(sent, 256)  # one wake-up's budget


def test_malformed_messages_are_skipped(group: HandoffGroup) -> None:
    w0, w1, _ = serving(group)
    door = w0._peers[1]
    door.send(b"\x07" * 40)  # an unknown family
    door.send(b"\x04")  # too short
    assert w0.forward(1, b"q" * 1200, ("10.0.0.1", 5))
    assert list(w1.receive()) == [(b"q" * 1200, ("10.0.0.1", 5))]
