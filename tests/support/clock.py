"""Fake time for sans-IO tests: a clock, a timer queue, and a loop facade.

:class:`FakeClock` is a monotonic ``now`` that only moves when a test says
so, with a queue of timers that run, in deadline order, as it moves.
:class:`FakeLoop` puts the three event-loop methods ``transport/udp.py``
uses (``time``, ``call_soon``, ``call_at``) on top of it, so the real
``UdpEndpoint`` runs on fake time with no patching of module globals.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable


class FakeTimer:
    """A handle like ``asyncio.TimerHandle``: ``cancel()`` and ``when()``."""

    __slots__ = ("_when", "_callback", "_args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._when = when
        self._callback = callback
        self._args = args
        self.cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True

    def run(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._callback(*self._args)


class FakeClock:
    """A fake ``now`` and a timer queue."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._queue: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        timer = FakeTimer(when, callback, args)
        heapq.heappush(self._queue, (when, next(self._order), timer))
        return timer

    def next_deadline(self) -> float | None:
        """The earliest live timer's deadline, or None."""
        while self._queue and self._queue[0][2].cancelled:
            heapq.heappop(self._queue)
        return self._queue[0][0] if self._queue else None

    def pending(self) -> int:
        return sum(1 for _, _, timer in self._queue if not timer.cancelled)

    def advance(self, seconds: float) -> int:
        """Move time forward, running every timer that falls due; returns how many ran."""
        return self.advance_to(self.now + seconds)

    def advance_to(self, when: float) -> int:
        ran = 0
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > when:
                break
            _, _, timer = heapq.heappop(self._queue)
            self.now = max(self.now, deadline)
            timer.run()
            ran += 1
        self.now = max(self.now, when)
        return ran


class FakeLoop:
    """``time``/``call_soon``/``call_at`` over a :class:`FakeClock`.

    ``call_soon`` callbacks run only when the test calls :meth:`run_ready`,
    which is how a test sees "one flush per loop turn".
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._ready: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        #: How many call_soon callbacks were scheduled in total.
        self.scheduled = 0

    def time(self) -> float:
        return self.clock.now

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self._ready.append((callback, args))
        self.scheduled += 1

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        return self.clock.call_at(when, callback, *args)

    def run_ready(self) -> int:
        """Run the callbacks scheduled so far (one loop turn); returns how many."""
        ready, self._ready = self._ready, []
        for callback, args in ready:
            callback(*args)
        return len(ready)
