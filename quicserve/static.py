"""Static files as an ASGI application: ``StaticFiles(root)``.

Theory of operation
-------------------
``quicserve --static DIR`` (alias ``--www DIR``) serves the files under DIR
with :class:`StaticFiles`; library users mount it like any ASGI app, or call
:func:`app_for`.  It is an *application*, not part of the server core: it talks
to the server only through ASGI messages, so it serves HTTP/1.1, HTTP/2,
HTTP/3 and hq-interop alike, and the QUIC interop runner's ``/www`` with it.

One request, in order:

1. **Method.**  GET and HEAD; anything else is ``405`` with ``Allow: GET, HEAD``.
2. **Path** (:func:`resolve_untrusted`, the only function that reads the
   hostile path).  The raw request path is split on ``/`` *before*
   percent-decoding, so ``%2f`` can never create a separator; each segment is
   then decoded.  A NUL anywhere is ``400``; a ``..`` or ``.`` segment (sent
   literally or as ``%2e%2e``), an encoded ``/`` or ``\\``, or bytes that are
   not UTF-8 are ``404``.  The joined path is resolved with ``realpath`` (so
   symlinks are followed) and must stay inside the *real* root, or it is
   ``404``: a symlink that points out of the root is refused, one that stays
   inside is served.  A directory is served as its ``index.html`` (the same
   containment check applies), else ``404``.  Only regular files are served.
3. **Validators.**  ``Last-Modified`` from the mtime; a strong ``ETag`` from
   size, mtime (ns) and inode, all taken from one ``fstat`` of the opened
   file so they describe exactly the bytes sent.
4. **Preconditions** in RFC 9110 section 13.2.2 order: ``If-Match`` (412),
   ``If-Unmodified-Since`` (412), ``If-None-Match`` (304), and only when that
   is absent ``If-Modified-Since`` (304).
5. **Range** (GET only, ``bytes`` unit).  One satisfiable range is ``206``
   with ``Content-Range``; an unsatisfiable one is ``416`` with
   ``Content-Range: bytes */SIZE``.  *Several* ranges are answered with the
   whole file (``200``): RFC 9110 lets a server ignore Range, and multipart
   bodies buy nothing for the clients this serves.  A Range header that does
   not parse is ignored the same way.  ``If-Range`` that does not match the
   current ETag (strong comparison) or Last-Modified date turns the request
   into a plain ``200``.
6. **Body.**  When the scope's ``extensions`` offer ``http.response.pathsend``
   a whole file is handed to the server by path (it may use ``sendfile``).
   When they offer ``http.response.zerocopysend`` a range (or a whole file
   without pathsend) is handed over as the open file with offset and count.
   Otherwise the file is read in :data:`CHUNK_SIZE` pieces with ``os.pread``
   in the loop's default executor and each piece is awaited through
   ``send()``, which is where the server applies backpressure: at most one
   chunk is held at a time, so a 100 MiB file costs the same memory as a
   1 KiB one.

Error handling: a client that goes away makes ``send()`` raise ``OSError``
(ASGI spec 2.4); the app then stops reading and returns quietly.  A file that
vanishes between resolution and open is ``404``; other file-system errors
after the head went out propagate (the server resets the stream).

Resource handling: the file descriptor is opened once per request and closed
in a ``finally`` block, whatever happens.  Lifespan events are acknowledged
so ``StaticFiles`` works as the top-level app with ``--lifespan on``.
"""

from __future__ import annotations

import asyncio
import email.utils
import mimetypes
import os
import stat
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, MutableMapping
from urllib.parse import quote, unquote_to_bytes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Bytes read and sent per ``http.response.body`` message.
CHUNK_SIZE = 64 * 1024

_ALLOWED = b"GET, HEAD"


