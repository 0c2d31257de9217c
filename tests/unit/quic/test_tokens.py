"""Shared secrets, Retry tokens and stateless session tickets."""

from __future__ import annotations

import base64
import datetime
import os
from pathlib import Path

import pytest
from aioquic import tls

from quicserve.quic.tokens import (
    InvalidToken, NewTokens, QuicSecrets, RetryTokenInfo, RetryTokens, SecretFileError, SessionTicketStore,
)

ADDR = ("192.0.2.7", 5000)
ODCID = bytes.fromhex("8394c8f03e515708")
RSCID = bytes.fromhex("a1a2a3a4a5a6a7a8")


# -- secrets ------------------------------------------------------------------

def test_subkeys_are_distinct_and_deterministic() -> None:
    master = os.urandom(32)
    a, b = QuicSecrets.from_master(master), QuicSecrets.from_master(master)
    assert a == b
    keys = {a.retry_key, a.ticket_key, a.reset_key, a.new_token_key}
    assert len(keys) == 4 and all(len(k) == 32 for k in keys)
    assert master not in keys
    assert a.to_master() == master
    assert QuicSecrets.from_master(a.to_master()) == a


def test_generate_is_random() -> None:
    assert QuicSecrets.generate().retry_key != QuicSecrets.generate().retry_key
    assert QuicSecrets.load(None).reset_key != QuicSecrets.load(None).reset_key


def test_repr_hides_keys() -> None:
    secrets = QuicSecrets.generate()
    assert secrets.retry_key.hex() not in repr(secrets)
    assert "secret" in repr(secrets)


def test_master_too_short() -> None:
    with pytest.raises(ValueError):
        QuicSecrets.from_master(b"x" * 31)


@pytest.mark.parametrize("encode", [
    lambda b: b.hex().encode() + b"\n",
    lambda b: base64.b64encode(b) + b"\n",
    lambda b: b.hex().upper().encode(),
])
def test_load_hex_or_base64(tmp_path: Path, encode: object) -> None:
    master = os.urandom(32)
    path = tmp_path / "secret"
    path.write_bytes(encode(master))  # type: ignore[operator]
    path.chmod(0o600)
    assert QuicSecrets.load(str(path)) == QuicSecrets.from_master(master)


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(SecretFileError, match="nope"):
        QuicSecrets.load(str(path))
    assert not path.exists(), "a missing secret file must not be created"


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"  \n", "empty"),
    (os.urandom(16).hex().encode(), "at least 32"),
    (b"not a secret!!", "hex or base64"),
])
def test_load_rejects_bad_content(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(SecretFileError, match=message):
        QuicSecrets.load(str(path))


# -- Retry tokens --------------------------------------------------------------

def make_token(tokens: RetryTokens, *, addr: tuple[str, int] = ADDR, now: float = 100.0) -> bytes:
    return tokens.create(addr=addr, original_dcid=ODCID, retry_scid=RSCID, now=now)


def test_retry_token_round_trip() -> None:
    tokens = RetryTokens(os.urandom(32))
    info = tokens.validate(make_token(tokens), addr=ADDR, now=105.0)
    assert info == RetryTokenInfo(original_dcid=ODCID, retry_scid=RSCID)


def test_retry_token_accepted_by_another_instance_with_the_key() -> None:
    key = os.urandom(32)
    token = make_token(RetryTokens(key))
    assert RetryTokens(key).validate(token, addr=ADDR, now=100.0).original_dcid == ODCID


def test_retry_tokens_are_unique() -> None:
    tokens = RetryTokens(os.urandom(32))
    assert make_token(tokens) != make_token(tokens)


@pytest.mark.parametrize("addr", [("192.0.2.8", 5000), ("192.0.2.7", 5001), ("::1", 5000)])
def test_retry_token_bound_to_address(addr: tuple[str, int]) -> None:
    tokens = RetryTokens(os.urandom(32))
    with pytest.raises(InvalidToken):
        tokens.validate(make_token(tokens), addr=addr, now=100.0)


def test_v4_mapped_address_is_the_same_client() -> None:
    tokens = RetryTokens(os.urandom(32))
    token = make_token(tokens)
    assert tokens.validate(token, addr=("::ffff:192.0.2.7", 5000), now=100.0).retry_scid == RSCID


def test_retry_token_expires() -> None:
    tokens = RetryTokens(os.urandom(32), lifetime=10.0)
    token = make_token(tokens, now=100.0)
    assert tokens.validate(token, addr=ADDR, now=110.0).original_dcid == ODCID
    with pytest.raises(InvalidToken, match="expired"):
        tokens.validate(token, addr=ADDR, now=110.001)


def test_every_tampered_byte_is_rejected() -> None:
    tokens = RetryTokens(os.urandom(32))
    token = make_token(tokens)
    for i in range(len(token)):
        tampered = bytearray(token)
        tampered[i] ^= 0x01
        with pytest.raises(InvalidToken):
            tokens.validate(bytes(tampered), addr=ADDR, now=100.0)


@pytest.mark.parametrize("token", [b"", b"R", b"R" + b"\x00" * 28, b"X" * 80])
def test_malformed_tokens(token: bytes) -> None:
    with pytest.raises(InvalidToken):
        RetryTokens(os.urandom(32)).validate(token, addr=ADDR, now=0.0)


def test_truncated_and_extended_tokens() -> None:
    tokens = RetryTokens(os.urandom(32))
    token = make_token(tokens)
    for bad in (token[:-1], token + b"\x00", token[:30]):
        with pytest.raises(InvalidToken):
            tokens.validate(bad, addr=ADDR, now=100.0)


def test_other_key_rejected() -> None:
    token = make_token(RetryTokens(os.urandom(32)))
    with pytest.raises(InvalidToken):
        RetryTokens(os.urandom(32)).validate(token, addr=ADDR, now=100.0)


def test_is_retry_token_shape() -> None:
    tokens = RetryTokens(os.urandom(32))
    assert tokens.is_retry_token(make_token(tokens))
    assert not tokens.is_retry_token(b"")
    assert not tokens.is_retry_token(b"N" + os.urandom(60))


# -- session tickets -------------------------------------------------------------

def make_ticket(*, valid_for: float = 3600.0, early: int | None = 0xFFFFFFFF,
                server_name: str | None = None) -> tls.SessionTicket:
    now = datetime.datetime.now(datetime.timezone.utc)
    return tls.SessionTicket(
        age_add=0x12345678, cipher_suite=tls.CipherSuite.CHACHA20_POLY1305_SHA256,
        not_valid_after=now + datetime.timedelta(seconds=valid_for), not_valid_before=now,
        resumption_secret=os.urandom(32), server_name=server_name,  # type: ignore[arg-type]
        ticket=os.urandom(64), max_early_data_size=early,
        other_extensions=[(0x39, os.urandom(60))])


def same_state(a: tls.SessionTicket, b: tls.SessionTicket) -> bool:
    return (a.age_add, a.cipher_suite, a.resumption_secret, a.server_name, a.max_early_data_size,
            a.other_extensions) == (b.age_add, b.cipher_suite, b.resumption_secret,
                                    b.server_name, b.max_early_data_size, b.other_extensions) \
        and abs((a.not_valid_before - b.not_valid_before).total_seconds()) < 1e-3 \
        and abs((a.not_valid_after - b.not_valid_after).total_seconds()) < 1e-3


def test_sealed_ticket_resumes_in_another_store_with_the_key() -> None:
    key = os.urandom(32)
    ticket = make_ticket()
    label = SessionTicketStore(key).seal(ticket)
    opened = SessionTicketStore(key).pop(label)
    assert opened is not None
    assert same_state(opened, ticket)
    assert opened.ticket == label, "the label the client sent is the ticket's identity"


@pytest.mark.parametrize("early, name", [(None, None), (0xFFFFFFFF, "example.com")])
def test_optional_fields_survive(early: int | None, name: str | None) -> None:
    store = SessionTicketStore(os.urandom(32))
    ticket = make_ticket(early=early, server_name=name)
    opened = store.pop(store.seal(ticket))
    assert opened is not None and same_state(opened, ticket)


def test_sealed_label_used_once_per_process() -> None:
    key = os.urandom(32)
    store = SessionTicketStore(key)
    label = store.seal(make_ticket())
    assert store.pop(label) is not None
    assert store.pop(label) is None
    assert SessionTicketStore(key).pop(label) is not None


def test_other_key_or_garbage_is_refused() -> None:
    label = SessionTicketStore(os.urandom(32)).seal(make_ticket())
    store = SessionTicketStore(os.urandom(32))
    assert store.pop(label) is None
    assert store.pop(b"") is None
    assert store.pop(os.urandom(64)) is None
    tampered = bytearray(label)
    tampered[20] ^= 1
    assert SessionTicketStore(os.urandom(32)).pop(bytes(tampered)) is None


def test_expired_ticket_is_refused() -> None:
    store = SessionTicketStore(os.urandom(32))
    assert store.pop(store.seal(make_ticket(valid_for=-1.0))) is None


def test_store_lifetime_caps_the_ticket() -> None:
    store = SessionTicketStore(os.urandom(32), lifetime=60)
    ticket = make_ticket(valid_for=86400)
    opened = store.pop(store.seal(ticket))
    assert opened is not None
    assert abs((opened.not_valid_after - ticket.not_valid_before).total_seconds() - 60) < 1e-3


def test_added_tickets_resume_locally() -> None:
    store = SessionTicketStore(os.urandom(32))
    ticket = make_ticket()
    store.add(ticket)
    assert store.pop(ticket.ticket) is ticket
    assert store.pop(ticket.ticket) is None


def test_local_tickets_are_bounded() -> None:
    store = SessionTicketStore(os.urandom(32), max_entries=3)
    tickets = [make_ticket() for _ in range(5)]
    for t in tickets:
        store.add(t)
    assert store.pop(tickets[0].ticket) is None
    assert store.pop(tickets[4].ticket) is tickets[4]


def test_load_warns_about_a_readable_secret_file(tmp_path: Path) -> None:
    import logging

    from quicserve.log import error_logger

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.WARNING)
    error_logger.addHandler(handler)
    try:
        path = tmp_path / "secret"
        path.write_bytes(os.urandom(32).hex().encode())
        path.chmod(0o644)
        QuicSecrets.load(str(path))
        path.chmod(0o600)
        QuicSecrets.load(str(path))
    finally:
        error_logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == \
        [f"QUIC secret file {path} is accessible by group or others; chmod 600 it"]


