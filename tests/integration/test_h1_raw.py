"""HTTP/1.1 over real loopback sockets, driven by raw sockets and http.client.

Malformed input, limits and timeouts: each test sends the bad input on one
connection and, while that connection is still open, checks that another
client is served (``assert_other_client_served``).  The server runs in-process
(``ThreadedServer``) with short timeouts so the suite stays fast.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from typing import Iterator

import pytest

from tests.support.server import RawConnection, ThreadedServer, get

READ_TIMEOUT = 1.0
KEEP_ALIVE = 1.0
MAX_HEAD = 4096


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(insecure_bind=["127.0.0.1:0"], read_timeout=READ_TIMEOUT,
                        keep_alive=KEEP_ALIVE, h11_max_incomplete_size=MAX_HEAD,
                        access_log=False, graceful_timeout=2) as running:
        yield running


@pytest.fixture
def addr(server: ThreadedServer) -> tuple[str, int]:
    address: tuple[str, int] = server.address()
    return address


def assert_other_client_served(addr: tuple[str, int]) -> None:
    assert get(addr, "/hello") == (200, b"hello")


def request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: test\r\n{length}{headers}\r\n").encode() + body


# -- the good path -------------------------------------------------------------------------------


def test_keep_alive_reuses_the_connection(addr: tuple[str, int]) -> None:
    conn = http.client.HTTPConnection(*addr, timeout=10)
    try:
        conn.request("GET", "/hello")
        first = conn.getresponse()
        assert (first.status, first.read()) == (200, b"hello")
        sock = conn.sock
        conn.request("POST", "/echo", body=b"x" * 10000)
        second = conn.getresponse()
        assert (second.status, second.read()) == (200, b"x" * 10000)
        assert conn.sock is sock  # http.client did not have to reconnect
        assert first.reason == "OK"
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(addr: tuple[str, int]) -> None:
    with RawConnection(addr) as conn:
        conn.send(request("GET", "/slow?s=0.3") + request("GET", "/hello")
                  + request("POST", "/echo", b"third"))
        bodies = [conn.response().body for _ in range(3)]
    assert bodies == [b"slow done", b"hello", b"third"]


def test_chunked_request_body(addr: tuple[str, int]) -> None:
    with RawConnection(addr) as conn:
        conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        response = conn.response()
    assert (response.status, response.body) == (200, b"hello world")


def test_head_has_headers_but_no_body(addr: tuple[str, int]) -> None:
    with RawConnection(addr) as conn:
        conn.send(request("HEAD", "/hello") + request("GET", "/hello"))
        head = conn.response(method="HEAD")
        assert head.status == 200
        assert head.getheader("content-length") == "5"
        assert head.body == b""
        # No body bytes were sent: the next response parses cleanly.
        assert conn.response().body == b"hello"


def test_streamed_response_is_chunked_on_http11(addr: tuple[str, int]) -> None:
    with RawConnection(addr) as conn:
        conn.send(request("GET", "/stream?n=3&size=4"))
        response = conn.response()
    assert response.getheader("transfer-encoding") == "chunked"
    assert response.body == b"aaaabbbbcccc"


def test_http10_response_is_close_delimited(addr: tuple[str, int]) -> None:
    with RawConnection(addr) as conn:
        conn.send(b"GET /stream?n=3&size=4 HTTP/1.0\r\n\r\n")
        raw = conn.read_to_eof()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") or head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"aaaabbbbcccc"


def test_standard_headers(addr: tuple[str, int]) -> None:
    with RawConnection(addr) as conn:
        conn.send(request("GET", "/hello"))
        response = conn.response()
    assert response.getheader("server") == "quicserve"
    assert response.getheader("date", "").endswith(" GMT")
    assert response.getheader("alt-svc") is None  # cleartext: nothing to upgrade to


# -- malformed input and limits ------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nNo-Colon-Here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTX/1.1\r\nHost: t\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: t\r\n\r\n",
], ids=["request-line", "header-line", "content-length", "two-lengths", "version", "nul"])
def test_malformed_request_is_400_and_closed(addr: tuple[str, int], garbage: bytes) -> None:
    with RawConnection(addr) as conn:
        conn.send(garbage)
        assert_other_client_served(addr)
        response = conn.response()
        assert response.status in (400, 505)
        assert conn.closed_by_peer()


@pytest.mark.parametrize("complete", [False, True], ids=["still-arriving", "in-one-write"])
def test_oversized_head_is_431_and_closed(addr: tuple[str, int], complete: bool) -> None:
    """The limit holds whether the head is still incomplete when it passes the
    limit or arrives whole in one segment."""
    with RawConnection(addr) as conn:
        head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (MAX_HEAD * 2)
        conn.send(head + b"\r\n\r\n" if complete else head)
        assert_other_client_served(addr)
        response = conn.response()
        assert response.status == 431
        assert conn.closed_by_peer()


def test_slowloris_is_closed_after_read_timeout(addr: tuple[str, int]) -> None:
    """A client that dribbles its head never completes it: the server closes
    the connection once ``read_timeout`` has passed since the head began,
    however regularly bytes keep arriving."""
    with RawConnection(addr, timeout=READ_TIMEOUT * 5) as conn:
        started = time.monotonic()
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        closed = False
        for i in range(40):  # at most ~4 s of dribbling
            time.sleep(0.1)
            try:
                conn.send(f"X-Drip-{i}: y\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if i == 2:
                assert_other_client_served(addr)
        raw = b"" if closed else _drain(conn)
        elapsed = time.monotonic() - started
    assert elapsed < READ_TIMEOUT + 2.5
    assert elapsed >= READ_TIMEOUT * 0.8
    assert raw == b"" or raw.startswith(b"HTTP/1.1 408")


def _drain(conn: RawConnection) -> bytes:
    try:
        return conn.read_to_eof()
    except ConnectionResetError:
        return b""


def test_idle_keep_alive_connection_is_closed(addr: tuple[str, int]) -> None:
    with RawConnection(addr, timeout=KEEP_ALIVE * 5) as conn:
        conn.send(request("GET", "/hello"))
        assert conn.response().body == b"hello"
        idle_since = time.monotonic()
        assert_other_client_served(addr)
        assert conn.closed_by_peer()
        idle = time.monotonic() - idle_since
    assert KEEP_ALIVE * 0.7 <= idle < KEEP_ALIVE + 2.0


def test_idle_connection_without_any_request_is_closed(addr: tuple[str, int]) -> None:
    with RawConnection(addr, timeout=KEEP_ALIVE * 5) as conn:
        started = time.monotonic()
        assert_other_client_served(addr)
        assert conn.closed_by_peer()
    assert time.monotonic() - started < KEEP_ALIVE + 2.0


# -- application failures --------------------------------------------------------------------------


def test_app_raising_before_head_is_500(addr: tuple[str, int]) -> None:
    with RawConnection(addr) as conn:
        conn.send(request("GET", "/raise-before"))
        assert_other_client_served(addr)
        assert conn.response().status == 500


def test_app_raising_after_head_closes_the_connection(addr: tuple[str, int]) -> None:
    with RawConnection(addr) as conn:
        conn.send(request("GET", "/raise-after"))
        with pytest.raises(http.client.IncompleteRead) as info:
            conn.response()
        assert info.value.partial == b"partial"
        assert_other_client_served(addr)
        assert conn.closed_by_peer()


def test_app_returning_without_response_is_500(addr: tuple[str, int]) -> None:
    with RawConnection(addr) as conn:
        conn.send(request("GET", "/no-response"))
        assert_other_client_served(addr)
        assert conn.response().status == 500


def test_client_gone_mid_request_frees_everything(server: ThreadedServer,
                                                  addr: tuple[str, int]) -> None:
    # Earlier tests' tasks end just after their connections close: settle first.
    server.wait_statistics(lambda s: s["app_tasks"] == 0)
    conn = RawConnection(addr)
    conn.send(request("GET", "/disconnect-wait"))
    server.wait_statistics(lambda s: s["app_tasks"] == 1)
    conn.close()
    server.wait_statistics(lambda s: s["app_tasks"] == 0 and s["tcp_connections"] == 0)
    assert_other_client_served(addr)


# -- concurrency limit -------------------------------------------------------------------------


def test_limit_concurrency_answers_503() -> None:
    with ThreadedServer(insecure_bind=["127.0.0.1:0"], limit_concurrency=1,
                        access_log=False) as server:
        addr = server.address()
        result: list[tuple[int, bytes]] = []
        holder = threading.Thread(target=lambda: result.append(get(addr, "/slow?s=1.5")))
        holder.start()
        try:
            server.wait_statistics(lambda s: s["app_tasks"] == 1)
            status, _ = get(addr, "/hello")
            assert status == 503
        finally:
            holder.join(10)
        assert result == [(200, b"slow done")]
        server.wait_statistics(lambda s: s["app_tasks"] == 0)
        assert get(addr, "/hello") == (200, b"hello")


def test_statistics_return_to_zero(server: ThreadedServer, addr: tuple[str, int]) -> None:
    with RawConnection(addr) as conn:
        conn.send(request("GET", "/hello"))
        conn.response()
    stats = server.wait_statistics(
        lambda s: s["tcp_connections"] == 0 and s["streams"] == 0 and s["app_tasks"] == 0)
    assert stats["requests"] > 0


def test_refused_after_shutdown() -> None:
    server = ThreadedServer(insecure_bind=["127.0.0.1:0"], access_log=False)
    with server:
        addr = server.address()
        assert get(addr) == (200, b"hello")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(addr, timeout=5).close()


# -- h11's quadratic regexes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_limits() -> Iterator[tuple[str, int]]:
    """A server with the default head limit (16 KiB), large enough for the
    hostile heads below to arrive whole."""
    with ThreadedServer(insecure_bind=["127.0.0.1:0"], access_log=False,
                        graceful_timeout=2) as running:
        yield running.address()


CHUNKED_POST = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("hostile", [
    b"GET / HTTP/1.1\r\nHost: t\r\nX:" + b" " * 16000 + b"\x0b\r\n\r\n",
    CHUNKED_POST + b"5\r\nhello\r\n0\r\nX:" + b" " * 16000 + b"\x0b\r\n\r\n",
    CHUNKED_POST + b"1;" + b" " * 16000 + b"\nx\r\n",
], ids=["header-line", "trailer-line", "chunk-size-line"])
def test_backtracking_bait_is_400_at_once(default_limits: tuple[str, int],
                                          hostile: bytes) -> None:
    """Each of these costs bare h11 1.2 to 1.5 s of regex backtracking, with
    the event loop stalled; the answer must be a prompt 400 while another
    client is served in the meantime."""
    addr = default_limits
    other: list[float] = []

    def serve_other() -> None:
        for _ in range(20):
            started = time.monotonic()
            assert_other_client_served(addr)
            other.append(time.monotonic() - started)

    with RawConnection(addr) as conn:
        neighbour = threading.Thread(target=serve_other)
        started = time.monotonic()
        conn.send(hostile)
        neighbour.start()
        response = conn.response("POST" if hostile.startswith(b"POST") else "GET")
        elapsed = time.monotonic() - started
        assert response.status == 400
        assert conn.closed_by_peer()
        neighbour.join(10)
    # (0.2 s: bare h11 takes 0.27 s on the chunk-size line, over 1 s on the others)
    assert elapsed < 0.2
    assert len(other) == 20 and max(other) < 0.2


def test_a_client_that_stops_reading_is_closed_after_write_timeout() -> None:
    """A client asks for a large response and reads nothing: once the
    server's send buffer is full and ``write_timeout`` passes without a byte
    read, the connection is dropped (the app hears a disconnect) and the
    server stays free for others."""
    total = 2000 * 65536
    with ThreadedServer(insecure_bind=["127.0.0.1:0"], write_timeout=1.0,
                        access_log=False, graceful_timeout=2) as server:
        address = server.address()
        sock = socket.create_connection(address, timeout=20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            sock.sendall(b"GET /stream?n=2000&size=65536 HTTP/1.1\r\nHost: t\r\n\r\n")
            started = time.monotonic()
            time.sleep(2.0)
            assert_other_client_served(address)
            time.sleep(0.5)
            received = 0
            try:
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
            elapsed = time.monotonic() - started
        finally:
            sock.close()
    assert received < total, "the whole response went out: nothing timed out"
    assert elapsed < 10, "reading to EOF took too long: the connection was not dropped"
