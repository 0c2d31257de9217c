"""Ephemeral certificates for tests, made with the same code as ``certs/generate.py``."""

from __future__ import annotations

import hashlib
import base64
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from cryptography import x509
from cryptography.hazmat.primitives import serialization

_ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quicserve_certs_generate",
                                                  _ROOT / "certs" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class CertSet:
    directory: Path
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    def spki_sha256_b64(self) -> str:
        """The leaf's SPKI hash, as Chromium's --ignore-certificate-errors-spki-list wants."""
        leaf = x509.load_pem_x509_certificates(self.cert.read_bytes())[0]
        spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def make_certs(directory: Path) -> CertSet:
    paths = _generator().generate(directory, force=True)
    return CertSet(directory=directory, ca=paths["ca.pem"], cert=paths["cert.pem"],
                   key=paths["key.pem"], client_cert=paths["client.pem"],
                   client_key=paths["client.key"])
