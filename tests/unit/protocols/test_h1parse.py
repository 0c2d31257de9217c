"""The fast request parser (``quicserve/protocols/h1parse.py``) against h11.

The contract: for any bytes, :class:`SimpleParser` either declines
(``FALLBACK``) or yields exactly what h11 yields from the same bytes: the
same method, target, version, header list (names lowercased), body bytes and
unparsed remainder.  The differential tests generate well-formed and hostile
heads, mutate them byte by byte, and compare; the named cases pin the
declines that keep h11's own decisions (400, 431, 501, protocol switches).
"""

from __future__ import annotations

import random
import time
from typing import Any

import h11
import pytest

from quicserve.protocols.h1parse import END, FALLBACK, ScreenedH11, SimpleParser, SimpleRequest

MAX_HEAD = 16384


def fast_parse(data: bytes, max_head: int = MAX_HEAD) -> Any:
    """(request, body, rest) from the fast parser, or FALLBACK / "need data"."""
    parser = SimpleParser(max_head)
    parser.receive_data(data)
    request = parser.next_event()
    if type(request) is not SimpleRequest:
        return request
    body = b""
    for _ in range(len(data) + 2):
        event = parser.next_event()
        if event is END:
            assert parser.next_event() is h11.PAUSED
            return request, body, parser.trailing_data[0]
        if event is h11.NEED_DATA:
            return request, body, "need data"
        assert type(event) is bytes and event
        body += event
    raise AssertionError("the parser did not finish")


