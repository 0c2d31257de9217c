"""The exception taxonomy.

Theory of operation
-------------------
Every exception quicserve raises on purpose derives from :class:`QuicserveError`.
Protocol errors carry what the edge needs to answer them: an HTTP status hint
(:class:`ProtocolError.status`) or a wire error code.  Third-party exceptions
(h11, h2, aioquic, wsproto, ssl) are translated into these exactly once, at the
edge that calls the library, with :func:`map_exceptions`; nothing above that edge
ever catches a third-party type.

Bad option values raise ``quicserve.config.ConfigError`` (a ``ValueError``),
which lives beside the option table.

This module is a leaf: it imports nothing of quicserve.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping


class QuicserveError(Exception):
    """Base of every error quicserve raises on purpose."""


class AppLoadError(QuicserveError):
    """The application named on the command line cannot be imported or found."""


class LifespanError(QuicserveError):
    """The application's lifespan startup or shutdown failed."""


class ProtocolError(QuicserveError):
    """The peer broke the protocol.  ``status`` is the HTTP status to answer
    with when a response can still be sent (400 unless said otherwise)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class HeaderTooLarge(ProtocolError):
    def __init__(self, message: str = "request head too large") -> None:
        super().__init__(message, status=431)


class StreamClosed(QuicserveError):
    """The stream was reset or its connection lost; nothing more can be sent."""


class ClientDisconnected(StreamClosed, OSError):
    """Raised into the application by ``send()`` after the client went away.

    ASGI asks for an ``OSError`` subclass here.
    """


class ASGIProtocolError(QuicserveError):
    """The application sent a message that is not valid in the stream's state."""

    def __init__(self, state: str, message_type: object) -> None:
        super().__init__(f"unexpected ASGI message {message_type!r} in state {state}")
        self.state = state
        self.message_type = message_type


class UnsupportedPlatform(QuicserveError):
    """The platform lacks a socket feature the configuration asks for."""


class TLSConfigError(QuicserveError):
    """A certificate, key or CA file cannot be used; the message names the file."""


@contextlib.contextmanager
def map_exceptions(mapping: Mapping[type[BaseException], type[QuicserveError]]) -> Iterator[None]:
    """Translate third-party exceptions into quicserve's own, exactly once.

    The first matching entry wins; the original exception is chained.
    """
    try:
        yield
    except Exception as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise
