"""Worker processes on loopback: the supervisor's mechanics, then quicserve itself.

Part one drives ``supervisor.run`` with a small real worker (``toy_worker``:
an asyncio loop that answers HTTP/1.0 on the shared TCP socket and echoes its
worker id on its own UDP socket), so restarts, steering after a restart,
recycling, rolling reloads and boot failures are tested with real processes
and sockets independently of the HTTP stacks.

Part two runs ``quicserve --workers 2`` with the real server and independent
clients (ngtcp2's ``gtlsclient``, curl).

Every process is started by the test and stopped by PID; every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from quicserve import supervisor
from quicserve.config import Config
from quicserve.interfaces import Statistics
from quicserve.transport import steering

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


# --------------------------------------------------------------------------
# Part one: the toy worker.


def toy_worker(config: Config, context: supervisor.WorkerContext) -> int:
    """A real worker: HTTP/1.0 answers on TCP, worker-id echo on UDP."""
    if os.environ.get("TOY_BOOT_FAIL") == "1":
        return 3
    return asyncio.run(_toy_serve(context))


async def _toy_serve(context: supervisor.WorkerContext) -> int:
    loop = asyncio.get_running_loop()
    stats = Statistics()
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    tag = f"worker={context.worker_id} pid={os.getpid()}".encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        stats.requests += 1
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(tag), tag))
        await writer.drain()
        writer.close()

    servers = [await asyncio.start_server(answer, sock=b.sock) for b in context.tcp]
    for bound in context.udp:
        loop.add_reader(bound.sock, _toy_udp, bound.sock, stats, tag)
    context.on_started(stats)
    await stopped.wait()
    for server in servers:
        server.close()
    return 0


def _toy_udp(sock: socket.socket, stats: Statistics, tag: bytes) -> None:
    while True:
        try:
            data, address = sock.recvfrom(2048)
        except BlockingIOError:
            return
        stats.datagrams_received += 1
        sock.sendto(tag + b" " + data[:2].hex().encode(), address)


def toy_main() -> None:
    """Entry of the supervisor subprocess: argv[1] is a JSON dict of options."""
    options = json.loads(sys.argv[1])
    config = Config(**options)
    sys.exit(supervisor.run(config, worker_main=toy_worker))


class Supervised:
    """A supervisor subprocess and what it printed."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, tcp_port: int,
                 udp_port: int, stats_dir: Path) -> None:
        self.proc = proc
        self.log = log
        self.tcp_port = tcp_port
        self.udp_port = udp_port
        self.stats_dir = stats_dir

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, count: int = 1, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.text().count(needle) >= count:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} x{count} not logged:\n{self.text()}")

    def http_get(self) -> str:
        with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=5) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        return data.decode().rpartition("\r\n\r\n")[2]

    def udp_ask(self, first_cid_byte: int, *, short: bool = True) -> str:
        payload = (bytes([0x40, first_cid_byte]) if short
                   else bytes([0xC0, 0, 0, 0, 1, 8, first_cid_byte])) + b"\x00" * 20
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(payload, ("127.0.0.1", self.udp_port))
            return client.recv(2048).decode()

    def worker_pids(self) -> dict[int, int]:
        """worker id -> pid, from the supervisor's log (latest start wins)."""
        pids: dict[int, int] = {}
        for line in self.text().splitlines():
            if "started worker" in line:
                words = line.split("started worker ", 1)[1].split()
                pids[int(words[0])] = int(words[2].rstrip(")"))
        return pids


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def start_toy(tmp_path: Path) -> Iterator[object]:
    started: list[Supervised] = []

    def start(env: dict[str, str] | None = None, **options: object) -> Supervised:
        tcp_port, udp_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
        stats_dir = tmp_path / f"stats{len(started)}"
        stats_dir.mkdir()
        config = {"bind": [f"127.0.0.1:{tcp_port}"], "quic_bind": [f"127.0.0.1:{udp_port}"],
                  "certfile": "unused.pem", "keyfile": "unused.pem", "workers": 2,
                  "graceful_timeout": 3, **options}
        log = tmp_path / f"supervisor{len(started)}.log"
        proc_env = {**os.environ, "PYTHONPATH": str(ROOT), supervisor.STATS_DIR_ENV: str(stats_dir),
                    **(env or {})}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [PYTHON, "-c", "import tests.integration.test_workers as t; t.toy_main()",
                 json.dumps(config)], cwd=ROOT, env=proc_env, stdout=out, stderr=subprocess.STDOUT)
        sup = Supervised(proc, log, tcp_port, udp_port, stats_dir)
        started.append(sup)
        return sup

    yield start
    for sup in started:
        if sup.proc.poll() is None:
            sup.proc.send_signal(signal.SIGTERM)
            try:
                sup.proc.wait(10)
            except subprocess.TimeoutExpired:
                sup.proc.kill()
                sup.proc.wait(5)


