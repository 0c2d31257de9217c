"""What ``server.py`` needs from every listener (TCP and UDP alike).

Theory of operation
-------------------
``server.py`` opens sockets (``transport/sockets.py``), wraps each in a listener
(``TcpListener`` or ``UdpEndpoint``) and drives all of them through this one
interface, so graceful shutdown is written once:

1. ``stop_accepting()``: no new TCP connections, no new QUIC connections
   (Initials are dropped; packets for existing connections keep flowing).
2. ``shutdown()``: every connection is told to finish: HTTP/1.1 closes once
   idle, HTTP/2 and HTTP/3 send GOAWAY, then close when their streams end.
3. ``await wait_closed()``: returns once every connection is gone.
4. ``abort()``: the graceful deadline passed; close what is left now
   (CONNECTION_CLOSE on QUIC, so peers are never left hanging).
"""

from __future__ import annotations

from typing import Protocol


class Listener(Protocol):
    def stop_accepting(self) -> None: ...

    def shutdown(self) -> None: ...

    async def wait_closed(self) -> None: ...

    def abort(self) -> None: ...

    @property
    def addresses(self) -> list[tuple[str, int] | str]:
        """What the listener is bound to (for logs, and Alt-Svc from UDP ports)."""
