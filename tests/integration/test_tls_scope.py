"""The ASGI "tls" scope extension with real clients presenting a client certificate.

The server runs with ``--ca-certs <ca> --verify-mode required``; curl (HTTP/1.1
and HTTP/2 over TLS) and aioquic's client (HTTP/3) present the test client
certificate, and an app returns its scope's ``extensions["tls"]`` as JSON.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import urllib.request
from typing import Any, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support.certs import CertSet
from tests.support.quic_peers import aioquic_configuration, aioquic_connect
from tests.support.server import ThreadedServer

CURL = shutil.which("curl")
TLS13_SUITES = {0x1301, 0x1302, 0x1303}


async def tls_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps({
        "http_version": scope["http_version"],
        "scheme": scope["scheme"],
        "tls": scope["extensions"].get("tls"),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def der(pem: str) -> bytes:
    """A PEM certificate's DER bytes (compares certificates, not formatting)."""
    return ssl.PEM_cert_to_DER_cert(pem)


def first_cert(path: str) -> x509.Certificate:
    with open(path, "rb") as handle:
        return x509.load_pem_x509_certificates(handle.read())[0]


@pytest.fixture(scope="module")
def server(certs: CertSet) -> Iterator[ThreadedServer]:
    with ThreadedServer(tls_app, bind=["127.0.0.1:0"], insecure_bind=["127.0.0.1:0"],
                        quic_bind=["127.0.0.1:0"], certfile=str(certs.cert),
                        keyfile=str(certs.key), ca_certs=str(certs.ca), verify_mode="required",
                        lifespan="off", access_log=False) as running:
        yield running


def check_client_cert(tls: dict[str, Any], certs: CertSet) -> None:
    client = first_cert(str(certs.client_cert))
    assert tls["client_cert_chain"], tls
    assert der(tls["client_cert_chain"][0]) == client.public_bytes(Encoding.DER)
    assert tls["client_cert_name"] == client.subject.rfc4514_string()
    assert tls["client_cert_error"] is None
    assert tls["tls_version"] == 0x0304
    assert tls["cipher_suite"] in TLS13_SUITES


def server_cert_der(certs: CertSet) -> bytes:
    return first_cert(str(certs.cert)).public_bytes(Encoding.DER)


@pytest.mark.skipif(CURL is None, reason="curl missing")
@pytest.mark.parametrize(("flag", "version"), [("--http1.1", "1.1"), ("--http2", "2")])
def test_curl_client_certificate_reaches_the_app(server: ThreadedServer, certs: CertSet,
                                                 flag: str, version: str) -> None:
    assert CURL is not None
    host, port = server.address(transport="tcp", secure=True)
    result = subprocess.run(
        [CURL, "--silent", "--show-error", "--max-time", "20", flag, "--tlsv1.3",
         "--cacert", str(certs.ca), "--cert", str(certs.client_cert),
         "--key", str(certs.client_key), f"https://{host}:{port}/tls"],
        capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert (got["http_version"], got["scheme"]) == (version, "https")
    check_client_cert(got["tls"], certs)
    # The configured leaf: the only certificate the TCP listener presents.
    assert der(got["tls"]["server_cert"]) == server_cert_der(certs)


@pytest.mark.skipif(CURL is None, reason="curl missing")
def test_curl_without_client_certificate_is_refused(server: ThreadedServer,
                                                    certs: CertSet) -> None:
    """The verify mode is required: no certificate, no request (so the app
    never sees a TLS scope without one)."""
    assert CURL is not None
    host, port = server.address(transport="tcp", secure=True)
    result = subprocess.run(
        [CURL, "--silent", "--max-time", "20", "--cacert", str(certs.ca),
         f"https://{host}:{port}/tls"], capture_output=True, timeout=30)
    assert result.returncode != 0
    assert result.stdout == b""


def test_cleartext_scope_has_no_tls_extension(server: ThreadedServer) -> None:
    host, port = server.address(transport="tcp", secure=False)
    with urllib.request.urlopen(f"http://{host}:{port}/tls", timeout=10) as response:
        got = json.loads(response.read())
    assert got["scheme"] == "http" and got["tls"] is None


def test_h3_client_certificate_reaches_the_app(server: ThreadedServer, certs: CertSet) -> None:
    host, port = server.address(transport="udp")
    configuration = aioquic_configuration(str(certs.ca))
    configuration.load_cert_chain(str(certs.client_cert), str(certs.client_key))

    async def main() -> dict[str, Any]:
        async with aioquic_connect(host, port, configuration) as client:
            first = await asyncio.wait_for(client.request("GET", "/tls", f"{host}:{port}"), 10)
            second = await asyncio.wait_for(client.request("GET", "/tls", f"{host}:{port}"), 10)
            assert first.status == 200 and second.status == 200
            assert first.body == second.body  # one connection, the same facts
            result: dict[str, Any] = json.loads(first.body)
            return result

    got = asyncio.run(asyncio.wait_for(main(), 30))
    assert (got["http_version"], got["scheme"]) == ("3", "https")
    check_client_cert(got["tls"], certs)
    assert der(got["tls"]["server_cert"]) == server_cert_der(certs)
