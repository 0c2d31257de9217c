"""Config -> QUIC settings: every knob reaches aioquic's configuration."""

from __future__ import annotations

import io
import ssl
from pathlib import Path

import pytest
from aioquic.quic.logger import QuicFileLogger
from aioquic.quic.packet import QuicProtocolVersion
from cryptography.hazmat.primitives import serialization

from quicserve.config import Config
from quicserve.quic.settings import client_verify_mode, quic_settings
from tests.support.certs import CertSet


def config(certs: CertSet, **options: object) -> Config:
    return Config(quic_bind=("127.0.0.1:0",), certfile=str(certs.cert), keyfile=str(certs.key),
                  **options)  # type: ignore[arg-type]


def test_defaults(certs: CertSet) -> None:
    settings = quic_settings(config(certs))
    c = settings.configuration
    assert c.is_client is False
    assert c.alpn_protocols == ["h3"]
    assert c.supported_versions == [QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2]
    assert c.certificate is not None and c.private_key is not None
    assert c.quic_logger is None and c.secrets_log_file is None
    assert settings.early_data is True
    assert settings.verify_client == ssl.CERT_NONE


def test_knobs_reach_the_configuration(certs: CertSet, tmp_path: Path) -> None:
    keylog = io.StringIO()
    settings = quic_settings(config(
        certs, quic_alpn=("h3", "hq-interop"), quic_idle_timeout=7, quic_max_data=123456,
        quic_max_stream_data=65432, quic_congestion_control="cubic",
        quic_max_datagram_size=1452, quic_qlog_dir=str(tmp_path), quic_0rtt=False,
        quic_max_streams=17, quic_max_connections=5), keylog=keylog)
    c = settings.configuration
    assert c.alpn_protocols == ["h3", "hq-interop"]
    assert c.idle_timeout == 7
    assert c.max_data == 123456 and c.max_stream_data == 65432
    assert c.congestion_control_algorithm == "cubic"
    assert c.max_datagram_size == 1452
    assert isinstance(c.quic_logger, QuicFileLogger)
    assert c.secrets_log_file is keylog
    assert settings.early_data is False
    assert settings.max_streams == 17 and settings.max_connections == 5


def test_missing_qlog_dir_fails_at_start(certs: CertSet, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        quic_settings(config(certs, quic_qlog_dir=str(tmp_path / "missing")))


def test_encrypted_key_with_password(certs: CertSet, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(certs.key.read_bytes(), password=None)
    encrypted = tmp_path / "key.enc.pem"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret")))
    settings = quic_settings(Config(quic_bind=("127.0.0.1:0",), certfile=str(certs.cert),
                                    keyfile=str(encrypted), keyfile_password="s3cret"))
    assert settings.configuration.private_key is not None
    with pytest.raises((TypeError, ValueError)):
        quic_settings(Config(quic_bind=("127.0.0.1:0",), certfile=str(certs.cert),
                             keyfile=str(encrypted), keyfile_password="wrong"))


@pytest.mark.parametrize(("options", "expected"), [
    ({}, ssl.CERT_NONE),
    ({"ca_certs": "ca.pem"}, ssl.CERT_REQUIRED),
    ({"ca_certs": "ca.pem", "verify_mode": "optional"}, ssl.CERT_OPTIONAL),
    ({"ca_certs": "ca.pem", "verify_mode": "none"}, ssl.CERT_NONE),
])
def test_client_verify_mode_follows_the_tcp_rule(options: dict[str, str], expected: int) -> None:
    assert client_verify_mode(Config(**options)) == expected  # type: ignore[arg-type]
