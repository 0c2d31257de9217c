"""The common HTTP/1.x request, parsed without h11: :class:`SimpleParser`.

Theory of operation
-------------------
h11 parses a request in pure Python through several layers (a receive
buffer, line splitting, one regular expression per line, event validation, a
client/server state machine).  On a keep-alive hello-world load that was a
quarter of the server's CPU time, while nearly every real request is simple:
the whole head arrives in one read, every line is well formed and ends in
CRLF, and the body, if any, has one Content-Length.  :class:`SimpleParser`
recognises exactly such requests with two regular-expression passes over the
head and reads their body by counting.  For anything else it answers
:data:`FALLBACK`, and ``h11.py`` gives every byte it had given this parser to
a fresh ``h11.Connection``, which parses (or rejects) the request exactly as
it always did.

The contract that makes this safe, for any input bytes: the parser either
declines, or produces what h11 would produce from the same bytes: the same
method, target and HTTP version, the same header list (names lowercased;
h11 keeps them as sent), the same body length, and it consumes the same
number of head bytes.  It never rejects anything itself, so every 400, 431
and 501 decision stays with h11 and ``head.py``.
``tests/unit/protocols/test_h1parse.py`` checks the contract differentially
against h11 on generated and mutated heads.

It declines:

* an incomplete head (h11's early request-line check and its size limit
  apply while a head is incomplete), and a head longer than ``max_head``
  (the adapter's 431 rule for a whole oversized head);
* anything outside h11's grammar, and anything h11 accepts but treats
  specially: bare CR or LF, obs-fold, whitespace before a colon, an HTTP
  version other than 1.0 and 1.1;
* Transfer-Encoding (chunked bodies and h11's 501s), Upgrade and CONNECT
  (h11 pauses for the protocol switch; WebSocket and h2c take that path);
* a Host count h11 refuses (not exactly one on HTTP/1.1, more than one on
  HTTP/1.0), and a Content-Length that is repeated or is not 1 to 20 digits
  (h11 merges equal duplicates and refuses the rest).

Events, from :meth:`SimpleParser.next_event`, in h11's calling pattern so
that the adapter's one event loop serves both parsers: a
:class:`SimpleRequest`, then the body as ``bytes`` chunks, then :data:`END`;
``h11.NEED_DATA`` while the body waits for bytes; ``h11.PAUSED`` after
:data:`END`.  ``trailing_data`` is, as in h11, what was received and not
parsed yet (pipelined requests).

Never: raise, keep more than the bytes it was given, or look past the end of
the current request.

The h11 path: :class:`ScreenedH11`
----------------------------------
h11's header-line regular expression backtracks quadratically on a field
whose value is a long run of spaces or tabs followed by a character it
refuses (``X:`` + 16,000 spaces + ``\x0b`` costs 1.5 s), and its chunk-size
line pattern does the same on ``1;`` + spaces + a bare LF.  Header lines
reach that regex in request heads and in chunked trailers.
:class:`ScreenedH11` is the ``h11.Connection`` the adapter falls back to,
with :class:`H11Screen` in front: the screen follows h11's framing of the
bytes (head, then for a chunked body the size lines, data, CRLFs and the
trailer), splits and unfolds each complete head or trailer exactly as h11
does, and checks every header line and chunk-size line with a pattern of
the same language that matches in linear time.  A line that fails never
reaches h11: its bytes are held back, h11 emits every event before it, and
where h11 would need those bytes ``next_event`` raises the 400 h11 would
have raised.  Incomplete heads and trailers still go to h11 as they arrive
(its early request-line check and its size limit apply as before).
"""

from __future__ import annotations

import re
from typing import NamedTuple, Union

