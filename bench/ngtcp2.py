"""ngtcp2's tools for the benchmarks: ``gtlsserver`` as the HTTP/3 ceiling and
``gtlsclient`` as the independent HTTP/3 load.  A helper module (no ``run``):
``bench/h3.py``, ``handshakes.py``, ``memory.py`` and ``workers.py`` use it.

Theory of operation
-------------------
The load on every HTTP/3 server under test comes from ngtcp2's C client
(Debian ``ngtcp2-client``), never from quicserve's code.  ``gtlsclient``
always exits 0 and its debug output costs it about twice the CPU of a quiet
run (on a 2-core machine the clients share the CPU with the server), so
:func:`h3_load` runs it quiet (``-q``) and counts success from what it
downloads: every request asks a distinct path ``/r/<i>`` and
``--download`` writes each response body to its own file in a tmpfs
directory; a request succeeded when its file holds exactly the expected body.

The servers compared all answer ``/`` and ``/r/<i>`` with the 13-byte
``hello, world\\n`` of ``bench/apps.py``, and ``/32m`` with 32 MiB.
``gtlsserver`` (Debian ``ngtcp2-server``) serves them as files from a
document root made by :func:`make_htdocs`; the tools are installed with
apt-get when missing (:func:`ensure_tools`).

Standalone: ``python bench/ngtcp2.py`` measures the ceiling alone (4 clients
x 2000 requests, one 32 MiB download).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BenchContext, Server, free_port, make_context, tool

BODY = b"hello, world\n"
BIG_SIZE = 32 * 1024 * 1024
BIG_PATH = "/32m"
#: Distinct request paths per client (gtlsclient wraps around beyond them).
MAX_PATHS = 2000
_TMPFS = "/dev/shm" if os.path.isdir("/dev/shm") else None


# --------------------------------------------------------------------------
# Tools and servers.


def ensure_tools() -> None:
    """Install ngtcp2's client and server from Debian when missing (as root)."""
    missing = [pkg for name, pkg in (("gtlsclient", "ngtcp2-client"),
                                     ("gtlsserver", "ngtcp2-server")) if tool(name) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"needs {' '.join(missing)}: apt-get install {' '.join(missing)}")
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True,
                   stdout=subprocess.DEVNULL)


def _tool(name: str) -> str:
    path = tool(name)
    if path is None:
        raise RuntimeError(f"{name} not found (apt-get install ngtcp2-client ngtcp2-server)")
    return path


def make_htdocs(directory: Path) -> Path:
    """``index.html`` and ``r/0`` .. ``r/1999`` (the small body) and ``32m``."""
    (directory / "r").mkdir(parents=True, exist_ok=True)
    (directory / "index.html").write_bytes(BODY)
    for i in range(MAX_PATHS):
        (directory / "r" / str(i)).write_bytes(BODY)
    big = directory / BIG_PATH.lstrip("/")
    if not big.exists() or big.stat().st_size != BIG_SIZE:
        big.write_bytes(b"x" * BIG_SIZE)
    return directory


def gtlsserver(htdocs: Path, certfile: Path, keyfile: Path, *, port: int | None = None) -> Server:
    """ngtcp2's example server (C, GnuTLS, GSO) on 127.0.0.1, not yet started."""
    port = port or free_port(__import__("socket").SOCK_DGRAM)
    argv = [_tool("gtlsserver"), "-q", "-d", str(htdocs), "--max-streams-bidi", "128",
            "--timeout=120s", "127.0.0.1", str(port), str(keyfile), str(certfile)]
    return Server("ngtcp2", argv, port)


@contextlib.contextmanager
def serving(servers: Sequence[Server]) -> Iterator[Sequence[Server]]:
    """Start ``servers``, wait until each answers HTTP/3, and stop them all
    on the way out (also when starting or measuring fails)."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            wait_h3(server)
        yield servers
    finally:
        for server in servers:
            server.stop()


def wait_h3(server: Server, timeout: float = 30.0) -> None:
    """Until one HTTP/3 request to ``server`` succeeds (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with status {server.proc.returncode}")
        if h3_load(server.port, clients=1, requests=1, timeout="2s").ok == 1:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} does not answer HTTP/3 on udp {server.port}")


# --------------------------------------------------------------------------
# Load.


@dataclass(frozen=True, slots=True)
class LoadResult:
    ok: int
    expected: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.expected - self.ok


def client_argv(port: int, paths: Sequence[str], *, requests: int, timeout: str = "30s",
                extra: Sequence[str] = ()) -> list[str]:
    urls = [f"https://127.0.0.1:{port}{path}" for path in paths]
    return [_tool("gtlsclient"), "-q", "--exit-on-all-streams-close", f"--timeout={timeout}",
            "-n", str(requests), *extra, "127.0.0.1", str(port), *urls]


def h3_load(port: int, *, clients: int = 4, requests: int = 2000, timeout: str = "30s",
            body: bytes = BODY) -> LoadResult:
    """``clients`` gtlsclient processes at once, each one connection with
    ``requests`` requests (``requests`` <= 2000, distinct paths); wall time
    from the first start to the last exit."""
    if requests > MAX_PATHS:
        raise ValueError(f"at most {MAX_PATHS} requests per client")
    paths = [f"/r/{i}" for i in range(requests)]
    with tempfile.TemporaryDirectory(prefix="bench-h3-", dir=_TMPFS) as root:
        dirs = [Path(root) / str(c) for c in range(clients)]
        for directory in dirs:
            directory.mkdir()
        began = time.perf_counter()
        procs = [subprocess.Popen(client_argv(port, paths, requests=requests, timeout=timeout,
                                              extra=["--download", str(d)]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for d in dirs]
        for proc in procs:
            proc.wait(timeout=600)
        seconds = time.perf_counter() - began
        ok = sum(_good_files(d, body) for d in dirs)
    return LoadResult(ok, clients * requests, seconds)


def _good_files(directory: Path, body: bytes) -> int:
    good = 0
    for entry in os.scandir(directory):
        if entry.stat().st_size == len(body):
            with open(entry.path, "rb") as fh:
                good += fh.read() == body
    return good


def h3_download(port: int, path: str = BIG_PATH, size: int = BIG_SIZE) -> LoadResult:
    """One download into tmpfs; ``ok`` is 1 when all ``size`` bytes arrived."""
    with tempfile.TemporaryDirectory(prefix="bench-dl-", dir=_TMPFS) as directory:
        argv = client_argv(port, [path], requests=1, extra=["--download", directory])
        began = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        seconds = time.perf_counter() - began
        name = Path(directory) / (path.rsplit("/", 1)[1] or "index.html")
        ok = int(name.exists() and name.stat().st_size == size)
    return LoadResult(ok, 1, seconds)


def mb_per_s(result: LoadResult, size: int = BIG_SIZE) -> float:
    return size / result.seconds / 1e6 if result.ok and result.seconds else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ngtcp2 gtlsserver: the HTTP/3 ceiling")
    parser.parse_args(argv)
    ctx: BenchContext = make_context(rounds=1, duration=1.0, quick=True)
    ensure_tools()
    with tempfile.TemporaryDirectory(prefix="bench-htdocs-") as root:
        with gtlsserver(make_htdocs(Path(root)), ctx.certfile, ctx.keyfile) as server:
            server.start()
            wait_h3(server)
            load = h3_load(server.port)
            download = h3_download(server.port)
    print(f"ngtcp2 gtlsserver: {load.rate:,.0f} requests/s ({load.errors} failed); "
          f"32 MiB download {mb_per_s(download):.1f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
