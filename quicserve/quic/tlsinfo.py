"""What a QUIC connection's TLS 1.3 handshake tells the ASGI "tls" extension.

Theory of operation
-------------------
:func:`quic_tls_info` reads aioquic's TLS context once per session (the
session calls it when it first builds a ``ConnectionInfo``, and again only
if the verified client certificate changes, i.e. right after the handshake):

* QUIC always runs TLS 1.3 (RFC 9001), so ``tls_version`` is 0x0304;
* ``cipher_suite`` is the negotiated suite of aioquic's key schedule
  (``tls.key_schedule``, None until the ServerHello is decided);
* ``server_cert`` is the configured certificate in PEM (cached per
  certificate object: every session of a server shares it);
* the client certificate and the chain it came with are reported only when
  ``quic/client_auth.py`` verified them (the caller says so with
  ``verified``), as PEM strings leaf first, plus the leaf's subject as an
  RFC 4514 string.  A certificate that fails verification closes the
  connection, so ``client_cert_error`` stays None.

The aioquic names read here (``tls.key_schedule``, ``tls._peer_certificate``,
``tls._peer_certificate_chain``, ``configuration.certificate``) are the ones
``client_auth.py`` already relies on, pinned by its tests.
"""

from __future__ import annotations

import functools
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..interfaces import TlsInfo

_TLS_1_3 = 0x0304


def quic_tls_info(quic: Any, *, verified: bool) -> TlsInfo:
    """The :class:`TlsInfo` of one QUIC connection (an aioquic QuicConnection)."""
    tls = quic.tls
    schedule = getattr(tls, "key_schedule", None) if tls is not None else None
    certificate = quic.configuration.certificate
    chain: tuple[str, ...] = ()
    name: str | None = None
    peer: x509.Certificate | None = tls._peer_certificate if tls is not None else None
    if verified and peer is not None:
        chain = tuple(_pem(c) for c in [peer, *tls._peer_certificate_chain])
        name = peer.subject.rfc4514_string()
    return TlsInfo(
        tls_version=_TLS_1_3,
        cipher_suite=int(schedule.cipher_suite) if schedule is not None else None,
        server_cert=_pem(certificate) if certificate is not None else None,
        client_cert_chain=chain,
        client_cert_name=name,
    )


@functools.lru_cache(maxsize=64)
def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(Encoding.PEM).decode("ascii")
