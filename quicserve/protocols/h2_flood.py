"""HTTP/2 flood defences: count what a client sends before h2 parses it.

Theory of operation
-------------------
HTTP/2 lets a client make a server do work that the client pays nothing for:
open-and-reset streams (rapid reset, CVE-2023-44487; and "MadeYouReset",
where the client provokes the server into resetting them), PINGs and
SETTINGS that each cost an acknowledgement, empty DATA frames and PRIORITY
frames that cost parsing, and CONTINUATION frames that make the server buffer
an unfinished header block (the 2024 CONTINUATION flood).  h2 implements the
protocol; it does not budget any of this.

:class:`FloodGuard` does.  ``H2Adapter.data_received`` hands it every chunk
*before* h2 sees it, and :meth:`FloodGuard.scan_untrusted` walks the frame
headers (nine bytes each; payloads are skipped, never copied) and counts:

* client RST_STREAM frames, plus the streams the client made the server
  reset (:meth:`FloodGuard.count_server_resets`: refused and malformed
  requests, and the stream errors h2 answers by itself, "MadeYouReset";
  the adapter finds them with :func:`count_error_resets` in what a read
  made it write), against ``h2_max_resets_per_window``;
* PING, SETTINGS, PRIORITY, empty DATA without END_STREAM, and frames of any
  other type h2 would only ignore, against
  ``h2_max_control_frames_per_window``;
* the bytes of the header block in progress (HEADERS without END_HEADERS,
  then CONTINUATION frames) against ``max_header_block``.

Counts live in a fixed window of ``h2_flood_window`` seconds that restarts
when ``now`` passes its end.  The first count over a budget returns a
:class:`Flood`; the adapter then answers GOAWAY ENHANCE_YOUR_CALM, closes the
connection and never feeds the offending chunk to h2, so the acknowledgements
that a flood would have queued are never produced.  Because every frame that
makes the server write something by itself (PING and SETTINGS ACKs,
RST_STREAM) is counted here, the server's unsolicited output per window is
bounded even when the client never reads.

WINDOW_UPDATE frames are not counted: a healthy client downloading a large
body sends them steadily, and each costs the server almost nothing.

The scanner never raises on hostile bytes: a frame header it cannot make
sense of is h2's to reject (h2 validates everything again).  It only keeps a
partial frame header (at most eight bytes) and a count of payload bytes to
skip between calls.

This module is pure: no I/O, no clock (``now`` is passed in).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: The client connection preface (RFC 9113 3.4); h2 checks its bytes.
PREFACE_LENGTH = 24
_FRAME_HEADER = 9


class FrameType(enum.IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


_END_STREAM = 0x1
_END_HEADERS = 0x4


class FloodKind(enum.Enum):
    RESETS = "stream resets"
    CONTROL_FRAMES = "control frames"
    HEADER_BLOCK = "header block"


@dataclass(frozen=True, slots=True)
class Flood:
    """The verdict: which budget was exceeded, for the log and GOAWAY debug data."""

    kind: FloodKind
    count: int
    limit: int

    def describe(self) -> str:
        return f"{self.kind.value}: {self.count} over a limit of {self.limit}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FloodLimits:
    max_resets: int
    max_control_frames: int
    window: float
    #: Bytes an unfinished header block (HEADERS + CONTINUATIONs) may reach.
    max_header_block: int


class FloodGuard:
    """Frame-header scanner and per-window counters for one connection.

    Error handling: never raises; returns a :class:`Flood` once a budget is
    exceeded (and keeps returning one afterwards).

    Resource handling: constant memory (a partial header of at most eight
    bytes and a handful of integers).
    """

    __slots__ = ("_limits", "_preface", "_partial", "_skip", "_block",
                 "_window_end", "_resets", "_control", "_flood")

    def __init__(self, limits: FloodLimits, *, expect_preface: bool) -> None:
        self._limits = limits
        #: Preface bytes still to pass over before the first frame header.
        self._preface = PREFACE_LENGTH if expect_preface else 0
        self._partial = b""
        #: Payload bytes of the current frame still to pass over.
        self._skip = 0
        #: Bytes of the unfinished header block, or -1 outside one.
        self._block = -1
        self._window_end = -1.0
        self._resets = 0
        self._control = 0
        self._flood: Flood | None = None

    @property
    def flood(self) -> Flood | None:
        return self._flood

    def count_server_resets(self, count: int, now: float) -> Flood | None:
        """The client's frames made the server reset ``count`` streams."""
        self._roll(now)
        self._resets += count
        return self._check_resets()

    def scan_untrusted(self, data: bytes, now: float) -> Flood | None:
        """Account for the frames in ``data`` (the next bytes from the client)."""
        if self._flood is not None:
            return self._flood
        self._roll(now)
        size = len(data)
        pos = self._pass_over(size)
        if self._partial and pos < size:
            pos = self._complete_partial(data, pos)
            if self._flood is not None:
                return self._flood
        while pos < size and self._flood is None:
            if size - pos < _FRAME_HEADER:
                self._partial = bytes(data[pos:])
                return None
            length = int.from_bytes(data[pos:pos + 3], "big")
            self._frame(data[pos + 3], data[pos + 4], length)
            pos += _FRAME_HEADER
            self._skip = length
            pos += self._pass_over(size - pos)
        return self._flood

    # -- internals -----------------------------------------------------------------------

    def _roll(self, now: float) -> None:
        if now >= self._window_end:
            self._window_end = now + self._limits.window
            self._resets = 0
            self._control = 0

    def _pass_over(self, available: int) -> int:
        """Skip preface and payload bytes; return how many were consumed."""
        taken = 0
        if self._preface:
            taken = min(self._preface, available)
            self._preface -= taken
        if self._skip and taken < available:
            step = min(self._skip, available - taken)
            self._skip -= step
            taken += step
        return taken

    def _complete_partial(self, data: bytes, pos: int) -> int:
        need = _FRAME_HEADER - len(self._partial)
        header = self._partial + bytes(data[pos:pos + need])
        if len(header) < _FRAME_HEADER:
            self._partial = header
            return len(data)
        self._partial = b""
        length = int.from_bytes(header[:3], "big")
        self._frame(header[3], header[4], length)
        pos += need
        self._skip = length
        return pos + self._pass_over(len(data) - pos)

    def _frame(self, kind: int, flags: int, length: int) -> None:
        if kind == FrameType.HEADERS or kind == FrameType.PUSH_PROMISE:
            self._block = -1 if flags & _END_HEADERS else length
            self._check_block()
        elif kind == FrameType.CONTINUATION:
            if self._block >= 0:
                self._block += length
                self._check_block()
                if flags & _END_HEADERS:
                    self._block = -1
        elif kind == FrameType.DATA:
            if length == 0 and not flags & _END_STREAM:
                self._count_control()
        elif kind == FrameType.RST_STREAM:
            self._resets += 1
            self._check_resets()
        elif kind != FrameType.WINDOW_UPDATE:
            # PING, SETTINGS, PRIORITY, GOAWAY and every extension frame.
            self._count_control()

    def _count_control(self) -> None:
        self._control += 1
        if self._control > self._limits.max_control_frames:
            self._flood = Flood(FloodKind.CONTROL_FRAMES, self._control,
                                self._limits.max_control_frames)

    def _check_resets(self) -> Flood | None:
        if self._resets > self._limits.max_resets and self._flood is None:
            self._flood = Flood(FloodKind.RESETS, self._resets, self._limits.max_resets)
        return self._flood

    def _check_block(self) -> None:
        if self._block > self._limits.max_header_block:
            self._flood = Flood(FloodKind.HEADER_BLOCK, self._block,
                                self._limits.max_header_block)


def count_error_resets(data: bytes) -> int:
    """RST_STREAM frames with an error code other than NO_ERROR in ``data``.

    ``data`` is a run of whole frames the server produced itself (h2's
    output), so it is trusted: no bounds beyond the frame lengths it holds.
    """
    count = 0
    pos = 0
    size = len(data)
    while pos + _FRAME_HEADER <= size:
        length = int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] == FrameType.RST_STREAM and data[pos + 9:pos + 13] != b"\0\0\0\0":
            count += 1
        pos += _FRAME_HEADER + length
    return count
