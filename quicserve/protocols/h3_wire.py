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
"""

from __future__ import annotations

from dataclasses import dataclass

from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import (
    FrameType,
    H3Connection,
    H3Stream,
    HeadersState,
    MessageError,
    encode_frame,
    stream_is_request_response,
)
from aioquic.h3.events import H3Event
from aioquic.quic.events import QuicEvent, StreamDataReceived, StreamReset


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

    def handle_event(self, event: QuicEvent) -> list[H3Event]:
        if isinstance(event, StreamDataReceived) and event.stream_id in self._discarded:
            if event.end_stream:
                self._forget(event.stream_id)
            return []
        if isinstance(event, StreamReset) and event.stream_id in self._discarded:
            self._discarded.discard(event.stream_id)
        return super().handle_event(event)

    def _handle_request_or_push_frame(
        self,
        frame_type: int,
        frame_data: bytes | None,
        stream: H3Stream,
        stream_ended: bool,
    ) -> list[H3Event]:
        try:
            return super()._handle_request_or_push_frame(
                frame_type, frame_data, stream, stream_ended)
        except MessageError as exc:
            return self._malformed(stream, exc)

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
