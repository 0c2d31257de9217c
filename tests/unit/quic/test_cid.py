"""Connection IDs steer to their worker; reset tokens are a keyed HMAC."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from quicserve.quic.cid import CidIssuer, StatelessResetKeys, worker_for


@pytest.mark.parametrize("count", range(1, 9))
def test_every_cid_steers_to_its_worker(count: int) -> None:
    for worker in range(count):
        issuer = CidIssuer(worker_id=worker, worker_count=count)
        for _ in range(200):
            cid = issuer.new_cid()
            assert len(cid) == 8
            assert worker_for(cid[0], count) == worker
            assert issuer.owns(cid)


@pytest.mark.parametrize("count", range(2, 9))
def test_owns_rejects_other_workers_cids(count: int) -> None:
    issuers = [CidIssuer(worker_id=w, worker_count=count) for w in range(count)]
    for issuer in issuers:
        cid = issuer.new_cid()
        owners = [other.worker_id for other in issuers if other.owns(cid)]
        assert owners == [issuer.worker_id]


def test_first_byte_covers_every_value_of_the_worker() -> None:
    """The first byte is random among all values mapping to the worker, not a constant."""
    issuer = CidIssuer(worker_id=1, worker_count=3)
    seen = {issuer.new_cid()[0] for _ in range(5000)}
    expected = {b for b in range(256) if b % 3 == 1}
    assert seen == expected


def test_worker_for_matches_modulo_for_every_byte() -> None:
    for count in range(1, 9):
        assert [worker_for(b, count) for b in range(256)] == [b % count for b in range(256)]


def test_cids_are_unpredictable() -> None:
    issuer = CidIssuer(length=12)
    cids = {issuer.new_cid() for _ in range(1000)}
    assert len(cids) == 1000
    assert all(len(c) == 12 for c in cids)


def test_owns_checks_length() -> None:
    issuer = CidIssuer(length=10)
    cid = issuer.new_cid()
    assert issuer.owns(cid)
    assert not issuer.owns(cid[:8])
    assert not issuer.owns(cid + b"\x00")


def test_server_id_is_encoded_and_checked() -> None:
    issuer = CidIssuer(worker_id=2, worker_count=4, server_id=0x1234, length=10)
    cid = issuer.new_cid()
    assert cid[1:3] == b"\x12\x34"
    other = CidIssuer(worker_id=2, worker_count=4, server_id=0x1235, length=10)
    assert issuer.owns(cid)
    assert not other.owns(cid)


@pytest.mark.parametrize("kwargs", [
    {"worker_id": 2, "worker_count": 2},
    {"worker_id": -1},
    {"worker_count": 0},
    {"worker_count": 257},
    {"length": 7},
    {"length": 21},
    {"server_id": 0x10000},
])
def test_bad_issuer_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        CidIssuer(**kwargs)


def test_server_id_fits_the_shortest_cid() -> None:
    """1 steering byte + 2 server-id bytes + 5 random bytes = 8."""
    issuer = CidIssuer(server_id=1, length=8)
    assert issuer.owns(issuer.new_cid())


def test_worker_for_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        worker_for(256, 2)
    with pytest.raises(ValueError):
        worker_for(1, 0)


def test_reset_token_is_truncated_hmac() -> None:
    key = bytes(range(32))
    keys = StatelessResetKeys(key)
    cid = bytes.fromhex("0102030405060708")
    assert keys.token(cid) == hmac.new(key, cid, hashlib.sha256).digest()[:16]
    assert len(keys.token(cid)) == 16


def test_reset_token_depends_on_key_and_cid() -> None:
    a, b = StatelessResetKeys(b"a" * 32), StatelessResetKeys(b"b" * 32)
    cid = b"\x01" * 8
    assert a.token(cid) == StatelessResetKeys(b"a" * 32).token(cid)
    assert a.token(cid) != b.token(cid)
    assert a.token(cid) != a.token(b"\x02" * 8)


def test_reset_key_too_short() -> None:
    with pytest.raises(ValueError):
        StatelessResetKeys(b"short")


def test_reprs_hide_secrets() -> None:
    assert "aaaa" not in repr(StatelessResetKeys(b"a" * 32))
