"""Client certificates on QUIC, with the TCP listener's meaning of ``--verify-mode``.

Theory of operation
-------------------
aioquic's server never asks for a client certificate and never verifies one
(its TLS layer keeps a ``_request_client_certificate`` switch "for test
purposes" and stores whatever certificate the client sends).  quicserve
needs the same behaviour as its TCP listener (``ssl`` with ``--ca-certs``):

* ``required`` -- a client without a certificate, or with one that does not
  verify against ``--ca-certs``, is refused;
* ``optional`` -- a client may send none; one it sends must verify;
* ``none`` -- no certificate is asked for.

:class:`ClientAuthQuicConnection` turns the switch on right after aioquic
builds its TLS context (``_initialize``), so the CertificateRequest goes out
in the server's first flight.  The check itself (:meth:`ClientAuth.check`)
runs when the session sees HandshakeCompleted, before any request event
that follows it is handed to the adapter; a refusal closes the connection
with the TLS alert a TCP server would send, as a QUIC CRYPTO_ERROR
(0x100 + alert): ``certificate_required`` (116) or ``bad_certificate`` (42).

Resumption would skip all of this: a PSK handshake carries no certificate and
aioquic sends no CertificateRequest for it.  So when client certificates are
on, the session factory issues no session tickets (no resumption, no 0-RTT).

The private aioquic names used here (``tls._request_client_certificate``,
``tls._peer_certificate``, ``tls._peer_certificate_chain``, ``_initialize``)
are pinned by ``tests/unit/quic/test_connection.py``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import Alert, AlertDescription, verify_certificate
from cryptography import x509
from cryptography.x509.oid import NameOID

from .internals import ManagedQuicConnection

#: ``ssl.getpeercert()`` names for the usual subject attributes.
_SSL_NAMES = {
    NameOID.COMMON_NAME: "commonName",
    NameOID.COUNTRY_NAME: "countryName",
    NameOID.LOCALITY_NAME: "localityName",
    NameOID.STATE_OR_PROVINCE_NAME: "stateOrProvinceName",
    NameOID.ORGANIZATION_NAME: "organizationName",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "organizationalUnitName",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.DOMAIN_COMPONENT: "domainComponent",
}

Subject = tuple[tuple[tuple[str, str], ...], ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a client certificate was refused, as a QUIC transport error."""

    error_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """``mode`` is ``ssl.CERT_OPTIONAL`` or ``ssl.CERT_REQUIRED``."""

    mode: int
    ca_certs: str | None

    def check(self, quic: Any) -> Refusal | None:
        """Verify the certificate the client sent (if any); None accepts."""
        certificate = quic.tls._peer_certificate
        if certificate is None:
            if self.mode == ssl.CERT_REQUIRED:
                return Refusal(_alert(AlertDescription.certificate_required),
                               "client certificate required")
            return None
        try:
            verify_certificate(certificate=certificate,
                               chain=list(quic.tls._peer_certificate_chain),
                               cafile=self.ca_certs)
        except Alert as exc:
            return Refusal(_alert(exc.description), f"bad client certificate: {exc}")
        return None


def _alert(description: int) -> int:
    return int(QuicErrorCode.CRYPTO_ERROR) + int(description)


def peer_subject(quic: Any) -> Subject | None:
    """The client certificate's subject in ``ssl.getpeercert()`` form."""
    certificate: x509.Certificate | None = quic.tls._peer_certificate
    if certificate is None:
        return None
    return tuple(
        tuple((_SSL_NAMES.get(attribute.oid, attribute.oid.dotted_string), str(attribute.value))
              for attribute in rdn)
        for rdn in certificate.subject.rdns)


class ClientAuthQuicConnection(ManagedQuicConnection):
    """A :class:`ManagedQuicConnection` whose TLS layer asks for a client
    certificate in every (full) handshake."""

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self.tls._request_client_certificate = True
