"""Headless Chromium loads a page from quicserve over HTTP/3.

The server listens on UDP only, so the page cannot come over anything else;
Chromium is told to use QUIC for the origin (``--origin-to-force-quic-on``)
and to accept the test certificate by its SPKI hash.  The page's script
writes the navigation's ``nextHopProtocol`` into the DOM, which
``--dump-dom`` prints once ``--virtual-time-budget`` lets the script run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.certs import CertSet
from tests.support.server import ThreadedServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = b"""<!doctype html>
<html><head><title>quicserve</title></head><body>
<div id="protocol">pending</div>
<script>
const entry = performance.getEntriesByType("navigation")[0];
document.getElementById("protocol").textContent = "protocol=" + entry.nextHopProtocol;
</script>
</body></html>
"""


async def page(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(PAGE)).encode())]})
    await send({"type": "http.response.body", "body": PAGE})


def dump_dom(url: str, origin: str, spki: str, profile: Path, timeout: float = 60.0) -> str:
    """Run headless Chromium on ``url``; its serialized DOM.  The whole
    process group is killed if it outlives ``timeout``."""
    command = [
        str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-quic",
        f"--origin-to-force-quic-on={origin}", f"--ignore-certificate-errors-spki-list={spki}",
        "--virtual-time-budget=5000", "--dump-dom", url,
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package chromium)")
def test_chromium_loads_a_page_over_http3(certs: CertSet, tmp_path: Path) -> None:
    with ThreadedServer(page, quic_bind=["127.0.0.1:0"], certfile=str(certs.cert),
                        keyfile=str(certs.key), lifespan="off", access_log=False) as server:
        host, port = server.address(transport="udp")
        assert not [a for a in server.addresses if a.transport == "tcp"], "UDP only"
        dom = dump_dom(f"https://{host}:{port}/", f"{host}:{port}", certs.spki_sha256_b64(),
                       tmp_path / "profile")
        stats = server.statistics()
    match = re.search(r'<div id="protocol">([^<]*)</div>', dom)
    assert match is not None, dom[-2000:]
    assert match.group(1) == "protocol=h3"
    assert stats["requests"] >= 1 and stats["datagrams_received"] > 0
