"""permessage-deflate (RFC 7692) for WebSockets, bounded against decompression bombs.

Theory of operation
-------------------
``asgi/websocket.py`` negotiates the extension itself from the request's
``Sec-WebSocket-Extensions`` header (HTTP/1.1 only) with
:func:`negotiate_deflate`, and hands the resulting extension to wsproto.

wsproto's own ``PerMessageDeflate`` inflates each payload chunk in one
unbounded ``decompress`` call, so a few kilobytes of deflated zeros can
become gigabytes before any size check runs.  :class:`BoundedDeflate` caps
every call at what the current message may still grow by
(``--ws-max-message-size`` applies to the *inflated* size) and fails the
connection with 1009 (MESSAGE_TOO_BIG) when the cap is reached.

The header value is hostile input: a malformed offer is skipped, never raised.
"""

from __future__ import annotations

import zlib
from typing import Iterable

from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate whose inflation stops at the message size limit.

    wsproto inflates each payload chunk in one unbounded ``decompress`` call;
    a few kilobytes of deflated zeros can become gigabytes.  Here each call is
    capped at what the current message may still grow by, and exceeding it
    fails the connection with 1009 (MESSAGE_TOO_BIG).
    """

    def __init__(self, max_message_size: int) -> None:
        super().__init__()
        self._max = max_message_size
        self._inflated = 0

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        if self._decompressor is None:
            return CloseReason.PROTOCOL_ERROR
        budget = self._max - self._inflated + 1
        try:
            out = self._decompressor.decompress(bytes(data), budget)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self._max or self._decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        result = super().frame_inbound_complete(proto, fin)
        if fin:
            self._inflated = 0
        return result


def negotiate_deflate(
    headers: Iterable[tuple[bytes, bytes]], max_message_size: int
) -> tuple[Extension | None, bytes]:
    """Accept the client's first acceptable permessage-deflate offer.

    Returns the extension and the ``Sec-WebSocket-Extensions`` response value,
    or ``(None, b"")``.
    """
    for name, value in headers:
        if name != b"sec-websocket-extensions":
            continue
        for offer in value.decode("latin-1").split(","):
            if offer.split(";", 1)[0].strip().lower() != "permessage-deflate":
                continue
            extension = BoundedDeflate(max_message_size)
            try:
                accepted = extension.accept(offer.strip())
            except ValueError:
                continue
            if accepted is None:
                continue
            response = "permessage-deflate" + (f"; {accepted}" if accepted else "")
            return extension, response.encode("latin-1")
    return None, b""
