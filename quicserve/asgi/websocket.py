"""WebSocketStream (placeholder until the wsproto adapter lands): answers 501."""

from __future__ import annotations

from ..errors import StreamClosed
from ..interfaces import ConnectionInfo, RequestHead, StreamSink
from .context import StreamContext


class WebSocketStream:
    def __init__(self, ctx: StreamContext, sink: StreamSink) -> None:
        self._ctx = ctx
        self._sink = sink

    def start(self, head: RequestHead, conn: ConnectionInfo) -> None:
        self._ctx.spawn(self._deny(), False)

    def receive_body(self, data: bytes, more: bool) -> None:
        if data:
            self._sink.credit(len(data))

    def abort(self, reason: str) -> None:
        pass

    async def _deny(self) -> None:
        self._sink.send_head(501, [(b"content-length", b"0")])
        try:
            await self._sink.send_body(b"", True)
        except StreamClosed:
            pass