class PathRejected(Exception):
    """The request path cannot name a file under the root.  ``status`` is 400
    (malformed, e.g. NUL) or 404 (traversal attempts look like missing files)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True, slots=True)
class FileStat:
    """What one ``fstat`` of the opened file says."""

    size: int
    mtime: float
    mtime_ns: int
    inode: int

    @property
    def etag(self) -> bytes:
        return f'"{self.size:x}-{self.mtime_ns:x}-{self.inode:x}"'.encode("ascii")

    @property
    def last_modified(self) -> bytes:
        return email.utils.formatdate(self.mtime, usegmt=True).encode("ascii")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range ``first..last`` of a file of ``size`` bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def content_range(self) -> bytes:
        return f"bytes {self.first}-{self.last}/{self.size}".encode("ascii")


class Unsatisfiable(Exception):
    """The Range header parsed but selects no byte of the file (416)."""


# --------------------------------------------------------------------------
# Pure helpers: path resolution, validators, ranges.


def resolve_untrusted(real_root: str, raw_path: bytes) -> str:
    """Map a raw (still percent-encoded) request path to a path under ``real_root``.

    ``real_root`` must already be ``os.path.realpath``-ed.  Returns a path that
    exists *and* lies inside the root after symlinks are resolved, or raises
    :class:`PathRejected` (the only exception this function raises).
    """
    segments: list[str] = []
    for raw in raw_path.split(b"/"):
        if not raw:
            continue
        decoded = unquote_to_bytes(raw)
        if b"\0" in decoded:
            raise PathRejected(400, "NUL in path")
        if decoded in (b".", b"..") or b"/" in decoded or b"\\" in decoded:
            raise PathRejected(404, "traversal attempt")
        try:
            segments.append(decoded.decode("utf-8"))
        except UnicodeDecodeError:
            raise PathRejected(404, "path is not UTF-8") from None
    candidate = os.path.realpath(os.path.join(real_root, *segments))
    if not _inside(real_root, candidate):
        raise PathRejected(404, "outside the root")
    if os.path.isdir(candidate):
        candidate = os.path.realpath(os.path.join(candidate, "index.html"))
        if not _inside(real_root, candidate):
            raise PathRejected(404, "index outside the root")
    if not os.path.isfile(candidate):
        raise PathRejected(404, "no such file")
    return candidate


def _inside(real_root: str, path: str) -> bool:
    return path == real_root or path.startswith(real_root.rstrip(os.sep) + os.sep)


def parse_range(value: bytes, size: int) -> ByteRange | None:
    """One ``bytes=`` range, or None when the header should be ignored
    (another unit, several ranges, bad syntax).  Raises :class:`Unsatisfiable`
    when it parses but selects nothing."""
    unit, sep, spec = value.decode("latin-1").partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash or not (first_text.isdigit() or first_text == ""):
        return None
    if last_text and not last_text.isdigit():
        return None
    if first_text == "":
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise Unsatisfiable()
        return ByteRange(max(0, size - suffix), size - 1, size)
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    last = int(last_text) if last_text else size - 1
    if first >= size:
        raise Unsatisfiable()
    return ByteRange(first, min(last, size - 1), size)


def _parse_http_date(value: bytes) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def _etag_list(value: bytes) -> list[bytes]:
    return [tag.strip() for tag in value.split(b",") if tag.strip()]


def _weak_match(value: bytes, etag: bytes) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 section 8.8.3.2)."""
    tags = _etag_list(value)
    return b"*" in tags or any(t.removeprefix(b"W/") == etag for t in tags)


def _strong_match(value: bytes, etag: bytes) -> bool:
    tags = _etag_list(value)
    return b"*" in tags or etag in tags


def _not_modified_since(value: bytes, st: FileStat) -> bool:
    since = _parse_http_date(value)
    return since is not None and int(st.mtime) <= since


def precondition_status(headers: dict[bytes, bytes], st: FileStat) -> int | None:
    """412, 304 or None (go on), per RFC 9110 section 13.2.2."""
    if b"if-match" in headers:
        if not _strong_match(headers[b"if-match"], st.etag):
            return 412
    elif b"if-unmodified-since" in headers:
        since = _parse_http_date(headers[b"if-unmodified-since"])
        if since is not None and int(st.mtime) > since:
            return 412
    if b"if-none-match" in headers:
        return 304 if _weak_match(headers[b"if-none-match"], st.etag) else None
    if b"if-modified-since" in headers and _not_modified_since(headers[b"if-modified-since"], st):
        return 304
    return None


def if_range_holds(value: bytes, st: FileStat) -> bool:
    """True when a Range may be honoured under ``If-Range: value``."""
    value = value.strip()
    if value.startswith(b'"') or value.startswith(b"W/"):
        return value == st.etag
    date = _parse_http_date(value)
    return date is not None and int(st.mtime) == int(date)


def content_type(path: str) -> bytes:
    guessed, encoding = mimetypes.guess_type(path, strict=False)
    if guessed is None or encoding is not None:
        return b"application/octet-stream"
    if guessed.startswith("text/") or guessed in ("application/javascript", "application/json"):
        return f"{guessed}; charset=utf-8".encode("ascii")
    return guessed.encode("ascii")


# --------------------------------------------------------------------------
# The application.


