"""A small UDP relay on loopback that impairs the path between a QUIC client and server.

Theory of operation
-------------------
The QUIC interop runner puts an ns-3 network simulator between client and
server.  This kernel has no ``tc netem`` and the native suite has no Docker,
so :class:`Relay` plays the simulator's part for the scenarios the runner's
server cases use::

    client --UDP--> [listen socket]  Relay  [upstream socket] --UDP--> server
           <------                                            <------

The client talks to the relay's *listen* address.  Each client address gets
its own *upstream* socket, so the server sees the upstream socket's address as
the client's.  What happens in between is decided by an :class:`Impairment`
(a frozen value), per direction:

* ``loss`` / ``corrupt``: each datagram is dropped (or has one byte flipped)
  with that probability, but never more than ``burst`` in a row (the ns-3
  ``drop-rate`` / ``corrupt-rate`` scenarios: rate and burst);
* ``drop_to_server``: drop the client's datagrams with these 1-based indices
  (the ``droplist`` scenario of the amplification-limit case);
* ``delay``: one-way latency added to every datagram (``longrtt``);
* ``blackhole_on`` / ``blackhole_off``: the path works for ``on`` seconds,
  then drops everything for ``off`` seconds, repeatedly (``blackhole``);
* ``rebind_first`` / ``rebind_every``: replace the upstream socket with a new
  one on a new port (NAT port rebinding), or also a new loopback address
  (``rebind_addr``: 127.0.0.2, 127.0.0.3, ... on IPv4), first after
  ``rebind_first`` seconds and then every ``rebind_every`` seconds.  The
  client's datagrams take the new path at once.  The old socket is closed
  after ``rebind_grace`` seconds (a NAT's old mapping lingers briefly), after
  which the server's datagrams to the old path are lost; the server must
  validate the new path either way.

The relay also reads the first byte of each datagram to watch the handshake
(long-header packet types, v1 and v2 encodings) for the amplification check:
the bytes the server sent before the client's first Handshake packet, and the
bytes the client sent until then (:class:`RelayStats`).

Bounded in time: :meth:`Relay.start` arms a deadline (``max_seconds``) after
which the relay closes every socket by itself.  Randomness comes from a seeded
``random.Random``, so a run can be repeated.

Usable in-process (``async with Relay(...)``, what ``interop/run.py`` does) or
from the command line::

    python interop/relay.py --server 127.0.0.1:4433 --loss 0.3 --burst 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
from dataclasses import dataclass, field
from typing import Any

Address = tuple[Any, ...]

#: Long-header packet types by version: {version: {type bits: name}}.
_V1_TYPES = {0: "initial", 1: "0rtt", 2: "handshake", 3: "retry"}
_V2_TYPES = {1: "initial", 2: "0rtt", 3: "handshake", 0: "retry"}
QUIC_V2 = 0x6B3343CF


@dataclass(frozen=True, slots=True, kw_only=True)
class Impairment:
    """What the relay does to the traffic.  The defaults pass everything."""

    loss: float = 0.0
    corrupt: float = 0.0
    #: The most consecutive datagrams lost (or corrupted) in one direction.
    burst: int = 3
    delay: float = 0.0
    drop_to_server: tuple[int, ...] = ()
    blackhole_on: float = 0.0
    blackhole_off: float = 0.0
    rebind_first: float = 0.0
    rebind_every: float = 0.0
    rebind_addr: bool = False
    #: Seconds the old upstream socket still delivers the server's datagrams
    #: after a rebind (a NAT's old mapping lingering).  Without it, a client
    #: that only receives would never speak again after a rebind whose
    #: in-flight data all went to the dead mapping, and both ends would wait.
    rebind_grace: float = 0.5
    seed: int = 1


@dataclass
class RelayStats:
    to_server: int = 0
    to_client: int = 0
    dropped: int = 0
    corrupted: int = 0
    rebinds: int = 0
    #: Upstream addresses the server has seen, in order.
    paths: list[Address] = field(default_factory=list)
    #: Bytes the client sent before its first Handshake packet, and bytes the
    #: server sent over the same time (for the 3x amplification limit).
    client_bytes_before_handshake: int = 0
    server_bytes_before_handshake: int = 0
    client_handshake_seen: bool = False
    #: Long-header packet kinds seen from the server, e.g. {"retry", "initial"}.
    server_packet_kinds: set[str] = field(default_factory=set)
    server_versions: set[int] = field(default_factory=set)


def packet_kind(datagram: bytes) -> tuple[str, int] | None:
    """(kind, version) of a datagram's first QUIC packet if it has a long header."""
    if len(datagram) < 5 or not datagram[0] & 0x80:
        return None
    version = int.from_bytes(datagram[1:5], "big")
    if version == 0:
        return "version_negotiation", 0
    types = _V2_TYPES if version == QUIC_V2 else _V1_TYPES
    return types.get((datagram[0] >> 4) & 0x3, "unknown"), version


