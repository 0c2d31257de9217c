"""The Python API (``quicserve.serve``, ``quicserve.run``, ``Server``) and the
listening sockets (``transport/sockets.py``) on real loopback sockets."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import quicserve
from quicserve.config import Config, parse_bind
from quicserve.errors import AppLoadError, LifespanError
from quicserve.server import Server
from quicserve.transport import sockets
from tests.support.server import ROOT, router_app


async def fetch(address: tuple[str, int] | str, path: str = "/hello") -> bytes:
    if isinstance(address, str):
        reader, writer = await asyncio.open_unix_connection(address)
    else:
        reader, writer = await asyncio.open_connection(*address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


# -- serve() ---------------------------------------------------------------------------


def test_serve_until_trigger_on_an_inherited_socket() -> None:
    """``serve()`` with ``fd://N`` (a socket made by someone else, here the
    test) returns when the trigger fires and leaves the fd closed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = listener.getsockname()
    fd = listener.detach()

    async def main() -> bytes:
        stop = asyncio.Event()
        task = asyncio.ensure_future(quicserve.serve(
            router_app, shutdown_trigger=stop.wait, bind=[f"fd://{fd}"], access_log=False))
        response = b""
        for _ in range(100):  # the server starts within a few loop turns
            try:
                response = await fetch(address)
                break
            except ConnectionRefusedError:
                await asyncio.sleep(0.05)
        stop.set()
        await task
        return response

    response = run(main())
    assert isinstance(response, bytes) and response.endswith(b"\r\n\r\nhello")
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the server


def test_server_addresses_statistics_and_shutdown(tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")

    async def main() -> None:
        server = Server(Config(insecure_bind=("127.0.0.1:0", f"unix:{path}"), access_log=False),
                        app=router_app)
        await server.start()
        try:
            tcp = [a for a in server.addresses if a.transport == "tcp"]
            assert [a.secure for a in tcp] == [False, False]
            inet, unix = tcp[0].address, tcp[1].address
            assert isinstance(inet, tuple) and inet[1] != 0
            assert unix == path and tcp[1].url == f"http+unix:{path}"
            assert (await fetch(inet)).endswith(b"hello")
            assert (await fetch(unix, "/state")).endswith(b'{"started": "yes"}')
            stats = server.statistics()
            assert stats["requests"] == 2
            assert {"tcp_connections", "quic_sessions", "streams", "app_tasks"} <= stats.keys()
        finally:
            await server.shutdown()
        await server.shutdown()  # idempotent
        assert not os.path.exists(path)  # the socket file is removed
        with pytest.raises(ConnectionRefusedError):
            await fetch(inet)

    run(main())


@pytest.mark.parametrize(("before", "option", "serving"), [
    (700, None, 10000),   # Python's default is raised to quicserve's
    (700, 0, 700),        # --gc-threshold 0: left alone
    (700, 2500, 2500),
    (50000, None, 50000),  # never lowered
    (0, None, 0),          # a collector switched off stays off
])
def test_gc_threshold_while_serving_then_restored(before: int, option: int | None,
                                                  serving: int) -> None:
    saved = gc.get_threshold()
    options = {} if option is None else {"gc_threshold": option}

    async def main() -> None:
        server = Server(Config(insecure_bind=("127.0.0.1:0",), access_log=False, **options),
                        app=router_app)
        await server.start()
        try:
            assert gc.get_threshold() == (serving, 10, 10)
            assert (await fetch(server.addresses[0].address)).endswith(b"hello")
        finally:
            await server.shutdown()
        assert gc.get_threshold() == (before, 10, 10)

    gc.set_threshold(before, 10, 10)
    try:
        run(main())
    finally:
        gc.set_threshold(*saved)


def test_serve_raises_lifespan_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QS_TEST_LIFESPAN_FAIL", "no database")

    async def main() -> None:
        await quicserve.serve(router_app, shutdown_trigger=asyncio.Event().wait,
                              insecure_bind=["127.0.0.1:0"])

    with pytest.raises(LifespanError, match="no database"):
        run(main())


def test_serve_raises_app_load_error() -> None:
    async def main() -> None:
        await quicserve.serve("tests.support.server:no_such_app",
                              shutdown_trigger=asyncio.Event().wait,
                              insecure_bind=["127.0.0.1:0"])

    with pytest.raises(AppLoadError, match="no_such_app"):
        run(main())


def test_run_exits_3_on_lifespan_failure() -> None:
    code = ("import quicserve; quicserve.run('tests.support.server:router_app', "
            "insecure_bind=['127.0.0.1:0'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=ROOT,
                            env=dict(os.environ, QS_TEST_LIFESPAN_FAIL="cache cold"))
    assert result.returncode == 3
    assert "application startup failed: cache cold" in result.stderr


# -- sockets.py ---------------------------------------------------------------------------


def test_unix_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # the file stays: a server that died
    bound = sockets.open_tcp(parse_bind(f"unix:{path}"), backlog=8)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        client.close()
    finally:
        sockets.close(bound)
    assert not os.path.exists(path)


def test_unix_live_socket_is_in_use(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen()
    try:
        with pytest.raises(sockets.BindError, match=f"cannot bind unix:{path}: address already"):
            sockets.open_tcp(parse_bind(f"unix:{path}"), backlog=8)
        assert os.path.exists(path)
    finally:
        live.close()


def test_unix_path_that_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "regular"
    path.write_text("data")
    with pytest.raises(sockets.BindError, match="not a socket"):
        sockets.open_tcp(parse_bind(f"unix:{path}"), backlog=8)
    assert path.read_text() == "data"


def test_tcp_address_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(sockets.BindError) as info:
            sockets.open_tcp(parse_bind(f"127.0.0.1:{port}"), backlog=8)
    assert str(info.value) == f"cannot bind 127.0.0.1:{port} (TCP): address already in use"


def test_fd_of_the_wrong_type_is_refused() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(sockets.BindError, match="not a stream"):
            sockets.open_tcp(parse_bind(f"fd://{udp.fileno()}"), backlog=8)
        udp.getsockname()  # still open: the server did not close what it refused
    finally:
        udp.close()


def test_ipv6_socket_is_v6_only() -> None:
    try:
        bound = sockets.open_tcp(parse_bind("[::1]:0"), backlog=8)
    except sockets.BindError:
        pytest.skip("no IPv6 loopback")
    try:
        assert bound.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert bound.address[0] == "::1"  # type: ignore[index]
    finally:
        sockets.close(bound)


def test_udp_socket_has_large_buffers() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
        default = plain.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    limit = int(Path("/proc/sys/net/core/rmem_max").read_text()) * 2
    if limit <= default:
        pytest.skip("net.core.rmem_max leaves no room above the default buffer")
    bound = sockets.open_udp(parse_bind("127.0.0.1:0"))
    try:
        assert bound.kind == "udp"
        assert bound.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > default
        assert bound.address[1] != 0  # type: ignore[index]
    finally:
        sockets.close(bound)
