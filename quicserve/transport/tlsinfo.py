"""What a TCP connection's ``ssl`` session tells the ASGI "tls" extension.

Theory of operation
-------------------
:func:`ssl_tls_info` turns the ``ssl.SSLObject`` of an accepted TLS
connection into a :class:`~quicserve.interfaces.TlsInfo`, once per
connection (``transport/tcp.py`` calls it while it builds the connection's
``ConnectionInfo``).  The ASGI extension wants IANA numbers, while ``ssl``
speaks OpenSSL names, so:

* ``tls_version`` maps ``SSLObject.version()`` ("TLSv1.3") through a table;
* ``cipher_suite`` maps the OpenSSL cipher name of ``SSLObject.cipher()``
  through the ids of ``SSLContext.get_ciphers()`` (OpenSSL's cipher id is
  ``0x0300XXXX`` where ``XXXX`` is the IANA number); the table is built once
  per SSLContext and cached;
* the client certificate is reported only when ``ssl`` verified it
  (``getpeercert()`` is empty otherwise): its DER form becomes the one PEM of
  ``client_cert_chain`` (Python 3.11's ``ssl`` does not expose the rest of
  the chain) and its subject an RFC 4514 string.  A certificate that fails
  verification fails the handshake, so ``client_cert_error`` stays None.

``ssl`` cannot tell which certificate the server itself presented, so
``server_cert`` is what the caller passes: the listener's configured leaf
certificate (the SSLContext holds one chain), read from the certfile with
:func:`leaf_certificate_pem` when the listener starts, or None when unknown.

Never, per connection: perform I/O (only :func:`leaf_certificate_pem`
reads a file, once per listener start) or raise for a connection's
certificate (an unparsable one is reported without a name).
"""

from __future__ import annotations

import ssl
import weakref
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..interfaces import TlsInfo
from ..log import error_logger

_VERSIONS = {
    "TLSv1.3": 0x0304,
    "TLSv1.2": 0x0303,
    "TLSv1.1": 0x0302,
    "TLSv1": 0x0301,
}

#: OpenSSL cipher name -> IANA cipher suite number, per SSLContext.
_suites: weakref.WeakKeyDictionary[ssl.SSLContext, dict[str, int]] = weakref.WeakKeyDictionary()


def ssl_tls_info(ssl_object: Any, *, server_cert: str | None = None) -> TlsInfo:
    """The :class:`TlsInfo` of one TLS connection (``ssl.SSLObject``)."""
    version = ssl_object.version()
    cipher = ssl_object.cipher()
    chain: tuple[str, ...] = ()
    name: str | None = None
    if ssl_object.getpeercert():  # verified (CERT_OPTIONAL / CERT_REQUIRED)
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            chain = (ssl.DER_cert_to_PEM_cert(der),)
            name = _subject_name(der)
    return TlsInfo(
        tls_version=_VERSIONS.get(version) if version else None,
        cipher_suite=_cipher_suite(ssl_object.context, cipher[0]) if cipher else None,
        server_cert=server_cert,
        client_cert_chain=chain,
        client_cert_name=name,
    )


def _cipher_suite(context: ssl.SSLContext, name: str) -> int | None:
    table = _suites.get(context)
    if table is None:
        table = _suites[context] = {
            entry["name"]: entry["id"] & 0xFFFF for entry in context.get_ciphers()}
        # TLS 1.3 suites are not always listed by get_ciphers() (they are
        # configured apart from the cipher string); their names are standard.
        table.setdefault("TLS_AES_128_GCM_SHA256", 0x1301)
        table.setdefault("TLS_AES_256_GCM_SHA384", 0x1302)
        table.setdefault("TLS_CHACHA20_POLY1305_SHA256", 0x1303)
    return table.get(name)


def _subject_name(der: bytes) -> str | None:
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return None


def leaf_certificate_pem(certfile: str) -> str | None:
    """The first certificate of ``certfile`` in PEM: the one every TLS
    connection of a TCP listener presents.  Read when the listener starts,
    as its SSLContext was (never cached: a renewed certificate is picked up
    by the next start).  None, logged at debug, if the file cannot be read
    again: the SSLContext loaded it just before, and that is what counts."""
    try:
        with open(certfile, "rb") as fh:
            certificates = x509.load_pem_x509_certificates(fh.read())
    except (OSError, ValueError) as exc:
        error_logger.debug("server_cert for the tls extension unavailable: %s", exc)
        return None
    return certificates[0].public_bytes(Encoding.PEM).decode("ascii")
