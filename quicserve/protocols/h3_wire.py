"""The server side of aioquic's ``H3Connection``, with the two things it lacks.

Theory of operation
-------------------
aioquic's ``H3Connection`` treats every malformed message as a *connection*
error: a request head with an uppercase header name, or a body that does not
match its content-length, closes the whole QUIC connection with
H3_MESSAGE_ERROR.  RFC 9114 section 4.1.2 makes these *stream* errors, and
quicserve must reset only the offending stream while the others go on.  It
also has no way to send GOAWAY.

:class:`ServerH3Connection` fixes both, and is the only place in quicserve that
touches ``H3Connection`` internals (``tests/unit/protocols/test_h3.py`` pins
every one of them, so an aioquic upgrade that moves them fails loudly):

* ``_handle_request_or_push_frame`` / ``_handle_request_or_push_end`` are
  wrapped: a ``MessageError`` on a client request stream becomes a
  :class:`MessageMalformed` event, the stream is *discarded* (later bytes on
  it are dropped unparsed) and the caller resets it.
* ``send_goaway`` writes a GOAWAY frame on the local control stream
  (``_local_control_stream_id``).
* ``buffered(stream_id)`` reports the bytes aioquic holds for a stream before
  they become events (``H3Stream.buffer``), so flow-control credit is never
  returned for bytes that are still sitting in memory.

It never closes the connection itself for a stream error, never raises out
of :meth:`handle_event` for peer input, and keeps no per-stream state beyond
the set of discarded stream IDs, each removed when its stream ends.

Hot path.  Every request costs one HEADERS frame in and one HEADERS and one
DATA frame out, and aioquic spends much of that in plumbing, not in HTTP/3.
These overrides keep its behaviour exactly and drop the plumbing (each
measured; see the commit log): ``tests/unit/protocols/test_h3.py`` checks
the validator and the whole-head shortcut differentially against aioquic's
own code, and ``frame_bytes`` against ``encode_frame``.

* A request stream's first data that is exactly one complete HEADERS frame
  (every GET; a POST's head) is handled by :meth:`_whole_request_head`, not
  by aioquic's general frame reassembly (buffer concatenation, a ``Buffer``,
  per-frame state).  Anything else takes aioquic's path.
* A request head is validated by :func:`validate_request_fields`, which
  raises exactly when aioquic's ``validate_request_headers`` raises (the same
  ``MessageError``, from aioquic's own per-field checks) but screens each
  field with one regular expression, and remembers names and short values
  already found valid.
* ``_get_or_create_stream`` returns a slotted context manager instead of a
  ``contextlib`` generator (entered for every received chunk and every send).
* A final response head can be held and written in one stream write with
  the first DATA frame (:meth:`final_head_frame`, :meth:`send_data_after`):
  one QUIC write per small response instead of two.  Frames are built by
  :func:`frame_bytes`, without ``encode_frame``'s intermediate buffer.
* ``_decode_headers``/``_encode_headers`` skip handing an empty QPACK
  instruction block to the decoder/encoder stream, and decoder instructions
  (a Section Acknowledgment for nearly every request) are collected and
  written to the decoder stream in one piece by :meth:`flush_decoder`, which
  the adapter calls once the events of a received datagram are handled --
  so before the endpoint's flush of that loop turn.

qlog, when on, always takes aioquic's own paths, so its events are aioquic's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pylsqpack
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import (
    CONNECTION_SPECIFIC_HEADERS,
    WHITESPACE,
    FrameType,
    FrameUnexpected,
    H3Connection,
    H3Stream,
    HeadersState,
    MessageError,
    ProtocolError,
    QpackDecompressionFailed,
    encode_frame,
    is_interim_response,
    stream_is_request_response,
    validate_header_name,
    validate_header_value,
)
from aioquic.h3.events import H3Event, HeadersReceived
from aioquic.quic.connection import stream_is_client_initiated, stream_is_unidirectional
from aioquic.quic.events import QuicEvent, StreamDataReceived, StreamReset

#: A header-name byte aioquic refuses: control, space, uppercase, DEL, non-ASCII.
_BAD_NAME_BYTE = re.compile(rb"[\x00-\x20A-Z\x7f-\xff]")
#: A header-value byte aioquic refuses anywhere in the value.
_BAD_VALUE_BYTE = re.compile(rb"[\x00\n\r]")
#: Header names that passed aioquic's name check: validity depends on the
#: name alone.  Bounded in count and name length, so peers cannot grow it.
_VALID_NAMES: set[bytes] = set()
_VALID_NAMES_MAX = 1024
#: The same for values (validity depends on the value alone): the first
#: valid short values seen -- a request's method, scheme, authority, user
#: agent -- are checked once; bounded like the names.
_VALID_VALUES: set[bytes] = set()
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))
_REQUIRED_PSEUDO = frozenset((b":method", b":authority"))


def validate_request_fields(headers: list[tuple[bytes, bytes]], stream: H3Stream | None) -> None:
    """Raise ``MessageError`` exactly when aioquic's ``validate_request_headers``
    would, with the same message, and record the declared content-length on
    ``stream`` as it does.

    A field that the regular expressions flag is handed to aioquic's own
    ``validate_header_name``/``validate_header_value``, which raise the
    precise error; the pseudo-header and semantic checks follow aioquic's
    order field by field.  Names and short values already found valid are
    remembered (:data:`_VALID_NAMES`, :data:`_VALID_VALUES`): requests repeat
    the same few.
    """
    after_pseudo = False
    authority = path = scheme = None
    seen: set[bytes] = set()
    for key, value in headers:
        if key not in _VALID_NAMES:
            _check_name(key)
        if value not in _VALID_VALUES:
            _check_value(key, value)
        if key[:1] == b":":
            if after_pseudo:
                raise MessageError(f"Pseudo-header {key!r} is not allowed after regular headers")
            if key not in _REQUEST_PSEUDO:
                raise MessageError(f"Pseudo-header {key!r} is not valid")
            if key in seen:
                raise MessageError(f"Pseudo-header {key!r} is included twice")
            seen.add(key)
            if key == b":authority":
                authority = value
            elif key == b":path":
                path = value
            elif key == b":scheme":
                scheme = value
            continue
        after_pseudo = True
        if key == b"content-length":
            _record_content_length(value, stream)
        elif key == b"te":
            if value.lower() != b"trailers":
                raise MessageError(f"Header {key!r} value is not trailers")
        elif key in CONNECTION_SPECIFIC_HEADERS:
            raise MessageError(f"Header {key!r} is connection-specific")
    missing = _REQUIRED_PSEUDO.difference(seen)
    if missing:
        raise MessageError(f"Pseudo-headers {sorted(missing)} are missing")
    if scheme in (b"http", b"https"):
        if not authority:
            raise MessageError("Pseudo-header b':authority' cannot be empty")
        if not path:
            raise MessageError("Pseudo-header b':path' cannot be empty")


def _check_name(key: bytes) -> None:
    if _BAD_NAME_BYTE.search(key) is not None or key.find(b":", 1) >= 0:
        validate_header_name(key)
    elif len(_VALID_NAMES) < _VALID_NAMES_MAX and len(key) <= 64:
        _VALID_NAMES.add(key)


def _check_value(key: bytes, value: bytes) -> None:
    if value and (_BAD_VALUE_BYTE.search(value) is not None or value[0] in WHITESPACE
                  or value[-1] in WHITESPACE):
        validate_header_value(key, value)
    elif len(_VALID_VALUES) < _VALID_NAMES_MAX and len(value) <= 64:
        _VALID_VALUES.add(value)


def _record_content_length(value: bytes, stream: H3Stream | None) -> None:
    try:
        length = int(value)
        if length < 0:
            raise ValueError
    except ValueError:
        raise MessageError("content-length is not a non-negative integer") from None
    if stream:
        stream.expected_content_length = length


def frame_bytes(frame_type: int, payload: bytes) -> bytes:
    """aioquic's ``encode_frame`` for a one-byte frame type, byte for byte
    (minimal varint length), without its intermediate buffer: a third of the
    time for a small frame, a seventh for a 64 KiB DATA frame."""
    n = len(payload)
    if n < 0x40:
        return bytes((frame_type, n)) + payload
    if n < 0x4000:
        return bytes((frame_type, 0x40 | (n >> 8), n & 0xFF)) + payload
    return bytes((frame_type,)) + encode_uint_var(n) + payload


def _frame_length(data: bytes) -> tuple[int, int]:
    """The payload offset and length of the frame at ``data[0]`` (whose type
    is one byte); a length cut short by the end of ``data`` gives an offset
    past it, so no complete frame matches."""
    if len(data) < 2:
        return 2, 0
    first = data[1]
    size = 1 << (first >> 6)
    if len(data) < 1 + size:
        return len(data) + 1, 0
    length = first & 0x3F
    for byte in data[2:1 + size]:
        length = (length << 8) | byte
    return 1 + size, length


class _StreamScope:
    """What aioquic's ``_get_or_create_stream`` context manager does, as a
    slotted object: yield the stream, and forget it on the way out (error or
    not) once both halves have ended."""

    __slots__ = ("_streams", "_stream")

    def __init__(self, streams: dict[int, H3Stream], stream: H3Stream) -> None:
        self._streams = streams
        self._stream = stream

    def __enter__(self) -> H3Stream:
        return self._stream

    def __exit__(self, *exc_info: object) -> None:
        stream = self._stream
        if stream.is_ended():
            self._streams.pop(stream.stream_id)


@dataclass
class MessageMalformed(H3Event):
    """A client request on ``stream_id`` broke HTTP/3 message rules."""

    stream_id: int
    reason: str


class ServerH3Connection(H3Connection):
    """``H3Connection`` with stream-level message errors and GOAWAY."""

    def __init__(self, quic: object) -> None:
        super().__init__(quic)  # type: ignore[arg-type]
        self._discarded: set[int] = set()
        #: QPACK decoder instructions not yet written to the decoder stream.
        self._decoder_pending: list[bytes] = []

    # -- public additions -----------------------------------------------------

    def send_goaway(self, stream_id: int) -> int | None:
        """Queue GOAWAY: the peer must not open streams at or above
        ``stream_id``.  Returns the control stream's ID."""
        control = self._local_control_stream_id
        if control is None:
            return None
        frame = encode_frame(FrameType.GOAWAY, encode_uint_var(stream_id))
        self._quic.send_stream_data(control, frame)
        return control

    def final_head_frame(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """The HEADERS frame ``send_headers`` would write for a final response
        head on ``stream_id``, returned instead of written, with the stream's
        send state moved on exactly as ``send_headers`` moves it; the caller
        writes it (usually together with the first DATA frame, see
        :meth:`send_data_after`).  None -- and nothing done -- unless this is a
        final head in the stream's initial state and qlog is off: then the
        caller uses ``send_headers``."""
        stream = self._stream.get(stream_id)
        if (self._quic_logger is not None or self._is_client
                or (stream is not None and stream.headers_send_state is not HeadersState.INITIAL)
                or is_interim_response(headers)):
            return None
        with self._get_or_create_stream(stream_id) as stream:
            frame = frame_bytes(FrameType.HEADERS, self._encode_headers(stream_id, headers))
            stream.headers_send_state = HeadersState.AFTER_HEADERS
        return frame

    def send_data_after(self, stream_id: int, prefix: bytes, data: bytes, end_stream: bool) -> None:
        """``send_data``, with ``prefix`` (a held HEADERS frame) written in
        the same stream write, ahead of the DATA frame."""
        if self._quic_logger is not None:
            self._quic.send_stream_data(stream_id, prefix)
            super().send_data(stream_id, data, end_stream)
            return
        with self._get_or_create_stream(stream_id) as stream:
            if stream.headers_send_state != HeadersState.AFTER_HEADERS:
                raise FrameUnexpected("DATA frame is not allowed in this state")
            if end_stream:
                stream.finish_sending()
        self._quic.send_stream_data(stream_id, prefix + frame_bytes(FrameType.DATA, data),
                                    end_stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """aioquic's ``send_data`` (which qlog still takes), framing with
        :func:`frame_bytes`."""
        self.send_data_after(stream_id, b"", data, end_stream)

    def flush_decoder(self) -> None:
        """Write the QPACK decoder instructions collected since the last call."""
        pending = self._decoder_pending
        if pending and self._local_decoder_stream_id is not None:
            data = b"".join(pending)
            pending.clear()
            self._decoder_bytes_sent += len(data)
            self._quic.send_stream_data(self._local_decoder_stream_id, data)

    def buffered(self, stream_id: int) -> int:
        """Bytes of ``stream_id`` received but not yet turned into events."""
        stream = self._stream.get(stream_id)
        return len(stream.buffer) if stream is not None else 0

    def is_discarded(self, stream_id: int) -> bool:
        return stream_id in self._discarded

    def discard(self, stream_id: int) -> None:
        """Drop, unparsed, whatever still arrives on ``stream_id`` (it was reset)."""
        self._discarded.add(stream_id)
        stream = self._stream.get(stream_id)
        if stream is not None:
            stream.sending_ended = True

    # -- overrides ----------------------------------------------------------------

    def _get_or_create_stream(self, stream_id: int) -> _StreamScope:  # type: ignore[override]
        streams = self._stream
        stream = streams.get(stream_id)
        if stream is None:
            stream = streams[stream_id] = H3Stream(stream_id)
            if stream_is_unidirectional(stream_id):
                # Only one half exists: the other has ended from the start.
                if stream_is_client_initiated(stream_id) == self._is_client:
                    stream.receiving_ended = True
                else:
                    stream.sending_ended = True
        return _StreamScope(streams, stream)

    def _decode_headers(self, stream_id: int, frame_data: bytes | None) -> Any:
        try:
            if frame_data is None:
                decoder, headers = self._decoder.resume_header(stream_id)
            else:
                decoder, headers = self._decoder.feed_header(stream_id, frame_data)
        except pylsqpack.DecompressionFailed as exc:
            raise QpackDecompressionFailed() from exc
        if decoder:
            self._decoder_pending.append(decoder)
        return headers

    def _encode_headers(self, stream_id: int, headers: Any) -> bytes:
        encoder, frame_data = self._encoder.encode(stream_id, headers)
        # The QPACK streams are opened in __init__, so their IDs are set.
        if encoder and self._local_encoder_stream_id is not None:
            self._encoder_bytes_sent += len(encoder)
            self._quic.send_stream_data(self._local_encoder_stream_id, encoder)
        frame: bytes = frame_data
        return frame

    def handle_event(self, event: QuicEvent) -> list[H3Event]:
        if isinstance(event, StreamDataReceived):
            stream_id = event.stream_id
            if stream_id in self._discarded:
                if event.end_stream:
                    self._forget(stream_id)
                return []
            if (stream_id % 4 == 0 and stream_id not in self._stream and not self._is_done
                    and self._quic_logger is None):
                events = self._whole_request_head(event)
                if events is not None:
                    return events
        elif isinstance(event, StreamReset) and event.stream_id in self._discarded:
            self._discarded.discard(event.stream_id)
        return super().handle_event(event)

    def _whole_request_head(self, event: StreamDataReceived) -> list[H3Event] | None:
        """The first data of a request stream when it is exactly one complete
        HEADERS frame (a GET's whole request, or a POST's head): what aioquic
        does for it, without its general frame reassembly.  None when the data
        is anything else; the caller then takes aioquic's path."""
        data = event.data
        if data[:1] != b"\x01":  # HEADERS, as a one-byte varint
            return None
        start, length = _frame_length(data)
        if start + length != len(data):
            return None
        stream_id = event.stream_id
        stream = self._stream[stream_id] = H3Stream(stream_id)
        if event.end_stream:
            stream.receiving_ended = True
        try:
            return self._handle_request_or_push_frame(
                FrameType.HEADERS, data[start:], stream, event.end_stream)
        except pylsqpack.StreamBlocked:
            # As aioquic: parked until the encoder stream delivers the entries.
            stream.blocked = True
            stream.blocked_frame_size = length
            stream.blocked_frame_type = FrameType.HEADERS
            return []
        except ProtocolError as exc:
            self._is_done = True
            self._quic.close(error_code=exc.error_code, reason_phrase=exc.reason_phrase)
            return []
        finally:
            if stream.is_ended():
                self._stream.pop(stream_id)

    def _handle_request_or_push_frame(
        self,
        frame_type: int,
        frame_data: bytes | None,
        stream: H3Stream,
        stream_ended: bool,
    ) -> list[H3Event]:
        try:
            if (frame_type == FrameType.HEADERS and frame_data is not None
                    and stream.headers_recv_state is HeadersState.INITIAL
                    and not self._is_client and self._quic_logger is None):
                return self._request_head(frame_data, stream, stream_ended)
            return super()._handle_request_or_push_frame(
                frame_type, frame_data, stream, stream_ended)
        except MessageError as exc:
            return self._malformed(stream, exc)

    def _request_head(self, frame_data: bytes, stream: H3Stream,
                      stream_ended: bool) -> list[H3Event]:
        """A request's first HEADERS frame: what aioquic does for it (without
        qlog, which takes aioquic's own path), with the faster validator."""
        headers = self._decode_headers(stream.stream_id, frame_data)
        validate_request_fields(headers, stream)
        if stream_ended:
            self._check_content_length(stream)
        stream.headers_recv_state = HeadersState.AFTER_HEADERS
        return [HeadersReceived(headers=headers, push_id=stream.push_id,
                                stream_id=stream.stream_id, stream_ended=stream_ended)]

    def _handle_request_or_push_end(self, stream: H3Stream) -> list[H3Event]:
        try:
            return super()._handle_request_or_push_end(stream)
        except MessageError as exc:
            return self._malformed(stream, exc)

    # -- helpers ------------------------------------------------------------------

    def _malformed(self, stream: H3Stream, exc: MessageError) -> list[H3Event]:
        if self._is_client or not stream_is_request_response(stream.stream_id):
            raise exc
        # The caller may go on parsing frames already buffered for this
        # stream: make sure none of them raises again.  DATA is accepted (and
        # ignored by the adapter, which has forgotten the stream), the declared
        # length no longer matters, and handle_event drops later bytes.
        if stream.headers_recv_state == HeadersState.INITIAL:
            stream.headers_recv_state = HeadersState.AFTER_HEADERS
        stream.expected_content_length = None
        self.discard(stream.stream_id)
        return [MessageMalformed(stream_id=stream.stream_id, reason=exc.reason_phrase)]

    def _forget(self, stream_id: int) -> None:
        self._discarded.discard(stream_id)
        self._stream.pop(stream_id, None)
