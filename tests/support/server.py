"""Run a real quicserve server for integration tests.

Two ways, both on ephemeral ports (bind port 0; the bound port is read back):

* :class:`ThreadedServer` runs :class:`quicserve.server.Server` in-process on
  its own event loop in a background thread, so blocking clients (curl,
  http.client, raw sockets, h2load) can be used from the test body, and the
  server's ``statistics()`` read directly.  No signal handling (not the main
  thread).
* :class:`ServerProcess` runs ``python -m quicserve ...`` as a subprocess, as a
  user would: exit codes, signals, stderr.  The bound addresses are parsed
  from the ``listening on URL`` log lines; ``ready`` is the
  ``quicserve ... ready (pid N)`` line.

:data:`router_app` (``tests.support.server:router_app``) is one ASGI app whose
behaviour is chosen by the request path, so one server (in-process or a
subprocess) serves every case of a test module.  Every wait here is bounded in
time.
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
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, MutableMapping
from urllib.parse import parse_qs

from quicserve.config import Config
from quicserve.server import ListenAddress, Server

ROOT = Path(__file__).resolve().parents[2]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


# --------------------------------------------------------------------------
# The router app.


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes,
                   content_type: bytes = b"text/plain") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _query(scope: Scope) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}


async def _lifespan(receive: Receive, send: Send, state: dict[str, Any]) -> None:
    marker = os.environ.get("QS_TEST_LIFESPAN_MARKER")
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if os.environ.get("QS_TEST_LIFESPAN_FAIL"):
                await send({"type": "lifespan.startup.failed",
                            "message": os.environ["QS_TEST_LIFESPAN_FAIL"]})
                return
            state["started"] = "yes"
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if marker:
                Path(marker).write_text("lifespan shutdown ran\n")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def router_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Behaviour by path:

    ``/`` and ``/hello`` 200 "hello"; ``/echo`` echoes the body;
    ``/slow?s=N`` answers "slow done" after N seconds (without reading the
    body first); ``/stream?n=N&size=S`` N chunks of S bytes without
    Content-Length; ``/raise-before`` raises before the head;
    ``/raise-after`` sends a head and part of a body, then raises;
    ``/no-response`` returns without responding; ``/state`` the lifespan
    state as JSON; ``/scope`` selected scope keys as JSON; ``/expect``
    echoes the body (for 100-continue); ``/disconnect-wait`` waits for
    ``http.disconnect``.
    """
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, scope["state"])
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    handler = _ROUTES.get(path)
    if handler is None:
        await _respond(send, 404, b"not found\n")
        return
    await handler(scope, receive, send)


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    await _respond(send, 200, b"hello")


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = await _read_body(receive)
    if body is not None:
        await _respond(send, 200, body)


async def _slow(scope: Scope, receive: Receive, send: Send) -> None:
    marker = os.environ.get("QS_TEST_SLOW_MARKER")
    if marker:  # tells a test in another process that the request is in flight
        Path(marker).write_text("slow request started\n")
    await asyncio.sleep(float(_query(scope).get("s", "1")))
    await _respond(send, 200, b"slow done")


async def _stream(scope: Scope, receive: Receive, send: Send) -> None:
    query = _query(scope)
    count, size = int(query.get("n", "4")), int(query.get("size", "8"))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")]})
    for i in range(count):
        chunk = bytes([0x61 + i % 26]) * size
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _raise_before(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("test app fails before the response head")


async def _raise_after(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"100")]})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("test app fails after the response head")


async def _no_response(scope: Scope, receive: Receive, send: Send) -> None:
    return None


async def _state(scope: Scope, receive: Receive, send: Send) -> None:
    await _respond(send, 200, json.dumps(dict(scope.get("state", {}))).encode(),
                   b"application/json")


