"""The benchmark framework: servers as subprocesses, interleaved rounds, tables.

Theory of operation
-------------------
A *bench module* is a file ``bench/<name>.py`` that defines::

    TITLE = "HTTP/1.1"                       # its section in the report
    def run(ctx: BenchContext) -> list[Group]: ...

``bench/run.py`` imports every such module (files without ``run`` and
``TITLE`` are helpers, e.g. ``ngtcp2.py``), calls ``run``, prints one table
per :class:`Group`, and rewrites that module's section of
``docs/benchmarks.md`` (between ``<!-- bench:<name>:start -->`` and
``<!-- bench:<name>:end -->``), leaving the other modules' sections alone.

A :class:`Group` is one comparison: one workload, several servers, one unit,
a baseline server the ratios are taken against, and an optional target.
Each server's :class:`Measurement` holds the figure of every round (the
median is reported) and the errors seen (non-2xx answers, socket errors,
failed requests); a figure with errors is flagged in the table.

Fairness rules every module follows, and :func:`interleave` enforces the
order for: all servers run at the same time on their own ports, each gets a
warm-up, then rounds run server after server, the order rotating each round,
so drift in the machine's state (thermal, page cache, a noisy neighbour)
spreads over every server instead of favouring one.  Access logs are off
everywhere.  The load always comes from an independent client (wrk, h2load,
gtlsclient), never from quicserve's code.
"""

from __future__ import annotations

import argparse

import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# Results.


@dataclass
class Measurement:
    server: str
    values: list[float] = field(default_factory=list)
    errors: int = 0
    #: Server CPU seconds per round, when measured.
    cpu: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else 0.0


@dataclass
class Group:
    """One comparison: servers measured on the same workload in one run."""

    title: str
    unit: str
    #: The exact load command (with a placeholder for the URL), for the report.
    command: str
    baseline: str
    measurements: dict[str, Measurement] = field(default_factory=dict)
    #: e.g. ("quicserve", 1.2): quicserve must reach 1.2x the baseline.
    target: tuple[str, float] | None = None
    higher_is_better: bool = True
    #: For rate figures from fixed-length runs: seconds per run, so the table
    #: can show work per server CPU-second too (steadier on a busy machine).
    run_seconds: float | None = None

    def measurement(self, server: str) -> Measurement:
        return self.measurements.setdefault(server, Measurement(server))

    def ratio(self, server: str) -> float | None:
        base = self.measurements.get(self.baseline)
        this = self.measurements.get(server)
        if base is None or this is None or not base.median or not this.median:
            return None
        ratio = this.median / base.median
        return ratio if self.higher_is_better else 1 / ratio

    def target_met(self) -> bool | None:
        if self.target is None:
            return None
        server, wanted = self.target
        ratio = self.ratio(server)
        errors = self.measurements[server].errors if server in self.measurements else 1
        return ratio is not None and ratio >= wanted and errors == 0


# --------------------------------------------------------------------------
# The run's context.


@dataclass
class BenchContext:
    python: str
    certfile: Path
    keyfile: Path
    cafile: Path
    rounds: int = 3
    #: Seconds per measurement for duration-based loads (wrk).
    duration: float = 10.0
    warmup: float = 2.0
    quick: bool = False
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)


def make_context(*, rounds: int, duration: float, quick: bool) -> BenchContext:
    certs = ROOT / "certs"
    if not (certs / "cert.pem").exists():
        subprocess.run([sys.executable, str(certs / "generate.py")], check=True)
    return BenchContext(python=sys.executable, certfile=certs / "cert.pem",
                        keyfile=certs / "key.pem", cafile=certs / "ca.pem", rounds=rounds,
                        duration=duration, warmup=1.0 if quick else 2.0, quick=quick)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}")


# --------------------------------------------------------------------------
# Servers under test.


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server under test: a subprocess with its own port, CPU accounted."""

    def __init__(self, name: str, argv: Sequence[str], port: int, *,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.env.pop("SSLKEYLOGFILE", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = open(os.devnull, "wb")

    def start(self, log_path: Path | None = None) -> Server:
        if log_path is not None:
            self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env, cwd=ROOT)
        return self

    def wait_tcp(self, timeout: float = 30.0) -> None:
        """Wait (bounded) until the server accepts TCP connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start listening on {self.port}")

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [self.proc.pid, *_descendants(self.proc.pid)]

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self.pids())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        found.append(int(child))
        found.extend(_descendants(int(child)))
    return found


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def interleave(ctx: BenchContext, servers: Sequence[Server],
               measure: Callable[[Server], tuple[float, int]], group: Group) -> None:
    """Warm every server up, then ``ctx.rounds`` rounds, rotating the order.

    ``measure(server)`` returns (figure, errors) for one run of the load.
    """
    for server in servers:
        ctx.log(f"  warm-up {server.name}")
        measure_warmup = getattr(measure, "warmup", None)
        (measure_warmup or measure)(server)
    for round_no in range(ctx.rounds):
        shift = round_no % len(servers)
        for server in [*servers[shift:], *servers[:shift]]:
            before = server.cpu_seconds()
            value, errors = measure(server)
            entry = group.measurement(server.name)
            entry.values.append(value)
            entry.errors += errors
            entry.cpu.append(server.cpu_seconds() - before)
            ctx.log(f"  round {round_no + 1}/{ctx.rounds} {server.name}: "
                    f"{value:,.0f} {group.unit}, {errors} errors")


