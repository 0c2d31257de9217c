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
import re
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


# --------------------------------------------------------------------------
# Part two: quicserve --workers 2 with independent clients.

GTLSCLIENT = "/usr/bin/gtlsclient"
needs_gtlsclient = pytest.mark.skipif(not os.path.exists(GTLSCLIENT),
                                      reason="ngtcp2-client (gtlsclient) not installed")
#: A DCID whose first byte steers the client's first Initial to worker 0 or 1.
PIN = {0: "0001020304050607", 1: "0101020304050607"}


class QuicWorkers(Supervised):
    """``quicserve --workers N`` serving the demo app over HTTP/3."""

    def statistics(self) -> dict[int, dict[str, int]]:
        """Each worker's counters, freshly written (SIGUSR1)."""
        began = time.time()
        self.proc.send_signal(signal.SIGUSR1)
        records = _read_stats(self.stats_dir, self.workers, began)
        return {int(r["worker_id"]): r["stats"] for r in records}  # type: ignore[misc]

    def quiet(self, timeout: float = 15) -> dict[int, dict[str, int]]:
        """The counters once no worker holds a QUIC session (earlier clients'
        connections have closed), so that a new connection is not handed
        to the other worker for balance (``transport/handoff.py``) and a
        pinned DCID decides which worker serves it."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.statistics()
            if all(s["quic_sessions"] == 0 for s in stats.values()):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"QUIC sessions still open: {stats}")
            time.sleep(0.2)

    workers = 2


def start_quicserve(tmp_path: Path, certs, *extra: str, workers: int = 2) -> QuicWorkers:  # type: ignore[no-untyped-def]
    stats_dir = tmp_path / "stats"
    stats_dir.mkdir(exist_ok=True)
    log = tmp_path / "quicserve.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), supervisor.STATS_DIR_ENV: str(stats_dir)}
    argv = [PYTHON, "-m", "quicserve", "--workers", str(workers), "--certfile", str(certs.cert),
            "--keyfile", str(certs.key), "--quic-bind", "127.0.0.1:0", "--no-access-log",
            "--graceful-timeout", "2", "--loop", "asyncio", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = QuicWorkers(proc, log, 0, 0, stats_dir)
    server.workers = workers
    try:
        server.wait_for_log("is serving", workers, timeout=30)
        line = next(l for l in server.text().splitlines() if "(QUIC: h3)" in l)
        server.udp_port = int(line.split("(QUIC")[0].rsplit(":", 1)[1])
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: Supervised) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)


@pytest.fixture(scope="module")
def quic_workers(tmp_path_factory: pytest.TempPathFactory, certs) -> Iterator[QuicWorkers]:  # type: ignore[no-untyped-def]
    if not os.path.exists(GTLSCLIENT):
        pytest.skip("ngtcp2-client (gtlsclient) not installed")
    server = start_quicserve(tmp_path_factory.mktemp("quic-workers"), certs, "--quic-retry")
    yield server
    stop(server)


def client(port: int, path: str, out: Path, *extra: str, requests: int = 1,
           exit_when_done: bool = True) -> subprocess.Popen[bytes]:
    """A gtlsclient process writing its debug output to ``out``."""
    argv = [GTLSCLIENT, "--no-quic-dump", "--no-http-dump",
            *(["--exit-on-all-streams-close"] if exit_when_done else []), "--timeout=20s", "-n", str(requests), *extra, "127.0.0.1", str(port),
            f"https://127.0.0.1:{port}{path}"]
    with open(out, "wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], out: Path, timeout: float = 60) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"client did not finish in {timeout}s:\n{out.read_text()[-2000:]}")
    return out.read_text(errors="replace")


def delta(after: dict[int, dict[str, int]], before: dict[int, dict[str, int]],
          key: str) -> dict[int, int]:
    return {w: after[w][key] - before[w][key] for w in after}


@needs_gtlsclient
def test_40_concurrent_connections_each_served_by_one_worker(quic_workers: QuicWorkers,
                                                             tmp_path: Path) -> None:
    """40 clients at once all succeed, and the per-worker counters show that
    no datagram ever reached a worker that did not own its connection: no
    stateless reset and no drop anywhere, while both workers served."""
    before = quic_workers.statistics()
    outputs = [tmp_path / f"client{i}.out" for i in range(40)]
    procs = [client(quic_workers.udp_port, "/health", out, requests=3) for out in outputs]
    texts = [finish(proc, out) for proc, out in zip(procs, outputs)]
    assert [t.count(":status: 200]") for t in texts] == [3] * 40
    after = quic_workers.statistics()
    assert sum(delta(after, before, "requests").values()) == 120
    assert delta(after, before, "stateless_resets") == {0: 0, 1: 0}
    assert delta(after, before, "datagrams_dropped") == {0: 0, 1: 0}
    received = delta(after, before, "datagrams_received")
    assert all(count > 0 for count in received.values()), received
    # Every datagram the clients sent reached a worker (loopback loses none).
    sent = sum(t.count(f"remote=[127.0.0.1]:{quic_workers.udp_port}") - t.count("Received packet")
               for t in texts)
    assert sum(received.values()) == sent


@needs_gtlsclient
def test_connections_whose_dcids_all_steer_to_one_worker_are_balanced(
        tmp_path: Path, certs) -> None:  # type: ignore[no-untyped-def]
    """Eight concurrent clients whose first DCIDs all steer to worker 0: it
    hands half of the new connections to worker 1 (transport/handoff.py),
    which serves them from their first packet on.  Every datagram a client
    sent is counted once in all, none is dropped and no stateless reset is
    sent: after the handoff the clients address worker 1's connection IDs."""
    server = start_quicserve(tmp_path, certs)  # (no Retry: the handoff alone steers)
    try:
        before = server.quiet()
        outputs = [tmp_path / f"client{i}.out" for i in range(8)]
        procs = [client(server.udp_port, "/health", out, f"--dcid={2 * i:02x}01020304050607",
                        requests=300) for i, out in enumerate(outputs)]
        texts = [finish(proc, out) for proc, out in zip(procs, outputs)]
        assert [t.count(":status: 200]") for t in texts] == [300] * 8
        after = server.statistics()
        assert delta(after, before, "requests") == {0: 1200, 1: 1200}
        handed_off = delta(after, before, "datagrams_handed_off")
        handed_in = delta(after, before, "datagrams_handed_in")
        assert handed_off[0] >= 4 and handed_off[1] == 0, handed_off
        assert handed_in == {0: 0, 1: handed_off[0]}
        assert delta(after, before, "stateless_resets") == {0: 0, 1: 0}
        assert delta(after, before, "datagrams_dropped") == {0: 0, 1: 0}
        sent = sum(t.count(f"remote=[127.0.0.1]:{server.udp_port}") - t.count("Received packet")
                   for t in texts)
        assert sum(delta(after, before, "datagrams_received").values()) == sent
    finally:
        stop(server)