class _Direction:
    """Loss / corruption decisions for one direction, with the burst cap."""

    def __init__(self, rng: random.Random, impairment: Impairment) -> None:
        self._rng = rng
        self._imp = impairment
        self._lost_run = 0
        self._corrupt_run = 0

    def lose(self) -> bool:
        if self._imp.loss > 0 and self._lost_run < self._imp.burst and \
                self._rng.random() < self._imp.loss:
            self._lost_run += 1
            return True
        self._lost_run = 0
        return False

    def corrupt(self, data: bytes) -> bytes | None:
        if self._imp.corrupt > 0 and self._corrupt_run < self._imp.burst and \
                self._rng.random() < self._imp.corrupt:
            self._corrupt_run += 1
            index = self._rng.randrange(len(data))
            return data[:index] + bytes([data[index] ^ (1 << self._rng.randrange(8))]) + \
                data[index + 1:]
        self._corrupt_run = 0
        return None


class _Listen(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.relay._from_client(data, addr)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay, client: Address) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.relay._from_server(data, self.client)


class Relay:
    """Forward datagrams between clients and one server, impaired.

    Error handling: a send that fails (the peer's port is closed) drops the
    datagram, as the network would.

    Resource handling: one listen socket, one upstream socket per client
    address (replaced on rebinding); all closed by :meth:`close`, at the
    deadline at the latest.
    """

    def __init__(self, server: Address, *, impairment: Impairment | None = None,
                 listen_host: str | None = None, max_seconds: float = 120.0) -> None:
        self.server = server
        self.impairment = impairment or Impairment()
        self.listen_host = listen_host or server[0]
        self.max_seconds = max_seconds
        self.stats = RelayStats()
        rng = random.Random(self.impairment.seed)
        self._to_server = _Direction(rng, self.impairment)
        self._to_client = _Direction(rng, self.impairment)
        self._listen: asyncio.DatagramTransport | None = None
        self._upstreams: dict[Address, _Upstream] = {}
        #: Upstream sockets replaced by a rebind, closed after the grace period.
        self._retired: list[_Upstream] = []
        #: Datagrams from a new client waiting for its upstream socket.
        self._pending: dict[Address, list[bytes]] = {}
        self._handles: list[asyncio.TimerHandle] = []
        self._started = 0.0
        self._next_addr = 2
        self._closed = asyncio.Event()

    @property
    def address(self) -> Address:
        """Where clients should send: the listen socket's address."""
        if self._listen is None:
            raise RuntimeError("relay not started")
        return self._listen.get_extra_info("sockname")  # type: ignore[no-any-return]

    async def start(self) -> Relay:
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        self._listen, _ = await loop.create_datagram_endpoint(
            lambda: _Listen(self), local_addr=(self.listen_host, 0))
        self._handles.append(loop.call_later(self.max_seconds, self.close))
        imp = self.impairment
        if imp.rebind_first > 0:
            self._handles.append(loop.call_later(imp.rebind_first, self._rebind_all))
        return self

    async def __aenter__(self) -> Relay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()
        if self._listen is not None:
            self._listen.close()
        for upstream in [*self._upstreams.values(), *self._retired]:
            if upstream.transport is not None:
                upstream.transport.close()
        self._upstreams.clear()
        self._retired.clear()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- forwarding ----------------------------------------------------------

    def _blackholed(self) -> bool:
        imp = self.impairment
        if imp.blackhole_off <= 0:
            return False
        elapsed = asyncio.get_running_loop().time() - self._started
        return elapsed % (imp.blackhole_on + imp.blackhole_off) >= imp.blackhole_on

    def _from_client(self, data: bytes, client: Address) -> None:
        self.stats.to_server += 1
        if self.stats.to_server in self.impairment.drop_to_server or self._blackholed() or \
                self._to_server.lose():
            self.stats.dropped += 1
            return
        self._watch_client(data)  # only what reaches the server counts
        data = self._maybe_corrupt(self._to_server, data)
        if client not in self._upstreams:
            pending = self._pending.get(client)
            if pending is None:
                self._pending[client] = [data]
                asyncio.ensure_future(self._open_upstream(client))
            else:
                pending.append(data)
            return
        self._later(lambda: self._send_up(client, data))

    def _from_server(self, data: bytes, client: Address) -> None:
        self.stats.to_client += 1
        self._watch_server(data)  # what the server sent, lost or not
        if self._blackholed() or self._to_client.lose():
            self.stats.dropped += 1
            return
        data = self._maybe_corrupt(self._to_client, data)
        self._later(lambda: self._send_down(client, data))

    def _maybe_corrupt(self, direction: _Direction, data: bytes) -> bytes:
        corrupted = direction.corrupt(data)
        if corrupted is None:
            return data
        self.stats.corrupted += 1
        return corrupted

    def _later(self, action: Any) -> None:
        if self.impairment.delay > 0:
            asyncio.get_running_loop().call_later(self.impairment.delay, action)
        else:
            action()

    def _send_up(self, client: Address, data: bytes) -> None:
        upstream = self._upstreams.get(client)
        if upstream is not None and upstream.transport is not None:
            upstream.transport.sendto(data, self.server)

    def _send_down(self, client: Address, data: bytes) -> None:
        if self._listen is not None and not self._listen.is_closing():
            self._listen.sendto(data, client)

    async def _open_upstream(self, client: Address) -> None:
        await self._bind_upstream(client)
        for data in self._pending.pop(client, []):
            self._later(lambda data=data: self._send_up(client, data))  # type: ignore[misc]

    async def _bind_upstream(self, client: Address) -> None:
        loop = asyncio.get_running_loop()
        host = self.listen_host
        if self.impairment.rebind_addr and self.stats.rebinds and ":" not in host:
            host = f"127.0.0.{self._next_addr}"
            self._next_addr += 1
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Upstream(self, client), local_addr=(host, 0), family=family)
        old = self._upstreams.get(client)
        self._upstreams[client] = protocol
        self.stats.paths.append(transport.get_extra_info("sockname"))
        if old is not None and old.transport is not None:
            self._handles.append(loop.call_later(self.impairment.rebind_grace,
                                                 old.transport.close))
            self._retired.append(old)

    def _rebind_all(self) -> None:
        self.stats.rebinds += 1
        for client in list(self._upstreams):
            asyncio.ensure_future(self._bind_upstream(client))
        if self.impairment.rebind_every > 0:
            self._handles.append(asyncio.get_running_loop().call_later(
                self.impairment.rebind_every, self._rebind_all))

    # -- handshake watching -------------------------------------------------------

    def _watch_client(self, data: bytes) -> None:
        if self.stats.client_handshake_seen:
            return
        kind = packet_kind(data)
        if kind is not None and kind[0] == "handshake":
            self.stats.client_handshake_seen = True
            return
        if kind is None and self.stats.server_bytes_before_handshake:
            # A short-header packet: the client has 1-RTT keys, so the
            # server's address validation is over too.
            self.stats.client_handshake_seen = True
            return
        self.stats.client_bytes_before_handshake += len(data)

    def _watch_server(self, data: bytes) -> None:
        kind = packet_kind(data)
        if kind is not None:
            self.stats.server_packet_kinds.add(kind[0])
            self.stats.server_versions.add(kind[1])
        if not self.stats.client_handshake_seen:
            self.stats.server_bytes_before_handshake += len(data)


def _parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def _main(args: argparse.Namespace) -> None:
    impairment = Impairment(loss=args.loss, corrupt=args.corrupt, burst=args.burst,
                            delay=args.delay, blackhole_on=args.blackhole_on,
                            blackhole_off=args.blackhole_off, rebind_first=args.rebind_first,
                            rebind_every=args.rebind_every, rebind_addr=args.rebind_addr,
                            seed=args.seed)
    relay = Relay(_parse_address(args.server), impairment=impairment,
                  max_seconds=args.max_seconds)
    await relay.start()
    host, port = relay.address[:2]
    print(f"relay listening on {host}:{port}", flush=True)
    await relay.wait_closed()
    print(relay.stats, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True, help="host:port of the QUIC server")
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--corrupt", type=float, default=0.0)
    parser.add_argument("--burst", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.0, help="one-way delay, seconds")
    parser.add_argument("--blackhole-on", type=float, default=0.0)
    parser.add_argument("--blackhole-off", type=float, default=0.0)
    parser.add_argument("--rebind-first", type=float, default=0.0)
    parser.add_argument("--rebind-every", type=float, default=0.0)
    parser.add_argument("--rebind-addr", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