# --------------------------------------------------------------------------
# Load tools.


def tool(name: str) -> str | None:
    path = shutil.which(name)
    if path is None and os.path.exists(f"/usr/sbin/{name}"):
        path = f"/usr/sbin/{name}"
    return path


@dataclass
class WrkResult:
    requests_per_second: float
    requests: int
    non_2xx: int
    socket_errors: int


_WRK_RPS = re.compile(rb"Requests/sec:\s+([\d.]+)")
_WRK_TOTAL = re.compile(rb"(\d+) requests in")
_WRK_NON2XX = re.compile(rb"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET = re.compile(rb"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def wrk(url: str, *, connections: int, threads: int, duration: float) -> WrkResult:
    path = tool("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed (make deps)")
    result = subprocess.run([path, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", url],
                            capture_output=True, timeout=duration + 60)
    out = result.stdout
    rps = _WRK_RPS.search(out)
    total = _WRK_TOTAL.search(out)
    if rps is None or total is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out.decode(errors='replace')}"
                           f"{result.stderr.decode(errors='replace')}")
    non_2xx = _WRK_NON2XX.search(out)
    sockets = _WRK_SOCKET.search(out)
    return WrkResult(
        requests_per_second=float(rps.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        # read errors include the server closing a keep-alive connection
        # (Hypercorn after 1000 requests), which wrk survives by reconnecting:
        # counted, since a closed connection costs a reconnect either way.
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


# --------------------------------------------------------------------------
# Reporting.


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def per_cpu_second(group: Group, m: Measurement) -> float | None:
    """Median over rounds of (figure × run length / server CPU seconds)."""
    if group.run_seconds is None or not m.cpu or len(m.cpu) != len(m.values):
        return None
    rates = [v * group.run_seconds / c for v, c in zip(m.values, m.cpu) if c > 0]
    return statistics.median(rates) if rates else None


def table(group: Group) -> list[str]:
    efficiency = group.run_seconds is not None
    header = (f"| server | median {group.unit} | rounds | errors | server CPU s/round |"
              + (f" {group.unit.split('/')[0]} per CPU-s |" if efficiency else "")
              + f" vs {group.baseline} |")
    lines = [header, "|---|---:|---|---:|---:|" + ("---:|" if efficiency else "") + "---:|"]
    for name, m in group.measurements.items():
        ratio = group.ratio(name)
        rounds = " / ".join(_fmt(v) for v in m.values)
        cpu = f"{statistics.median(m.cpu):.1f}" if m.cpu else "—"
        shown = f"{ratio:.2f}×" if ratio is not None else "—"
        extra = ""
        if efficiency:
            rate = per_cpu_second(group, m)
            extra = f" {_fmt(rate)} |" if rate is not None else " — |"
        lines.append(f"| {name} | {_fmt(m.median)} | {rounds} | {m.errors} | {cpu} |{extra}"
                     f" {shown} |")
    if group.target is not None:
        server, wanted = group.target
        met = group.target_met()
        lines.append("")
        lines.append(f"Target: {server} ≥ {wanted:g}× {group.baseline} with zero errors — "
                     f"{'met' if met else 'NOT met'}.")
    return lines


def render(groups: Iterable[Group]) -> str:
    parts = []
    for group in groups:
        parts.append(f"### {group.title}\n")
        parts.append(f"Load: `{group.command}`\n\n")
        parts.extend(line + "\n" for line in table(group))
        parts.append("\n")
    return "".join(parts)


def splice_section(document: str, name: str, body: str) -> str:
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in document and end in document:
        head, _, rest = document.partition(start)
        _, _, tail = rest.partition(end)
        return head + block + tail
    return document.rstrip() + "\n\n" + block + "\n"


def standalone(run: Callable[[BenchContext], list[Group]], doc: str | None,
               argv: list[str] | None = None, *, duration: float = 10.0) -> int:
    """The ``main()`` of a bench module run on its own: ``--rounds``,
    ``--duration`` and ``--quick`` (one round of 3 s), then the tables."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=duration)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s: a smoke run")
    args = parser.parse_args(argv)
    rounds, seconds = (1, 3.0) if args.quick else (args.rounds, args.duration)
    ctx = make_context(rounds=rounds, duration=seconds, quick=args.quick)
    print(render(run(ctx)))
    return 0