def h11_parse(data: bytes, max_head: int = MAX_HEAD) -> Any:
    """The same from h11, shaped like fast_parse; "error" if h11 refuses."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
    parser.receive_data(data)
    try:
        event = parser.next_event()
        if type(event) is not h11.Request:
            return event
        request = (event.method, event.target,
                   [(name.lower(), value) for name, value in event.headers.raw_items()],
                   event.http_version)
        body = b""
        for _ in range(len(data) + 2):
            event = parser.next_event()
            if type(event) is h11.EndOfMessage:
                return request, body, parser.trailing_data[0]
            if event is h11.NEED_DATA:
                return request, body, "need data"
            assert type(event) is h11.Data
            body += bytes(event.data)
    except h11.RemoteProtocolError:
        return "error"
    raise AssertionError("h11 did not finish")


def agrees_with_h11(data: bytes, max_head: int = MAX_HEAD) -> bool:
    """Check the contract for ``data``; True if the fast path accepted it."""
    fast = fast_parse(data, max_head)
    if fast is FALLBACK:
        return False
    assert type(fast) is tuple, (data, fast)
    request, body, rest = fast
    expected = h11_parse(data, max_head)
    assert expected != "error", (data, fast)
    h11_request, h11_body, h11_rest = expected
    assert (request.method, request.target, request.headers, request.http_version) \
        == h11_request, data
    assert (body, rest) == (h11_body, h11_rest), data
    return True


# -- what it accepts ----------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p?q=1&r HTTP/1.1\r\nhost:a\r\nX-Empty:\r\nX-Spaces:  \t \r\nX-In: a  b\tc \r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0005\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf",
    b"GET / HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Obs: caf\xc3\xa9 \x80\xff\x01\x7f\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nExpect: 100-continue\r\n\r\n",
])
def test_simple_requests_take_the_fast_path_and_match_h11(data: bytes) -> None:
    assert agrees_with_h11(data)


def test_fields_are_those_h11_gives() -> None:
    request, body, rest = fast_parse(
        b"PUT /x HTTP/1.1\r\nHOST:  h \r\nX-A:\t1 2\t\r\nContent-Length: 2\r\n\r\nokGET")
    assert request == SimpleRequest(b"PUT", b"/x", [(b"host", b"h"), (b"x-a", b"1 2"),
                                                    (b"content-length", b"2")], b"1.1", 2)
    assert (body, rest) == (b"ok", b"GET")


def test_the_body_is_counted_across_reads() -> None:
    parser = SimpleParser(MAX_HEAD)
    parser.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nab")
    assert type(parser.next_event()) is SimpleRequest
    assert parser.next_event() == b"ab"
    assert parser.next_event() is h11.NEED_DATA
    parser.receive_data(b"cdefGET / HTTP/1.1\r\n")
    assert parser.next_event() == b"cdef"
    assert parser.next_event() is END
    assert parser.trailing_data == (b"GET / HTTP/1.1\r\n", False)


# -- what it leaves to h11 ------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    # incomplete, or bigger than the limit (h11's early checks, the adapter's 431)
    b"GET / HTTP/1.1\r\nHost: a\r\n",
    b"\x00GET / HTTP/1.1",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * MAX_HEAD + b"\r\n\r\n",
    # outside the strict CRLF grammar
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x0bb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHo\x80st: a\r\n\r\n",
    b"GET /a\x80 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
    b"GET / http/1.1\r\nHost: a\r\n\r\n",
    # Host rules
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
    # body framing h11 must decide
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"1" * 21 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xd9\xa1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    # protocol switches
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade:\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
])
def test_anything_else_falls_back_to_h11(data: bytes) -> None:
    parser = SimpleParser(MAX_HEAD)
    parser.receive_data(data)
    assert parser.next_event() is FALLBACK
    assert parser.buffered == data  # h11 gets every byte


def test_a_declined_parser_keeps_declining() -> None:
    parser = SimpleParser(MAX_HEAD)
    parser.receive_data(b"GET / HTTP/1.1\r\n")
    assert parser.next_event() is FALLBACK
    assert parser.next_event() is FALLBACK


def test_the_head_limit_is_inclusive() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert type(fast_parse(head, max_head=len(head))) is tuple
    assert fast_parse(head, max_head=len(head) - 1) is FALLBACK


@pytest.mark.parametrize("line", [
    b"X:" + b" " * 65536 + b"\x0b",
    b"X: a" + b" " * 65536 + b"\x0b",
    b"X: " + b"a" * 65536 + b"\x0b",
    b"X: " + b"a \t" * 20000 + b"\x00",
])
def test_hostile_lines_are_declined_in_linear_time(line: bytes) -> None:
    """h11's own spelling of the header grammar backtracks quadratically on a
    failing run of spaces (seconds for 64 KiB); the fast path must not."""
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + line + b"\r\n\r\n"
    started = time.process_time()
    for _ in range(5):
        assert fast_parse(data, max_head=len(data)) is FALLBACK
    assert time.process_time() - started < 1.0


# -- differential: generated and mutated heads ------------------------------------------------

#: The first CLEAN entries of each list are valid (and usually simple).
CLEAN = 5
METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"get", b"M-SEARCH", b"CONNECT",
           b"G\x01T", b""]
TARGETS = [b"/", b"/a/b?c=d&e", b"/%20", b"http://h/p", b"*", b"/\x7f", b"/\x80", b"/a b", b""]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0",
            b"HTTP/1.1 ", b"http/1.1", b"HTTP/1"]
NAMES = [b"Host", b"host", b"X-A", b"User-Agent", b"Accept", b"Content-Length", b"Connection",
         b"Expect", b"HOST", b"content-length", b"Transfer-Encoding", b"Upgrade", b"bad name",
         b"", b"a\x00", b"x(y)", b"X-\xe9"]
VALUES = [b"a", b"example.com:8080", b"", b"a b", b"\x80\xff\x7f\x01", b" ", b"\t", b" a ",
          b"a\t\tb", b"5", b"0", b"05", b"5, 5", b"-1", b"1" * 21, b"chunked", b"Chunked",
          b"close", b"websocket", b"100-continue", b"a\x00", b"a\x0bb", b"a\x0c", b"*/*"]
EOLS = [b"\r\n"] * 12 + [b"\n", b"\r", b"\r\n "]


def generated_head(rng: random.Random) -> bytes:
    """A head that is clean half of the time (valid parts only), else anything."""
    clean = rng.random() < 0.5

    def pick(options: list[bytes]) -> bytes:
        return options[0] if clean and rng.random() < 0.5 else rng.choice(
            options[:CLEAN] if clean else options)

    def eol() -> bytes:
        return b"\r\n" if clean or rng.random() < 0.8 else rng.choice(EOLS)

    line = b" ".join([pick(METHODS), pick(TARGETS), pick(VERSIONS)])
    out = [line + eol()]
    if clean or rng.random() < 0.85:
        out.append(b"Host: " + rng.choice([b"a", b"example:80"]) + eol())
    for _ in range(rng.randrange(0, 6)):
        separator = rng.choice([b": ", b":", b":\t", b":  "] if clean else
                               [b": ", b":", b":\t", b":  ", b" : "])
        name = pick(NAMES[2:]) if clean else pick(NAMES)  # (one Host is enough)
        out.append(name + separator + pick(VALUES) + rng.choice([b"", b"", b" ", b"\t"])
                   + eol())
    out.append(eol())
    body = rng.randbytes(rng.randrange(0, 12))
    return b"".join(out) + body + rng.choice([b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"])


def mutated(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        where = rng.randrange(0, len(out) + 1)
        kind = rng.random()
        byte = rng.choice([0, 9, 10, 11, 13, 32, 44, 58, 0x7f, 0x80, 0xff, rng.randrange(256)])
        if kind < 0.4:
            out[where:where] = bytes([byte])
        elif kind < 0.7 and where < len(out):
            out[where] = byte
        else:
            del out[where:where + rng.randrange(1, 4)]
    return bytes(out)


@pytest.mark.parametrize("seed", range(8))
def test_generated_heads_agree_with_h11(seed: int) -> None:
    rng = random.Random(seed)
    accepted = 0
    for _ in range(1500):
        if agrees_with_h11(generated_head(rng)):
            accepted += 1
    # The generator is biased to simple requests: most must take the fast path.
    assert accepted > 400


@pytest.mark.parametrize("seed", range(8))
def test_mutated_heads_agree_with_h11(seed: int) -> None:
    rng = random.Random(1000 + seed)
    simple = b"POST /p?q HTTP/1.1\r\nHost: a\r\nX-A: b  c\r\nContent-Length: 3\r\n\r\nxyzGET"
    accepted = 0
    for _ in range(1500):
        base = simple if rng.random() < 0.5 else generated_head(rng)
        if agrees_with_h11(mutated(rng, base)):
            accepted += 1
    assert accepted > 100


# -- ScreenedH11: h11 with the quadratic lines kept away -----------------------------------


def trace(parser: Any, data: bytes, cuts: list[int]) -> list[Any]:
    """Every event (and the status hint of the error, if any) the parser gives
    for ``data`` delivered in the pieces ``cuts`` marks, asking after each."""
    events: list[Any] = []
    start = 0
    try:
        for stop in [*cuts, len(data)]:
            if stop > start:
                parser.receive_data(data[start:stop])
            start = max(start, stop)
            for _ in range(len(data) + 4):
                event = parser.next_event()
                events.append(event)
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    break
    except h11.RemoteProtocolError as exc:
        events.append(("error", exc.error_status_hint))
    return events


def agrees_when_screened(data: bytes, cuts: list[int], max_head: int = MAX_HEAD) -> None:
    expected = trace(h11.Connection(h11.SERVER, max_incomplete_event_size=max_head), data, cuts)
    screened = ScreenedH11(max_head)
    assert trace(screened, data, cuts) == expected, (data, cuts)
    if not expected or type(expected[-1]) is not tuple:
        plain = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        trace(plain, data, cuts)
        assert screened.trailing_data == plain.trailing_data


CHUNKED = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
SIZE_LINES = [b"5", b"05", b"5;a=b", b"5; x", b"5  ", b"5\t", b"5;\x0b", b"5 ;a", b"5x", b"",
              b"5;a\nb", b"0" * 21 + b"5"]
TRAILERS = [b"", b"X-T: 1\r\n", b"X-T: 1\r\n  more\r\n", b"X:  \r\n", b"X: \x0b\r\n",
            b" lead: 1\r\n", b"bad name: 1\r\n", b"X-T: 1\n", b"X: a\x00\r\n"]


def chunked_request(rng: random.Random) -> bytes:
    out = [CHUNKED]
    for _ in range(rng.randrange(0, 3)):
        line = rng.choice(SIZE_LINES[:4] if rng.random() < 0.7 else SIZE_LINES)
        out.append(line + b"\r\nhello" + rng.choice([b"\r\n"] * 6 + [b"\n", b"XX", b"\r"]))
    out.append(b"0" + rng.choice([b"", b";e=1", b" "]) + b"\r\n")
    out.append(rng.choice(TRAILERS) + rng.choice([b"\r\n"] * 5 + [b"\n"]))
    return b"".join(out) + rng.choice([b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"])


def random_cuts(rng: random.Random, data: bytes) -> list[int]:
    if rng.random() < 0.2:
        return list(range(1, len(data)))  # byte by byte
    return sorted(rng.randrange(0, len(data) + 1) for _ in range(rng.randrange(0, 4)))


@pytest.mark.parametrize("seed", range(4))
def test_screened_h11_gives_h11s_events_and_errors(seed: int) -> None:
    """Differential: the same events, errors (status hint) and leftover bytes
    as a bare h11 connection, over generated, mutated and chunked requests in
    random pieces."""
    rng = random.Random(2000 + seed)
    errors = 0
    for _ in range(600):
        kind = rng.random()
        if kind < 0.35:
            data = generated_head(rng)
        elif kind < 0.7:
            data = chunked_request(rng)
        else:
            data = mutated(rng, chunked_request(rng) if rng.random() < 0.5
                           else generated_head(rng))
        if data:
            agrees_when_screened(data, random_cuts(rng, data))
            errors += type(trace(ScreenedH11(MAX_HEAD), data, [])[-1]) is tuple
    assert 50 < errors < 550  # both outcomes are exercised


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\nX:" + b" " * 16000 + b"\x0b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX:" + b"\t " * 8000 + b"\x00\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX:\r\n" + b" \r\n" * 5000 + b" \x0b\r\n\r\n",
    CHUNKED + b"1;" + b" " * 32000 + b"\nx\r\n",
    CHUNKED + b"5\r\nhello\r\n0\r\nX:" + b" " * 32000 + b"\x0b\r\n\r\n",
])
def test_screened_h11_refuses_hostile_lines_in_linear_time(data: bytes) -> None:
    """Each of these costs bare h11 0.2 to 2.5 s (quadratic backtracking);
    screened, the same 400 comes in milliseconds."""
    started = time.process_time()
    for cuts in ([], list(range(1000, len(data), 1000))):
        events = trace(ScreenedH11(1 << 20), data, cuts)
        assert events[-1] == ("error", 400)
    assert time.process_time() - started < 0.2
