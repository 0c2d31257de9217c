"""One WebSocket behaviour suite, run over HTTP/1.1, HTTP/2 and HTTP/3.

* ``h1``: RFC 6455 Upgrade, with the ``websockets`` client library (TLS);
* ``h2``: RFC 8441 extended CONNECT, with the h2 + wsproto client in
  ``tests/support/h2_peers.py`` (TLS, ALPN h2);
* ``h3``: RFC 9220 extended CONNECT, with the aioquic + wsproto client in
  ``tests/support/h3_ws.py``.  Skipped, with the reason, while the server's
  HTTP/3 SETTINGS do not enable extended CONNECT.

One in-process server (real sockets) runs :func:`ws_app` for every case.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from typing import Any, Awaitable, Callable, Iterator, Protocol, Sequence
from urllib.parse import parse_qs

import pytest
import websockets.asyncio.client
import websockets.exceptions

from tests.support.apps import echo_messages
from tests.support.certs import CertSet
from tests.support.h2_peers import Denial, H2WebSocket, WebSocketClosed, client_ssl_context
from tests.support.h3_ws import H3WebSocket
from tests.support.server import ThreadedServer

PROTOCOLS = ["h1", "h2", "h3"]
HTTP_VERSIONS = {"h1": "1.1", "h2": "2", "h3": "3"}

# -- the app --------------------------------------------------------------------------------------

#: Close codes the app received (``websocket.disconnect``), by the ``tag`` query parameter.
CLOSES: dict[str, list[int]] = {}


async def ws_app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                 send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """``/echo``: accept (preferring subprotocol chat.v1), echo, and close on
    "close:CODE:REASON"; ``/deny``: 403 with a body; ``/scope``: accept and send
    the scope as JSON first."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "websocket":
        return
    tag = parse_qs(scope["query_string"].decode()).get("tag", [""])[-1]
    if (await receive())["type"] != "websocket.connect":
        return
    if scope["path"] == "/deny":
        await send({"type": "websocket.http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": b"denied by test"})
        return
    offered = scope.get("subprotocols") or []
    chosen = "chat.v1" if "chat.v1" in offered else (offered[0] if offered else None)
    await send({"type": "websocket.accept", "subprotocol": chosen})
    if scope["path"] == "/scope":
        await send({"type": "websocket.send", "text": json.dumps({
            "scheme": scope["scheme"], "http_version": scope["http_version"],
            "path": scope["path"], "query_string": scope["query_string"].decode(),
            "subprotocols": offered,
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]}})})
    await _echo(receive, send, tag)


async def _echo(receive: Callable[[], Awaitable[dict[str, Any]]],
                send: Callable[[dict[str, Any]], Awaitable[None]], tag: str) -> None:
    disconnect = await echo_messages(receive, send)
    if disconnect is not None:
        CLOSES.setdefault(tag, []).append(disconnect.get("code", 1005))


# -- the server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(certs: CertSet) -> Iterator[ThreadedServer]:
    with ThreadedServer(ws_app, bind=["127.0.0.1:0"], quic_bind=["127.0.0.1:0"],
                        certfile=str(certs.cert), keyfile=str(certs.key),
                        access_log=False) as running:
        yield running


# -- one client interface over the three protocols -----------------------------------------------


class Client(Protocol):
    subprotocol: str | None

    async def send(self, message: str | bytes) -> None: ...

    async def send_fragments(self, fragments: Sequence[str | bytes]) -> None: ...

    async def recv(self) -> str | bytes: ...

    async def close(self, code: int, reason: str) -> tuple[int, str]: ...

    async def wait_closed(self) -> tuple[int, str]: ...


class H1Client:
    """The ``websockets`` library behind :class:`Client`."""

    def __init__(self, connection: websockets.asyncio.client.ClientConnection) -> None:
        self.connection = connection
        self.subprotocol = connection.subprotocol

    async def send(self, message: str | bytes) -> None:
        await self.connection.send(message)

    async def send_fragments(self, fragments: Sequence[str | bytes]) -> None:
        await self.connection.send(iter(fragments))  # type: ignore[arg-type]

    async def recv(self) -> str | bytes:
        return await asyncio.wait_for(self.connection.recv(), 10)

    async def close(self, code: int, reason: str) -> tuple[int, str]:
        await asyncio.wait_for(self.connection.close(code, reason), 10)
        received = self.connection.protocol.close_rcvd
        assert received is not None
        return received.code, received.reason

    async def wait_closed(self) -> tuple[int, str]:
        try:
            while True:
                await asyncio.wait_for(self.connection.recv(), 10)
        except websockets.exceptions.ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code, closed.rcvd.reason


class StreamClient:
    """The h2/h3 clients (same framing code) behind :class:`Client`."""

    def __init__(self, socket: H2WebSocket | H3WebSocket) -> None:
        self.socket = socket
        self.subprotocol = socket.subprotocol

    async def send(self, message: str | bytes) -> None:
        await self.socket.send(message)

    async def send_fragments(self, fragments: Sequence[str | bytes]) -> None:
        await self.socket.send_fragments(fragments)

    async def recv(self) -> str | bytes:
        return await self.socket.recv()

    async def close(self, code: int, reason: str) -> tuple[int, str]:
        closed = await self.socket.close(code, reason)
        return closed.code, closed.reason

    async def wait_closed(self) -> tuple[int, str]:
        closed = await self.socket.wait_closed()
        return closed.code, closed.reason


