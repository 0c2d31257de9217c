"""What each protocol can express, and the parametrization helper.

Tests say which protocols a behaviour applies to with :func:`on`; a protocol
where the behaviour fails because of a known server bug is listed in
``xfail`` with the precise bug, and the case is marked
``xfail(strict=True)`` so it turns into a failure the day the bug is fixed.
"""

from __future__ import annotations

from typing import Any

import h2.errors
import pytest
from aioquic.h3.connection import ErrorCode as H3ErrorCode

#: Every protocol of the suite.
ALL = ("h1", "h2", "h3", "hq")

#: hq-interop requests are a bare ``GET /path`` line: no method, no body,
#: no header; responses have no status line, header or trailer.
REQUEST_BODY = ("h1", "h2", "h3")
RESPONSE_HEADERS = ("h1", "h2", "h3")
TRAILERS = ("h1", "h2", "h3")
WEBSOCKET = ("h1", "h2", "h3")
#: Protocols whose scope offers ``http.response.early_hint``.
EARLY_HINTS = ("h1", "h2")

#: The reset code for "the app failed after the head went out" (None: the
#: HTTP/1.1 connection is closed instead).
APP_ERROR_RESET: dict[str, int | None] = {
    "h1": None,
    "h2": int(h2.errors.ErrorCodes.INTERNAL_ERROR),
    "h3": int(H3ErrorCode.H3_INTERNAL_ERROR),
    "hq": int(H3ErrorCode.H3_INTERNAL_ERROR),
}


def on(*protocols: str, xfail: dict[str, str] | None = None) -> Any:
    """``@on("h1", "h2", xfail={"h2": "bug ..."})``: parametrize ``protocol``."""
    xfail = xfail or {}
    unknown = set(xfail) - set(protocols)
    if unknown:
        raise ValueError(f"xfail for protocols not in the case: {unknown}")
    params = [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=xfail[p]))
        if p in xfail else p
        for p in protocols
    ]
    return pytest.mark.parametrize("protocol", params)
