#!/usr/bin/env python3
"""The native QUIC interop suite: ``make interop`` (no Docker needed).

Theory of operation
-------------------
For every :class:`~interop.testcases.Case`:

1. make a ``www`` directory with random files of the runner's sizes, and a
   ``certs`` directory with ``cert.pem`` / ``priv.key`` (the dev CA's leaf
   from ``certs/generate.py``, or a 9-certificate chain for
   ``amplificationlimit``, as the runner makes);
2. start ``interop/run_endpoint.sh`` (the script the Docker image runs) with
   ``ROLE=server``, the runner's server ``TESTCASE``, and the native overrides
   ``WWW``, ``CERTS``, ``PORT`` (a free port), ``HOST``, ``SSLKEYLOGFILE`` and
   ``QLOGDIR``, and wait until its UDP port is bound;
3. put :class:`~interop.relay.Relay` in front of it (the network simulator's
   stand-in: loss, corruption, delay, blackholes, rebinding, or nothing) and
   drive it with the clients: aioquic's (``interop/client.py``; H0 for
   hq-interop, H3 for http3) and, where the case says so, ngtcp2's
   ``gtlsclient`` (HTTP/3);
4. check every downloaded file by SHA-256 and the protocol evidence the
   runner checks (:func:`evaluate`), then stop the server (SIGTERM to the
   process group it was started in, SIGKILL after a grace period).

Prints one table row per case and ``N passed, M failed`` last; exits 1 if any
case failed.  ``--cases a,b`` runs a subset, ``--quick`` the subset
``make test`` runs, ``--keep`` keeps the work directories (logs, qlogs).

Every wait is bounded: each case has a timeout, the relay a deadline, and
each server is killed by its process group id, which this script created.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aioquic.quic.packet import QuicProtocolVersion  # noqa: E402
from aioquic.tls import CipherSuite  # noqa: E402

from interop.client import ClientOptions, ConnectionReport, fetch  # noqa: E402
from interop.relay import QUIC_V2, Relay, RelayStats  # noqa: E402
from interop.testcases import CASES, ENDPOINT_SCRIPT, Case, Plan  # noqa: E402

GTLSCLIENT = shutil.which("gtlsclient")


@dataclass
class Evidence:
    reports: list[ConnectionReport] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)
    relay: RelayStats | None = None
    ngtcp2: dict[str, str] | None = None
    #: The paths gtlsclient was asked for (at most 50 per run).
    ngtcp2_paths: list[str] = field(default_factory=list)
    ngtcp2_log: str = ""


@dataclass
class Outcome:
    name: str
    passed: bool
    seconds: float
    detail: str


# -- fixtures: files, certificates, ports ---------------------------------------------


def make_files(www: Path, case: Case) -> dict[str, str]:
    """Random files of the case's sizes; returns {url path: sha256 hex}."""
    www.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    letters = string.ascii_lowercase
    for size in case.sizes:
        while True:
            name = "".join(secrets.choice(letters) for _ in range(case.filename_length))
            if "/" + name not in expected:
                break
        data = os.urandom(size)
        (www / name).write_bytes(data)
        expected["/" + name] = hashlib.sha256(data).hexdigest()
    return expected


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("quicserve_certs_generate",
                                                  ROOT / "certs" / "generate.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("certs/generate.py not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_certs(directory: Path, *, long_chain: bool) -> Path:
    """A runner-style certs dir: ``cert.pem`` (chain) and ``priv.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    if long_chain:
        _long_chain(directory, length=9)
    else:
        paths = _generator().generate(directory, force=True)
        shutil.copy(paths["key.pem"], directory / "priv.key")
    return directory


def _long_chain(directory: Path, *, length: int) -> None:
    """root -> intermediates -> leaf, ``length`` certificates; cert.pem holds
    the leaf and the intermediates (what the runner's amplificationlimit
    case serves, so the server's first flight far exceeds 3x an Initial)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "interop root")])
    chain: list[x509.Certificate] = []
    key = issuer_key
    for depth in range(length):
        leaf = depth == length - 1
        key = issuer_key if depth == 0 else rsa.generate_private_key(public_exponent=65537,
                                                                     key_size=2048)
        name = x509.Name([x509.NameAttribute(
            NameOID.COMMON_NAME, "localhost" if leaf else f"interop ca {depth}")])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=not leaf, path_length=None),
                                  critical=True))
        if leaf:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost")]), critical=False)
        cert = builder.sign(issuer_key, hashes.SHA256())
        chain.append(cert)
        issuer_key, issuer_name = key, name
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in reversed(chain[1:]))
    (directory / "cert.pem").write_bytes(pem)
    (directory / "priv.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def free_udp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def udp_port_bound(port: int) -> bool:
    """Whether any local UDP socket is bound to ``port`` (Linux /proc)."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as fh:
                next(fh, None)
                if any(line.split()[1].endswith(suffix) for line in fh if line.strip()):
                    return True
        except OSError:
            continue
    return False


# -- the server --------------------------------------------------------------------------


class Endpoint:
    """``run_endpoint.sh`` as a child process in its own process group."""

    def __init__(self, case: Case, *, www: Path, certs: Path, port: int, logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(ROLE="server", TESTCASE=case.server_testcase, WWW=str(www),
                   CERTS=str(certs), PORT=str(port), HOST=case.host,
                   SSLKEYLOGFILE=str(logs / "keys.log"), QLOGDIR=str(logs / "qlog"),
                   QUICSERVE_PYTHON=sys.executable, RUN_ENDPOINT_NATIVE="1",
                   LOG_LEVEL="warning")
        self.port = port
        self.log_path = logs / "server.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(["bash", str(ENDPOINT_SCRIPT)], env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: "
                                   f"{self.tail()}")
            if udp_port_bound(self.port):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"server did not bind udp port {self.port}: {self.tail()}")

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        self._log.close()


# -- clients -------------------------------------------------------------------------------


def client_options(case: Case, relay: Relay) -> ClientOptions:
    host, port = relay.address[:2]
    return ClientOptions(
        host=host, port=port, alpn=case.alpn, ciphers=case.ciphers, v2=case.v2,
        key_update=case.key_update,
        max_data=256 * 1024 if case.small_windows else None,
        max_stream_data=128 * 1024 if case.small_windows else None,
        timeout=case.timeout, idle_timeout=min(30.0, case.timeout))


async def drive(case: Case, options: ClientOptions, paths: list[str]) -> list[ConnectionReport]:
    if case.plan is Plan.ONE:
        return [await fetch(options, paths)]
    if case.plan is Plan.EACH:
        limit = asyncio.Semaphore(case.parallel)

        async def one(path: str) -> ConnectionReport:
            async with limit:
                return await fetch(options, [path])
        return list(await asyncio.gather(*(one(p) for p in paths)))
    first = await fetch(options, paths[:1])
    if not first.tickets:
        return [first]
    early = case.plan is Plan.ZERO_RTT
    second_options = ClientOptions(**{**_fields(options), "early": early})
    second = await fetch(second_options, paths[1:], ticket=first.tickets[-1])
    return [first, second]


def _fields(options: ClientOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}


async def run_gtlsclient(case: Case, relay: Relay, port: int, paths: list[str],
                         workdir: Path) -> tuple[dict[str, str], str]:
    """Download with ngtcp2's client (HTTP/3); returns {path: sha256} and its log tail."""
    if GTLSCLIENT is None:
        return {}, "gtlsclient not installed"
    downloads = workdir / "ngtcp2-downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    host, relay_port = relay.address[:2]
    authority = f"[{case.host}]" if ":" in case.host else "localhost"
    urls = [f"https://{authority}:{port}{p}" for p in paths]
    argv = [GTLSCLIENT, "--exit-on-all-streams-close", "--no-quic-dump", "--no-http-dump",
            f"--download={downloads}", "--timeout=20s", *(case.ngtcp2 or ()), host,
            str(relay_port), *urls]
    log = workdir / "ngtcp2.log"
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL)
        try:
            await asyncio.wait_for(proc.wait(), timeout=min(case.timeout, 60.0))
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
    got = {}
    for path in paths:
        file = downloads / path.lstrip("/")
        if file.exists():
            got[path] = hashlib.sha256(file.read_bytes()).hexdigest()
    text = log.read_text(errors="replace")
    return got, f"exit {proc.returncode}; " + " | ".join(text.strip().splitlines()[-3:])


