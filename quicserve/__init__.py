"""quicserve: an ASGI server for HTTP/3 over QUIC, HTTP/2 and HTTP/1.1.

The public API is :func:`serve` (awaitable), :func:`run` (blocking) and
:class:`Config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Config, ConfigError

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "serve", "run", "__version__"]

if TYPE_CHECKING:
    from .server import run, serve


def __getattr__(name: str) -> Any:
    # serve/run pull in asyncio, aioquic and the protocol stacks; keep
    # ``import quicserve`` (and ``quicserve --version``) cheap.
    if name in ("serve", "run"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'quicserve' has no attribute {name!r}")
