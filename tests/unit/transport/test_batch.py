"""The UDP fast path on loopback: GSO sends, GRO receives, and the fallbacks."""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator

import pytest

from quicserve.transport import batch
from quicserve.transport.batch import UdpCapabilities, UdpReceiver, UdpSender

PLAIN = UdpCapabilities(gso=False, gro=False, rcvbuf=0, sndbuf=0)


def udp_socket(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.setblocking(False)
    return sock


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    sender, receiver = udp_socket(), udp_socket()
    yield sender, receiver
    sender.close()
    receiver.close()


def receive_plain(sock: socket.socket, expected: int) -> list[bytes]:
    """Datagrams as a plain recvfrom reader sees them (bounded wait)."""
    got: list[bytes] = []
    deadline = time.monotonic() + 5.0
    while len(got) < expected and time.monotonic() < deadline:
        if select.select([sock], [], [], 0.2)[0]:
            while True:
                try:
                    got.append(sock.recv(65536))
                except BlockingIOError:
                    break
    return got


def receive_batches(receiver: UdpReceiver, sock: socket.socket, expected: int) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + 5.0
    while len(got) < expected and time.monotonic() < deadline:
        if select.select([sock], [], [], 0.2)[0]:
            got.extend(data for data, _ in receiver.recv_batch())
    return got


def payloads(count: int, size: int) -> list[bytes]:
    return [bytes([i]) * 4 + os.urandom(size - 4) for i in range(count)]


def test_detect_sizes_buffers_and_finds_offloads(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, _ = pair
    caps = batch.detect_capabilities(sender, buffer_size=1 << 20)
    assert caps.rcvbuf >= 1 << 20 and caps.sndbuf >= 1 << 20
    # Linux >= 5.0 has both; this machine's kernel is newer.
    assert caps.gso and caps.gro


def test_detect_can_be_forced_off(pair: tuple[socket.socket, socket.socket]) -> None:
    caps = batch.detect_capabilities(pair[0], gso=False, gro=False)
    assert not caps.gso and not caps.gro


def test_gso_send_arrives_as_separate_datagrams(pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_sock = pair
    sender = UdpSender(sender_sock, batch.detect_capabilities(sender_sock))
    data = payloads(10, 1200)
    address = receiver_sock.getsockname()
    assert sender.send_batch([(d, address) for d in data]) == 10
    assert (sender.syscalls, sender.gso_sends, sender.datagrams) == (1, 1, 10)
    assert receive_plain(receiver_sock, 10) == data


def test_gso_run_may_end_with_a_shorter_datagram(pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_sock = pair
    sender = UdpSender(sender_sock, batch.detect_capabilities(sender_sock))
    data = payloads(5, 1200) + payloads(1, 500) + payloads(2, 1200)
    address = receiver_sock.getsockname()
    assert sender.send_batch([(d, address) for d in data]) == 8
    # [5 x 1200 + 500] then [2 x 1200]
    assert (sender.syscalls, sender.gso_sends) == (2, 2)
    assert receive_plain(receiver_sock, 8) == data


def test_runs_break_on_address_and_size(pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_a = pair
    with udp_socket() as receiver_b:
        sender = UdpSender(sender_sock, batch.detect_capabilities(sender_sock))
        a, b = receiver_a.getsockname(), receiver_b.getsockname()
        small, large = payloads(3, 300), payloads(4, 1200)
        batch_ = [(large[0], a), (large[1], a), (large[2], b), (large[3], b), (small[0], b),
                  (small[1], a), (small[2], a)]
        assert sender.send_batch(batch_) == 7
        assert sender.syscalls == 3  # [a a] [b b b(short)] [a a]
        assert receive_plain(receiver_a, 4) == [large[0], large[1], small[1], small[2]]
        assert receive_plain(receiver_b, 3) == [large[2], large[3], small[0]]


def test_runs_are_capped_at_the_kernel_segment_limit(pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_sock = pair
    batch.size_buffers(receiver_sock)
    sender = UdpSender(sender_sock, batch.detect_capabilities(sender_sock))
    data = payloads(150, 200)
    address = receiver_sock.getsockname()
    assert sender.send_batch([(d, address) for d in data]) == 150
    assert sender.syscalls == 3  # 64 + 64 + 22
    assert receive_plain(receiver_sock, 150) == data


def test_forced_plain_send_uses_one_call_per_datagram(pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_sock = pair
    sender = UdpSender(sender_sock, PLAIN)
    data = payloads(10, 1200)
    assert sender.send_batch([(d, receiver_sock.getsockname()) for d in data]) == 10
    assert (sender.syscalls, sender.gso_sends) == (10, 0)
    assert receive_plain(receiver_sock, 10) == data


def test_gso_refused_by_kernel_falls_back_to_plain(pair: tuple[socket.socket, socket.socket]) -> None:
    """SO_NO_CHECK makes Linux refuse UDP_SEGMENT with EINVAL; the run is
    resent datagram by datagram and nothing is lost."""
    sender_sock, receiver_sock = pair
    sender_sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_NO_CHECK", 11), 1)
    sender = UdpSender(sender_sock, batch.detect_capabilities(sender_sock))
    data = payloads(6, 1200)
    assert sender.send_batch([(d, receiver_sock.getsockname()) for d in data]) == 6
    assert sender.gso_sends == 0 and sender.datagrams == 6 and sender.syscalls == 7
    assert receive_plain(receiver_sock, 6) == data


def test_unsendable_datagram_is_counted_and_skipped(pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_sock = pair
    sender = UdpSender(sender_sock, batch.detect_capabilities(sender_sock))
    good = payloads(2, 100)
    sent = sender.send_batch([(good[0], receiver_sock.getsockname()),
                              (b"x" * 70000, receiver_sock.getsockname()),  # EMSGSIZE
                              (good[1], receiver_sock.getsockname())])
    assert sent == 3 and sender.errors == 1 and sender.datagrams == 2
    assert receive_plain(receiver_sock, 2) == good


def test_gro_receive_splits_coalesced_segments(pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_sock = pair
    sender = UdpSender(sender_sock, batch.detect_capabilities(sender_sock))
    receiver = UdpReceiver(receiver_sock, batch.detect_capabilities(receiver_sock))
    data = payloads(10, 1200) + payloads(1, 700)
    address = receiver_sock.getsockname()
    assert sender.send_batch([(d, address) for d in data]) == 11
    got = receive_batches(receiver, receiver_sock, 11)
    assert got == data
    assert receiver.coalesced >= 1 and receiver.syscalls < 11


def test_gro_receive_keeps_sender_addresses(pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_sock = pair
    receiver = UdpReceiver(receiver_sock, batch.detect_capabilities(receiver_sock))
    with udp_socket() as other:
        sender_sock.sendto(b"one", receiver_sock.getsockname())
        other.sendto(b"two", receiver_sock.getsockname())
        deadline = time.monotonic() + 5.0
        got: list[tuple[bytes, object]] = []
        while len(got) < 2 and time.monotonic() < deadline:
            select.select([receiver_sock], [], [], 0.2)
            got.extend(receiver.recv_batch())
        assert sorted(got) == sorted([(b"one", sender_sock.getsockname()),
                                      (b"two", other.getsockname())])


def test_plain_receiver_gets_gso_datagrams_one_by_one(pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_sock = pair
    sender = UdpSender(sender_sock, batch.detect_capabilities(sender_sock))
    receiver = UdpReceiver(receiver_sock, batch.detect_capabilities(receiver_sock, gro=False))
    data = payloads(10, 1200)
    sender.send_batch([(d, receiver_sock.getsockname()) for d in data])
    assert receive_batches(receiver, receiver_sock, 10) == data
    assert receiver.coalesced == 0 and receiver.syscalls == 10


def test_receive_batch_is_bounded(pair: tuple[socket.socket, socket.socket]) -> None:
    sender_sock, receiver_sock = pair
    receiver = UdpReceiver(receiver_sock, PLAIN, max_reads=4)
    for i in range(10):
        sender_sock.sendto(bytes([i]), receiver_sock.getsockname())
    select.select([receiver_sock], [], [], 2.0)
    time.sleep(0.05)
    assert len(receiver.recv_batch()) == 4
    assert len(receiver.recv_batch()) == 4
    assert len(receiver.recv_batch()) == 2
    assert receiver.recv_batch() == []


def test_ipv6_gso_and_gro() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with udp_socket(socket.AF_INET6) as sender_sock, udp_socket(socket.AF_INET6) as receiver_sock:
        sender = UdpSender(sender_sock, batch.detect_capabilities(sender_sock))
        receiver = UdpReceiver(receiver_sock, batch.detect_capabilities(receiver_sock))
        data = payloads(8, 1350)
        assert sender.send_batch([(d, receiver_sock.getsockname()) for d in data]) == 8
        assert sender.syscalls == 1
        assert receive_batches(receiver, receiver_sock, 8) == data

