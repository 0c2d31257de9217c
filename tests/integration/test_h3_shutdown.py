"""Graceful shutdown over real UDP: GOAWAY, in-flight requests finish, then
CONNECTION_CLOSE with H3_NO_ERROR; the server then stops."""

from __future__ import annotations

import asyncio
from typing import Any

from aioquic.h3.connection import ErrorCode

from tests.support.certs import CertSet
from tests.support.quic_peers import aioquic_configuration, aioquic_connect
from tests.support.server import ThreadedServer


def test_graceful_shutdown_finishes_in_flight_requests(certs: CertSet) -> None:
    server = ThreadedServer(quic_bind=["127.0.0.1:0"], certfile=str(certs.cert),
                            keyfile=str(certs.key), access_log=False, graceful_timeout=10)
    with server:
        host, port = server.address(transport="udp")

        async def main() -> tuple[Any, Any]:
            async with aioquic_connect(host, port, aioquic_configuration(str(certs.ca))) as client:
                slow = asyncio.ensure_future(client.request("GET", "/slow?s=1", f"{host}:{port}"))
                await asyncio.sleep(0.3)
                server.request_shutdown()
                response = await slow
                for _ in range(300):
                    if client.terminated is not None:
                        break
                    await asyncio.sleep(0.01)
                return response, client.terminated

        response, terminated = asyncio.run(asyncio.wait_for(main(), 30))
        assert server.join(15), "the server did not stop after its last connection closed"
    assert response.status == 200
    assert bytes(response.body) == b"slow done"
    assert terminated is not None
    assert terminated.error_code == ErrorCode.H3_NO_ERROR


def test_a_request_sent_as_the_shutdown_begins_is_served(certs: CertSet) -> None:
    """RFC 9114 section 5.2: the first GOAWAY names the largest stream ID, so
    a request already on its way when the shutdown starts is answered, not
    refused; the second GOAWAY follows and the connection then closes."""
    server = ThreadedServer(quic_bind=["127.0.0.1:0"], certfile=str(certs.cert),
                            keyfile=str(certs.key), access_log=False, graceful_timeout=10)
    with server:
        host, port = server.address(transport="udp")

        async def main() -> tuple[Any, Any, Any]:
            async with aioquic_connect(host, port, aioquic_configuration(str(certs.ca))) as client:
                first = await client.request("GET", "/", f"{host}:{port}")
                server.request_shutdown()
                await asyncio.sleep(0.01)  # the shutdown has begun on the server
                late = await client.request("GET", "/", f"{host}:{port}")
                for _ in range(300):
                    if client.terminated is not None:
                        break
                    await asyncio.sleep(0.01)
                return first, late, client.terminated

        first, late, terminated = asyncio.run(asyncio.wait_for(main(), 30))
        assert server.join(15), "the server did not stop after its last connection closed"
    assert first.status == 200
    assert late.status == 200, "a request sent as the shutdown began was refused"
    assert terminated is not None and terminated.error_code == ErrorCode.H3_NO_ERROR
