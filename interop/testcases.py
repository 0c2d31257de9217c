"""The native interop suite's test cases: what each runner case asks of a server.

Theory of operation
-------------------
Each :class:`Case` mirrors one server-side test case of the QUIC interop
runner (``testcases_quic.py`` there): the files the runner generates (same
sizes), the ``TESTCASE`` value the runner hands the *server* (several client
cases map to ``transfer`` or ``handshake`` on the server side, exactly as the
runner's ``testname(Perspective.SERVER)`` does), how the client uses
connections (:class:`Plan`), the network scenario (an
:class:`~interop.relay.Impairment` standing in for the ns-3 simulator) and the
evidence that must be seen (:class:`Expect`).  ``interop/run.py`` turns a Case
into a server started through ``interop/run_endpoint.sh``, a relay, clients,
and a verdict.

Scenarios are scaled to loopback: the simulator's 10 Mbit/s link makes a
10 MiB transfer last ~10 s, which the runner's periodic events (blackhole
every 5 s, rebinding every 5 s) rely on; over loopback the same transfer
takes about a second, so blackholes and rebinds come more often and
``longrtt`` keeps the runner's 750 ms one-way delay.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from aioquic.tls import CipherSuite

from interop.relay import Impairment

KB = 1 << 10
MB = 1 << 20

#: The script the runner's image runs (interop/Dockerfile copies this very
#: file to /run_endpoint.sh); the native suite runs it in place.
ENDPOINT_SCRIPT = Path(__file__).resolve().parent / "run_endpoint.sh"


class Plan(enum.Enum):
    #: One connection, every file requested at once (multiplexed).
    ONE = "one"
    #: One connection per file (``multiconnect``), several at a time.
    EACH = "each"
    #: First file on one connection, the rest on a resumed second one.
    RESUME = "resume"
    #: Like RESUME, but the second connection sends its requests in 0-RTT.
    ZERO_RTT = "zerortt"


@dataclass(frozen=True, slots=True, kw_only=True)
class Expect:
    """Evidence the runner's check would look for."""

    handshakes: int = 1
    retry: bool = False
    resumed_without_certificate: bool = False
    early_data: bool = False
    key_update: bool = False
    version_2: bool = False
    chacha20: bool = False
    path_challenge: bool = False
    new_address: bool = False
    max_streams_at_most: int | None = None
    amplification_limit: bool = False
    repeated_client_hello: bool = False
    impaired: bool = False
    ipv6: bool = False
    alpn: str = "hq-interop"


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    name: str
    #: TESTCASE as the runner passes it to the server.
    server_testcase: str
    sizes: tuple[int, ...]
    plan: Plan = Plan.ONE
    alpn: str = "hq-interop"
    host: str = "127.0.0.1"
    ciphers: tuple[CipherSuite, ...] | None = None
    v2: bool = False
    key_update: bool = False
    small_windows: bool = False
    filename_length: int = 10
    long_chain: bool = False
    impairment: Impairment = field(default_factory=Impairment)
    #: Connections opened at once for Plan.EACH.
    parallel: int = 10
    expect: Expect = field(default_factory=Expect)
    #: Also download with ngtcp2's gtlsclient (HTTP/3); extra arguments.
    ngtcp2: tuple[str, ...] | None = None
    timeout: float = 90.0
    #: Part of the quick subset ``make test`` runs.
    quick: bool = False


