"""The ``quicserve`` command as a user runs it: a subprocess on ephemeral ports.

Start-up and exit codes (demo app, bad app, address in use, lifespan startup
failure), graceful shutdown on SIGTERM (an in-flight request completes, new
connections are refused, lifespan shutdown runs), the second signal, the
graceful deadline, SIGHUP, the access log, --static, SSLKEYLOGFILE, and --reload.
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.support.certs import CertSet
from tests.support.server import ROOT, RawConnection, ServerProcess, get, wait_until

APP = "tests.support.server:router_app"
LOCAL = ["--insecure-bind", "127.0.0.1:0"]


def test_demo_app_without_app_argument() -> None:
    with ServerProcess(*LOCAL, "--no-access-log") as server:
        server.wait_ready()
        status, body = get(server.tcp_address(), "/")
        assert status == 200
        assert b"<html" in body.lower()
        status, body = get(server.tcp_address(), "/stream")
        assert status == 200 and body


def test_access_log_line() -> None:
    with ServerProcess(APP, *LOCAL) as server:
        server.wait_ready()
        assert get(server.tcp_address(), "/hello?x=1") == (200, b"hello")
        wait_until(lambda: any("/hello" in line for line in server.stdout_lines))
        line = next(line for line in server.stdout_lines if "/hello" in line)
    assert line.startswith("127.0.0.1:")
    assert '"GET /hello?x=1 HTTP/1.1" 200 5 ' in line
    assert line.endswith("ms")


def test_no_access_log() -> None:
    with ServerProcess(APP, *LOCAL, "--no-access-log") as server:
        server.wait_ready()
        assert get(server.tcp_address(), "/hello") == (200, b"hello")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert server.stdout_lines == []


def test_bad_app_exits_1_with_one_error_line() -> None:
    with ServerProcess("no_such_module_xyz:app", *LOCAL) as server:
        code = server.wait()
    assert code == 1
    errors = [line for line in server.lines if "[ERROR]" in line]
    assert len(errors) == 1 and 'could not import module "no_such_module_xyz"' in errors[0]
    assert "Traceback" not in server.stderr


def test_address_in_use_exits_1_naming_the_bind() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with ServerProcess(APP, "--insecure-bind", f"127.0.0.1:{port}") as server:
            code = server.wait()
    assert code == 1
    assert f"cannot bind 127.0.0.1:{port} (TCP): address already in use" in server.stderr
    assert "Traceback" not in server.stderr


def test_lifespan_startup_failure_exits_3_with_the_apps_message() -> None:
    env = {"QS_TEST_LIFESPAN_FAIL": "database unreachable"}
    with ServerProcess(APP, *LOCAL, env=env) as server:
        code = server.wait()
    assert code == 3
    assert "database unreachable" in server.stderr
    assert "Traceback" not in server.stderr
    assert server.urls == []  # never served


def test_lifespan_state_reaches_requests() -> None:
    with ServerProcess(APP, *LOCAL, "--no-access-log") as server:
        server.wait_ready()
        assert get(server.tcp_address(), "/state") == (200, b'{"started": "yes"}')


def _start_slow_request(server: ServerProcess, seconds: float,
                        results: list[object]) -> threading.Thread:
    def client() -> None:
        try:
            results.append(get(server.tcp_address(), f"/slow?s={seconds}", timeout=60))
        except OSError as exc:
            results.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    return thread


def test_sigterm_drains_in_flight_then_runs_lifespan_shutdown(tmp_path: Path) -> None:
    marker, slow = tmp_path / "lifespan", tmp_path / "slow"
    env = {"QS_TEST_LIFESPAN_MARKER": str(marker), "QS_TEST_SLOW_MARKER": str(slow)}
    with ServerProcess(APP, *LOCAL, "--graceful-timeout", "20", env=env) as server:
        server.wait_ready()
        address = server.tcp_address()
        results: list[object] = []
        client = _start_slow_request(server, 1.5, results)
        wait_until(slow.exists)
        idle = RawConnection(address)  # an idle keep-alive connection is closed at once
        time.sleep(0.1)  # let the server accept it before the signal
        server.send_signal(signal.SIGTERM)
        wait_until(lambda: any("shutting down gracefully" in line for line in server.lines))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5).close()
        assert idle.closed_by_peer()
        idle.close()
        assert not marker.exists()  # lifespan shutdown waits for the request
        client.join(30)
        code = server.wait()
    assert results == [(200, b"slow done")]
    assert code == 0
    assert marker.read_text() == "lifespan shutdown ran\n"


def test_graceful_deadline_cuts_slow_requests(tmp_path: Path) -> None:
    marker, slow = tmp_path / "lifespan", tmp_path / "slow"
    env = {"QS_TEST_LIFESPAN_MARKER": str(marker), "QS_TEST_SLOW_MARKER": str(slow)}
    with ServerProcess(APP, *LOCAL, "--graceful-timeout", "0.5", env=env) as server:
        server.wait_ready()
        results: list[object] = []
        client = _start_slow_request(server, 30, results)
        wait_until(slow.exists)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        code = server.wait()
        elapsed = time.monotonic() - started
        client.join(30)
    assert code == 0
    assert elapsed < 10
    assert len(results) == 1 and not isinstance(results[0], tuple)  # cut, not answered
    assert marker.read_text() == "lifespan shutdown ran\n"
    assert "graceful shutdown cut short" in server.stderr


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    marker, slow = tmp_path / "lifespan", tmp_path / "slow"
    env = {"QS_TEST_LIFESPAN_MARKER": str(marker), "QS_TEST_SLOW_MARKER": str(slow)}
    with ServerProcess(APP, *LOCAL, "--graceful-timeout", "60", env=env) as server:
        server.wait_ready()
        results: list[object] = []
        client = _start_slow_request(server, 60, results)
        wait_until(slow.exists)
        started = time.monotonic()
        server.send_signal(signal.SIGINT)
        wait_until(lambda: any("shutting down gracefully" in line for line in server.lines))
        server.send_signal(signal.SIGINT)
        code = server.wait()
        elapsed = time.monotonic() - started
        client.join(30)
    assert elapsed < 10
    assert code == 0
    assert not marker.exists()  # forced: no lifespan shutdown
    assert "again: exiting at once" in server.stderr


def test_sighup_without_workers_is_logged_and_ignored() -> None:
    """Python's default for SIGHUP ends the process; a lone server keeps
    serving and says what restarts it instead."""
    with ServerProcess(APP, *LOCAL, "--no-access-log") as server:
        server.wait_ready()
        address = server.tcp_address()
        assert get(address, "/hello") == (200, b"hello")
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: any("SIGHUP ignored" in line for line in server.lines))
        assert get(address, "/hello") == (200, b"hello")
        assert server.proc is not None and server.proc.poll() is None
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert "restarting needs --workers N" in server.stderr


def test_static_directory_without_app(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<h1>static</h1>")
    (tmp_path / "data.txt").write_text("some data")
    with ServerProcess("--static", str(tmp_path), *LOCAL, "--no-access-log") as server:
        server.wait_ready()
        assert get(server.tcp_address(), "/data.txt") == (200, b"some data")
        assert get(server.tcp_address(), "/") == (200, b"<h1>static</h1>")
        assert get(server.tcp_address(), "/missing")[0] == 404


def test_sslkeylogfile_is_honoured_with_a_warning(certs: CertSet, tmp_path: Path) -> None:
    keylog = tmp_path / "keys.log"
    with ServerProcess(APP, "--bind", "127.0.0.1:0", "--certfile", str(certs.cert),
                       "--keyfile", str(certs.key), "--no-access-log",
                       env={"SSLKEYLOGFILE": str(keylog)}) as server:
        server.wait_ready()
        import ssl

        context = ssl.create_default_context(cafile=str(certs.ca))
        with socket.create_connection(server.tcp_address("https"), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert b"hello" in tls.recv(4096) + tls.recv(4096)
    assert "SSLKEYLOGFILE is set" in server.stderr
    text = keylog.read_text()
    assert "CLIENT_TRAFFIC_SECRET_0" in text or "CLIENT_RANDOM" in text


def test_uvloop_is_used_when_asked() -> None:
    if importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed")
    with ServerProcess(APP, *LOCAL, "--loop", "uvloop", "--log-level", "debug",
                       "--no-access-log") as server:
        server.wait_ready()
        assert get(server.tcp_address(), "/hello") == (200, b"hello")


@pytest.mark.skipif(importlib.util.find_spec("watchfiles") is None,
                    reason="watchfiles is not installed (the reload extra)")
def test_reload_restarts_on_python_changes(tmp_path: Path) -> None:
    module = tmp_path / "reload_app.py"
    source = ("async def app(scope, receive, send):\n"
              "    if scope['type'] != 'http':\n"
              "        return\n"
              "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
              "    await send({'type': 'http.response.body', 'body': b'%s'})\n")
    module.write_text(source % "v1")
    sock_path = tmp_path / "reload.sock"
    with ServerProcess("reload_app:app", "--reload", "--app-dir", str(tmp_path),
                       "--insecure-bind", f"unix:{sock_path}", "--lifespan", "off",
                       "--no-access-log", cwd=ROOT) as server:
        server.wait_ready()
        assert get(str(sock_path), "/") == (200, b"v1")
        module.write_text(source % "v2")
        wait_until(lambda: _body_or_none(str(sock_path)) == b"v2", timeout=20, interval=0.1)
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


@pytest.mark.skipif(importlib.util.find_spec("watchfiles") is None,
                    reason="watchfiles is not installed (the reload extra)")
def test_sighup_restarts_the_reload_child(tmp_path: Path) -> None:
    module = tmp_path / "pid_app.py"
    module.write_text(
        "import os\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': str(os.getpid()).encode()})\n")
    sock_path = tmp_path / "pid.sock"
    with ServerProcess("pid_app:app", "--reload", "--app-dir", str(tmp_path),
                       "--insecure-bind", f"unix:{sock_path}", "--lifespan", "off",
                       "--no-access-log", cwd=ROOT) as server:
        server.wait_ready()
        first = _body_or_none(str(sock_path))
        assert first is not None and first.isdigit()
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: _body_or_none(str(sock_path)) not in (None, first), timeout=20,
                   interval=0.1)
        assert server.proc is not None and server.proc.poll() is None
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert "SIGHUP received; restarting the server" in server.stderr


def _body_or_none(path: str) -> bytes | None:
    try:
        status, body = get(path, "/", timeout=2)
    except OSError:
        return None
    return body if status == 200 else None


@pytest.mark.skipif(importlib.util.find_spec("watchfiles") is not None,
                    reason="watchfiles is installed")
def test_reload_without_watchfiles_says_how_to_get_it() -> None:
    with ServerProcess(APP, "--reload", *LOCAL) as server:
        code = server.wait()
    assert code == 1
    assert "--reload needs watchfiles: pip install 'quicserve[reload]'" in server.stderr