async def _scope(scope: Scope, receive: Receive, send: Send) -> None:
    keys = ("http_version", "method", "scheme", "path", "root_path", "client", "server")
    data: dict[str, Any] = {key: scope.get(key) for key in keys}
    data["query_string"] = scope["query_string"].decode("latin-1")
    data["raw_path"] = scope["raw_path"].decode("latin-1")
    data["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
    await _respond(send, 200, json.dumps(data).encode(), b"application/json")


async def _disconnect_wait(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


_ROUTES: dict[str, App] = {
    "/": _hello,
    "/hello": _hello,
    "/echo": _echo,
    "/expect": _echo,
    "/slow": _slow,
    "/stream": _stream,
    "/raise-before": _raise_before,
    "/raise-after": _raise_after,
    "/no-response": _no_response,
    "/state": _state,
    "/scope": _scope,
    "/disconnect-wait": _disconnect_wait,
}


# --------------------------------------------------------------------------
# In-process, in a thread.


class ThreadedServer:
    """A quicserve :class:`Server` on its own loop in a daemon thread.

    ``with ThreadedServer(app, insecure_bind=["127.0.0.1:0"]) as server:``;
    options are Config fields.  ``url()`` is the first TCP address.
    """

    def __init__(self, app: Any = router_app, config: Config | None = None,
                 **options: Any) -> None:
        self.config = config if config is not None else Config(**options)
        self.app = app
        self.server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="quicserve-test", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise TimeoutError("the test server did not start")
        if self._error is not None:
            self._thread.join(STOP_TIMEOUT)
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = Server(self.config, app=self.app)
        try:
            await self.server.start()
        except BaseException as exc:  # handed to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self.server.serve_until()

    def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown, as a signal would; returns once it is done
        (within the graceful timeout plus a margin)."""
        if timeout is None:
            timeout = self.config.graceful_timeout + STOP_TIMEOUT
        if self.loop is not None and self.server is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.request_shutdown)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the test server did not stop")

    def request_shutdown(self) -> None:
        if self.loop is not None and self.server is not None:
            self.loop.call_soon_threadsafe(self.server.request_shutdown)

    @property
    def stopped(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def addresses(self) -> tuple[ListenAddress, ...]:
        if self.server is None:
            return ()
        return self.server.addresses

    def address(self, *, transport: str = "tcp", secure: bool | None = None,
                family: int | None = None) -> Any:
        """The first bound address matching the filters: (host, port) or a unix path."""
        for item in self.addresses:
            if item.transport != transport or (secure is not None and item.secure != secure):
                continue
            if family is not None and _family(item.address) != family:
                continue
            return item.address
        raise LookupError(f"no {transport} address (secure={secure}, family={family})")

    def url(self, path: str = "/", **filters: Any) -> str:
        for item in self.addresses:
            if item.address == self.address(**filters):
                return item.url + path
        raise LookupError("no such address")  # pragma: no cover

    def statistics(self) -> dict[str, int]:
        if self.server is None:
            return {}
        return self.server.statistics()

    def wait_statistics(self, predicate: Callable[[dict[str, int]], bool],
                        timeout: float = 10.0) -> dict[str, int]:
        """Poll the counters (bounded) until ``predicate`` holds; return them."""
        deadline = time.monotonic() + timeout
        stats = self.statistics()
        while not predicate(stats):
            if time.monotonic() > deadline:
                raise AssertionError(f"statistics never settled: {stats}")
            time.sleep(0.02)
            stats = self.statistics()
        return stats


def _family(address: Any) -> int:
    if isinstance(address, str):
        return socket.AF_UNIX
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


# --------------------------------------------------------------------------
# A subprocess, as a user runs it.


_LISTENING = re.compile(r"listening on (\S+) \((TCP|QUIC)")


class ServerProcess:
    """``python -m quicserve ARGS`` with stderr collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:
        self.args = [sys.executable, "-m", "quicserve", *args]
        environ = dict(os.environ)
        environ.pop("SSLKEYLOGFILE", None)
        environ["PYTHONUNBUFFERED"] = "1"
        environ.update(env or {})
        self.env = environ
        self.cwd = cwd
        self.lines: list[str] = []
        self.stdout_lines: list[str] = []
        self.urls: list[str] = []
        self._ready = threading.Event()
        self._ended = threading.Event()
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, env=self.env,
                                     cwd=self.cwd)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match:
                self.urls.append(match.group(1))
            if " ready (pid " in line:
                self._ready.set()
        self._ended.set()

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Wait for the ready line; raise with the log if the process ends first."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self._ended.is_set() or time.monotonic() > deadline:
                self.kill()
                raise AssertionError("quicserve did not become ready:\n" + self.stderr)
        return self

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._ended.wait(5)
        return code

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def url(self, prefix: str = "http") -> str:
        for url in self.urls:
            if url.startswith(prefix + "://") or url.startswith(prefix + "+"):
                return url
        raise LookupError(f"no {prefix} address in {self.urls}")

    def tcp_address(self, prefix: str = "http") -> tuple[str, int]:
        url = self.url(prefix)
        host, _, port = url.split("://", 1)[1].rpartition(":")
        return host.strip("[]"), int(port)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
               interval: float = 0.02) -> None:
    """Bounded polling for conditions with no event to wait on (files, processes)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    """A port free right now (for the few tests that must name one up front)."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def iter_lines(text: str) -> Iterator[str]:
    return iter(text.splitlines())


# --------------------------------------------------------------------------
# Raw HTTP/1.1 client helpers (the standard library's parser over our sockets).


class RawConnection:
    """A blocking TCP or unix connection with one buffered reader, so several
    pipelined responses can be parsed in order with :mod:`http.client`."""

    def __init__(self, address: Any, timeout: float = 10.0) -> None:
        family = _family(address)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.file = self.sock.makefile("rb")

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> Any:
        """Parse the next response (status, headers, whole body read)."""
        import http.client

        response = http.client.HTTPResponse(_OneFile(self.file), method=method)  # type: ignore[arg-type]
        response.begin()
        response.body = response.read()  # type: ignore[attr-defined]
        return response

    def read_to_eof(self, limit: int = 1 << 20) -> bytes:
        """Everything until the server closes (bounded by ``limit`` and the timeout)."""
        chunks = []
        total = 0
        while total < limit:
            chunk = self.file.read1(65536)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)

    def closed_by_peer(self) -> bool:
        """True when the server closed (EOF or reset) within the timeout."""
        try:
            return self.file.read1(65536) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class _OneFile:
    """Lets http.client.HTTPResponse read from a shared buffered file (which
    it must not close when a response ends: the next one follows)."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def makefile(self, *args: Any, **kwargs: Any) -> Any:
        return _Unclosable(self._file)


class _Unclosable:
    def __init__(self, file: Any) -> None:
        self._file = file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        pass


def get(address: Any, path: str = "/hello", *, host: str = "test",
        timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET on a fresh connection: (status, body)."""
    with RawConnection(address, timeout=timeout) as conn:
        conn.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = conn.response()
        return response.status, response.body