# -- NEW_TOKEN tokens -------------------------------------------------------------


class WallClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_new_token_validates_for_the_same_ip_on_any_port() -> None:
    clock = WallClock()
    tokens = NewTokens(os.urandom(32), clock=clock)
    token = tokens.create("192.0.2.7")
    assert NewTokens.is_new_token(token)
    assert not RetryTokens.is_retry_token(token)
    tokens.validate(token, "192.0.2.7")
    tokens.validate(token, "::ffff:192.0.2.7")  # (the same address, v4-mapped)
    with pytest.raises(InvalidToken):
        tokens.validate(token, "192.0.2.8")


def test_new_token_expires_and_survives_a_restart_with_the_key() -> None:
    key, clock = os.urandom(32), WallClock()
    token = NewTokens(key, lifetime=3600, clock=clock).create("2001:db8::1")
    clock.now += 3599
    NewTokens(key, clock=clock).validate(token, "2001:db8::1")  # (another process)
    clock.now += 2
    with pytest.raises(InvalidToken, match="expired"):
        NewTokens(key, clock=clock).validate(token, "2001:db8::1")


def test_new_token_forged_or_foreign_is_refused() -> None:
    tokens = NewTokens(os.urandom(32))
    token = tokens.create("192.0.2.7")
    for bad in (b"", token[:-1], bytes([token[0]]) + os.urandom(len(token) - 1),
                NewTokens(os.urandom(32)).create("192.0.2.7")):
        with pytest.raises(InvalidToken):
            tokens.validate(bad, "192.0.2.7")
    retry = RetryTokens(os.urandom(32)).create(addr=("192.0.2.7", 1), original_dcid=b"d" * 8,
                                               retry_scid=b"s" * 8, now=0.0)
    assert not NewTokens.is_new_token(retry)
