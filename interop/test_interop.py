"""The quick interop subset for ``make test``, and checks of the endpoint contract.

* ``run_endpoint.sh``: 127 for an unknown TESTCASE or the client role; the
  TESTCASE -> flags mapping (dry run); and, for real, ``retry`` makes the
  server send a Retry while ``handshake`` does not (the evidence is checked
  both in the aioquic client's qlog and on the wire by the relay).
* The quick cases of the native suite (handshake, transfer, retry, http3),
  run exactly as ``make interop`` runs them.
* The Dockerfile and docker-compose.yml, checked without a Docker engine: the
  image's entrypoint is this very ``run_endpoint.sh``.
* The relay's impairments, on loopback sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from interop import run as suite
from interop.relay import Impairment, Relay, packet_kind
from interop.testcases import CASES, ENDPOINT_SCRIPT, UNSUPPORTED, by_name

ROOT = Path(__file__).resolve().parents[1]


def endpoint(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUN_ENDPOINT_NATIVE": "1", **env}
    return subprocess.run(["bash", str(ENDPOINT_SCRIPT)], env=full, capture_output=True,
                          text=True, timeout=30)


# -- run_endpoint.sh -------------------------------------------------------------


@pytest.mark.parametrize("testcase", UNSUPPORTED)
def test_unknown_testcase_exits_127(testcase: str) -> None:
    result = endpoint({"ROLE": "server", "TESTCASE": testcase})
    assert result.returncode == 127, result.stderr


def test_client_role_exits_127() -> None:
    assert endpoint({"ROLE": "client", "TESTCASE": "handshake"}).returncode == 127


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_case_maps_to_a_server_command(case: Any) -> None:
    for testcase in {case.name, case.server_testcase}:
        result = endpoint({"ROLE": "server", "TESTCASE": testcase,
                           "RUN_ENDPOINT_DRY_RUN": "1"})
        assert result.returncode == 0, (testcase, result.stderr)
        argv = result.stdout.splitlines()
        alpn = argv[argv.index("--quic-alpn") + 1]
        assert alpn == ("h3" if testcase == "http3" else "hq-interop,h3")
        assert ("--quic-retry" in argv) == (testcase == "retry")


def _options(argv: list[str]) -> dict[str, str]:
    """``--flag value`` pairs of a command line (flags without a value skipped)."""
    return {flag: value for flag, value in zip(argv, argv[1:])
            if flag.startswith("--") and not value.startswith("--")}


def test_defaults_and_overrides() -> None:
    result = endpoint({"TESTCASE": "handshake", "RUN_ENDPOINT_DRY_RUN": "1",
                       "QLOGDIR": "", "SSLKEYLOGFILE": ""})
    argv = result.stdout.splitlines()
    assert argv[0] == "quicserve"
    pairs = _options(argv)
    assert pairs["--static"] == "/www"
    binds = [v for f, v in zip(argv, argv[1:]) if f == "--quic-bind"]
    assert binds == ["0.0.0.0:443", "[::]:443"]
    assert pairs["--certfile"] == "/certs/cert.pem"
    assert pairs["--keyfile"] == "/certs/priv.key"
    result = endpoint({"TESTCASE": "handshake", "RUN_ENDPOINT_DRY_RUN": "1", "WWW": "/srv/w",
                       "CERTS": "/c", "PORT": "8443", "HOST": "127.0.0.1",
                       "QUICSERVE_PYTHON": "/usr/bin/python3", "QLOGDIR": "/tmp/q"})
    argv = result.stdout.splitlines()
    assert argv[:3] == ["/usr/bin/python3", "-m", "quicserve"]
    pairs = _options(argv)
    assert pairs["--static"] == "/srv/w"
    assert pairs["--quic-bind"] == "127.0.0.1:8443"
    assert pairs["--certfile"] == "/c/cert.pem"
    assert pairs["--quic-qlog-dir"] == "/tmp/q"


# -- the quick subset, for real --------------------------------------------------------


def run_case(name: str, tmp_path: Path) -> Any:
    return asyncio.run(suite.run_case(by_name(name), tmp_path / name))


@pytest.mark.parametrize("name", [c.name for c in CASES if c.quick])
def test_quick_case(name: str, tmp_path: Path) -> None:
    outcome = run_case(name, tmp_path)
    assert outcome.passed, outcome.detail


def _retry_evidence(name: str, tmp_path: Path) -> tuple[bool, bool, bool]:
    """(files ok, Retry in the client's qlog, Retry on the wire) for one case."""
    case = by_name(name)
    work = tmp_path / name
    expected = suite.make_files(work / "www", case)
    certs = suite.make_certs(work / "certs", long_chain=False)
    port = suite.free_udp_port(case.host)
    server = suite.Endpoint(case, www=work / "www", certs=certs, port=port, logs=work / "logs")

    async def go() -> tuple[bool, bool, bool]:
        await server.wait_ready()
        async with Relay((case.host, port), max_seconds=60) as relay:
            reports = await suite.drive(case, suite.client_options(case, relay), list(expected))
            files = {p: h for r in reports for p, (h, _) in r.files.items()}
            return (files == expected, any(r.retry_seen for r in reports),
                    "retry" in relay.stats.server_packet_kinds)
    try:
        return asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        server.stop()


def test_retry_sends_retry(tmp_path: Path) -> None:
    assert _retry_evidence("retry", tmp_path) == (True, True, True)


def test_handshake_sends_no_retry(tmp_path: Path) -> None:
    assert _retry_evidence("handshake", tmp_path) == (True, False, False)


# -- Dockerfile and docker-compose.yml ----------------------------------------------------


def _dockerfile() -> list[str]:
    text = (ROOT / "interop" / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_image_entrypoint_is_the_native_script() -> None:
    lines = _dockerfile()
    assert lines[0].startswith("ARG BASE_IMAGE=") or lines[0].startswith("FROM ")
    assert any(line.startswith("FROM ") for line in lines)
    entry = [line for line in lines if line.startswith("ENTRYPOINT")]
    assert len(entry) == 1
    target = json.loads(entry[0][len("ENTRYPOINT"):])
    assert target == ["/run_endpoint.sh"]
    copies = [line.split()[1:] for line in lines if line.startswith("COPY ")]
    sources = [src for *srcs, dest in copies if dest == target[0] for src in srcs]
    assert sources == ["interop/run_endpoint.sh"]
    assert (ROOT / sources[0]).resolve() == ENDPOINT_SCRIPT
    # quicserve itself is installed from the repository, not from an index.
    assert any("pip install" in line and "/src" in line for line in lines)
    for *srcs, _ in copies:
        for src in srcs:
            assert (ROOT / src).exists(), src


def _load_compose() -> dict[str, Any]:
    path = ROOT / "docker-compose.yml"
    docker = shutil.which("docker")
    if docker:
        result = subprocess.run([docker, "compose", "-f", str(path), "--profile", "interop",
                                 "config", "--format", "json"], capture_output=True, text=True,
                                timeout=60, cwd=ROOT)
        if result.returncode == 0:
            return dict(json.loads(result.stdout))
    try:
        import yaml
    except ImportError:
        # The system Python may have PyYAML even when this environment has not.
        out = subprocess.run(["python3", "-c", "import json, sys, yaml; "
                              "json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
                              str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, "neither docker compose nor PyYAML can read the file"
        return dict(json.loads(out.stdout))
    return dict(yaml.safe_load(path.read_text()))


def _ports(service: dict[str, Any]) -> set[str]:
    result = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            result.add(f"{port.get('published')}:{port['target']}/{port.get('protocol', 'tcp')}")
        else:
            result.add(str(port))
    return result


def _volumes(service: dict[str, Any]) -> set[str]:
    result = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source = Path(volume["source"]).name
            result.add(f"./{source}:{volume['target']}{':ro' if volume.get('read_only') else ''}")
        else:
            result.add(str(volume))
    return result


def test_compose_file() -> None:
    compose = _load_compose()
    services = compose["services"]
    main = services["quicserve"]
    assert "profiles" not in main
    assert main["build"]["dockerfile"] == "interop/Dockerfile"
    assert (ROOT / "interop" / "Dockerfile").exists()
    assert {"443:443/tcp", "443:443/udp"} <= _ports(main)
    assert {"./www:/www:ro", "./certs:/certs:ro"} <= _volumes(main)
    command = " ".join(main["command"])
    assert "--static=/www" in command
    assert "--quic-bind=0.0.0.0:443" in command and "--quic-bind=[::]:443" in command
    for name in ("sim", "server", "client"):
        assert services[name]["profiles"] == ["interop"], name
    server = services["server"]
    assert "entrypoint" not in server  # the image's: run_endpoint.sh
    assert server["environment"]["ROLE"] == "server"
    assert services["client"]["environment"]["ROLE"] == "client"


# -- the relay ------------------------------------------------------------------------------


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.sources: list[tuple[Any, ...]] = []
        self.received: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.sources.append(addr)
        self.received.append(data)
        self.transport.sendto(data, addr)


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.append(data)


async def _exchange(impairment: Impairment, count: int, *, gap: float = 0.0,
                    size: int = 100) -> tuple[_Echo, _Sink, Relay]:
    loop = asyncio.get_running_loop()
    echo_transport, echo = await loop.create_datagram_endpoint(_Echo,
                                                               local_addr=("127.0.0.1", 0))
    server = echo_transport.get_extra_info("sockname")
    relay = await Relay(server, impairment=impairment, max_seconds=20).start()
    client_transport, sink = await loop.create_datagram_endpoint(_Sink,
                                                                 local_addr=("127.0.0.1", 0))
    try:
        for i in range(count):
            client_transport.sendto(i.to_bytes(4, "big") * (size // 4), relay.address)
            await asyncio.sleep(gap)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(sink.received) + relay.stats.dropped * 2 >= count:
                break
        await asyncio.sleep(0.05)
    finally:
        relay.close()
        client_transport.close()
        echo_transport.close()
    return echo, sink, relay


def test_relay_passes_everything_by_default() -> None:
    echo, sink, relay = asyncio.run(_exchange(Impairment(), 50))
    assert len(echo.received) == 50 and len(sink.received) == 50
    assert relay.stats.dropped == 0 and relay.stats.corrupted == 0


def test_relay_loss_respects_the_burst_cap() -> None:
    echo, sink, relay = asyncio.run(_exchange(Impairment(loss=0.9, burst=2, seed=3), 300))
    assert relay.stats.dropped > 200
    # Never more than two lost in a row towards the server.
    seen = {int.from_bytes(d[:4], "big") for d in echo.received}
    run = longest = 0
    for i in range(300):
        run = 0 if i in seen else run + 1
        longest = max(longest, run)
    assert longest <= 2


def test_relay_corrupts_one_byte() -> None:
    echo, _, relay = asyncio.run(_exchange(Impairment(corrupt=1.0, burst=1000, seed=5), 20))
    assert relay.stats.corrupted >= 20
    assert len(echo.received) == 20
    for data in echo.received:
        words = [data[i:i + 4] for i in range(0, len(data), 4)]
        original = max(set(words), key=words.count) * 25
        assert sum(bin(a ^ b).count("1") for a, b in zip(data, original)) == 1


def test_relay_drop_list() -> None:
    echo, _, relay = asyncio.run(_exchange(Impairment(drop_to_server=(2, 3)), 5, gap=0.01))
    assert [int.from_bytes(d[:4], "big") for d in echo.received] == [0, 3, 4]


def test_relay_rebinding_changes_the_source_port() -> None:
    echo, sink, relay = asyncio.run(_exchange(
        Impairment(rebind_first=0.1, rebind_every=0.1), 40, gap=0.01))
    ports = {addr[1] for addr in echo.sources}
    assert relay.stats.rebinds >= 2 and len(ports) >= 2


def test_relay_address_rebinding_changes_the_source_address() -> None:
    echo, sink, relay = asyncio.run(_exchange(
        Impairment(rebind_first=0.1, rebind_every=0.1, rebind_addr=True), 40, gap=0.01))
    hosts = {addr[0] for addr in echo.sources}
    assert len(hosts) >= 2 and "127.0.0.1" in hosts


def test_relay_delay() -> None:
    async def go() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await _exchange(Impairment(delay=0.1), 1)
        return loop.time() - start
    assert asyncio.run(go()) >= 0.2


def test_packet_kind() -> None:
    v1_initial = bytes([0xC0]) + (1).to_bytes(4, "big") + b"\x00" * 20
    v1_handshake = bytes([0xE0]) + (1).to_bytes(4, "big") + b"\x00" * 20
    v1_retry = bytes([0xF0]) + (1).to_bytes(4, "big") + b"\x00" * 20
    v2_initial = bytes([0xD0]) + (0x6B3343CF).to_bytes(4, "big") + b"\x00" * 20
    assert packet_kind(v1_initial) == ("initial", 1)
    assert packet_kind(v1_handshake) == ("handshake", 1)
    assert packet_kind(v1_retry) == ("retry", 1)
    assert packet_kind(v2_initial) == ("initial", 0x6B3343CF)
    assert packet_kind(bytes([0x40]) + b"\x00" * 20) is None
    assert packet_kind(bytes([0x80]) + b"\x00" * 4) == ("version_negotiation", 0)


def test_native_suite_prints_the_summary_line(tmp_path: Path) -> None:
    """``make interop`` output format: a table, then 'N passed, M failed'."""
    result = subprocess.run([sys.executable, str(ROOT / "interop" / "run.py"), "--cases",
                             "handshake"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "1 passed, 0 failed", result.stdout + result.stderr
    assert any(line.startswith("| handshake | pass |") for line in lines)
    assert result.returncode == 0


def test_free_port_helper_binds() -> None:
    port = suite.free_udp_port("127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
        assert suite.udp_port_bound(port)
