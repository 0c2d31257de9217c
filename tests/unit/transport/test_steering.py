"""The CBPF steering program: its encoding, and real reuseport groups on loopback.

The loopback tests send datagrams whose destination connection ID starts with
a chosen byte and check which socket of the group receives each one.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time

import pytest

from quicserve.config import BindSpec, parse_bind
from quicserve.transport import steering

INSTRUCTION = struct.Struct("=HBBI")


def short_header(first_cid_byte: int) -> bytes:
    return bytes([0x40, first_cid_byte]) + os.urandom(7) + b"\x00" * 30


def long_header(first_cid_byte: int) -> bytes:
    # Initial, version 1, DCID length 8, then the DCID.
    return bytes([0xC0, 0, 0, 0, 1, 8, first_cid_byte]) + os.urandom(7) + b"\x00" * 30


def receive_all(sockets: list[socket.socket], expected: int) -> list[list[bytes]]:
    """Everything each socket received, waiting (bounded) until ``expected`` arrived."""
    got: list[list[bytes]] = [[] for _ in sockets]
    deadline = time.monotonic() + 5.0
    while sum(map(len, got)) < expected and time.monotonic() < deadline:
        readable, _, _ = select.select(sockets, [], [], 0.2)
        for sock in readable:
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                got[sockets.index(sock)].append(data)
    return got


def decode(program: bytes) -> list[tuple[int, int, int, int]]:
    return [INSTRUCTION.unpack_from(program, i) for i in range(0, len(program), INSTRUCTION.size)]


def run_cbpf(program: bytes, payload: bytes) -> int:
    """A tiny interpreter for the opcodes the program uses, to check its logic
    independently of the kernel."""
    code = decode(program)
    a = pc = 0
    for _ in range(len(code) + 1):
        op, jt, jf, k = code[pc]
        pc += 1
        if op == 0x30:
            if k >= len(payload):
                return 0  # classic BPF aborts with 0 on an out-of-bounds load
            a = payload[k]
        elif op == 0x45:
            pc += jt if a & k else jf
        elif op == 0x05:
            pc += k
        elif op == 0x94:
            a %= k
        elif op == 0x16:
            return a
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
    raise AssertionError("program did not return")


def test_program_encoding() -> None:
    program = steering.make_cbpf_program(3)
    assert len(program) == 7 * 8
    code = decode(program)
    assert code[0] == (0x30, 0, 0, 0)  # ld b [0]
    assert code[1] == (0x45, 0, 2, 0x80)  # jset #0x80
    assert code[2] == (0x30, 0, 0, 6)  # ld b [6]
    assert code[4] == (0x30, 0, 0, 1)  # ld b [1]
    assert code[5] == (0x94, 0, 0, 3)  # mod #3
    assert code[6] == (0x16, 0, 0, 0)  # ret a


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_program_logic_matches_steer(count: int) -> None:
    program = steering.make_cbpf_program(count)
    for byte in range(256):
        for payload in (short_header(byte), long_header(byte)):
            assert run_cbpf(program, payload) == steering.steer(payload, count) == byte % count
    assert run_cbpf(program, b"\xc0\x00") == steering.steer(b"\xc0\x00", count) == 0


@pytest.mark.parametrize("count", [0, 256])
def test_program_rejects_bad_counts(count: int) -> None:
    with pytest.raises(ValueError):
        steering.make_cbpf_program(count)


@pytest.mark.parametrize("count", [2, 3, 4])
@pytest.mark.parametrize("family_bind", ["127.0.0.1:0", "[::1]:0"])
def test_group_steers_by_first_cid_byte(count: int, family_bind: str) -> None:
    if family_bind.startswith("[") and not socket.has_ipv6:
        pytest.skip("no IPv6")
    group = steering.open_udp_group(parse_bind(family_bind), count)
    try:
        ports = {sock.getsockname()[1] for sock in group}
        assert len(ports) == 1 and 0 not in ports
        address = group[0].getsockname()[:2]
        sent: list[tuple[int, bytes]] = []
        with socket.socket(group[0].family, socket.SOCK_DGRAM) as client:
            for byte in range(0, 256, 5):
                for payload in (short_header(byte), long_header(byte)):
                    client.sendto(payload, address)
                    sent.append((byte % count, payload))
        got = receive_all(group, len(sent))
        for index, payload in sent:
            assert payload in got[index], f"datagram for socket {index} went elsewhere"
        assert sum(map(len, got)) == len(sent)
    finally:
        for sock in group:
            sock.close()


def test_group_from_a_changing_client_port_stays_on_one_socket() -> None:
    """A connection's packets reach the same socket whatever the client port."""
    group = steering.open_udp_group(parse_bind("127.0.0.1:0"), 4)
    try:
        address = group[0].getsockname()
        for _ in range(8):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(short_header(0x8E), address)  # 0x8e % 4 == 2
        got = receive_all(group, 8)
        assert [len(g) for g in got] == [0, 0, 8, 0]
    finally:
        for sock in group:
            sock.close()


def test_group_rejects_unix_binds() -> None:
    with pytest.raises(ValueError):
        steering.open_udp_group(BindSpec("unix", path="/tmp/x"), 2)


def test_group_bind_conflict_closes_what_it_opened() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: the port is exclusively ours
        port = taken.getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(OSError):
            steering.open_udp_group(parse_bind(f"127.0.0.1:{port}"), 3)
        assert len(os.listdir("/proc/self/fd")) == before


def test_attach_failure_is_a_clear_platform_error() -> None:
    """The kernel refuses the program on a socket outside any reuseport group;
    the refusal surfaces as UnsupportedPlatform naming the option."""
    from quicserve.errors import UnsupportedPlatform

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
        plain.bind(("127.0.0.1", 0))
        with pytest.raises(UnsupportedPlatform, match="SO_ATTACH_REUSEPORT_CBPF"):
            steering.attach_steering(plain, 2)