import h11

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
#: h11's request line (``_abnf.py``), for HTTP/1.0 and 1.1 only, with its CRLF.
#: Groups: method, target, minor version.
_REQUEST_LINE_RE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])\r\n")
#: One header line with its CRLF: what h11's ``header_field`` accepts (name,
#: colon, OWS, a value of visible characters or obs-text in runs separated
#: by spaces and tabs, OWS), written so that a line has one parse: the
#: trailing OWS belongs to a non-empty value.  With h11's own spelling, a
#: value-less line of n spaces that fails has n*n ways to try (quadratic).
#: Groups: name, value (None when empty).
_FIELD_RE = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*(?:([^\x00\s]+(?:[ \t]+[^\x00\s]+)*)[ \t]*)?\r\n")
#: The same header line without its line ending, for ``fullmatch`` (h11 strips
#: the CR and unfolds obs-fold before it matches).
_LINE_RE = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*[ \t]*)?")
#: h11's chunk-size line (``chunk_header``) with its CRLF, in one parse: its
#: ``(;.*)?[ \t]*`` is ``;[^\n]*`` or ``[ \t]*`` (``.`` is any byte but LF).
_CHUNK_LINE_RE = re.compile(rb"[0-9A-Fa-f]{1,20}(?:;[^\n]*|[ \t]*)\r\n")
#: h11's end of a head or trailer (``_receivebuffer.blank_line_regex``).
_BLANK_LINE_RE = re.compile(rb"\n\r?\n")
#: h11's obs-fold continuation-line test.
_FOLD_RE = re.compile(rb"[ \t]+")
#: Header fields that decide whether the request is simple.
_WATCHED = frozenset({b"host", b"content-length", b"transfer-encoding", b"upgrade"})
#: h11's CONTENT_LENGTH_MAX_DIGITS.
_MAX_LENGTH_DIGITS = 20