async def connect(server: ThreadedServer, certs: CertSet, protocol: str, path: str,
                  subprotocols: Sequence[str] = ()) -> Client | Denial:
    if protocol == "h1":
        return await _connect_h1(server, certs, path, subprotocols)
    if protocol == "h2":
        host, port = server.address(secure=True, family=socket.AF_INET)
        h2_socket = await H2WebSocket.connect(host, port, path,
                                              ssl_context=client_ssl_context(str(certs.ca)),
                                              subprotocols=subprotocols)
        return h2_socket if isinstance(h2_socket, Denial) else StreamClient(h2_socket)
    host, port = server.address(transport="udp")
    h3_socket = await H3WebSocket.connect(host, port, path, ca=str(certs.ca),
                                          subprotocols=subprotocols)
    return h3_socket if isinstance(h3_socket, Denial) else StreamClient(h3_socket)


async def _connect_h1(server: ThreadedServer, certs: CertSet, path: str,
                      subprotocols: Sequence[str]) -> Client | Denial:
    host, port = server.address(secure=True, family=socket.AF_INET)
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.set_alpn_protocols(["http/1.1"])
    try:
        connection = await websockets.asyncio.client.connect(
            f"wss://localhost:{port}{path}", ssl=context, max_size=None,
            subprotocols=[websockets.Subprotocol(p) for p in subprotocols] or None,
            host=host, port=port, open_timeout=10, compression=None)
    except websockets.exceptions.InvalidStatus as exc:
        response = exc.response
        return Denial(response.status_code, [(k.lower().encode(), v.encode())
                                             for k, v in response.headers.raw_items()],
                      response.body or b"")
    return H1Client(connection)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 60))


async def open_ok(server: ThreadedServer, certs: CertSet, protocol: str, path: str,
                  subprotocols: Sequence[str] = ()) -> Client:
    client = await connect(server, certs, protocol, path, subprotocols)
    assert not isinstance(client, Denial), client
    return client


# -- the suite ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_subprotocol_is_negotiated(server: ThreadedServer, certs: CertSet, protocol: str) -> None:
    async def body() -> None:
        client = await open_ok(server, certs, protocol, "/echo", ["chat.v2", "chat.v1"])
        assert client.subprotocol == "chat.v1"
        await client.close(1000, "")

    run(body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_scope_describes_the_websocket(server: ThreadedServer, certs: CertSet,
                                       protocol: str) -> None:
    async def body() -> None:
        client = await open_ok(server, certs, protocol, "/scope?x=1", ["chat.v2"])
        scope = json.loads(await client.recv())
        assert scope["scheme"] == "wss"
        assert scope["http_version"] == HTTP_VERSIONS[protocol]
        assert scope["path"] == "/scope" and scope["query_string"] == "x=1"
        assert scope["subprotocols"] == ["chat.v2"]
        assert scope["headers"]["host"].startswith("localhost")
        await client.close(1000, "")

    run(body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_text_and_bytes_echo(server: ThreadedServer, certs: CertSet, protocol: str) -> None:
    async def body() -> None:
        client = await open_ok(server, certs, protocol, "/echo")
        await client.send("héllo")
        assert await client.recv() == "héllo"
        await client.send(b"\x00\x01\xff")
        assert await client.recv() == b"\x00\x01\xff"
        await client.close(1000, "")

    run(body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_one_mebibyte_message(server: ThreadedServer, certs: CertSet, protocol: str) -> None:
    async def body() -> None:
        client = await open_ok(server, certs, protocol, "/echo")
        payload = bytes(range(256)) * 4096
        await client.send(payload)
        assert await client.recv() == payload
        await client.close(1000, "")

    run(body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fragmented_64kib_message_is_reassembled(server: ThreadedServer, certs: CertSet,
                                                 protocol: str) -> None:
    async def body() -> None:
        client = await open_ok(server, certs, protocol, "/echo")
        fragments = [chr(0x41 + i) * 16384 for i in range(4)]
        await client.send_fragments(fragments)
        assert await client.recv() == "".join(fragments)
        await client.close(1000, "")

    run(body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_close_4001_round_trip(server: ThreadedServer, certs: CertSet,
                                      protocol: str) -> None:
    tag = f"client-close-{protocol}"

    async def body() -> None:
        client = await open_ok(server, certs, protocol, f"/echo?tag={tag}")
        await client.send("ping")
        assert await client.recv() == "ping"
        code, _ = await client.close(4001, "client bye")
        assert code == 4001
        for _ in range(200):
            if CLOSES.get(tag):
                break
            await asyncio.sleep(0.01)
        assert CLOSES.get(tag) == [4001], "the app saw websocket.disconnect with 4001"

    run(body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_close_4001_reaches_the_client(server: ThreadedServer, certs: CertSet,
                                              protocol: str) -> None:
    async def body() -> None:
        client = await open_ok(server, certs, protocol, "/echo")
        await client.send("close:4001:server bye")
        assert await client.wait_closed() == (4001, "server bye")

    run(body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_denial_403_with_body(server: ThreadedServer, certs: CertSet, protocol: str) -> None:
    async def body() -> None:
        denial = await connect(server, certs, protocol, "/deny")
        assert isinstance(denial, Denial), "the handshake must be refused"
        assert denial.status == 403
        assert denial.body == b"denied by test"

    run(body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_many_messages_in_both_directions(server: ThreadedServer, certs: CertSet,
                                          protocol: str) -> None:
    async def body() -> None:
        client = await open_ok(server, certs, protocol, "/echo")
        for n in range(200):
            await client.send(f"message {n}")
        received = [await client.recv() for _ in range(200)]
        assert received == [f"message {n}" for n in range(200)]
        await client.close(1000, "")

    run(body)


def test_closed_exception_carries_the_code() -> None:
    closed = WebSocketClosed(4001, "x")
    assert closed.code == 4001 and closed.reason == "x"