@needs_gtlsclient
def test_retry_resumption_and_0rtt_across_workers(quic_workers: QuicWorkers,
                                                  tmp_path: Path) -> None:
    """A session ticket and transport parameters from worker 0 are accepted by
    worker 1, with 0-RTT, both connections going through Retry."""
    session, params = tmp_path / "session", tmp_path / "tp"
    files = [f"--session-file={session}", f"--tp-file={params}"]
    before = quic_workers.quiet()
    first = finish(client(quic_workers.udp_port, "/health", tmp_path / "1.out", *files,
                          f"--dcid={PIN[0]}"), tmp_path / "1.out")
    middle = quic_workers.statistics()
    second = finish(client(quic_workers.udp_port, "/health", tmp_path / "2.out", *files,
                           f"--dcid={PIN[1]}"), tmp_path / "2.out")
    after = quic_workers.statistics()
    for text in (first, second):
        assert "type=Retry" in text and ":status: 200]" in text
    assert delta(middle, before, "requests") == {0: 1, 1: 0}
    assert delta(after, middle, "requests") == {0: 0, 1: 1}
    assert "type=0RTT" in second and "Early data was rejected" not in second
    assert "type=0RTT" not in first


@needs_gtlsclient
def test_a_session_ticket_gives_0rtt_once_across_workers(quic_workers: QuicWorkers,
                                                         tmp_path: Path) -> None:
    """A ticket used for 0-RTT on worker 1 is refused on worker 0 too (the
    workers share one replay cache, quic/replay.py): the client then falls
    back to a full handshake, and its request is still answered."""
    session, params = tmp_path / "session", tmp_path / "tp"
    quic_workers.quiet()
    text = finish(client(quic_workers.udp_port, "/health", tmp_path / "0.out",
                         f"--session-file={session}", f"--tp-file={params}",
                         f"--dcid={PIN[0]}"), tmp_path / "0.out")
    assert ":status: 200]" in text
    ticket = session.read_bytes()
    before = quic_workers.quiet()
    texts = {}
    for worker in (1, 0, 1):
        replayed = tmp_path / f"session-{len(texts)}"
        replayed.write_bytes(ticket)  # (the client overwrites it with a new ticket)
        quic_workers.quiet()  # (so the pinned DCID picks the worker)
        out = tmp_path / f"r{len(texts)}.out"
        texts[len(texts)] = text = finish(client(
            quic_workers.udp_port, "/health", out, f"--session-file={replayed}",
            f"--tp-file={params}", f"--dcid={PIN[worker]}"), out)
        assert ":status: 200]" in text
    after = quic_workers.statistics()
    assert delta(after, before, "requests") == {0: 1, 1: 2}
    assert "type=0RTT" in texts[0] and "Early data was rejected" not in texts[0]
    assert "Early data was rejected" in texts[1]
    assert "Early data was rejected" in texts[2]


