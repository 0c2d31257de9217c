"""The server-side TLS context for TCP (HTTP/1.1 and HTTP/2 over TLS).

Theory of operation
-------------------
:func:`create_ssl_context` builds one :class:`ssl.SSLContext` per server from
the configured files; ``transport/tcp.py`` hands it to
``loop.create_server``.  Choices, and why:

* TLS 1.2 is the floor (RFC 9113 9.2 requires it for HTTP/2; older versions
  are broken).  TLS 1.3 cipher suites are OpenSSL's defaults; for TLS 1.2 only
  forward-secret AEAD suites are offered, which also satisfies HTTP/2's
  cipher blacklist (RFC 9113 Appendix A), and compression is off (CRIME).
* ALPN carries the protocols the server speaks, most preferred first
  (``["h2", "http/1.1"]``); the transport picks the adapter from the result.
* Client certificates are verified when ``ca_certs`` is given (``required``
  unless ``verify_mode`` says ``optional`` or ``none``).
* ``keylog_file`` (SSLKEYLOGFILE) writes session secrets for Wireshark; for
  debugging only.

Every failure (missing file, wrong password, key not matching the
certificate, bad CA bundle) raises :class:`~quicserve.errors.TLSConfigError`
naming the file, so ``server.py`` can print one line and exit.
"""

from __future__ import annotations

import ssl
from typing import Sequence

from ..errors import TLSConfigError

#: TLS 1.2 suites: ECDHE/DHE key exchange with AES-GCM or ChaCha20-Poly1305.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"

_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def create_ssl_context(
    *,
    certfile: str,
    keyfile: str,
    password: str | None,
    ca_certs: str | None,
    verify_mode: str | None,
    alpn: Sequence[str],
    keylog_file: str | None,
) -> ssl.SSLContext:
    """A server :class:`ssl.SSLContext` for TCP listeners.

    Error handling: raises :class:`TLSConfigError` (a ``QuicserveError``)
    whose message names the offending file and the reason; nothing else.

    Resource handling: reads the files once; the context holds no open file
    except the key log, which OpenSSL appends to for the process's lifetime.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(context, certfile, keyfile, password)
    if ca_certs is not None:
        _load_ca(context, ca_certs)
    context.verify_mode = _verify_mode(verify_mode, ca_certs)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if keylog_file:
        try:
            context.keylog_filename = keylog_file
        except OSError as exc:
            raise TLSConfigError(f"cannot open the TLS key log {keylog_file}: {exc}") from exc
    return context


def _load_chain(context: ssl.SSLContext, certfile: str, keyfile: str, password: str | None) -> None:
    try:
        context.load_cert_chain(certfile, keyfile, password)
    except FileNotFoundError as exc:
        missing = exc.filename or f"{certfile} or {keyfile}"
        raise TLSConfigError(f"TLS certificate or key file not found: {missing}") from exc
    except OSError as exc:  # includes ssl.SSLError
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise TLSConfigError(
            f"cannot load the TLS certificate {certfile} with key {keyfile}: {reason} "
            "(wrong password, a key that does not match, or not PEM?)"
        ) from exc


def _load_ca(context: ssl.SSLContext, ca_certs: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_certs)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"CA file not found: {ca_certs}") from exc
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise TLSConfigError(f"cannot load the CA file {ca_certs}: {reason}") from exc


def _verify_mode(verify_mode: str | None, ca_certs: str | None) -> ssl.VerifyMode:
    if verify_mode is None:
        return ssl.CERT_REQUIRED if ca_certs is not None else ssl.CERT_NONE
    try:
        mode = _VERIFY_MODES[verify_mode]
    except KeyError:
        raise TLSConfigError(
            f"unknown verify mode {verify_mode!r} (none, optional, required)") from None
    if mode is not ssl.CERT_NONE and ca_certs is None:
        raise TLSConfigError(f"verify mode {verify_mode!r} needs a CA file (--ca-certs)")
    return mode