# -- verdict ---------------------------------------------------------------------------------


def evaluate(case: Case, ev: Evidence) -> list[str]:
    """Every problem found; an empty list is a pass."""
    problems = _check_files(ev)
    exp = case.expect
    reports = ev.reports
    handshakes = sum(1 for r in reports if r.handshake_completed)
    if handshakes != exp.handshakes:
        problems.append(f"expected {exp.handshakes} handshakes, saw {handshakes}")
    if any(r.alpn != exp.alpn for r in reports if r.handshake_completed):
        problems.append(f"ALPN {sorted({str(r.alpn) for r in reports})}, expected {exp.alpn}")
    problems += _check_retry(exp.retry, reports, ev.relay)
    problems += _check_features(case, reports, ev.relay)
    if ev.ngtcp2 is not None:
        missing = [p for p in ev.ngtcp2_paths if ev.ngtcp2.get(p) != ev.expected[p]]
        if missing:
            problems.append(f"gtlsclient: {len(missing)} files missing or wrong "
                            f"({ev.ngtcp2_log})")
    return problems


def _check_files(ev: Evidence) -> list[str]:
    got: dict[str, str] = {}
    errors: dict[str, str] = {}
    for report in ev.reports:
        got.update({p: h for p, (h, _) in report.files.items()})
        errors.update(report.errors)
    bad = [p for p, h in ev.expected.items() if got.get(p) != h]
    if not bad:
        return []
    sample = next(iter(errors.values()), "hash mismatch or missing")
    return [f"{len(bad)}/{len(ev.expected)} files missing or wrong (e.g. {sample})"]


