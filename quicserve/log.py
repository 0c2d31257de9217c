"""Loggers, the access-log format, and key-log / qlog sinks.

Theory of operation
-------------------
Two loggers: ``quicserve.error`` for everything the operator should read, and
``quicserve.access`` for one line per request.  :func:`configure` installs
handlers once at start-up (``server.py``); library users who configure
logging themselves can skip it.  The access line is only formatted when the
access logger is enabled for INFO, so a disabled access log costs one
attribute check per request.

This module does no socket I/O; writing log files is the only I/O it does.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Mapping

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

error_logger = logging.getLogger("quicserve.error")
access_logger = logging.getLogger("quicserve.access")

_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}


def configure(
    *,
    level: str = "info",
    access_log: bool = True,
    access_logfile: str = "-",
) -> None:
    """Install quicserve's handlers (idempotent)."""
    error_logger.setLevel(_LEVELS[level])
    if not any(getattr(h, "_quicserve", False) for h in error_logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"))
        handler._quicserve = True  # type: ignore[attr-defined]
        error_logger.addHandler(handler)
        error_logger.propagate = False
    for h in list(access_logger.handlers):
        if getattr(h, "_quicserve", False):
            access_logger.removeHandler(h)
            if isinstance(h, logging.FileHandler):
                h.close()
    if not access_log:
        access_logger.setLevel(logging.CRITICAL + 1)
        return
    access_logger.setLevel(logging.INFO)
    stream: logging.Handler
    if access_logfile == "-":
        stream = logging.StreamHandler(sys.stdout)
    else:
        stream = logging.FileHandler(access_logfile)
    stream.setFormatter(logging.Formatter("%(message)s"))
    stream._quicserve = True  # type: ignore[union-attr]
    access_logger.addHandler(stream)
    access_logger.propagate = False


class AccessLogAtoms(dict[str, str]):
    """The fields of one access-log line; unknown fields format as ``-``."""

    def __missing__(self, key: str) -> str:
        return "-"


class AccessLog:
    """Formats and writes access-log lines with a ``%(x)s`` style format."""

    __slots__ = ("_format",)

    def __init__(self, fmt: str) -> None:
        self._format = fmt

    @property
    def enabled(self) -> bool:
        return access_logger.isEnabledFor(logging.INFO)

    def log(
        self,
        *,
        client: tuple[str, int] | None,
        method: str,
        path: str,
        query: bytes,
        protocol: str,
        status: int,
        size: int,
        duration: float,
        headers: Mapping[bytes, bytes] | None = None,
    ) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        host = f"{client[0]}:{client[1]}" if client else "-"
        full_path = path + ("?" + query.decode("latin-1") if query else "")
        atoms = AccessLogAtoms(
            h=host,
            r=f"{method} {full_path} {protocol}",
            m=method,
            U=path,
            q=query.decode("latin-1"),
            H=protocol,
            s=str(status),
            b=str(size),
            D=f"{duration * 1000:.1f}",
            T=f"{duration:.3f}",
            a=(headers or {}).get(b"user-agent", b"-").decode("latin-1"),
        )
        try:
            line = self._format % atoms
        except (KeyError, ValueError, TypeError) as exc:
            line = f"bad --access-logformat ({exc}): {atoms['r']} {status}"
        access_logger.info(line)


def open_keylog(path: str) -> IO[str]:
    """Open the TLS key-log file named by SSLKEYLOGFILE (append, line-buffered)."""
    return open(path, "a", buffering=1)
