"""Fixtures shared by every test directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.certs import CertSet, make_certs  # noqa: E402


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    """A CA, a localhost leaf (localhost, 127.0.0.1, ::1) and a client certificate."""
    return make_certs(tmp_path_factory.mktemp("certs"))
