#!/usr/bin/env python3
"""Make a development CA and a localhost leaf certificate.

Writes into the directory given (default: this file's directory):

* ``ca.pem`` / ``ca.key``      the development CA (trust it in a client to avoid -k)
* ``cert.pem`` / ``key.pem``   the leaf for localhost, 127.0.0.1 and ::1, signed by the CA,
                               with the chain (leaf, then CA) in ``cert.pem``
* ``client.pem`` / ``client.key`` a client certificate signed by the CA (mutual TLS tests)

Keys are ECDSA P-256 (what every QUIC and TLS 1.3 client accepts).  Keys are
git-ignored; run ``make certs`` or this script to (re)create them.
Existing files are kept unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "quicserve development"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(days: int = 825) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("quicserve development CA"))
        .issuer_name(_name("quicserve development CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    common_name: str = "localhost",
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
    client: bool = False,
    days: int = 90,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf signed by the CA.  ``days`` stays under 398 so browsers accept it."""
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _pem_cert(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _pem_key(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def generate(directory: Path | str = HERE, *, force: bool = False) -> dict[str, Path]:
    """Write the CA, the localhost leaf and a client certificate; return their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in
             ("ca.pem", "ca.key", "cert.pem", "key.pem", "client.pem", "client.key")}
    if not force and all(p.exists() for p in paths.values()):
        return paths
    ca_cert, ca_key = make_ca()
    leaf, leaf_key = make_leaf(ca_cert, ca_key)
    client, client_key = make_leaf(ca_cert, ca_key, common_name="quicserve test client",
                                   hosts=("client.localhost",), client=True)
    _write(paths["ca.pem"], _pem_cert(ca_cert))
    _write(paths["ca.key"], _pem_key(ca_key), private=True)
    _write(paths["cert.pem"], _pem_cert(leaf, ca_cert))
    _write(paths["key.pem"], _pem_key(leaf_key), private=True)
    _write(paths["client.pem"], _pem_cert(client))
    _write(paths["client.key"], _pem_key(client_key), private=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make a development CA and localhost certificate.")
    parser.add_argument("directory", nargs="?", default=str(HERE))
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    paths = generate(args.directory, force=args.force)
    print(f"certificate: {paths['cert.pem']}\nkey:         {paths['key.pem']}\n"
          f"CA:          {paths['ca.pem']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
