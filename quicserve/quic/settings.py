"""Config -> aioquic ``QuicConfiguration``, and the per-server QUIC settings.

Theory of operation
-------------------
``Config`` is inert data; this module turns its ``quic_*`` and TLS fields into
the one :class:`QuicSettings` value a UDP endpoint holds for its lifetime.
Every new :class:`~quicserve.quic.connection.QuicSession` is built from it.

What aioquic's ``QuicConfiguration`` cannot express travels beside it in
:class:`QuicSettings`:

* whether 0-RTT is offered at all (``--no-quic-0rtt``): aioquic's server always
  offers it, so the session turns it off on the TLS context;
* client-certificate verification (``--ca-certs``/``--verify-mode``): aioquic's
  server never asks for or verifies a client certificate, so the session does
  both (``quic/client_auth.py``), with the same required/optional/none meaning
  as the TCP listener;
* the concurrent bidirectional stream limit, which aioquic hard-codes.

Resource handling: the only resources are the qlog directory, checked when
the logger is created, and the key-log file, which the caller opens and
closes (``transport/udp.py``): this module never opens a file itself.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, TextIO, cast

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.logger import QuicFileLogger
from aioquic.quic.packet import QuicProtocolVersion

if TYPE_CHECKING:
    from ..config import Config

#: QUIC versions quicserve speaks, in order of preference.
SUPPORTED_VERSIONS: tuple[int, ...] = (
    QuicProtocolVersion.VERSION_1,
    QuicProtocolVersion.VERSION_2,
)

_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class QuicSettings:
    """Everything a UDP endpoint needs to create server-side QUIC sessions."""

    #: Shared by every session of the endpoint; aioquic never mutates it.
    configuration: QuicConfiguration
    #: Offer and accept 0-RTT on resumed connections.
    early_data: bool
    #: ``ssl.CERT_NONE``, ``CERT_OPTIONAL`` or ``CERT_REQUIRED`` for client certificates.
    verify_client: int
    #: CA bundle client certificates are verified with.
    ca_certs: str | None
    #: Initial (and steady-state) limit on concurrent client bidirectional streams.
    max_streams: int
    #: Most concurrent QUIC connections of one endpoint.
    max_connections: int


def client_verify_mode(config: Config) -> int:
    """The client-certificate mode, with the TCP listener's defaulting rule:
    ``required`` when ``--ca-certs`` is given without ``--verify-mode``."""
    if config.verify_mode is not None:
        return _VERIFY_MODES[config.verify_mode]
    return ssl.CERT_REQUIRED if config.ca_certs else ssl.CERT_NONE


def quic_settings(config: Config, *, keylog: IO[str] | None = None) -> QuicSettings:
    """Build the endpoint's QUIC settings from ``config``.

    Error handling: an unreadable certificate or key, or a wrong
    ``--keyfile-password``, raises ``OSError``/``ValueError`` from here, at
    start-up; a missing ``--quic-qlog-dir`` raises ``ValueError``.
    """
    return QuicSettings(
        configuration=quic_configuration(config, keylog=keylog),
        early_data=config.quic_0rtt,
        verify_client=client_verify_mode(config),
        ca_certs=config.ca_certs,
        max_streams=config.quic_max_streams,
        max_connections=config.quic_max_connections,
    )


def quic_configuration(config: Config, *, keylog: IO[str] | None = None) -> QuicConfiguration:
    """The server-side aioquic configuration for ``config``."""
    if config.certfile is None:
        raise ValueError("QUIC needs --certfile and --keyfile")
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=list(config.quic_alpn),
        idle_timeout=config.quic_idle_timeout,
        max_data=config.quic_max_data,
        max_stream_data=config.quic_max_stream_data,
        congestion_control_algorithm=config.quic_congestion_control,
        max_datagram_size=config.quic_max_datagram_size,
        supported_versions=list(SUPPORTED_VERSIONS),
        secrets_log_file=cast(TextIO, keylog),
        quic_logger=QuicFileLogger(config.quic_qlog_dir) if config.quic_qlog_dir else None,
    )
    configuration.load_cert_chain(config.certfile, config.keyfile,
                                  password=config.keyfile_password)
    if config.ca_certs:
        configuration.load_verify_locations(cafile=config.ca_certs)
    return configuration
