"""An in-memory :class:`~quicserve.protocols.base.ByteTransport` for sans-IO
tests of byte-stream adapters (``H11Adapter``, ``H2Adapter``).

The test plays the socket: it feeds bytes to the adapter (:meth:`ByteLink.feed`,
optionally one byte at a time), reads what the adapter wrote
(:meth:`ByteLink.take`), controls write backpressure
(:meth:`block_writes` / :meth:`unblock_writes`), and fires the connection's
one timer by hand (:meth:`fire_timer`) against a fake clock (:class:`FakeClock`).
Nothing here opens a socket or sleeps.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Coroutine

from quicserve.errors import StreamClosed
from quicserve.interfaces import (
    ConnectionContext,
    ConnectionInfo,
    ResponseDefaults,
    Statistics,
    StreamFactory,
)
from quicserve.protocols.base import ByteProtocol, SwitchTo


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Options:
    """The ProtocolOptions knobs with test-friendly defaults."""

    keep_alive: float = 5.0
    read_timeout: float = 30.0
    h11_max_incomplete_size: int = 16384
    h2_max_concurrent_streams: int = 100
    h2_initial_window_size: int = 262144
    h2_max_frame_size: int = 16384
    h2_max_header_list_size: int = 65536
    h2_max_resets_per_window: int = 200
    h2_flood_window: float = 10.0
    h2_max_control_frames_per_window: int = 1000
    h2_stalled_window_timeout: float = 30.0
    write_timeout: float = 60.0
    quic_0rtt_unsafe: bool = False
    stream_high_water: int = 65536


def make_context(
    stream_factory: StreamFactory,
    *,
    clock: FakeClock | None = None,
    defaults: ResponseDefaults | None = None,
    **options: Any,
) -> ConnectionContext:
    return ConnectionContext(
        options=Options(**options),
        stream_factory=stream_factory,
        response_defaults=defaults or ResponseDefaults(server=b"quicserve", date=False),
        stats=Statistics(),
        clock=clock or FakeClock(),
    )


def make_conn(*, secure: bool = False) -> ConnectionInfo:
    return ConnectionInfo(
        http_version="1.1",
        protocol="HTTP/1.1",
        scheme="https" if secure else "http",
        client=("127.0.0.1", 50000),
        server=("127.0.0.1", 8000),
        secure=secure,
        connection_id="tcp-test",
    )


class ByteLink:
    """The transport side of one in-memory connection.

    ``timer`` is the relative timeout the adapter last armed (None: disarmed),
    ``timer_deadline`` the fake-clock time it expires at.
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.protocol: ByteProtocol | None = None
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading_paused = False
        self.pause_count = 0
        self.timer: float | None = None
        self.timer_deadline: float | None = None
        self.timer_sets = 0
        self._writable = True
        self._waiters: list[asyncio.Future[None]] = []
        self.switch: SwitchTo | None = None
        self.lost = False

    # -- ByteTransport -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.written += data

    def close(self) -> None:
        self.closed = True
        self.timer = self.timer_deadline = None

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        if not self.reading_paused:
            self.pause_count += 1
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    async def wait_writable(self) -> None:
        if self.closed:
            raise StreamClosed("connection closed")
        if self._writable:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        await future

    def set_timeout(self, seconds: float | None) -> None:
        self.timer_sets += 1
        self.timer = seconds
        self.timer_deadline = None if seconds is None else self.clock.now + seconds

    @property
    def closing(self) -> bool:
        return self.closed

    # -- the test's side -------------------------------------------------------------

    def attach(self, protocol: ByteProtocol) -> ByteProtocol:
        self.protocol = protocol
        return protocol

    def feed(self, data: bytes, *, bytewise: bool = False) -> SwitchTo | None:
        """Deliver bytes to the adapter (all at once or one at a time), unless
        reading is paused: then they are kept and delivered on :meth:`pump`."""
        assert self.protocol is not None
        chunks = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
        for chunk in chunks:
            if self.closed:
                return None
            result = self.protocol.data_received(chunk)
            if result is not None:
                self.switch = result
                return result
        return None

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data

    def eof(self) -> None:
        assert self.protocol is not None
        self.protocol.eof_received()
        self.lose()

    def lose(self) -> None:
        """The connection is gone: the adapter hears connection_lost."""
        assert self.protocol is not None
        self.closed = True
        self._fail_waiters()
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost()

    def block_writes(self) -> None:
        self._writable = False

    def unblock_writes(self) -> None:
        self._writable = True
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    @property
    def write_waiters(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def fire_timer(self) -> None:
        """Advance the clock to the deadline and expire the timer."""
        assert self.protocol is not None
        assert self.timer_deadline is not None, "no timer armed"
        self.clock.now = self.timer_deadline
        self.timer = self.timer_deadline = None
        self.protocol.timeout()

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_exception(StreamClosed("connection lost"))


def run_now(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that must finish without suspending (sans-IO sends)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended")


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run an async test body on a fresh event loop."""
    return asyncio.run(main())
