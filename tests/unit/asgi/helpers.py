"""Drive the ASGI layer without sockets: a head, a sink, a dispatcher, a loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Coroutine, Iterable, TypeVar

from quicserve.asgi.app import wrap_app
from quicserve.asgi.dispatch import Dispatcher
from quicserve.config import Config
from quicserve.interfaces import ConnectionInfo, RequestHead, Statistics, StreamHandler
from quicserve.log import AccessLog
from tests.support.sink import RecordingSink

T = TypeVar("T")

CONN = ConnectionInfo(
    http_version="1.1", protocol="HTTP/1.1", scheme="http",
    client=("127.0.0.1", 50000), server=("127.0.0.1", 8000),
)
CONN_H3 = ConnectionInfo(
    http_version="3", protocol="HTTP/3", scheme="https", secure=True,
    client=("::1", 50001), server=("::1", 8443), extensions=("http.response.trailers",),
)


def run(coro: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
    """Run one test coroutine on a fresh loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def head(method: str = "GET", target: bytes = b"/", headers: Iterable[tuple[bytes, bytes]] = (),
         **kw: Any) -> RequestHead:
    return RequestHead(method=method, target=target,
                       headers=((b"host", b"example.com"), *headers), **kw)


@dataclass
class Server:
    """A dispatcher with its statistics, as server.py would build it."""

    app: Any
    options: Config = field(default_factory=Config)
    state: dict[str, Any] = field(default_factory=dict)
    stats: Statistics = field(default_factory=Statistics)

    def __post_init__(self) -> None:
        self.dispatcher = Dispatcher(app=wrap_app(self.app), options=self.options, state=self.state,
                                     stats=self.stats, access_log=AccessLog('%(h)s "%(r)s" %(s)s %(b)s'))

    def open(self, request: RequestHead, conn: ConnectionInfo = CONN) -> tuple[StreamHandler, RecordingSink]:
        sink = RecordingSink()
        stream = self.dispatcher(request, sink)
        stream.start(request, conn)
        return stream, sink

    async def request(self, request: RequestHead | None = None, body: Iterable[bytes] = (b"",),
                      conn: ConnectionInfo = CONN) -> RecordingSink:
        """Send a whole request, wait until its stream finished, return the sink."""
        stream, sink = self.open(request or head(), conn)
        chunks = list(body)
        for chunk in chunks[:-1]:
            stream.receive_body(chunk, True)
        stream.receive_body(chunks[-1] if chunks else b"", False)
        await self.dispatcher.wait_idle()
        return sink
