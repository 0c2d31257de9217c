"""Loading the application (``module:attr``) and adapting it to ASGI 3.

Theory of operation
-------------------
:func:`load_app` imports ``module:attr`` (``attr`` may be dotted), optionally
calls it as a factory, and hands the object to :func:`wrap_app`, which returns
an ASGI 3 callable whatever the app's interface:

* **ASGI 3** — ``async def app(scope, receive, send)`` or an object whose
  ``__call__`` is such a coroutine function: used as is.
* **ASGI 2** — a class instantiated with the scope whose instances are awaited
  with ``(receive, send)``, or a function ``app(scope)`` returning such a
  coroutine function: wrapped.
* **WSGI** — ``app(environ, start_response)``: run in the loop's default
  thread pool, the request body read first, the response iterated in the
  thread and each chunk handed to ``send()`` (which waits, so a slow client
  backpressures the thread).

The interface is told apart by the callable's shape: coroutine functions are
ASGI 3; classes are ASGI 2; otherwise the number of positional parameters
(1: ASGI 2, 2: WSGI, 3: ASGI 3 returning an awaitable).

Every failure to load raises :class:`~quicserve.errors.AppLoadError` with a
one-line message (the cause chained) that the CLI prints without a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import io
import os
import sys
from typing import Any, Callable, Iterable

from ..errors import AppLoadError
from .types import ASGIApp, Message, Receive, Scope, Send


def load_app(spec: str, *, factory: bool = False, app_dir: str = ".") -> ASGIApp:
    """Import ``module:attr`` and return it as an ASGI 3 callable.

    Error handling: raises ``AppLoadError`` (one line, cause chained) when the
    spec is malformed, the module cannot be imported or raises on import, the
    attribute is missing, the factory fails, or the object is not callable.

    Resource handling: inserts ``app_dir`` at the front of ``sys.path`` once.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f'expected the app as "module:attribute", got {spec!r}')
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    module = _import(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f'attribute "{attr}" not found in module "{module_name}"') from None
    if factory:
        if not callable(obj):
            raise AppLoadError(f'"{spec}" is not callable, so it cannot be a factory')
        try:
            obj = obj()
        except Exception as exc:
            raise AppLoadError(f'the factory "{spec}" raised {type(exc).__name__}: {exc}') from exc
    if not callable(obj):
        raise AppLoadError(f'"{spec}" is not a callable application (got {type(obj).__name__})')
    return wrap_app(obj)


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise AppLoadError(f'could not import module "{module_name}"') from exc
        raise AppLoadError(f'importing "{module_name}" failed: {exc}') from exc
    except Exception as exc:
        raise AppLoadError(
            f'importing "{module_name}" raised {type(exc).__name__}: {exc}'
        ) from exc


def wrap_app(obj: object) -> ASGIApp:
    """Return ``obj`` as an ASGI 3 callable (see the module docstring)."""
    kind = interface_of(obj)
    if kind == "asgi3":
        return obj  # type: ignore[return-value]
    if kind == "asgi2":
        return _asgi2(obj)
    return WSGIAdapter(obj)


def interface_of(obj: object) -> str:
    """"asgi3", "asgi2" or "wsgi"."""
    if inspect.isclass(obj):
        return "asgi2"
    if _is_coroutine_function(obj) or _is_coroutine_function(getattr(obj, "__call__", None)):
        return "asgi3"
    try:
        params = inspect.signature(obj).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "asgi3"
    positional = [
        p for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(positional) == 1:
        return "asgi2"
    if len(positional) == 2:
        return "wsgi"
    return "asgi3"


def _is_coroutine_function(obj: object) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.iscoroutinefunction(obj)


def _asgi2(app: Any) -> ASGIApp:
    async def asgi2_adapter(scope: Scope, receive: Receive, send: Send) -> None:
        instance = app(scope)
        await instance(receive, send)

    return asgi2_adapter


# --------------------------------------------------------------------------
# WSGI


class WSGIAdapter:
    """Runs a WSGI app in the default thread pool, for ``http`` scopes only.

    The request body is read whole before the app runs (WSGI's
    ``wsgi.input`` is a blocking file).  Lifespan and WebSocket scopes are
    refused by raising, which the lifespan treats as "unsupported".
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"a WSGI app cannot serve {scope['type']!r} scopes")
        body = await _read_body(receive)
        if body is None:
            return
        loop = asyncio.get_running_loop()
        environ = build_environ(scope, body)
        await loop.run_in_executor(None, self._run, environ, send, loop)

    def _run(self, environ: dict[str, Any], send: Send, loop: asyncio.AbstractEventLoop) -> None:
        response = _WSGIResponse(send, loop)
        result = self.app(environ, response.start_response)
        try:
            for chunk in result:
                if chunk:
                    response.write(chunk)
            response.finish()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client disconnected."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def build_environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """The WSGI environ of an ``http`` scope (PEP 3333)."""
    root_path: str = scope.get("root_path", "")
    path: str = scope["path"]
    if root_path and path.startswith(root_path):
        path = path[len(root_path):]
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root_path.encode("utf-8").decode("latin-1"),
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] if server[1] is not None else 80),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "REMOTE_ADDR": client[0] if client else "",
        "REMOTE_PORT": str(client[1]) if client else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in scope["headers"]:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


class _WSGIResponse:
    """``start_response`` and body writes, from the worker thread to the loop."""

    def __init__(self, send: Send, loop: asyncio.AbstractEventLoop) -> None:
        self._send = send
        self._loop = loop
        self._status = 500
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_sent = False

    def start_response(
        self, status: str, headers: Iterable[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self._head_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self._status = int(status.split(" ", 1)[0])
        self._headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
        return self.write

    def write(self, data: bytes) -> None:
        self._call({"type": "http.response.body", "body": bytes(data), "more_body": True})

    def finish(self) -> None:
        self._call({"type": "http.response.body", "body": b"", "more_body": False})

    def _call(self, message: Message) -> None:
        if not self._head_sent:
            self._head_sent = True
            self._blocking_send({
                "type": "http.response.start", "status": self._status, "headers": self._headers,
            })
        self._blocking_send(message)

    def _blocking_send(self, message: Message) -> None:
        future = asyncio.run_coroutine_threadsafe(_forward(self._send, message), self._loop)
        future.result()


async def _forward(send: Send, message: Message) -> None:
    await send(message)

