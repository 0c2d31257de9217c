"""UdpEndpoint: one UDP socket, the router's decisions carried out, one flush per turn.

Theory of operation
-------------------
One ``UdpEndpoint`` serves one ``--quic-bind`` socket (IPv4 or IPv6).  It is
the only QUIC code that touches the event loop.  Everything it does is one of:

* **receive** -- ``datagram_received`` asks the pure :class:`CidRouter` what
  the datagram is and carries out the answer: ``Deliver`` feeds the session
  (``session.receive`` never awaits), ``Create`` builds a session
  (``quic/connection.py``), ``Reply`` sends Version Negotiation, Retry or a
  stateless reset, ``Drop`` counts.  No task is created per datagram and no
  application work is awaited: a slow app is throttled by the flow-control
  credit its own stream withholds.
* **flush** -- sessions that have something to send mark themselves dirty
  (:meth:`session_dirty`); the first mark of a loop turn schedules one
  ``loop.call_soon(self._flush)``, which drains every dirty session's
  datagrams and re-arms its timer.  So a burst of received datagrams, or a
  hundred apps writing in the same turn, costs one flush per session per turn.
* **timers** -- one ``TimerHandle`` per session, re-armed only when the
  session's deadline (aioquic ``get_timer()``) changes.  aioquic's pacer
  releases at most one burst per call; when a flush got a full burst and the
  pacer's next send time has already passed by the end of it, the flush takes
  the next burst at once (``QuicSession.datagrams_due``, up to
  :data:`FLUSH_BUDGET` datagrams), rather than arming a timer that is already
  due and waiting a loop turn for it.
* **time** -- ``now`` for aioquic comes from the endpoint's clock.  In
  production that is ``time.monotonic``, not ``loop.time()``: uvloop's
  ``loop.time()`` counts whole milliseconds (libuv's cached ``uv_now``), and
  aioquic's pacer refills its burst allowance (16 packets) only when ``now``
  moves, so a millisecond clock caps a transfer at one burst per
  millisecond -- about 20 MB/s with 1350-byte datagrams, whatever the CPU
  could do.  Both clocks are CLOCK_MONOTONIC; a deadline is turned into a
  loop timer by its distance from the clock's ``now``.  Tests pass the fake
  loop's own clock.

The router is kept in step with the sessions' connection IDs through
:class:`~quicserve.quic.connection.SessionOwner` calls (issued, retired,
closed).  ``Statistics.quic_sessions`` and ``datagrams_*`` are exact: every
datagram received is counted once, as is every one sent and every one dropped.

Graceful shutdown follows ``transport/base.py``: ``stop_accepting`` (new
Initials are dropped), ``shutdown`` (GOAWAY on every session; each closes
with H3_NO_ERROR once its streams are done), ``wait_closed``, and ``abort``
(CONNECTION_CLOSE on every session now).

With ``--workers`` > 1 the endpoint also has a
:class:`~quicserve.transport.handoff.Handoff`: the router may answer
``Forward`` for a new connection's Initial, and the endpoint sends the
datagram to that worker's inbox (or, if that fails, serves it itself); the
endpoint reads its own inbox like a second socket and routes what arrives
there as received from the client (counted as ``datagrams_handed_in``, not
``datagrams_received``, so each client datagram is counted once in all).  It
publishes its session count on the group's load board after each change, and
:data:`~quicserve.transport.handoff.UNAVAILABLE` once it stops accepting.

The socket itself is behind a :class:`DatagramIO`: in production
``transport/udp_socket.py``'s ``SocketIO`` (GRO receives, one GSO send per
flush); in tests an in-memory link.  Each flush hands *all* its datagrams to
one ``send`` call, so runs of full-size packets leave in one system call.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import IO, TYPE_CHECKING, Callable, Protocol

from ..log import error_logger, open_keylog
from ..quic.cid import CidIssuer, StatelessResetKeys
from ..quic.connection import NetworkAddress, QuicSession, SessionFactory
from ..quic.router import CidRouter, Create, Deliver, Drop, Forward, Reply
from ..quic.settings import SUPPORTED_VERSIONS, quic_settings
from ..quic.tokens import NewTokens, QuicSecrets, RetryTokens, SessionTicketStore
from .handoff import UNAVAILABLE
from .udp_socket import SocketIO

if TYPE_CHECKING:
    from ..config import Config
    from ..interfaces import ConnectionContext
    from ..quic.replay import ReplayCache
    from .handoff import Handoff


#: Datagrams one session may send in one flush by taking further pacer
#: bursts that are already due: one GSO batch (64 segments).
FLUSH_BUDGET = 64
#: How long the first GOAWAY of a graceful shutdown stands before the second:
#: twice the largest smoothed RTT among the connections, within these bounds.
_GOAWAY_WAIT_MIN = 0.05
_GOAWAY_WAIT_MAX = 1.0


class DatagramIO(Protocol):
    """Where an endpoint's datagrams go (``SocketIO``, or a test link)."""

    def send(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> int:
        """Send or queue ``datagrams`` in order; how many were accepted."""

    def close(self) -> None: ...


class UdpEndpoint:
    """The QUIC side of one UDP socket; a :class:`~quicserve.transport.base.Listener`.

    Error handling: hostile datagrams never raise out of the receive path
    (the router drops what does not parse; aioquic closes connections that
    break the protocol).  Send errors are counted and logged by the
    DatagramIO and the datagrams are lost, which QUIC's loss recovery
    handles.

    Resource handling: sessions are capped by ``--quic-max-connections`` (the
    router drops Initials beyond it) and each is removed when aioquic reports
    it terminated (idle timeout, peer close, end of closing period).
    """

    def __init__(self, *, loop: asyncio.AbstractEventLoop, router: CidRouter[QuicSession],
                 factory: SessionFactory, ctx: ConnectionContext,
                 keylog: IO[str] | None = None,
                 clock: Callable[[], float] | None = None,
                 handoff: Handoff | None = None) -> None:
        self._loop = loop
        self._handoff = handoff
        #: ``now`` for the sessions; None: the loop's own clock (fake loops).
        self._clock = clock
        self._now: Callable[[], float] = clock if clock is not None else loop.time
        self._router = router
        self._factory = factory
        self._stats = ctx.stats
        self._keylog = keylog
        self._io: DatagramIO | None = None
        self._sessions: set[QuicSession] = set()
        self._dirty: set[QuicSession] = set()
        self._flush_scheduled = False
        self._timers: dict[QuicSession, tuple[float, asyncio.TimerHandle]] = {}
        self._closing = False
        #: Between the two GOAWAYs of a graceful shutdown: the second step.
        self._final_shutdown: asyncio.TimerHandle | None = None
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._addresses: list[tuple[str, int] | str] = []

    def attach(self, io: DatagramIO, address: tuple[str, int]) -> None:
        """Start sending through ``io``; ``address`` is where it is bound."""
        self._io = io
        self._addresses = [address]
        if self._handoff is not None:
            self._loop.add_reader(self._handoff.inbox.fileno(), self._inbox_readable)
            self._publish()  # (from now on other workers may hand connections here)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        """One datagram off the socket (called by the DatagramIO)."""
        self._stats.datagrams_received += 1
        self._dispatch(data, addr, self._now())

    # -- receive path -------------------------------------------------------------

    def _dispatch(self, data: bytes, addr: NetworkAddress, now: float,
                  handed: bool = False) -> None:
        action = self._router.route(data, (addr[0], addr[1]), now, handed)
        if type(action) is Deliver:
            action.session.receive(data, addr, now)
        elif isinstance(action, Create):
            self._create(action, data, addr, now)
        elif isinstance(action, Reply):
            self._reply(action, addr)
        elif isinstance(action, Drop):
            self._stats.datagrams_dropped += 1
        elif isinstance(action, Forward):
            self._forward(action, data, addr, now)

    def _forward(self, action: Forward, data: bytes, addr: NetworkAddress, now: float) -> None:
        handoff = self._handoff
        if handoff is not None and handoff.forward(action.worker, data, addr):
            self._stats.datagrams_handed_off += 1
            return
        # The other worker cannot take it (gone, or its inbox is full).
        self._router.handoff_failed(action.dcid)
        self._dispatch(data, addr, now, handed=True)

    def _inbox_readable(self) -> None:
        handoff = self._handoff
        if handoff is None:
            return
        now = self._now()
        stats = self._stats
        for data, addr in handoff.receive():
            stats.datagrams_handed_in += 1
            self._dispatch(data, addr, now, handed=True)

    def _publish(self) -> None:
        if self._handoff is not None and self._router.accepting:
            self._handoff.publish(len(self._sessions))

    def _reply(self, action: Reply, addr: NetworkAddress) -> None:
        stats = self._stats
        if action.kind == "retry":
            stats.retries += 1
        elif action.kind == "stateless_reset":
            stats.stateless_resets += 1
        else:
            stats.version_negotiations += 1
        self._send([(action.data, addr)])

    def _create(self, action: Create, data: bytes, addr: NetworkAddress, now: float) -> None:
        session = self._factory.create(action, owner=self, addr=addr)
        self._sessions.add(session)
        self._all_closed.clear()
        self._stats.quic_sessions += 1
        self._router.add(action.dcid, session)
        self._router.add(session.host_cid, session)
        self._publish()
        session.receive(data, addr, now)

    # -- SessionOwner -------------------------------------------------------------------

    def session_dirty(self, session: QuicSession) -> None:
        self._dirty.add(session)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def cid_issued(self, session: QuicSession, cid: bytes) -> None:
        if session in self._sessions:
            self._router.add(cid, session)

    def cid_retired(self, session: QuicSession, cid: bytes) -> None:
        self._router.remove(cid)

    def session_closed(self, session: QuicSession) -> None:
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        self._dirty.discard(session)
        self._router.remove_session(session)
        timer = self._timers.pop(session, None)
        if timer is not None:
            timer[1].cancel()
        self._stats.quic_sessions -= 1
        self._publish()
        if not self._sessions:
            self._all_closed.set()

    # -- flush and timers -------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        now = self._now()
        datagrams: list[tuple[bytes, NetworkAddress]] = []
        sessions = self._sessions
        for session in dirty:
            if session in sessions:
                out = session.datagrams_to_send(now)
                if out:
                    out = self._more_bursts(session, out)
                datagrams += out
                self._arm_timer(session)
        self._send(datagrams)

    def _more_bursts(self, session: QuicSession,
                     out: list[tuple[bytes, NetworkAddress]]) -> list[tuple[bytes, NetworkAddress]]:
        """aioquic's pacer lets one burst out per call.  Building one takes
        long enough that the next is often due before the flush ends: take it
        now, up to one GSO batch, instead of after a timer and a loop turn."""
        clock = self._now
        while len(out) < FLUSH_BUDGET:
            more = session.datagrams_due(clock())
            if not more:
                break
            out += more
        return out

    def _send(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        if self._io is not None and datagrams:
            self._stats.datagrams_sent += self._io.send(datagrams)

    def _arm_timer(self, session: QuicSession) -> None:
        deadline = session.deadline()
        current = self._timers.get(session)
        if current is not None:
            if current[0] == deadline:
                return
            current[1].cancel()
            del self._timers[session]
        if deadline is not None and session in self._sessions:
            loop = self._loop
            when = deadline if self._clock is None else loop.time() + (deadline - self._clock())
            handle = loop.call_at(when, self._on_timer, session, deadline)
            self._timers[session] = (deadline, handle)

    def _on_timer(self, session: QuicSession, deadline: float) -> None:
        self._timers.pop(session, None)
        # The loop may run a timer up to one loop-clock tick early (a whole
        # millisecond with uvloop); aioquic compares ``now >= deadline``
        # strictly, so never pass it less.
        session.handle_timer(max(self._now(), deadline))
        # handle_timer marked the session dirty: the flush re-arms the timer.

    # -- Listener ---------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self._router.accepting = False
        if self._handoff is not None:
            self._handoff.publish(UNAVAILABLE)

    def shutdown(self) -> None:
        # RFC 9114 section 5.2's two steps: announce (GOAWAY with the largest
        # stream ID), then, once requests the clients sent before hearing it
        # have had a round trip to arrive, GOAWAY naming the first stream
        # not seen, after which new streams are refused.
        if self._closing:
            return
        self.stop_accepting()
        self._closing = True
        sessions = list(self._sessions)
        if not sessions:
            return
        for session in sessions:
            session.begin_shutdown()
        rtt = max(session.smoothed_rtt() for session in sessions)
        delay = min(_GOAWAY_WAIT_MAX, max(_GOAWAY_WAIT_MIN, 2 * rtt))
        self._final_shutdown = self._loop.call_at(self._loop.time() + delay,
                                                  self._shutdown_sessions)

    def _shutdown_sessions(self) -> None:
        self._final_shutdown = None
        for session in list(self._sessions):
            session.shutdown()

    async def wait_closed(self) -> None:
        await self._all_closed.wait()
        if self._closing:
            self._close_transport()

    def abort(self) -> None:
        self.stop_accepting()
        self._closing = True
        if self._final_shutdown is not None:
            self._final_shutdown.cancel()
            self._final_shutdown = None
        for session in list(self._sessions):
            session.abort()
        self._flush()
        for session in list(self._sessions):
            self.session_closed(session)
        self._close_transport()

    @property
    def addresses(self) -> list[tuple[str, int] | str]:
        return list(self._addresses)

    # -- introspection -----------------------------------------------------------------

    @property
    def sessions(self) -> frozenset[QuicSession]:
        return frozenset(self._sessions)

    def router_statistics(self) -> object:
        return self._router.statistics()

    def _close_transport(self) -> None:
        if self._io is not None:
            self._io.close()
        handoff, self._handoff = self._handoff, None
        if handoff is not None:
            fd = handoff.inbox.fileno()
            if fd >= 0:
                self._loop.remove_reader(fd)
            handoff.inbox.close()
        if self._keylog is not None:
            self._keylog.close()
            self._keylog = None


async def open_udp_endpoint(
    sock: socket.socket,
    *,
    ctx: ConnectionContext,
    config: Config,
    secrets: QuicSecrets,
    worker_id: int = 0,
    worker_count: int = 1,
    handoff: Handoff | None = None,
    replay: ReplayCache | None = None,
) -> UdpEndpoint:
    """Serve QUIC on the bound UDP socket ``sock``.

    ``handoff`` and ``replay`` come from the supervisor (``--workers``): this
    worker's share of the group's handoff, and the session-ticket replay
    cache every worker shares (default: one of the process's own).

    Error handling: a bad certificate, key or password, or a missing qlog
    directory, raises here (``OSError``/``ValueError``), before any datagram
    is read.

    Resource handling: the endpoint owns ``sock`` from here on (through the
    ``SocketIO``) and closes it in ``wait_closed`` after a shutdown, or in
    ``abort``; it also opens and closes the ``SSLKEYLOGFILE`` key log.
    """
    loop = asyncio.get_running_loop()
    keylog_path = os.environ.get("SSLKEYLOGFILE")
    keylog = open_keylog(keylog_path) if keylog_path else None
    sockname = sock.getsockname()
    try:
        endpoint = build_endpoint(loop=loop, ctx=ctx, config=config, secrets=secrets,
                                  server=(sockname[0], sockname[1]), keylog=keylog,
                                  worker_id=worker_id, worker_count=worker_count,
                                  clock=time.monotonic, handoff=handoff, replay=replay)
    except BaseException:
        if keylog is not None:
            keylog.close()
        raise
    io = SocketIO(sock, loop=loop, on_datagram=endpoint.datagram_received)
    endpoint.attach(io, io.address)
    return endpoint


def build_endpoint(
    *,
    loop: asyncio.AbstractEventLoop,
    ctx: ConnectionContext,
    config: Config,
    secrets: QuicSecrets,
    server: tuple[str, int] | None,
    keylog: IO[str] | None = None,
    worker_id: int = 0,
    worker_count: int = 1,
    clock: Callable[[], float] | None = None,
    handoff: Handoff | None = None,
    replay: ReplayCache | None = None,
) -> UdpEndpoint:
    """Wire an endpoint (router, session factory) without a socket yet.

    ``loop`` needs only ``time``, ``call_soon`` and ``call_at``, so tests run
    the real endpoint on fake time; the DatagramIO arrives with
    :meth:`UdpEndpoint.attach`.  ``clock`` gives the sessions' ``now``
    (default: ``loop.time``); it must run on the loop's time base.
    """
    settings = quic_settings(config, keylog=keylog)
    issuer = CidIssuer(worker_id=worker_id, worker_count=worker_count,
                       length=settings.configuration.connection_id_length)
    reset_keys = StatelessResetKeys(secrets.reset_key)
    # With Retry on, validated clients get a NEW_TOKEN token for their next
    # connection, which then skips the Retry.
    new_tokens = NewTokens(secrets.new_token_key) if config.quic_retry else None
    router: CidRouter[QuicSession] = CidRouter(
        issuer=issuer,
        reset_keys=reset_keys,
        retry=RetryTokens(secrets.retry_key) if config.quic_retry else None,
        new_tokens=new_tokens,
        supported_versions=SUPPORTED_VERSIONS,
        reset_rate=config.quic_stateless_reset_rate,
        max_sessions=settings.max_connections,
        balancer=handoff,
    )
    factory = SessionFactory(ctx=ctx, settings=settings, issuer=issuer, reset_keys=reset_keys,
                             tickets=SessionTicketStore(secrets.ticket_key, replay=replay),
                             server=server, new_tokens=new_tokens)
    return UdpEndpoint(loop=loop, router=router, factory=factory, ctx=ctx, keylog=keylog,
                       clock=clock, handoff=handoff)