@needs_gtlsclient
def test_client_port_change_mid_download(quic_workers: QuicWorkers, tmp_path: Path) -> None:
    """The client moves to a new local port 300 ms into a download (active
    migration: its packets then carry a new connection ID the owning worker
    issued); the download completes intact.  (ngtcp2 0.12's --nat-rebinding
    simulation fails against ngtcp2's own server too, so it is not used.)"""
    downloads = tmp_path / "dl"
    downloads.mkdir()
    extra = ["--change-local-addr=300ms", f"--download={downloads}"]
    before = quic_workers.statistics()
    text = finish(client(quic_workers.udp_port, "/stream?n=400&size=65536", tmp_path / "c.out",
                         *extra), tmp_path / "c.out")
    after = quic_workers.statistics()
    body = (downloads / "stream?n=400&size=65536").read_bytes()
    assert len(body) == 400 * 65536 and body.count(b"x") == len(body)
    local_ports = {line.split("local=[127.0.0.1]:")[1].split()[0]
                   for line in text.splitlines() if line.startswith("Sent packet: local=")}
    assert len(local_ports) == 2, local_ports  # the client really moved
    assert sum(delta(after, before, "stateless_resets").values()) == 0
    assert sum(delta(after, before, "datagrams_dropped").values()) == 0


