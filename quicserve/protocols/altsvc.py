"""The Alt-Svc value that advertises HTTP/3 on TCP responses (RFC 7838).

Theory of operation
-------------------
A browser first reaches a server over TCP; the ``Alt-Svc`` response header
tells it that the same origin is also served over HTTP/3 on a UDP port, and
for how long to remember that (``ma``, seconds).  The value must describe the
UDP ports *actually bound*: ``server.py`` passes the ports it got back from
the kernel (so ``--quic-bind 0.0.0.0:0`` advertises the real port), never the
configured strings.

The alternative has no host (``h3=":443"``): it means "this host, that port",
which stays right behind DNS names and for IPv4 and IPv6 alike.  Several
``--quic-bind`` addresses on one port are one entry; distinct ports are one
entry each, in bind order.  Only ``h3`` is advertised: browsers do not speak
``hq-interop``, so a server offering only that advertises nothing.

Pure: no sockets, no config import; ``server.py`` calls it once at start-up
and puts the result in ``ResponseDefaults.alt_svc``.
"""

from __future__ import annotations

from typing import Iterable


def alt_svc_value(
    ports: Iterable[int],
    *,
    max_age: int,
    alpns: Iterable[str] = ("h3",),
    enabled: bool = True,
) -> bytes | None:
    """``h3=":PORT"; ma=N`` entries joined by ``, ``, or None when there is
    nothing to advertise (disabled, no UDP port, or no ``h3`` ALPN).

    Error handling: raises ``ValueError`` for a port outside 1..65535 or a
    negative ``max_age`` (both would be a bug in the caller: bound ports are
    never 0).
    """
    if not enabled or "h3" not in tuple(alpns):
        return None
    if max_age < 0:
        raise ValueError(f"Alt-Svc max age must not be negative, got {max_age}")
    unique: list[int] = []
    for port in ports:
        if not 0 < port < 65536:
            raise ValueError(f"not a bound UDP port: {port}")
        if port not in unique:
            unique.append(port)
    if not unique:
        return None
    return ", ".join(f'h3=":{port}"; ma={max_age}' for port in unique).encode("ascii")
