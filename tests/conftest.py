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


#: Programs the integration tests drive.  Tests skip when one is missing so a
#: developer without it can still run the rest; under ``make test`` (and so CI)
#: the Makefile sets QUICSERVE_REQUIRE_TOOLS=1 and a missing program fails the
#: run instead, so a broken install step can never pass as skipped tests.
REQUIRED_TOOLS = ("curl", "gtlsclient", "h2load", "chromium")


def pytest_sessionstart(session: pytest.Session) -> None:
    import os
    import shutil

    if os.environ.get("QUICSERVE_REQUIRE_TOOLS") != "1":
        return
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.exit(f"QUICSERVE_REQUIRE_TOOLS=1 but not installed: {', '.join(missing)} "
                    f"(run `make deps`)", returncode=1)