@needs_gtlsclient
def test_killed_worker_restarts_and_its_clients_get_a_stateless_reset(
        tmp_path: Path, certs) -> None:  # type: ignore[no-untyped-def]
    server = start_quicserve(tmp_path, certs)
    try:
        pids = server.worker_pids()
        survivor_dir, victim_dir = tmp_path / "a", tmp_path / "b"
        survivor_dir.mkdir()
        victim_dir.mkdir()
        survivor = client(server.udp_port, "/stream?n=400&size=65536", tmp_path / "a.out",
                          f"--dcid={PIN[0]}", f"--download={survivor_dir}")
        # A client with nothing in flight sends nothing after the kill, and no
        # server can answer silence.  The victim's windows are held at 64 KiB
        # (no auto-tuning), so the download is always flow-control bound:
        # whatever the dead worker left in flight makes the victim send a
        # MAX_STREAM_DATA (ack-eliciting, so probed until answered), and the
        # restarted worker answers that.  (With auto-tuned windows the last
        # update could already be acknowledged at the kill, and ngtcp2
        # arms no probe timer for the ACK+PING it sends then: CI saw the
        # victim sit silent until its idle timeout.)  The move to a new local
        # port 4 s in is a second chance.
        victim = client(server.udp_port, "/stream?n=16000&size=65536", tmp_path / "b.out",
                        f"--dcid={PIN[1]}", f"--download={victim_dir}",
                        "--max-stream-data-bidi-local=65536", "--max-stream-window=65536",
                        "--max-data=131072", "--max-window=131072",
                        "--change-local-addr=4s")
        _wait_until(lambda: _size(victim_dir) > 3_000_000)
        os.kill(pids[1], signal.SIGKILL)
        killed_at = time.monotonic()
        victim_text = finish(victim, tmp_path / "b.out", timeout=15)
        assert time.monotonic() - killed_at < 10  # far below the 20 s idle timeout
        assert " SR token=" in victim_text  # ngtcp2 matched a stateless reset
        finish(survivor, tmp_path / "a.out")
        body = (survivor_dir / "stream?n=400&size=65536").read_bytes()
        assert len(body) == 400 * 65536 and body.count(b"x") == len(body)
        server.wait_for_log("is serving", 3)
        assert server.worker_pids()[1] != pids[1] and server.worker_pids()[0] == pids[0]
        after = finish(client(server.udp_port, "/health", tmp_path / "c.out", f"--dcid={PIN[1]}"),
                       tmp_path / "c.out")
        assert ":status: 200]" in after
    finally:
        stop(server)


@needs_gtlsclient
def test_sighup_drains_a_worker_with_goaway_and_close(tmp_path: Path, certs) -> None:  # type: ignore[no-untyped-def]
    """A download in flight on worker 0 when SIGHUP arrives finishes intact,
    and then the connection is closed with H3_NO_ERROR, never left silent;
    both workers are replaced one after the other."""
    server = start_quicserve(tmp_path, certs, "--graceful-timeout", "30")
    try:
        pids = server.worker_pids()
        downloads = tmp_path / "dl"
        downloads.mkdir()
        path = "/stream?n=40&size=65536"
        # The client stays until the server closes (or its 20 s idle timeout).
        proc = client(server.udp_port, path, tmp_path / "c.out", f"--dcid={PIN[0]}",
                      f"--download={downloads}", exit_when_done=False)
        _wait_until(lambda: ":status: 200]" in (tmp_path / "c.out").read_text(errors="replace"))
        server.proc.send_signal(signal.SIGHUP)
        hup_at = time.monotonic()
        text = finish(proc, tmp_path / "c.out")
        assert time.monotonic() - hup_at < 15
        body = (downloads / path[1:]).read_bytes()
        assert len(body) == 40 * 65536 and body.count(b"x") == len(body)
        # GOAWAY: a second frame on the server's control stream (after SETTINGS) ...
        assert re.search(r"frm rx \d+ 1RTT STREAM\(0x0e\) id=0x3 fin=0 offset=[1-9]", text)
        # ... and the server's CONNECTION_CLOSE with H3_NO_ERROR once the stream ended.
        assert re.search(r"frm rx \d+ 1RTT CONNECTION_CLOSE\(0x1d\) error_code=\(unknown\)"
                         r"\(0x100\)", text)
        server.wait_for_log("all workers restarted", timeout=30)
        assert set(server.worker_pids().values()).isdisjoint(pids.values())
    finally:
        stop(server)


