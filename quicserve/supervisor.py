"""Worker processes: open every socket first, fork, restart, recycle, reload.

Theory of operation
-------------------
``quicserve --workers N`` runs this supervisor (``server.run_config`` calls
:func:`run`).  It never serves a request itself; it:

1. opens **every listening socket before any worker exists** and keeps them
   open until it exits: one TCP socket per ``--bind`` / ``--insecure-bind``,
   shared by all workers (the kernel spreads ``accept`` among them), and per
   ``--quic-bind`` one UDP socket **per worker**, the N sockets forming one
   SO_REUSEPORT group steered by the first byte of the destination connection
   ID (``transport/steering.py``).  Worker ``i`` gets socket ``i`` of every
   group, and issues only connection IDs that steer back to ``i``
   (``quic/cid.py``).  With it, per group, the handoff
   (``transport/handoff.py``): a load board in shared memory and an inbox per
   worker, through which a worker hands a new connection's first datagram
   to a less-loaded one;
2. loads or generates the QUIC master secret once (``--quic-secret-file``) and
   hands it to every worker, so a Retry token, session ticket or
   stateless-reset token made by one worker is honoured by any other and by a
   restarted one; and makes the one session-ticket replay cache they all
   share (``quic/replay.py``), so a ticket is accepted once per host;
3. forks the workers.  ``fork`` is the right tool here: the sockets are
   inherited as they are (no fd passing, no pickling), the supervisor is one
   thread with no event loop and has not imported the application, so each
   child starts clean and imports the app itself.  Linux is the only platform
   with CBPF steering anyway;
4. waits -- on a self-pipe fed by ``signal.set_wakeup_fd`` and on a pipe the
   workers report readiness on, never by polling -- and reacts:

   ============  ===========================================================
   event         reaction
   ============  ===========================================================
   worker died   restarted with the same ``worker_id``, hence the same UDP
                 socket; its clients' packets now reach a process that does
                 not know their connections and answers with a stateless
                 reset (the reset key is shared), so no client hangs.  Its
                 load-board slot reads unavailable until the successor
                 serves, so no new connection is handed to it meanwhile.  A
                 worker that dies *before it ever became ready* with a
                 non-zero status is a boot failure (bad app, lifespan
                 startup failed): everything stops with that status.
   recycle       a worker reports it reached ``--max-requests``: it is sent
                 SIGTERM (graceful) and replaced once it has exited.
   SIGTERM/INT   graceful stop: SIGTERM to every worker (each sends GOAWAY /
                 CONNECTION_CLOSE and drains), SIGKILL for what is left after
                 ``--graceful-timeout`` plus a margin.
   SIGHUP        rolling restart: one worker at a time is stopped, replaced
                 and awaited until ready before the next one.
   SIGUSR1       forwarded to the serving workers when
                 ``QUICSERVE_WORKER_STATS_DIR`` is set: each writes its
                 statistics file (otherwise ignored).
   ============  ===========================================================

Because no socket is ever closed while serving, the reuseport group's order
never shifts, and a restarted worker takes back exactly its own socket.  A
worker is in its own process group (so a terminal's Ctrl-C reaches only the
supervisor, which then stops the workers gracefully, once) and dies with the
supervisor (``PR_SET_PDEATHSIG``).

Per-worker statistics
---------------------
When ``QUICSERVE_WORKER_STATS_DIR`` names a directory, each worker writes
``worker-<id>.json`` there -- ``{"worker_id", "pid", "written_at", "stats"}``
with the worker's :class:`~quicserve.interfaces.Statistics` snapshot
(datagrams received, stateless resets, sessions ...) -- on SIGUSR1 to the
supervisor and when it exits.  Tests use it to prove that every packet of a
connection reached one worker.  The file is replaced atomically.

The worker side
---------------
In the child, :func:`run` calls ``server.run_config(config, worker=context)``
with a :class:`WorkerContext`: the inherited sockets, the worker's id and the
count, the master secret, and an ``on_started`` callback the server calls once
it serves (inside its running loop).  The callback reports readiness, installs
the SIGUSR1 statistics dump and arms ``--max-requests`` recycling.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import errno
import json
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .config import BindSpec, Config
from .errors import QuicserveError
from .interfaces import Statistics
from .log import configure as configure_logging
from .log import error_logger
from .transport import sockets, steering
from .transport.batch import size_buffers
from .quic.replay import SharedReplayCache
from .transport.handoff import Handoff, HandoffGroup

EXIT_OK = 0
EXIT_FAILURE = 1
#: Environment variable naming the per-worker statistics directory.
STATS_DIR_ENV = "QUICSERVE_WORKER_STATS_DIR"
#: Seconds a stopping worker gets beyond ``--graceful-timeout`` before SIGKILL.
KILL_MARGIN = 5.0
#: Restart delays after consecutive crashes of one worker (seconds).
RESTART_BACKOFF = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)
#: A worker that lived this long resets its crash count.
STABLE_AFTER = 10.0
#: How often a worker compares its request count with ``--max-requests``.
RECYCLE_CHECK_INTERVAL = 0.5

#: Worker -> supervisor messages on one pipe: kind, worker_id, pid.
_MESSAGE = struct.Struct("!BHI")
_READY = 1
_RECYCLE = 2
_PR_SET_PDEATHSIG = 1
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerContext:
    """What a worker process is handed by the supervisor.

    ``tcp`` holds every ``--bind`` then every ``--insecure-bind`` socket, in
    configuration order, shared by all workers.  ``udp`` holds this worker's
    socket of every ``--quic-bind`` group, in configuration order.  The worker
    must not close any of them (closing its inherited copy is harmless, but a
    unix socket's file belongs to the supervisor: ``owns_path`` is False).

    ``quic_secret`` is the master secret for ``QuicSecrets.from_master``.
    ``on_started(stats)`` must be called once, from inside the running event
    loop, when the worker serves (after lifespan startup).
    """

    worker_id: int
    worker_count: int
    tcp: tuple[sockets.BoundSocket, ...]
    udp: tuple[sockets.BoundSocket, ...]
    quic_secret: bytes
    max_requests: int | None
    on_started: Callable[[Statistics], None]
    #: Per ``udp`` socket: this worker's share of the group's handoff
    #: (``transport/handoff.py``), None with one worker.
    udp_handoff: tuple[Handoff | None, ...] = ()
    #: The session-ticket replay cache all workers share (``quic/replay.py``).
    ticket_replay: SharedReplayCache | None = None


WorkerMain = Callable[[Config, WorkerContext], int]


class State(enum.Enum):
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"


@dataclass(slots=True)
class _Worker:
    worker_id: int
    pid: int
    started_at: float
    ready: bool = False
    stop_requested: bool = False
    recycling: bool = False


@dataclass(slots=True)
class _Slot:
    """One worker id: its process (if any) and its restart bookkeeping."""

    worker_id: int
    worker: _Worker | None = None
    crashes: int = 0
    restart_at: float | None = None


@dataclass(slots=True)
class _Listeners:
    tcp: list[sockets.BoundSocket] = field(default_factory=list)
    #: udp[i] is the group of the i-th --quic-bind; udp[i][w] is worker w's socket.
    udp: list[list[sockets.BoundSocket]] = field(default_factory=list)
    #: handoffs[i]: the i-th group's inboxes and load board (more than one worker).
    handoffs: list[HandoffGroup] = field(default_factory=list)
    #: One session-ticket replay cache for every worker, present and future.
    ticket_replay: SharedReplayCache | None = None

    def close(self) -> None:
        for bound in self.tcp:
            sockets.close(bound)
        for group in self.udp:
            for bound in group:
                sockets.close(bound)
        for handoff in self.handoffs:
            handoff.close()
        if self.ticket_replay is not None:
            self.ticket_replay.close()
            self.ticket_replay = None

    def for_worker(self, worker_id: int) -> tuple[tuple[sockets.BoundSocket, ...],
                                                   tuple[sockets.BoundSocket, ...]]:
        tcp = tuple(sockets.BoundSocket(b.spec, b.kind, b.sock) for b in self.tcp)
        udp = tuple(group[worker_id] for group in self.udp)
        return tcp, udp

    def all_sockets(self) -> Iterable[socket.socket]:
        yield from (b.sock for b in self.tcp)
        yield from (b.sock for group in self.udp for b in group)


def run(config: Config, *, worker_main: WorkerMain | None = None) -> int:
    """Serve ``config`` with ``config.workers`` worker processes; return the
    exit status.

    ``worker_main`` runs in each child; by default ``server.run_config(config,
    worker=context)``.

    Error handling: a socket that cannot be opened, a platform without CBPF
    steering or an unreadable secret file is logged as one line and returns
    1 before any worker starts.  A worker that fails to boot stops the
    others and its exit status is returned.

    Resource handling: every socket is opened here and closed only when the
    last worker is gone; workers are stopped (SIGTERM, then SIGKILL after the
    graceful timeout) on every exit path.
    """
    configure_logging(level=config.log_level, access_log=config.access_log,
                      access_logfile=config.access_logfile)
    try:
        listeners = open_listeners(config)
    except (QuicserveError, OSError) as exc:
        error_logger.error("%s", exc)
        return EXIT_FAILURE
    try:
        secret = _load_secret(config)
    except (QuicserveError, ValueError) as exc:
        listeners.close()
        error_logger.error("%s", exc)
        return EXIT_FAILURE
    supervisor = Supervisor(config, listeners, secret=secret,
                            worker_main=worker_main or _default_worker_main,
                            stats_dir=os.environ.get(STATS_DIR_ENV) or None)
    try:
        return supervisor.serve()
    finally:
        listeners.close()


def open_listeners(config: Config) -> _Listeners:
    """Every listening socket of ``config``, UDP as steered groups of
    ``config.workers`` sockets.

    Error handling: ``sockets.BindError`` naming the bind, or
    ``UnsupportedPlatform``.  Nothing stays open on error.
    """
    listeners = _Listeners()
    try:
        for spec in (*config.binds(), *config.insecure_binds()):
            listeners.tcp.append(sockets.open_tcp(spec, backlog=config.backlog))
        for spec in config.quic_binds():
            listeners.udp.append(_open_udp_group(spec, config.workers))
            if config.workers > 1:
                listeners.handoffs.append(HandoffGroup(config.workers))
        if listeners.udp:
            listeners.ticket_replay = SharedReplayCache()
    except BaseException:
        listeners.close()
        raise
    return listeners


def _open_udp_group(spec: BindSpec, count: int) -> list[sockets.BoundSocket]:
    if spec.kind != "inet":
        raise sockets.BindError(f"cannot bind {spec} (UDP): with --workers > 1 every worker needs "
                                "its own socket, so --quic-bind must be host:port")
    try:
        group = steering.open_udp_group(spec, count)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise sockets.BindError(f"cannot bind {spec} (UDP): {reason}") from None
    for sock in group:
        size_buffers(sock)
    return [sockets.BoundSocket(spec, "udp", sock) for sock in group]


def _load_secret(config: Config) -> bytes:
    from .quic.tokens import QuicSecrets

    return QuicSecrets.load(config.quic_secret_file).to_master()


def _default_worker_main(config: Config, context: WorkerContext) -> int:
    from . import server

    return server.run_config(config, worker=context)


class Supervisor:
    """The supervisor's event loop; see the module docstring.

    Not reentrant and not thread-safe: one per process, run by :func:`run`.
    """

    def __init__(self, config: Config, listeners: _Listeners, *, secret: bytes,
                 worker_main: WorkerMain, stats_dir: str | None) -> None:
        self._config = config
        self._listeners = listeners
        self._secret = secret
        self._worker_main = worker_main
        self._stats_dir = stats_dir
        self._count = config.workers
        self._slots = [_Slot(i) for i in range(self._count)]
        self._state = State.RUNNING
        self._exit_status = EXIT_OK
        self._stop_deadline: float | None = None
        self._reload_queue: list[int] = []
        self._selector = selectors.DefaultSelector()
        self._signal_r, self._signal_w = os.pipe()
        self._ready_r, self._ready_w = os.pipe()
        self._pid = os.getpid()

    # -- main loop ---------------------------------------------------------

    def serve(self) -> int:
        for fd in (self._signal_r, self._signal_w, self._ready_r):
            os.set_blocking(fd, False)
        previous = self._install_signals()
        self._selector.register(self._signal_r, selectors.EVENT_READ, self._on_signal_pipe)
        self._selector.register(self._ready_r, selectors.EVENT_READ, self._on_ready_pipe)
        error_logger.info("supervisor %d starting %d workers", self._pid, self._count)
        try:
            for slot in self._slots:
                self._spawn(slot)
            while not self._finished():
                self._turn()
        finally:
            self._kill_all()
            self._restore_signals(previous)
            self._selector.close()
            for fd in (self._signal_r, self._signal_w, self._ready_r, self._ready_w):
                os.close(fd)
        error_logger.info("supervisor %d stopped", self._pid)
        return self._exit_status

    def _finished(self) -> bool:
        return self._state is State.STOPPING and all(s.worker is None for s in self._slots)

    def _turn(self) -> None:
        for key, _ in self._selector.select(self._timeout()):
            key.data()
        self._reap()
        self._on_timers()

    def _timeout(self) -> float | None:
        due = [s.restart_at for s in self._slots if s.restart_at is not None]
        if self._stop_deadline is not None:
            due.append(self._stop_deadline)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _on_timers(self) -> None:
        now = time.monotonic()
        if self._state is not State.STOPPING:
            for slot in self._slots:
                if slot.restart_at is not None and slot.restart_at <= now and slot.worker is None:
                    self._spawn(slot)
        if self._stop_deadline is not None and now >= self._stop_deadline:
            self._stop_deadline = None
            for worker in self._workers():
                error_logger.warning("worker %d (pid %d) did not stop in time; killing it",
                                     worker.worker_id, worker.pid)
                _signal(worker.pid, signal.SIGKILL)

    def _workers(self) -> list[_Worker]:
        return [s.worker for s in self._slots if s.worker is not None]

    # -- signals -------------------------------------------------------------

    def _install_signals(self) -> dict[int, object]:
        previous: dict[int, object] = {sig: signal.getsignal(sig) for sig in _HANDLED_SIGNALS}
        for sig in _HANDLED_SIGNALS:
            # The handler does nothing: the wakeup fd carries the signal number
            # to the select loop, which acts on it outside signal context.
            signal.signal(sig, _ignore_in_handler)
        previous[-1] = signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        return previous

    def _restore_signals(self, previous: dict[int, object]) -> None:
        wakeup = previous.pop(-1)
        signal.set_wakeup_fd(wakeup if isinstance(wakeup, int) else -1)
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _on_signal_pipe(self) -> None:
        try:
            data = os.read(self._signal_r, 512)
        except BlockingIOError:
            return
        for number in data:
            self._on_signal(number)

    def _on_signal(self, number: int) -> None:
        if number in (signal.SIGTERM, signal.SIGINT):
            error_logger.info("supervisor received %s; stopping workers gracefully",
                              signal.Signals(number).name)
            self.stop()
        elif number == signal.SIGHUP:
            self.reload()
        elif number == signal.SIGUSR1:
            self._request_statistics()
        # SIGCHLD: _reap() runs after every wake-up.

    def _request_statistics(self) -> None:
        if self._stats_dir is None:
            # Workers install no SIGUSR1 handler then, and would die of it.
            error_logger.info("SIGUSR1 ignored: %s is not set", STATS_DIR_ENV)
            return
        for worker in self._workers():
            if worker.ready:
                _signal(worker.pid, signal.SIGUSR1)

    # -- commands ------------------------------------------------------------

    def stop(self) -> None:
        """Graceful stop of every worker.  A worker already stopping (being
        recycled or reloaded) is not signalled again -- a second SIGTERM tells
        the server to hurry -- unless this is the second stop request."""
        again = self._state is State.STOPPING
        self._state = State.STOPPING
        self._reload_queue.clear()
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self._config.graceful_timeout + KILL_MARGIN
        for slot in self._slots:
            slot.restart_at = None
            worker = slot.worker
            if worker is not None and (again or not worker.stop_requested):
                worker.stop_requested = True
                _signal(worker.pid, signal.SIGTERM)

    def reload(self) -> None:
        """Rolling restart: one worker at a time is replaced."""
        if self._state is not State.RUNNING:
            error_logger.info("SIGHUP ignored while %s", self._state.value)
            return
        error_logger.info("supervisor received SIGHUP; restarting workers one at a time")
        self._state = State.RELOADING
        self._reload_queue = list(range(self._count))
        self._reload_next()

    def _reload_next(self) -> None:
        if not self._reload_queue:
            self._state = State.RUNNING
            error_logger.info("all workers restarted")
            return
        slot = self._slots[self._reload_queue[0]]
        if slot.worker is None:
            self._spawn(slot)  # died meanwhile: replace it straight away
        elif not slot.worker.stop_requested:  # else it is already on its way out
            slot.worker.stop_requested = True
            _signal(slot.worker.pid, signal.SIGTERM)

    # -- worker lifecycle ------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        slot.restart_at = None
        limit = self._max_requests()
        context_args = self._context_args(slot.worker_id, limit)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            self._become_worker(slot.worker_id, limit, context_args)
        slot.worker = _Worker(slot.worker_id, pid, time.monotonic())
        error_logger.info("started worker %d (pid %d)", slot.worker_id, pid)

    def _max_requests(self) -> int | None:
        if self._config.max_requests is None:
            return None
        return self._config.max_requests + random.randint(0, self._config.max_requests_jitter)

    def _context_args(self, worker_id: int, limit: int | None) -> dict[str, object]:
        tcp, udp = self._listeners.for_worker(worker_id)
        handoffs = tuple(group.for_worker(worker_id) for group in self._listeners.handoffs)
        return {"worker_id": worker_id, "worker_count": self._count, "tcp": tcp, "udp": udp,
                "quic_secret": self._secret, "max_requests": limit, "udp_handoff": handoffs,
                "ticket_replay": self._listeners.ticket_replay}

    def _become_worker(self, worker_id: int, limit: int | None,
                       context_args: dict[str, object]) -> None:
        """The child's side of the fork.  Never returns."""
        status = EXIT_FAILURE
        try:
            _reset_child_signals()
            _die_with_parent(self._pid)
            os.setpgid(0, 0)
            own = {b.sock.fileno() for b in context_args["udp"]}  # type: ignore[attr-defined]
            for sock in self._listeners.all_sockets():
                if sock.family != socket.AF_UNIX and sock.type == socket.SOCK_DGRAM \
                        and sock.fileno() not in own:
                    sock.close()  # other workers' sockets; the supervisor keeps the group
            for group in self._listeners.handoffs:
                group.close_others(worker_id)
            for fd in (self._signal_r, self._signal_w, self._ready_r):
                os.close(fd)
            self._selector.close()
            hooks = _WorkerHooks(worker_id, self._ready_w, self._stats_dir, limit)
            context = WorkerContext(on_started=hooks.on_started, **context_args)  # type: ignore[arg-type]
            config = self._config.replace(max_requests=limit, max_requests_jitter=0)
            status = self._worker_main(config, context)
            hooks.write_statistics()
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
        except BaseException:
            error_logger.exception("worker %d failed", worker_id)
        finally:
            _flush_logs()
            os._exit(status)

    def _on_ready_pipe(self) -> None:
        try:
            data = os.read(self._ready_r, _MESSAGE.size * 64)
        except BlockingIOError:
            return
        for offset in range(0, len(data) - _MESSAGE.size + 1, _MESSAGE.size):
            kind, worker_id, pid = _MESSAGE.unpack_from(data, offset)
            worker = self._current(worker_id, pid)
            if worker is None:
                continue  # a message from a process that is gone
            if kind == _READY:
                self._on_ready(worker)
            elif kind == _RECYCLE:
                self._on_recycle(worker)

    def _current(self, worker_id: int, pid: int) -> _Worker | None:
        if not 0 <= worker_id < self._count:
            return None
        worker = self._slots[worker_id].worker
        return worker if worker is not None and worker.pid == pid else None

    def _on_ready(self, worker: _Worker) -> None:
        worker.ready = True
        error_logger.info("worker %d (pid %d) is serving", worker.worker_id, worker.pid)
        if self._state is State.RELOADING and self._reload_queue[:1] == [worker.worker_id]:
            self._reload_queue.pop(0)
            self._reload_next()

    def _on_recycle(self, worker: _Worker) -> None:
        """The worker reached --max-requests: stop it gracefully (once); it is
        replaced when it exits, on the same sockets."""
        if worker.stop_requested:
            return
        worker.stop_requested = worker.recycling = True
        _signal(worker.pid, signal.SIGTERM)

    def _reap(self) -> None:
        for slot in self._slots:
            worker = slot.worker
            if worker is None:
                continue
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0
            if pid == 0:
                continue
            slot.worker = None
            self._on_exit(slot, worker, os.waitstatus_to_exitcode(status))

    def _on_exit(self, slot: _Slot, worker: _Worker, code: int) -> None:
        for group in self._listeners.handoffs:
            group.mark_unavailable(worker.worker_id)
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        if self._state is State.STOPPING:
            error_logger.info("worker %d (pid %d) %s", worker.worker_id, worker.pid, how)
            return
        if not worker.ready and code > 0:
            error_logger.error("worker %d (pid %d) failed to boot (%s); stopping",
                               worker.worker_id, worker.pid, how)
            self._exit_status = code
            self.stop()
            return
        if worker.stop_requested:
            reason = "recycled after --max-requests" if worker.recycling else how
            error_logger.info("worker %d (pid %d) %s; replacing it", worker.worker_id,
                              worker.pid, reason)
            slot.crashes = 0
            self._spawn(slot)
            return
        self._schedule_restart(slot, worker, code, how)

    def _schedule_restart(self, slot: _Slot, worker: _Worker, code: int, how: str) -> None:
        """A worker exited on its own: restart it, backing off if it keeps
        dying young."""
        lived = time.monotonic() - worker.started_at
        slot.crashes = 0 if lived >= STABLE_AFTER else slot.crashes + 1
        log = error_logger.warning if code else error_logger.info
        log("worker %d (pid %d) %s; restarting it", worker.worker_id, worker.pid, how)
        delay = RESTART_BACKOFF[min(slot.crashes, len(RESTART_BACKOFF) - 1)]
        if delay:
            slot.restart_at = time.monotonic() + delay
        else:
            self._spawn(slot)

    def _kill_all(self) -> None:
        """Last resort on an abnormal exit of the loop: no worker outlives us."""
        for worker in self._workers():
            _signal(worker.pid, signal.SIGKILL)
        for slot in self._slots:
            if slot.worker is not None:
                try:
                    os.waitpid(slot.worker.pid, 0)
                except ChildProcessError:
                    pass
                slot.worker = None


class _WorkerHooks:
    """The child-side half of the supervisor: readiness, statistics file,
    ``--max-requests`` recycling."""

    def __init__(self, worker_id: int, ready_fd: int, stats_dir: str | None,
                 max_requests: int | None) -> None:
        self._worker_id = worker_id
        self._ready_fd = ready_fd
        self._stats_dir = stats_dir
        self._max_requests = max_requests
        self._stats: Statistics | None = None
        self._recycling = False

    def on_started(self, stats: Statistics) -> None:
        """Called by the server inside its running loop once it serves."""
        self._stats = stats
        loop = asyncio.get_running_loop()
        if self._stats_dir is not None:
            loop.add_signal_handler(signal.SIGUSR1, self.write_statistics)
        if self._max_requests is not None:
            loop.call_later(RECYCLE_CHECK_INTERVAL, self._check_recycle, loop)
        self._tell(_READY)

    def _check_recycle(self, loop: asyncio.AbstractEventLoop) -> None:
        stats, limit = self._stats, self._max_requests
        if stats is None or limit is None or self._recycling:
            return
        if stats.requests >= limit:
            self._recycling = True
            error_logger.info("worker %d served %d requests (--max-requests %d); recycling",
                              self._worker_id, stats.requests, limit)
            # The supervisor sends the SIGTERM (the server's graceful shutdown),
            # so it knows this worker is on its way out and never signals it twice.
            self._tell(_RECYCLE)
            return
        loop.call_later(RECYCLE_CHECK_INTERVAL, self._check_recycle, loop)

    def _tell(self, kind: int) -> None:
        os.write(self._ready_fd, _MESSAGE.pack(kind, self._worker_id, os.getpid()))

    def write_statistics(self) -> None:
        if self._stats_dir is None or self._stats is None:
            return
        path = os.path.join(self._stats_dir, f"worker-{self._worker_id}.json")
        record = {"worker_id": self._worker_id, "pid": os.getpid(), "written_at": time.time(),
                  "stats": self._stats.snapshot()}
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w") as fh:
                json.dump(record, fh)
            os.replace(temporary, path)
        except OSError as exc:
            error_logger.warning("cannot write worker statistics to %s: %s", path, exc)


def _ignore_in_handler(signum: int, frame: object) -> None:
    """Signal handler of the supervisor: the wakeup fd does the work."""


def _reset_child_signals() -> None:
    signal.set_wakeup_fd(-1)
    for sig in _HANDLED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux; workers then outlive a SIGKILLed supervisor
    if os.getppid() != parent:
        os._exit(EXIT_FAILURE)  # the supervisor died before prctl took effect


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _flush_logs() -> None:
    for handler in (*error_logger.handlers,):
        try:
            handler.flush()
        except (OSError, ValueError):
            pass
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