def _serving(sup: Supervised, count: int = 2) -> None:
    sup.wait_for_log("is serving", count)


def test_udp_packets_reach_the_worker_their_cid_names(start_toy) -> None:  # type: ignore[no-untyped-def]
    sup = start_toy(workers=3)
    _serving(sup, 3)
    for byte in (0, 1, 2, 5, 0x7F, 0xFE):
        for short in (True, False):
            assert sup.udp_ask(byte, short=short).startswith(f"worker={byte % 3} ")


def test_tcp_is_shared_by_all_workers(start_toy) -> None:  # type: ignore[no-untyped-def]
    sup = start_toy()
    _serving(sup)
    seen = {sup.http_get().split()[0] for _ in range(40)}
    assert seen <= {"worker=0", "worker=1"} and seen
    assert steering.steer(bytes([0x40, 3]), 2) == 1


def test_killed_worker_is_restarted_on_its_own_socket(start_toy) -> None:  # type: ignore[no-untyped-def]
    sup = start_toy()
    _serving(sup)
    before = sup.worker_pids()
    other_before = sup.udp_ask(0)
    os.kill(before[1], signal.SIGKILL)
    sup.wait_for_log("started worker 1", 2)
    sup.wait_for_log("is serving", 3)
    after = sup.worker_pids()
    assert after[1] != before[1] and after[0] == before[0]
    assert sup.udp_ask(1).startswith(f"worker=1 pid={after[1]} ")
    assert sup.udp_ask(0) == other_before  # the other worker was untouched
    assert "was killed by SIGKILL; restarting it" in sup.text()


def test_max_requests_recycles_a_worker(start_toy) -> None:  # type: ignore[no-untyped-def]
    sup = start_toy(workers=1, max_requests=3)
    _serving(sup, 1)
    first = sup.worker_pids()[0]
    for _ in range(3):
        assert sup.http_get().startswith(f"worker=0 pid={first}")
    sup.wait_for_log("recycled after --max-requests")
    sup.wait_for_log("is serving", 2)
    assert sup.worker_pids()[0] != first
    assert sup.http_get().startswith(f"worker=0 pid={sup.worker_pids()[0]}")


def test_sighup_replaces_workers_one_at_a_time(start_toy) -> None:  # type: ignore[no-untyped-def]
    sup = start_toy()
    _serving(sup)
    before = sup.worker_pids()
    sup.proc.send_signal(signal.SIGHUP)
    sup.wait_for_log("all workers restarted")
    after = sup.worker_pids()
    assert set(after.values()).isdisjoint(before.values())
    text = sup.text()
    # Worker 1 was stopped only after worker 0's replacement served.
    assert text.index("worker 0 (pid %d) is serving" % after[0]) < text.index(
        "worker 1 (pid %d) exited" % before[1])
    assert sup.udp_ask(0).startswith(f"worker=0 pid={after[0]} ")


def test_sigterm_stops_workers_and_supervisor(start_toy) -> None:  # type: ignore[no-untyped-def]
    sup = start_toy()
    _serving(sup)
    pids = sup.worker_pids()
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(15) == 0
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "supervisor" in sup.text() and "stopped" in sup.text()


def test_boot_failure_stops_everything_with_its_status(start_toy) -> None:  # type: ignore[no-untyped-def]
    sup = start_toy(env={"TOY_BOOT_FAIL": "1"})
    assert sup.proc.wait(15) == 3
    assert "failed to boot" in sup.text()


def test_statistics_files_on_sigusr1(start_toy) -> None:  # type: ignore[no-untyped-def]
    sup = start_toy()
    _serving(sup)
    for byte in (0, 2, 4, 1):
        sup.udp_ask(byte)
    began = time.time()
    sup.proc.send_signal(signal.SIGUSR1)
    records = _read_stats(sup.stats_dir, 2, began)
    received = {r["worker_id"]: r["stats"]["datagrams_received"] for r in records}
    assert received == {0: 3, 1: 1}


def _read_stats(directory: Path, count: int, since: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = []
        for path in directory.glob("worker-*.json"):
            record = json.loads(path.read_text())
            if record["written_at"] >= since:
                records.append(record)
        if len(records) == count:
            return records
        time.sleep(0.05)
    raise AssertionError(f"statistics not written in {directory}")


def test_bind_conflict_is_one_line_and_status_1(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = Config(quic_bind=(f"127.0.0.1:{port}",), certfile="x", keyfile="x", workers=2)
        assert supervisor.run(config, worker_main=toy_worker) == 1
