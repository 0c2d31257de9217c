"""quic/replay.py: a session ticket is accepted once per replay cache, and
the shared cache is one for every process forked after it was made."""

from __future__ import annotations

import os
import signal
import time
from typing import Iterator

import pytest

from quicserve.quic.replay import BUCKETS, WAYS, LocalReplayCache, SharedReplayCache
from quicserve.quic.tokens import SessionTicketStore
from tests.unit.quic.test_tokens import make_ticket


@pytest.fixture
def shared() -> Iterator[SharedReplayCache]:
    cache = SharedReplayCache()
    yield cache
    cache.close()


def in_child(action) -> int:  # type: ignore[no-untyped-def]
    """Run ``action()`` in a forked child; its exit status (0: returned True)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os._exit(0 if action() else 1)
        except BaseException:
            os._exit(2)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_each_nonce_is_new_once(shared: SharedReplayCache) -> None:
    nonces = [os.urandom(12) for _ in range(100)]
    assert all(shared.first_use(n) for n in nonces)
    assert not any(shared.first_use(n) for n in nonces)


def test_a_nonce_used_in_one_process_is_refused_in_another(shared: SharedReplayCache) -> None:
    nonce, other = os.urandom(12), os.urandom(12)
    assert in_child(lambda: shared.first_use(nonce)) == 0
    assert not shared.first_use(nonce)
    assert shared.first_use(other)
    assert in_child(lambda: shared.first_use(other)) == 1


def test_a_ticket_resumes_once_across_workers_sharing_the_cache(
        shared: SharedReplayCache) -> None:
    """Two workers' stores (same key, one shared cache): the label one worker
    accepted is refused by the other, where separate caches let it through."""
    key = os.urandom(32)
    label = SessionTicketStore(key).seal(make_ticket())
    assert in_child(lambda: SessionTicketStore(key, replay=shared).pop(label) is not None) == 0
    assert SessionTicketStore(key, replay=shared).pop(label) is None
    assert SessionTicketStore(key).pop(label) is not None  # (a cache of its own)


def test_a_bucket_forgets_its_oldest_nonce_only_when_full(shared: SharedReplayCache) -> None:
    prefix = (12345).to_bytes(4, "big")
    same_bucket = [prefix + os.urandom(8) for _ in range(WAYS + 1)]
    for nonce in same_bucket[:WAYS]:
        assert shared.first_use(nonce)
    assert not any(shared.first_use(n) for n in same_bucket[:WAYS])
    assert shared.first_use(same_bucket[WAYS])  # replaces the oldest
    assert shared.first_use(same_bucket[0])
    assert not shared.first_use(same_bucket[WAYS])
    other_bucket = (12345 + 1).to_bytes(4, "big") + same_bucket[1][4:]
    assert shared.first_use(other_bucket)
    assert BUCKETS * WAYS >= 100_000


def test_a_process_killed_holding_the_lock_does_not_wedge_the_others(
        shared: SharedReplayCache) -> None:
    import fcntl
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        fcntl.lockf(shared._fd, fcntl.LOCK_EX)
        os.write(ready_w, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(ready_r, 1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    began = time.monotonic()
    assert shared.first_use(os.urandom(12))
    assert time.monotonic() - began < 1.0
    os.close(ready_r)
    os.close(ready_w)


def test_the_local_cache_keeps_the_newest() -> None:
    cache = LocalReplayCache(max_entries=3)
    a, b, c, d = (bytes([i]) * 12 for i in range(4))
    assert all(cache.first_use(n) for n in (a, b, c, d))
    assert not cache.first_use(d)
    assert cache.first_use(a)  # forgotten: the oldest of four
