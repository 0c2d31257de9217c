"""StaticFiles driven as an ASGI app: scope in, messages out, no server.

The app is called exactly as a server calls it; the test plays the server's
side of ``receive``/``send`` and asserts on the messages that come out.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from quicserve.static import (
    ByteRange,
    PathRejected,
    StaticFiles,
    Unsatisfiable,
    app_for,
    parse_range,
    resolve_untrusted,
)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_bytes(b"hello, world\n")
    (www / "data.bin").write_bytes(bytes(range(256)) * 4)
    (www / "empty").write_bytes(b"")
    (www / "sub").mkdir()
    (www / "sub" / "index.html").write_bytes(b"<p>index</p>")
    (www / "noindex").mkdir()
    (www / "caf\u00e9.txt").write_bytes(b"accent")
    (tmp_path / "secret.txt").write_bytes(b"top secret")
    os.symlink(tmp_path / "secret.txt", www / "escape")
    os.symlink(tmp_path, www / "escape-dir")
    os.symlink(www / "hello.txt", www / "inside-link")
    return www


class Response:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        start = messages[0]
        assert start["type"] == "http.response.start"
        self.status: int = start["status"]
        self.headers = {bytes(k).lower(): bytes(v) for k, v in start["headers"]}
        self.body = b"".join(m.get("body", b"") for m in messages[1:]
                             if m["type"] == "http.response.body")


def call(app: StaticFiles, path: str | bytes, *, method: str = "GET",
         headers: list[tuple[bytes, bytes]] | None = None,
         extensions: dict[str, Any] | None = None) -> Response:
    raw = path if isinstance(path, bytes) else path.encode()
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1", "method": method, "scheme": "https",
        "path": raw.decode("latin-1"), "raw_path": raw, "query_string": b"",
        "root_path": "", "headers": headers or [], "client": None, "server": None,
    }
    if extensions is not None:
        scope["extensions"] = extensions
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(dict(message))

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    return Response(messages)


# -- path resolution --------------------------------------------------------


def test_serves_a_file_with_headers(root: Path) -> None:
    r = call(StaticFiles(root), "/hello.txt")
    assert r.status == 200
    assert r.body == b"hello, world\n"
    assert r.headers[b"content-type"] == b"text/plain; charset=utf-8"
    assert r.headers[b"content-length"] == b"13"
    assert r.headers[b"accept-ranges"] == b"bytes"
    st = (root / "hello.txt").stat()
    assert r.headers[b"last-modified"] == email.utils.formatdate(st.st_mtime, usegmt=True).encode()
    assert r.headers[b"etag"].startswith(b'"d-')


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/sub/../../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/sub%2f..%2f..%2fsecret.txt",
    "/%2e%2e%5csecret.txt", "/./hello.txt", "/escape", "/escape-dir/secret.txt",
    "/missing", "/noindex", "/noindex/", "/%ff.txt",
])
def test_traversal_and_missing_are_404(root: Path, path: str) -> None:
    r = call(StaticFiles(root), path)
    assert r.status == 404
    assert b"secret" not in r.body


@pytest.mark.parametrize("path", ["/hello.txt%00", "/%00/hello.txt", "/hello%00.txt.html"])
def test_nul_is_400(root: Path, path: str) -> None:
    assert call(StaticFiles(root), path).status == 400


def test_symlink_inside_root_is_served(root: Path) -> None:
    r = call(StaticFiles(root), "/inside-link")
    assert (r.status, r.body) == (200, b"hello, world\n")


def test_directory_serves_index(root: Path) -> None:
    for path in ("/sub", "/sub/", "/sub//"):
        r = call(StaticFiles(root), path)
        assert (r.status, r.body) == (200, b"<p>index</p>")
        assert r.headers[b"content-type"].startswith(b"text/html")


def test_percent_encoded_utf8_name(root: Path) -> None:
    r = call(StaticFiles(root), "/caf%C3%A9.txt")
    assert (r.status, r.body) == (200, b"accent")


def test_index_symlink_escaping_root_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "trap").mkdir()
    os.symlink(tmp_path / "secret.txt", root / "trap" / "index.html")
    assert call(StaticFiles(root), "/trap/").status == 404


def test_resolve_untrusted_raises_only_path_rejected(root: Path) -> None:
    real = os.path.realpath(root)
    assert resolve_untrusted(real, b"/hello.txt") == os.path.join(real, "hello.txt")
    for raw in (b"/..", b"/%2e%2e", b"/a%00", b"/%2f", b"/nope"):
        with pytest.raises(PathRejected):
            resolve_untrusted(real, raw)


def test_query_and_root_path_are_ignored(root: Path) -> None:
    app = StaticFiles(root)
    r = call(app, b"/hello.txt?x=1")
    assert r.status == 200


# -- methods ----------------------------------------------------------------


def test_head_has_headers_and_no_body(root: Path) -> None:
    r = call(StaticFiles(root), "/data.bin", method="HEAD")
    assert r.status == 200
    assert r.headers[b"content-length"] == b"1024"
    assert r.body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_are_405_with_allow(root: Path, method: str) -> None:
    r = call(StaticFiles(root), "/hello.txt", method=method)
    assert r.status == 405
    assert r.headers[b"allow"] == b"GET, HEAD"


def test_empty_file(root: Path) -> None:
    r = call(StaticFiles(root), "/empty")
    assert (r.status, r.body, r.headers[b"content-length"]) == (200, b"", b"0")


# -- conditional requests ------------------------------------------------------


def test_if_none_match_gives_304(root: Path) -> None:
    app = StaticFiles(root)
    etag = call(app, "/hello.txt").headers[b"etag"]
    r = call(app, "/hello.txt", headers=[(b"if-none-match", b'"other", ' + etag)])
    assert (r.status, r.body) == (304, b"")
    assert r.headers[b"etag"] == etag
    assert call(app, "/hello.txt", headers=[(b"if-none-match", b"W/" + etag)]).status == 304
    assert call(app, "/hello.txt", headers=[(b"if-none-match", b"*")]).status == 304
    assert call(app, "/hello.txt", headers=[(b"if-none-match", b'"nope"')]).status == 200


def test_if_modified_since(root: Path) -> None:
    app = StaticFiles(root)
    mtime = (root / "hello.txt").stat().st_mtime
    later = email.utils.formatdate(mtime + 60, usegmt=True).encode()
    earlier = email.utils.formatdate(mtime - 60, usegmt=True).encode()
    assert call(app, "/hello.txt", headers=[(b"if-modified-since", later)]).status == 304
    assert call(app, "/hello.txt", headers=[(b"if-modified-since", earlier)]).status == 200
    assert call(app, "/hello.txt", headers=[(b"if-modified-since", b"garbage")]).status == 200


def test_if_none_match_wins_over_if_modified_since(root: Path) -> None:
    mtime = (root / "hello.txt").stat().st_mtime
    later = email.utils.formatdate(mtime + 60, usegmt=True).encode()
    r = call(StaticFiles(root), "/hello.txt",
             headers=[(b"if-none-match", b'"nope"'), (b"if-modified-since", later)])
    assert r.status == 200


def test_if_match_and_if_unmodified_since_give_412(root: Path) -> None:
    app = StaticFiles(root)
    assert call(app, "/hello.txt", headers=[(b"if-match", b'"nope"')]).status == 412
    etag = call(app, "/hello.txt").headers[b"etag"]
    assert call(app, "/hello.txt", headers=[(b"if-match", etag)]).status == 200
    mtime = (root / "hello.txt").stat().st_mtime
    earlier = email.utils.formatdate(mtime - 60, usegmt=True).encode()
    assert call(app, "/hello.txt", headers=[(b"if-unmodified-since", earlier)]).status == 412


# -- ranges ---------------------------------------------------------------------


def test_single_range_is_206(root: Path) -> None:
    data = (root / "data.bin").read_bytes()
    app = StaticFiles(root)
    r = call(app, "/data.bin", headers=[(b"range", b"bytes=10-19")])
    assert (r.status, r.body) == (206, data[10:20])
    assert r.headers[b"content-range"] == b"bytes 10-19/1024"
    assert r.headers[b"content-length"] == b"10"
    r = call(app, "/data.bin", headers=[(b"range", b"bytes=1000-")])
    assert (r.status, r.body) == (206, data[1000:])
    r = call(app, "/data.bin", headers=[(b"range", b"bytes=-24")])
    assert (r.status, r.body, r.headers[b"content-range"]) == (206, data[-24:], b"bytes 1000-1023/1024")
    r = call(app, "/data.bin", headers=[(b"range", b"bytes=1000-5000")])
    assert (r.status, r.body) == (206, data[1000:])


def test_unsatisfiable_range_is_416(root: Path) -> None:
    r = call(StaticFiles(root), "/data.bin", headers=[(b"range", b"bytes=1024-")])
    assert r.status == 416
    assert r.headers[b"content-range"] == b"bytes */1024"
    assert call(StaticFiles(root), "/empty", headers=[(b"range", b"bytes=-1")]).status == 416


def test_multiple_or_bad_ranges_serve_the_whole_file(root: Path) -> None:
    data = (root / "data.bin").read_bytes()
    for value in (b"bytes=0-1,5-6", b"items=0-1", b"bytes=5-1", b"bytes=x-y", b"bytes=-"):
        r = call(StaticFiles(root), "/data.bin", headers=[(b"range", value)])
        assert (r.status, r.body) == (200, data), value


def test_if_range(root: Path) -> None:
    app = StaticFiles(root)
    first = call(app, "/data.bin")
    etag, modified = first.headers[b"etag"], first.headers[b"last-modified"]
    r = call(app, "/data.bin", headers=[(b"range", b"bytes=0-3"), (b"if-range", etag)])
    assert r.status == 206
    r = call(app, "/data.bin", headers=[(b"range", b"bytes=0-3"), (b"if-range", modified)])
    assert r.status == 206
    r = call(app, "/data.bin", headers=[(b"range", b"bytes=0-3"), (b"if-range", b'"stale"')])
    assert (r.status, len(r.body)) == (200, 1024)


def test_head_ignores_range(root: Path) -> None:
    r = call(StaticFiles(root), "/data.bin", method="HEAD", headers=[(b"range", b"bytes=0-3")])
    assert (r.status, r.headers[b"content-length"]) == (200, b"1024")


def test_parse_range_edges() -> None:
    assert parse_range(b"bytes=0-0", 1) == ByteRange(0, 0, 1)
    assert parse_range(b"bytes=-100", 10) == ByteRange(0, 9, 10)
    assert parse_range(b"BYTES = 2-", 10) == ByteRange(2, 9, 10)
    with pytest.raises(Unsatisfiable):
        parse_range(b"bytes=10-", 10)
    with pytest.raises(Unsatisfiable):
        parse_range(b"bytes=-0", 10)


# -- body transport --------------------------------------------------------------


def test_pathsend_is_used_when_offered(root: Path) -> None:
    r = call(StaticFiles(root), "/data.bin", extensions={"http.response.pathsend": {}})
    assert [m["type"] for m in r.messages] == ["http.response.start", "http.response.pathsend"]
    assert r.messages[1]["path"] == os.path.realpath(root / "data.bin")
    assert os.path.isabs(r.messages[1]["path"])


def test_range_with_pathsend_only_falls_back_to_chunks(root: Path) -> None:
    data = (root / "data.bin").read_bytes()
    r = call(StaticFiles(root), "/data.bin", headers=[(b"range", b"bytes=1-2")],
             extensions={"http.response.pathsend": {}})
    assert (r.status, r.body) == (206, data[1:3])


def test_zerocopysend_gets_offset_and_count(root: Path) -> None:
    seen: list[bytes] = []
    messages: list[dict[str, Any]] = []
    scope = {"type": "http", "method": "GET", "path": "/data.bin", "raw_path": b"/data.bin",
             "root_path": "", "headers": [(b"range", b"bytes=100-199")],
             "extensions": {"http.response.zerocopysend": {}}}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.zerocopysend":
            seen.append(os.pread(message["file"].fileno(), message["count"], message["offset"]))
        messages.append(message)

    asyncio.run(StaticFiles(root)(scope, receive, send))
    assert messages[0]["status"] == 206
    assert seen == [(root / "data.bin").read_bytes()[100:200]]


def test_chunks_are_bounded(root: Path) -> None:
    (root / "big").write_bytes(os.urandom(300_000))
    r = call(StaticFiles(root, chunk_size=65536), "/big")
    sizes = [len(m["body"]) for m in r.messages[1:]]
    assert max(sizes) == 65536 and len(sizes) == 5
    assert [m["more_body"] for m in r.messages[1:]] == [True] * 4 + [False]
    assert hashlib.sha256(r.body).digest() == hashlib.sha256((root / "big").read_bytes()).digest()


def test_disconnect_stops_quietly(root: Path) -> None:
    (root / "big").write_bytes(b"x" * 500_000)
    sent: list[str] = []
    scope = {"type": "http", "method": "GET", "path": "/big", "raw_path": b"/big",
             "root_path": "", "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if len(sent) == 3:
            raise ConnectionResetError("client went away")

    asyncio.run(StaticFiles(root, chunk_size=1000)(scope, receive, send))
    assert len(sent) == 3


def test_100_mib_file_with_flat_memory(tmp_path: Path) -> None:
    """The app holds one chunk at a time: peak Python allocation stays far
    below the file size while every byte is delivered in order."""
    www = tmp_path / "big"
    www.mkdir()
    size = 100 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    with open(www / "f", "wb") as fh:
        for _ in range(100):
            fh.write(block)
    digest = hashlib.sha256()
    total = 0
    scope = {"type": "http", "method": "GET", "path": "/f", "raw_path": b"/f", "root_path": "",
             "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal total
        if message["type"] == "http.response.body":
            digest.update(message["body"])
            total += len(message["body"])
            await asyncio.sleep(0)

    tracemalloc.start()
    try:
        asyncio.run(StaticFiles(www)(scope, receive, send))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert digest.digest() == hashlib.sha256(block * 100).digest()
    assert peak < 4 * 1024 * 1024, peak


# -- lifespan and misc -------------------------------------------------------------


def test_lifespan_is_acknowledged(root: Path) -> None:
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    out: list[str] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        out.append(message["type"])

    asyncio.run(app_for(root)({"type": "lifespan"}, receive, send))
    assert out == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_root_must_be_a_directory(root: Path) -> None:
    with pytest.raises(ValueError):
        StaticFiles(root / "hello.txt")
