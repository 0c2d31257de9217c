"""An in-memory :class:`quicserve.interfaces.StreamSink` for driving ASGI streams.

``RecordingSink`` stands where a protocol adapter would: it records what the
stream sends (heads, body bytes, trailers, resets, credit) and lets the test
control write backpressure:

* ``sink.paused = True`` makes ``send_body`` wait until ``sink.resume()``;
* ``sink.close()`` makes pending and later ``send_body`` calls raise
  ``StreamClosed``, as a protocol does once the peer reset the stream.

It is a real implementation of the interface, not a mock: tests assert on the
response it accumulated (``status``, ``body``, ``ended``), never on call lists.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

from quicserve.errors import StreamClosed
from quicserve.interfaces import Headers, ResetReason


@dataclass
class RecordingSink:
    #: Every head sent, informational ones included: (status, headers).
    heads: list[tuple[int, list[tuple[bytes, bytes]]]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    ended: bool = False
    trailers: list[tuple[bytes, bytes]] | None = None
    resets: list[ResetReason] = field(default_factory=list)
    credited: int = 0
    closed: bool = False
    paused: bool = False
    _resumed: asyncio.Event | None = None
    #: Fires on every call, so tests can wait for "something happened".
    _changed: asyncio.Event | None = None

    # -- StreamSink ---------------------------------------------------------

    def send_head(self, status: int, headers: Headers) -> None:
        if self.ended or self.resets:
            raise AssertionError("send_head after the stream ended")
        self.heads.append((status, list(headers)))
        self._notify()

    async def send_body(self, data: bytes, end: bool) -> None:
        if self.ended:
            raise AssertionError("send_body after the stream ended")
        if not self.final_heads:
            raise AssertionError("send_body before a final head")
        while self.paused and not self.closed:
            if self._resumed is None:
                self._resumed = asyncio.Event()
            self._resumed.clear()
            await self._resumed.wait()
        if self.closed:
            raise StreamClosed("stream closed")
        self.chunks.append(bytes(data))
        self.ended = end
        self._notify()

    def send_trailers(self, headers: Headers) -> None:
        if self.ended:
            raise AssertionError("send_trailers after the stream ended")
        self.trailers = list(headers)
        self.ended = True
        self._notify()

    def reset(self, reason: ResetReason) -> None:
        self.resets.append(reason)
        self.closed = True
        self._wake_writer()
        self._notify()

    def credit(self, n: int) -> None:
        if n < 0:
            raise AssertionError("negative credit")
        self.credited += n
        self._notify()

    # -- test controls ----------------------------------------------------------

    def resume(self) -> None:
        self.paused = False
        self._wake_writer()

    def close(self) -> None:
        self.closed = True
        self._wake_writer()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 2.0) -> None:
        """Wait (bounded in time) until ``predicate()`` is true."""
        async def until() -> None:
            while not predicate():
                if self._changed is None:
                    self._changed = asyncio.Event()
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(until(), timeout)

    # -- views ---------------------------------------------------------------------

    @property
    def final_heads(self) -> list[tuple[int, list[tuple[bytes, bytes]]]]:
        return [h for h in self.heads if h[0] >= 200]

    @property
    def status(self) -> int | None:
        heads = self.final_heads
        return heads[0][0] if heads else None

    @property
    def headers(self) -> dict[bytes, bytes]:
        heads = self.final_heads
        return dict(heads[0][1]) if heads else {}

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def _wake_writer(self) -> None:
        if self._resumed is not None:
            self._resumed.set()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
