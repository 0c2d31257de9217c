"""transport/tlsinfo.leaf_certificate_pem: the TCP listener's server_cert."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from quicserve.transport.tlsinfo import leaf_certificate_pem
from tests.support.certs import CertSet


def test_the_first_certificate_of_a_chain_file(certs: CertSet, tmp_path: Path) -> None:
    leaf = certs.cert.read_bytes()
    chain = tmp_path / "chain.pem"
    chain.write_bytes(leaf + certs.ca.read_bytes())  # leaf first, then its issuer
    pem = leaf_certificate_pem(str(chain))
    assert pem is not None
    first = x509.load_pem_x509_certificates(leaf)[0]
    assert x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER) == \
        first.public_bytes(Encoding.DER)


def test_unreadable_or_not_pem_is_none(tmp_path: Path) -> None:
    assert leaf_certificate_pem(str(tmp_path / "missing.pem")) is None
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate\n")
    assert leaf_certificate_pem(str(garbage)) is None