def _check_retry(expected: bool, reports: Sequence[ConnectionReport],
                 relay: RelayStats | None) -> list[str]:
    seen_by_client = any(r.retry_seen for r in reports)
    on_wire = relay is not None and "retry" in relay.server_packet_kinds
    if expected and not (seen_by_client and on_wire):
        return [f"no Retry seen (client qlog: {seen_by_client}, on the wire: {on_wire})"]
    if not expected and (seen_by_client or on_wire):
        return ["a Retry was sent but none was expected"]
    return []


def _check_features(case: Case, reports: Sequence[ConnectionReport],
                    relay: RelayStats | None) -> list[str]:
    exp = case.expect
    problems: list[str] = []
    last = reports[-1] if reports else ConnectionReport()
    if exp.resumed_without_certificate:
        if len(reports) < 2 or not reports[0].server_sent_certificate:
            problems.append("first connection did not carry a certificate")
        if not last.session_resumed or last.server_sent_certificate:
            problems.append(f"second connection not resumed without a certificate "
                            f"(resumed={last.session_resumed}, "
                            f"certificate={last.server_sent_certificate})")
    if exp.early_data and not (last.early_data_accepted and last.zero_rtt_packets > 0):
        problems.append(f"0-RTT not used (accepted={last.early_data_accepted}, "
                        f"0-RTT packets={last.zero_rtt_packets})")
    if exp.key_update and not (last.key_updated and last.recv_key_phase == 1):
        problems.append(f"no key update (started={last.key_updated}, "
                        f"server key phase={last.recv_key_phase})")
    if exp.version_2:
        wire = relay is not None and QUIC_V2 in relay.server_versions
        if last.version != QuicProtocolVersion.VERSION_2 or not wire:
            problems.append(f"QUIC v2 not negotiated (version=0x{last.version:x}, "
                            f"v2 server packets on the wire: {wire})")
    if exp.chacha20 and last.cipher_suite != CipherSuite.CHACHA20_POLY1305_SHA256:
        problems.append(f"cipher suite 0x{last.cipher_suite:04x}, expected ChaCha20")
    if exp.max_streams_at_most is not None:
        limit = last.server_max_streams_bidi
        if limit is None or limit > exp.max_streams_at_most:
            problems.append(f"server initial_max_streams_bidi {limit} (must be <= "
                            f"{exp.max_streams_at_most})")
    problems += _check_path(case, reports, relay)
    return problems


def _check_path(case: Case, reports: Sequence[ConnectionReport],
                relay: RelayStats | None) -> list[str]:
    exp = case.expect
    problems: list[str] = []
    stats = relay or RelayStats()
    if exp.path_challenge:
        challenges = sum(r.path_challenges for r in reports)
        if stats.rebinds == 0 or challenges == 0:
            problems.append(f"rebinds={stats.rebinds}, PATH_CHALLENGEs received={challenges}")
    if exp.new_address and len({p[0] for p in stats.paths}) < 2:
        problems.append(f"only one client address was used: {stats.paths}")
    if exp.amplification_limit:
        sent, allowed = stats.server_bytes_before_handshake, 3 * stats.client_bytes_before_handshake
        if not stats.client_handshake_seen or sent > allowed:
            problems.append(f"server sent {sent} bytes before address validation, "
                            f"3x limit {allowed}")
    if exp.repeated_client_hello and not any(r.initial_packets_sent >= 2 for r in reports):
        problems.append("the ClientHello was never retransmitted (RTT not long?)")
    if exp.impaired and stats.dropped + stats.corrupted == 0:
        problems.append("the relay impaired nothing")
    if exp.ipv6 and not all(":" in str(p[0]) for p in stats.paths):
        problems.append(f"not IPv6: {stats.paths}")
    return problems


# -- one case ----------------------------------------------------------------------------------