CASES: tuple[Case, ...] = (
    Case(name="handshake", server_testcase="handshake", sizes=(1 * KB,), quick=True,
         ngtcp2=()),
    Case(name="transfer", server_testcase="transfer", sizes=(2 * MB, 3 * MB, 5 * MB),
         small_windows=True, quick=True, ngtcp2=()),
    Case(name="multiconnect", server_testcase="multiconnect", sizes=(1 * KB,) * 10,
         plan=Plan.EACH, expect=Expect(handshakes=10)),
    Case(name="multiplexing", server_testcase="transfer", sizes=(32,) * 1999,
         expect=Expect(max_streams_at_most=1000), timeout=180.0),
    Case(name="chacha20", server_testcase="chacha20", sizes=(3 * MB,),
         ciphers=(CipherSuite.CHACHA20_POLY1305_SHA256,), expect=Expect(chacha20=True),
         ngtcp2=("--ciphers=NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305",)),
    Case(name="retry", server_testcase="retry", sizes=(10 * KB,), expect=Expect(retry=True),
         quick=True),
    Case(name="resumption", server_testcase="resumption", sizes=(5 * KB, 10 * KB),
         plan=Plan.RESUME, expect=Expect(handshakes=2, resumed_without_certificate=True)),
    Case(name="zerortt", server_testcase="zerortt", sizes=(32,) * 40, filename_length=250,
         plan=Plan.ZERO_RTT, expect=Expect(handshakes=2, early_data=True)),
    Case(name="http3", server_testcase="http3", sizes=(5 * KB, 10 * KB, 500 * KB), alpn="h3",
         expect=Expect(alpn="h3"), ngtcp2=(), quick=True),
    Case(name="keyupdate", server_testcase="transfer", sizes=(3 * MB,), key_update=True,
         expect=Expect(key_update=True), ngtcp2=("--key-update=1ms",)),
    Case(name="v2", server_testcase="v2", sizes=(1 * KB,), v2=True,
         expect=Expect(version_2=True)),
    Case(name="ipv6", server_testcase="transfer", sizes=(5 * KB, 10 * KB), host="::1",
         expect=Expect(ipv6=True)),
    Case(name="longrtt", server_testcase="handshake", sizes=(1 * KB,),
         impairment=Impairment(delay=0.75), expect=Expect(repeated_client_hello=True),
         timeout=120.0),
    Case(name="amplificationlimit", server_testcase="transfer", sizes=(5 * KB,),
         long_chain=True, impairment=Impairment(delay=0.015, drop_to_server=(2, 3, 4, 5, 6, 7)),
         expect=Expect(amplification_limit=True, impaired=True)),
    Case(name="handshakeloss", server_testcase="multiconnect", sizes=(1 * KB,) * 50,
         plan=Plan.EACH, impairment=Impairment(loss=0.30, seed=11, delay=0.005, burst=3),
         expect=Expect(handshakes=50, impaired=True), timeout=300.0),
    Case(name="transferloss", server_testcase="transfer", sizes=(2 * MB,),
         impairment=Impairment(loss=0.02, seed=12, delay=0.005, burst=3),
         expect=Expect(impaired=True)),
    Case(name="handshakecorruption", server_testcase="multiconnect", sizes=(1 * KB,) * 50,
         plan=Plan.EACH, impairment=Impairment(corrupt=0.30, seed=13, delay=0.005, burst=3),
         expect=Expect(handshakes=50, impaired=True), timeout=300.0),
    Case(name="transfercorruption", server_testcase="transfer", sizes=(2 * MB,),
         impairment=Impairment(corrupt=0.02, seed=14, delay=0.005, burst=3),
         expect=Expect(impaired=True)),
    # The runner's blackhole scenario keeps the path up 5 s and down 2 s; the
    # same 5:2 shape here, shortened.  (With the path down longer than up, as
    # this case once had it, the RTT samples that span an outage push the PTO
    # to seconds; each backed-off probe then hits an outage more often than
    # not, and a receive-only client never probes, so a few unlucky probes in
    # a row left both ends silent until the idle timeout: 1 run in 3-5 failed.)
    Case(name="blackhole", server_testcase="transfer", sizes=(10 * MB,),
         impairment=Impairment(delay=0.005, blackhole_on=1.25, blackhole_off=0.5),
         expect=Expect(impaired=True), timeout=120.0),
    Case(name="rebind-port", server_testcase="transfer", sizes=(10 * MB,),
         impairment=Impairment(delay=0.005, rebind_first=0.5, rebind_every=1.0),
         expect=Expect(path_challenge=True), timeout=120.0),
    Case(name="rebind-addr", server_testcase="transfer", sizes=(10 * MB,),
         impairment=Impairment(delay=0.005, rebind_first=0.5, rebind_every=1.0,
                               rebind_addr=True),
         expect=Expect(path_challenge=True, new_address=True), timeout=120.0),
)

#: Runner server cases run_endpoint.sh refuses with 127 (checked by the tests).
UNSUPPORTED = ("connectionmigration", "ecn", "no-such-case")


def by_name(name: str) -> Case:
    for case in CASES:
        if case.name == name:
            return case
    raise KeyError(name)