@needs_gtlsclient
def test_a_draining_worker_hands_new_connections_to_a_serving_one(
        tmp_path: Path, certs) -> None:  # type: ignore[no-untyped-def]
    """During a rolling restart worker 0 drains a slow request; a new client
    whose first Initial steers to worker 0 meanwhile is served at once by
    worker 1 (the handoff), not left retrying until worker 0 is replaced."""
    server = start_quicserve(tmp_path, certs, "--graceful-timeout", "30",
                             "tests.support.apps:slow")
    try:
        slow = client(server.udp_port, "/?s=4", tmp_path / "slow.out", f"--dcid={PIN[0]}")
        _wait_until(lambda: server.statistics()[0]["app_tasks"] == 1)
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log("restarting workers one at a time", timeout=5)
        time.sleep(0.5)  # (worker 0 got its SIGTERM and stopped accepting)
        began = time.monotonic()
        quick = finish(client(server.udp_port, "/?s=0", tmp_path / "quick.out",
                              f"--dcid={PIN[0]}"), tmp_path / "quick.out")
        took = time.monotonic() - began
        assert ":status: 200]" in quick
        assert slow.poll() is None, "worker 0 should still be draining the slow request"
        assert took < 2.0, f"the new client waited {took:.1f} s"
        assert ":status: 200]" in finish(slow, tmp_path / "slow.out")
        server.wait_for_log("all workers restarted", timeout=30)
    finally:
        stop(server)


@needs_gtlsclient
def test_max_requests_recycles_real_workers_and_never_leaves_clients_hanging(
        tmp_path: Path, certs) -> None:  # type: ignore[no-untyped-def]
    """Workers are replaced after 3 requests while clients keep coming (their
    first Initials all steer to worker 0; the balance hands some to worker 1).
    Initials that reach a draining worker are handed to the other one, or,
    while neither accepts, dropped and retried by the client, to be met by a
    successor on the same socket.  A connection accepted in the instant
    before the drain began may be closed (GOAWAY, then CONNECTION_CLOSE with
    H3_NO_ERROR) before its first request is served -- a client retries such
    a request (RFC 9114, 5.2) -- but it is never left waiting."""
    server = start_quicserve(tmp_path, certs, "--max-requests", "3")
    try:
        first = set(server.worker_pids().values())
        closed = 0
        for i in range(8):
            out = tmp_path / f"{i}.out"
            text = finish(client(server.udp_port, "/health", out, f"--dcid={PIN[0]}"), out)
            if ":status: 200]" in text:
                continue
            closed += 1
            assert re.search(r"frm rx \d+ 1RTT CONNECTION_CLOSE\(0x1d\) error_code=\(unknown\)"
                             r"\(0x100\)", text), f"request {i} neither answered nor closed"
            retry = tmp_path / f"{i}-retry.out"
            assert ":status: 200]" in finish(client(server.udp_port, "/health", retry,
                                                    f"--dcid={PIN[0]}"), retry)
        assert closed <= 2
        server.wait_for_log("recycled after --max-requests")
        assert set(server.worker_pids().values()) != first
        assert "failed to boot" not in server.text()
    finally:
        stop(server)


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def _wait_until(condition, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_sigusr1_without_a_statistics_directory_is_harmless(start_toy) -> None:  # type: ignore[no-untyped-def]
    sup = start_toy(env={supervisor.STATS_DIR_ENV: ""})
    _serving(sup)
    pids = sup.worker_pids()
    sup.proc.send_signal(signal.SIGUSR1)
    sup.wait_for_log("SIGUSR1 ignored")
    assert sup.udp_ask(0).startswith(f"worker=0 pid={pids[0]} ")
    assert sup.udp_ask(1).startswith(f"worker=1 pid={pids[1]} ")


def test_inherited_quic_socket_cannot_be_split_over_workers() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        config = Config(quic_bind=(f"fd://{sock.fileno()}",), certfile="x", keyfile="x",
                        workers=2)
        assert supervisor.run(config, worker_main=toy_worker) == 1
