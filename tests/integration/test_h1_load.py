"""Keep-alive load with h2load (``--h1``) as the independent client: every
request must succeed, over cleartext and over TLS."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from typing import Iterator

import pytest

from tests.support.certs import CertSet
from tests.support.server import ThreadedServer

H2LOAD = shutil.which("h2load")
pytestmark = pytest.mark.skipif(H2LOAD is None, reason="h2load is not installed (make deps)")

_REQUESTS = re.compile(rb"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       rb"(\d+) failed, (\d+) errored, (\d+) timeout")
_STATUS = re.compile(rb"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


@pytest.fixture(scope="module")
def server(certs: CertSet) -> Iterator[ThreadedServer]:
    with ThreadedServer(bind=["127.0.0.1:0"], insecure_bind=["127.0.0.1:0"],
                        certfile=str(certs.cert), keyfile=str(certs.key),
                        access_log=False) as running:
        yield running


def h2load(url: str, *, requests: int, clients: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    assert H2LOAD is not None
    result = subprocess.run([H2LOAD, "--h1", "-n", str(requests), "-c", str(clients), url],
                            capture_output=True, timeout=120)
    counts = _REQUESTS.search(result.stdout)
    statuses = _STATUS.search(result.stdout)
    assert counts and statuses, result.stdout.decode(errors="replace") + result.stderr.decode()
    return (tuple(int(n) for n in counts.groups()), tuple(int(n) for n in statuses.groups()))


@pytest.mark.parametrize("secure", [False, True], ids=["cleartext", "tls"])
def test_keep_alive_load_without_errors(server: ThreadedServer, secure: bool) -> None:
    url = server.url("/hello", secure=secure, family=socket.AF_INET)
    counts, statuses = h2load(url, requests=2000, clients=10)
    total, started, done, succeeded, failed, errored, timeout = counts
    assert (total, done, succeeded) == (2000, 2000, 2000)
    assert (failed, errored, timeout) == (0, 0, 0)
    assert statuses == (2000, 0, 0, 0)
    stats = server.wait_statistics(lambda s: s["tcp_connections"] == 0 and s["app_tasks"] == 0)
    assert stats["requests"] >= 2000
