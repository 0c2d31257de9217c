"""ngtcp2's tools for the benchmarks: ``gtlsserver`` as the HTTP/3 ceiling and
``gtlsclient`` as the independent load.

Theory of operation
-------------------
The load on every HTTP/3 server under test comes from ngtcp2's C client
(Debian ``ngtcp2-client``), never from quicserve's own code.  ``gtlsclient``
always exits 0, so success is counted from its output: each finished
response prints a ``:status: 200`` line (``--no-quic-dump --no-http-dump``
keep the rest of its debug output small).

The servers compared share two URLs: ``/`` answers a small body and
``/32m`` 32 MiB.  ``gtlsserver`` (Debian ``ngtcp2-server``) serves them as
files from a document root made by :func:`make_htdocs`; it is installed with
apt-get when missing (:func:`ensure_tools`).

Also here, because every benchmark needs them: a server process wrapper that
reads the process's CPU time and resident memory from ``/proc``.

Standalone: ``python bench/ngtcp2.py --certfile C --keyfile K`` measures the
ceiling (requests/s with 4 clients x 2000 requests, one 32 MiB download).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

SMALL_BODY = b"hello, world\n"
BIG_SIZE = 32 * 1024 * 1024
STATUS_OK = b":status: 200"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# Tools.


def ensure_tools() -> None:
    """Install ngtcp2's client and server from Debian when missing."""
    missing = [pkg for tool, pkg in (("gtlsclient", "ngtcp2-client"), ("gtlsserver", "ngtcp2-server"))
               if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"needs {' '.join(missing)}: apt-get install {' '.join(missing)}")
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True,
                   stdout=subprocess.DEVNULL)


def tool(name: str) -> str:
    found = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}")
                                   else None)
    if found is None:
        raise SystemExit(f"{name} not found (apt-get install ngtcp2-client ngtcp2-server)")
    return found


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------
# Server processes.


class ServerProcess:
    """A server under test: its process, port, CPU time and memory."""

    def __init__(self, name: str, argv: Sequence[str], port: int, *,
                 env: dict[str, str] | None = None, cwd: str | None = None,
                 log: Path | None = None) -> None:
        self.name = name
        self.port = port
        self.log = log or Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                         env=env, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        """The server and its child processes (workers)."""
        return [self.pid, *_children(self.pid)]

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its workers so far."""
        return sum(_cpu_seconds(pid) for pid in self.pids())

    def rss_bytes(self) -> int:
        return sum(_rss_bytes(pid) for pid in self.pids())

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until one HTTP/3 request succeeds (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text(errors='replace')}")
            if h3_requests(self.port, 1, timeout="1s") == 1:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def make_htdocs(directory: Path) -> Path:
    """``index.html`` (the small body) and ``32m`` under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "index.html").write_bytes(SMALL_BODY)
    big = directory / "32m"
    if not big.exists() or big.stat().st_size != BIG_SIZE:
        big.write_bytes(b"x" * BIG_SIZE)
    return directory


def start_gtlsserver(certfile: str, keyfile: str, htdocs: Path, *, port: int = 0) -> ServerProcess:
    """ngtcp2's example server (C, GnuTLS) on 127.0.0.1."""
    port = port or free_udp_port()
    argv = [tool("gtlsserver"), "-q", "-d", str(htdocs), "--max-streams-bidi", "128",
            "127.0.0.1", str(port), keyfile, certfile]
    return ServerProcess("ngtcp2", argv, port)


# --------------------------------------------------------------------------
# Load.


def client_argv(port: int, path: str = "/", *, requests: int = 1, timeout: str = "10s",
                extra: Sequence[str] = ()) -> list[str]:
    url = f"https://127.0.0.1:{port}{path}"
    return [tool("gtlsclient"), "--no-quic-dump", "--no-http-dump", "--exit-on-all-streams-close",
            f"--timeout={timeout}", "-n", str(requests), *extra, "127.0.0.1", str(port), url]


def h3_requests(port: int, requests: int, path: str = "/", *, timeout: str = "10s") -> int:
    """One connection, ``requests`` requests; the number answered 200."""
    with tempfile.TemporaryFile() as out:
        subprocess.run(client_argv(port, path, requests=requests, timeout=timeout),
                       stdout=out, stderr=subprocess.STDOUT, timeout=120)
        return count_ok(out)


def count_ok(out: IO[bytes]) -> int:
    """``:status: 200`` lines in a client's output file."""
    out.seek(0)
    return out.read().count(STATUS_OK)


@dataclass(frozen=True, slots=True)
class LoadResult:
    ok: int
    expected: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return self.expected - self.ok


def h3_load(port: int, *, clients: int = 4, requests: int = 2000, path: str = "/") -> LoadResult:
    """``clients`` gtlsclient processes at once, one connection of
    ``requests`` requests each; wall time from the first start to the last
    exit."""
    outputs = [tempfile.TemporaryFile() for _ in range(clients)]
    try:
        # Output goes to files, not pipes: a client blocked on a full pipe
        # while another is being read would distort the timing.
        began = time.perf_counter()
        procs = [subprocess.Popen(client_argv(port, path, requests=requests, timeout="30s"),
                                  stdout=out, stderr=subprocess.STDOUT) for out in outputs]
        for proc in procs:
            proc.wait(timeout=300)
        seconds = time.perf_counter() - began
        return LoadResult(sum(count_ok(out) for out in outputs), clients * requests, seconds)
    finally:
        for out in outputs:
            out.close()


def h3_download(port: int, path: str = "/32m", size: int = BIG_SIZE) -> LoadResult:
    """One download into a temporary directory; ``ok`` is 1 when the file
    arrived whole.  ``rate`` is then downloads/s; use :func:`mb_per_s`."""
    with tempfile.TemporaryDirectory(prefix="bench-dl-") as directory:
        argv = client_argv(port, path, timeout="30s", extra=["-q", "--download", directory])
        began = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        seconds = time.perf_counter() - began
        name = Path(directory) / (path.rsplit("/", 1)[1] or "index.html")
        ok = int(name.exists() and name.stat().st_size == size)
    return LoadResult(ok, 1, seconds)


def mb_per_s(result: LoadResult, size: int = BIG_SIZE) -> float:
    return size / result.seconds / 1e6 if result.ok else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ngtcp2 gtlsserver: the HTTP/3 ceiling")
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    args = parser.parse_args(argv)
    ensure_tools()
    with tempfile.TemporaryDirectory(prefix="bench-htdocs-") as root:
        htdocs = make_htdocs(Path(root))
        with start_gtlsserver(args.certfile, args.keyfile, htdocs) as server:
            server.wait_ready()
            load = h3_load(server.port)
            download = h3_download(server.port)
    print(f"ngtcp2 gtlsserver: {load.rate:,.0f} requests/s ({load.failed} failed); "
          f"32 MiB download {mb_per_s(download):.1f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