class StaticFiles:
    """Serve the files under ``root`` (GET and HEAD only).

    Error handling: every client mistake is an HTTP answer (400, 404, 405,
    412, 416); a disconnect ends the response quietly.

    Resource handling: one file descriptor per request, closed on return;
    at most one :data:`CHUNK_SIZE` chunk in memory per request.
    """

    def __init__(self, root: str | os.PathLike[str], *, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = os.path.realpath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise ValueError(f"static root {root!s} is not a directory")
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.chunk_size = chunk_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "http":
            try:
                await self._http(scope, send)
            except ClientGone:
                return
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})

    async def _http(self, scope: Scope, send: Send) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _simple(send, 405, b"Method Not Allowed", ((b"allow", _ALLOWED),))
            return
        try:
            path = await _in_thread(resolve_untrusted, self.root, _request_path(scope))
            fd = await _in_thread(os.open, path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except PathRejected as exc:
            await _simple(send, exc.status, b"Bad Request" if exc.status == 400 else b"Not Found")
            return
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            await _simple(send, 404, b"Not Found")
            return
        try:
            await self._respond(scope, send, path, fd)
        finally:
            os.close(fd)

    async def _respond(self, scope: Scope, send: Send, path: str, fd: int) -> None:
        raw = os.fstat(fd)
        if not stat.S_ISREG(raw.st_mode):
            await _simple(send, 404, b"Not Found")
            return
        st = FileStat(raw.st_size, raw.st_mtime, raw.st_mtime_ns, raw.st_ino)
        headers = _header_map(scope)
        base = [(b"last-modified", st.last_modified), (b"etag", st.etag),
                (b"accept-ranges", b"bytes")]
        status = precondition_status(headers, st)
        if status is not None:
            await _simple(send, status, b"" if status == 304 else b"Precondition Failed", base,
                          with_body=status != 304)
            return
        byte_range = self._select_range(scope, headers, st)
        if isinstance(byte_range, Unsatisfiable):
            await _simple(send, 416, b"Range Not Satisfiable",
                          ((b"content-range", f"bytes */{st.size}".encode("ascii")),))
            return
        base.append((b"content-type", content_type(path)))
        if byte_range is None:
            byte_range = ByteRange(0, st.size - 1, st.size)
            status = 200
        else:
            base.append((b"content-range", byte_range.content_range))
            status = 206
        base.append((b"content-length", str(byte_range.length).encode("ascii")))
        await _send(send, {"type": "http.response.start", "status": status, "headers": base})
        if scope["method"] == "HEAD" or byte_range.length == 0:
            await _send(send, {"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self._send_body(scope, send, path, fd, byte_range, whole=status == 200)

    @staticmethod
    def _select_range(scope: Scope, headers: dict[bytes, bytes],
                      st: FileStat) -> ByteRange | Unsatisfiable | None:
        if scope["method"] != "GET" or b"range" not in headers:
            return None
        if b"if-range" in headers and not if_range_holds(headers[b"if-range"], st):
            return None
        try:
            return parse_range(headers[b"range"], st.size)
        except Unsatisfiable as exc:
            return exc

    async def _send_body(self, scope: Scope, send: Send, path: str, fd: int,
                         byte_range: ByteRange, *, whole: bool) -> None:
        extensions = scope.get("extensions") or {}
        if whole and "http.response.pathsend" in extensions:
            await _send(send, {"type": "http.response.pathsend", "path": path})
            return
        if "http.response.zerocopysend" in extensions:
            with os.fdopen(os.dup(fd), "rb", buffering=0) as file:
                await _send(send, {"type": "http.response.zerocopysend", "file": file,
                                   "offset": byte_range.first, "count": byte_range.length,
                                   "more_body": False})
            return
        offset, remaining = byte_range.first, byte_range.length
        while remaining > 0:
            chunk = await _in_thread(os.pread, fd, min(self.chunk_size, remaining), offset)
            if not chunk:
                raise OSError(f"{path} shrank while it was being sent")
            offset += len(chunk)
            remaining -= len(chunk)
            await _send(send, {"type": "http.response.body", "body": chunk,
                               "more_body": remaining > 0})


def app_for(root: str | os.PathLike[str]) -> StaticFiles:
    """The ASGI app ``--static DIR`` / ``--www DIR`` serves."""
    return StaticFiles(root)


# --------------------------------------------------------------------------
# Small plumbing.


class ClientGone(Exception):
    """``send()`` raised OSError: the client went away (ASGI spec 2.4)."""


async def _send(send: Send, message: Message) -> None:
    try:
        await send(message)
    except OSError as exc:
        raise ClientGone() from exc


async def _simple(send: Send, status: int, body: bytes,
                  extra: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]] = (),
                  *, with_body: bool = True) -> None:
    headers = list(extra)
    if with_body:
        headers += [(b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode("ascii"))]
    await _send(send, {"type": "http.response.start", "status": status, "headers": headers})
    await _send(send, {"type": "http.response.body", "body": body if with_body else b"",
                       "more_body": False})


def _request_path(scope: Scope) -> bytes:
    """The raw path (percent-encoded, no query), below ``root_path``."""
    raw = scope.get("raw_path")
    if not isinstance(raw, (bytes, bytearray)):
        raw = quote(scope["path"]).encode("ascii")
    raw = bytes(raw).split(b"?", 1)[0]
    root_path = scope.get("root_path", "").encode("utf-8")
    if root_path and raw.startswith(root_path):
        raw = raw[len(root_path):]
    return raw


def _header_map(scope: Scope) -> dict[bytes, bytes]:
    result: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", ()):
        key = bytes(name).lower()
        result[key] = result[key] + b", " + bytes(value) if key in result else bytes(value)
    return result


async def _in_thread(func: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