class SimpleRequest(NamedTuple):
    """A request head the fast path parsed; fields as h11's ``Request``."""

    method: bytes
    target: bytes
    #: Names lowercased, values as h11 gives them (surrounding OWS removed).
    headers: list[tuple[bytes, bytes]]
    #: b"1.0" or b"1.1".
    http_version: bytes
    #: The body length (0 when there is no Content-Length).
    content_length: int


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: The request is complete (h11's ``EndOfMessage``).
END = _Sentinel("END")
#: Not a simple request: hand everything to h11 (see :attr:`SimpleParser.buffered`).
FALLBACK = _Sentinel("FALLBACK")

Event = Union[SimpleRequest, bytes, _Sentinel, type[h11.NEED_DATA], type[h11.PAUSED]]

# The parser's states.  Plain ints rather than an Enum (this is the
# per-request path), and only three moves: HEAD -> BODY (a simple head),
# HEAD -> DECLINED (anything else), BODY -> DONE (the body was counted out).
_HEAD, _BODY, _DONE, _DECLINED = range(4)


class SimpleParser:
    """One request cycle of the fast path (one parser per request, like the
    adapter's h11 connections).

    Error handling: never raises; input it does not accept is declined with
    :data:`FALLBACK` before any event was returned for it.

    Resource handling: holds only the bytes it was given and has not returned.
    """

    __slots__ = ("_data", "_state", "_remaining", "_max_head")

    def __init__(self, max_head: int) -> None:
        self._data = b""
        self._state = _HEAD
        self._remaining = 0
        self._max_head = max_head

    def receive_data(self, data: bytes) -> None:
        if type(data) is not bytes:
            data = bytes(data)
        self._data = self._data + data if self._data else data

    def next_event(self) -> Event:
        state = self._state
        if state == _BODY:
            return self._body()
        if state == _HEAD:
            request = self._head()
            if request is None:
                self._state = _DECLINED
                return FALLBACK
            return request
        if state == _DONE:
            return h11.PAUSED
        return FALLBACK

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received and not parsed yet; never closed (h11's shape)."""
        return self._data, False

    @property
    def buffered(self) -> bytes:
        """Everything received once the parser declined: h11's input."""
        return self._data

    def _head(self) -> SimpleRequest | None:
        data = self._data
        end = data.find(b"\r\n\r\n", 0, self._max_head)  # (a longer head: h11's 431)
        if end < 0:
            return None
        request = _untrusted_head(data, end + 2)
        if request is None:
            return None
        self._data = data[end + 4:]
        self._remaining = request.content_length
        self._state = _BODY
        return request

    def _body(self) -> bytes | _Sentinel | type[h11.NEED_DATA]:
        remaining = self._remaining
        if not remaining:
            self._state = _DONE
            return END
        data = self._data
        if not data:
            return h11.NEED_DATA
        if len(data) <= remaining:
            self._data = b""
            self._remaining = remaining - len(data)
            return data
        self._data = data[remaining:]
        self._remaining = 0
        return data[:remaining]


def _untrusted_head(data: bytes, stop: int) -> SimpleRequest | None:
    """Parse the head that ends with the empty line at ``data[stop:stop+2]``
    if it is simple, else None.  Each line is matched on its own, anchored,
    so nothing backtracks across lines.  Raises nothing."""
    line = _REQUEST_LINE_RE.match(data)
    if line is None:
        return None
    method, target, minor = line.groups()
    if method == b"CONNECT":
        return None
    hosts = 0
    length: bytes | None = None
    headers: list[tuple[bytes, bytes]] = []
    pos = line.end()
    while pos < stop:
        field = _FIELD_RE.match(data, pos)
        if field is None:
            return None
        pos = field.end()
        name = field.group(1).lower()
        value = field.group(2) or b""
        if name in _WATCHED:
            if name == b"host":
                hosts += 1
            elif name == b"content-length" and length is None \
                    and value.isdigit() and len(value) <= _MAX_LENGTH_DIGITS:
                length = value
            else:
                return None  # transfer-encoding, upgrade, a second or odd length
        headers.append((name, value))
    if hosts > 1 or (hosts == 0 and minor == b"1"):
        return None  # h11: "Found multiple Host" / "Missing mandatory Host"
    return SimpleRequest(method, target, headers, b"1.1" if minor == b"1" else b"1.0",
                         int(length) if length is not None else 0)


# The screen's states: where h11 is in the request it reads.
_S_HEAD, _S_SIZE, _S_DATA, _S_CRLF, _S_TRAILER, _S_DONE = range(6)


class H11Screen:
    """Follows the bytes given to h11 for one request and checks each complete
    head, trailer and chunk-size line in linear time (see the module's
    theory of operation).

    Error handling: never raises; a line h11 would refuse sets :attr:`error`
    and :meth:`feed` answers how many of its bytes precede that line.

    Resource handling: holds at most the current incomplete head, trailer or
    chunk-size line, which h11 buffers too and bounds by its size limit.
    """

    __slots__ = ("_state", "_buf", "_remaining", "error")

    def __init__(self) -> None:
        self._state = _S_HEAD
        self._buf = bytearray()
        self._remaining = 0
        #: Why the held-back line is refused (h11's wording), or None.
        self.error: str | None = None

    def feed(self, data: bytes) -> int:
        """Screen ``data``; return how many of its leading bytes h11 may have
        (``len(data)`` unless a line fails)."""
        pos = 0
        end = len(data)
        while pos < end and self.error is None:
            state = self._state
            if state == _S_DONE:
                return end
            if state == _S_DATA:
                step = min(self._remaining, end - pos)
                self._remaining -= step
                if not self._remaining:
                    self._state = _S_CRLF
                    self._remaining = 2
            elif state == _S_CRLF:
                step = min(self._remaining, end - pos)
                if data[pos:pos + step] != b"\r\n"[2 - self._remaining:][:step]:
                    self._state = _S_DONE  # h11: "malformed chunk footer"
                self._remaining -= step
                if not self._remaining and self._state == _S_CRLF:
                    self._state = _S_SIZE
            else:
                step = self._line(data, pos)
                if step < 0:
                    return pos
            pos += step
        return pos if self.error is not None else end

    def _line(self, data: bytes, pos: int) -> int:
        """Head, trailer or size line: bytes of ``data[pos:]`` it completes
        (all of them while incomplete), or -1 when it fails the check."""
        buf = self._buf
        held = len(buf)
        buf += data[pos:] if pos else data  # (a bytearray: dribbled bytes cost linear time)
        state = self._state
        if state == _S_SIZE:
            stop = buf.find(b"\r\n", max(0, held - 1))
            if stop < 0:
                return len(data) - pos
            stop += 2
            ok = self._size_line(bytes(buf[:stop]))
        else:
            stop = self._block_end(buf, held)
            if stop < 0:
                return len(data) - pos
            ok = self._block(bytes(buf[:stop]))
        del buf[:]
        return stop - held if ok else -1

    def _block_end(self, buf: bytearray, held: int) -> int:
        """End of the head or trailer in ``buf`` as h11 finds it, or -1."""
        if buf[:1] == b"\n":
            return 1
        if buf[:2] == b"\r\n":
            return 2
        if buf == b"\r":
            return -1
        match = _BLANK_LINE_RE.search(buf, max(0, held - 2))
        return -1 if match is None else match.end()

    def _size_line(self, line: bytes) -> bool:
        if _CHUNK_LINE_RE.fullmatch(line) is None:
            self.error = f"illegal chunk header: {line[:40]!r}"
            return False
        size = int(line[:len(line) - len(line.lstrip(b"0123456789abcdefABCDEF"))], 16)
        self._state = _S_DATA if size else _S_TRAILER
        self._remaining = size
        return True

    def _block(self, block: bytes) -> bool:
        """A complete head or trailer: check its header lines as h11 splits
        and unfolds them, and pick what follows (a chunked body or nothing)."""
        head = self._state == _S_HEAD
        self._state = _S_DONE
        if len(block) <= 2:
            return True  # (h11: an empty trailer, or "no request line received")
        lines = [line[:-1] if line[-1:] == b"\r" else line for line in block.split(b"\n")]
        del lines[-2:]
        chunked = False
        for line in _unfold_untrusted(lines[1:] if head else lines):
            match = _LINE_RE.fullmatch(line)
            if match is None:
                self.error = f"illegal header line: {bytes(line[:40])!r}"
                return False
            if head and match.group(1).lower() == b"transfer-encoding":
                chunked = True  # (h11 accepts only "chunked"; it answers 501 otherwise)
        if chunked:
            self._state = _S_SIZE
        return True


def _unfold_untrusted(lines: list[bytes]) -> list[bytes | bytearray]:
    """h11's obs-fold: a line starting with SP/HTAB continues the one before,
    joined by one space.  A continuation first is returned as is (h11 refuses
    it with a 400, and so does the line check)."""
    out: list[bytes | bytearray] = []
    for line in lines:
        match = _FOLD_RE.match(line)
        if match is None or not out:
            out.append(line)
            continue
        last = out[-1]
        if not isinstance(last, bytearray):
            last = out[-1] = bytearray(last)
        last += b" "
        last += line[match.end():]
    return out


class ScreenedH11:
    """``h11.Connection(SERVER)`` behind an :class:`H11Screen`: the adapter's
    parser for requests the fast path declines (same calls, same events).

    Error handling: ``next_event`` raises ``h11.RemoteProtocolError`` (status
    hint 400) where h11 would reach a line the screen refused, and whatever
    h11 raises otherwise.

    Resource handling: bytes after a refused line are held, never parsed.
    """

    __slots__ = ("_conn", "_screen", "_held")

    def __init__(self, max_head: int) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._screen = H11Screen()
        self._held = b""

    def receive_data(self, data: bytes) -> None:
        if self._held or self._screen.error is not None:
            self._held += data
            return
        safe = self._screen.feed(data)
        if safe:
            self._conn.receive_data(data[:safe] if safe < len(data) else data)
        if safe < len(data):
            self._held = data[safe:]

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        event = self._conn.next_event()
        if event is h11.NEED_DATA and self._screen.error is not None:
            raise h11.RemoteProtocolError(self._screen.error, error_status_hint=400)
        return event

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        data, closed = self._conn.trailing_data
        return (data + self._held if self._held else data), closed