async def run_case(case: Case, workdir: Path) -> Outcome:
    started = time.monotonic()
    expected = make_files(workdir / "www", case)
    certs = make_certs(workdir / "certs", long_chain=case.long_chain)
    port = free_udp_port(case.host)
    server = Endpoint(case, www=workdir / "www", certs=certs, port=port, logs=workdir / "logs")
    evidence = Evidence(expected=expected)
    try:
        await server.wait_ready()
        async with Relay((case.host, port), impairment=case.impairment,
                         max_seconds=case.timeout + 30) as relay:
            evidence.relay = relay.stats
            paths = list(expected)
            async with asyncio.timeout(case.timeout):
                evidence.reports = await drive(case, client_options(case, relay), paths)
            if case.ngtcp2 is not None:
                evidence.ngtcp2_paths = paths[:50]
                evidence.ngtcp2, evidence.ngtcp2_log = await run_gtlsclient(
                    case, relay, port, evidence.ngtcp2_paths, workdir)
        problems = evaluate(case, evidence)
    except (TimeoutError, asyncio.TimeoutError):
        problems = [f"timed out after {case.timeout:.0f}s"]
    except (RuntimeError, OSError, ConnectionError) as exc:
        problems = [f"{type(exc).__name__}: {exc}"]
    finally:
        server.stop()
    if problems and server.process.returncode not in (None, 0, -signal.SIGTERM):
        problems.append(f"server: {server.tail(3)}")
    seconds = time.monotonic() - started
    detail = "; ".join(problems) if problems else _summary(case, evidence)
    return Outcome(case.name, not problems, seconds, detail)


def _summary(case: Case, ev: Evidence) -> str:
    """The evidence a passing case showed, in a few words."""
    exp, last = case.expect, (ev.reports[-1] if ev.reports else ConnectionReport())
    parts = [f"{len(ev.expected)} files ok"]
    if len(ev.reports) > 1:
        parts.append(f"{len(ev.reports)} handshakes")
    if ev.ngtcp2 is not None:
        parts.append("gtlsclient ok")
    if exp.retry:
        parts.append("Retry seen")
    if exp.resumed_without_certificate:
        parts.append("resumed without certificate")
    if exp.early_data:
        parts.append(f"0-RTT accepted ({last.zero_rtt_packets} 0-RTT packets)")
    if exp.key_update:
        parts.append("key phase 1 both ways")
    if exp.version_2:
        parts.append("QUIC v2 on the wire")
    if exp.chacha20:
        parts.append("ChaCha20")
    if exp.max_streams_at_most is not None:
        parts.append(f"initial_max_streams_bidi {last.server_max_streams_bidi}")
    if exp.repeated_client_hello:
        parts.append(f"{max(r.initial_packets_sent for r in ev.reports)} client Initials")
    stats = ev.relay
    if stats is not None and (stats.dropped or stats.corrupted):
        parts.append(f"relay dropped {stats.dropped}, corrupted {stats.corrupted}")
    if stats is not None and stats.rebinds:
        parts.append(f"{stats.rebinds} rebinds, "
                     f"{sum(r.path_challenges for r in ev.reports)} PATH_CHALLENGEs")
    if exp.amplification_limit and stats is not None:
        parts.append(f"{stats.server_bytes_before_handshake} B <= 3 x "
                     f"{stats.client_bytes_before_handshake} B")
    return ", ".join(parts)


# -- main ----------------------------------------------------------------------------------------


def select(names: str | None, quick: bool) -> list[Case]:
    cases = [c for c in CASES if c.quick] if quick else list(CASES)
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        known = {c.name: c for c in CASES}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise SystemExit(f"unknown case(s): {', '.join(unknown)}")
        cases = [known[n] for n in wanted]
    return cases


async def run_all(cases: list[Case], base: Path) -> list[Outcome]:
    outcomes = []
    for case in cases:
        outcome = await run_case(case, base / case.name)
        mark = "PASS" if outcome.passed else "FAIL"
        print(f"  {case.name:<20} {mark}  {outcome.seconds:6.1f}s  {outcome.detail}", flush=True)
        outcomes.append(outcome)
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    lines = ["| case | result | time | evidence |", "|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| {o.name} | {'pass' if o.passed else 'FAIL'} | {o.seconds:.1f}s | "
                     f"{o.detail} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="native QUIC interop suite for quicserve")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--quick", action="store_true", help="only the quick subset")
    parser.add_argument("--keep", action="store_true", help="keep work directories and logs")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    if args.list:
        for case in CASES:
            print(f"{case.name:<20} server TESTCASE={case.server_testcase}")
        return 0
    cases = select(args.cases, args.quick)
    base = Path(tempfile.mkdtemp(prefix="quicserve-interop-"))
    print(f"quicserve native interop suite: {len(cases)} cases via {ENDPOINT_SCRIPT.name} "
          f"(work dir {base})", flush=True)
    try:
        outcomes = asyncio.run(run_all(cases, base))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(outcomes))
    passed = sum(o.passed for o in outcomes)
    print()
    print(f"{passed} passed, {len(outcomes) - passed} failed")
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
