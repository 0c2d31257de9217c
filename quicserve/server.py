"""Wiring: one server (one worker) from a Config, and its graceful shutdown.

Theory of operation
-------------------
:class:`Server` is the only place that knows every layer.  ``start()`` does,
in this order, so that each failure happens before anything it would leave
behind:

1. **Load the app** (``asgi.app``): ``AppLoadError`` before any socket exists.
2. **TLS context** (``transport.tls``) when a certificate is configured;
   ALPN offers ``h2`` when the H2 adapter is importable, then ``http/1.1``.
3. **Open the sockets** (``transport.sockets``): every ``--bind``,
   ``--insecure-bind`` and ``--quic-bind``, bound and listening.  Connections
   that arrive from here on wait in the kernel backlog.
4. **Lifespan startup** (``asgi.lifespan``): a failure raises ``LifespanError``
   with the app's message (``run()`` exits 3) and the sockets are closed.
5. **Alt-Svc** (``protocols.altsvc``) from the UDP ports *actually bound* by
   the QUIC endpoints that started, into ``ResponseDefaults`` for TLS
   listeners only (a cleartext origin cannot be upgraded to h3).
6. **Listeners**: a ``TcpListener`` per TCP socket and a QUIC endpoint per UDP
   socket, sharing one ``Dispatcher`` (the stream factory), one
   ``Statistics`` and the loop's clock through a ``ConnectionContext``.

Shutdown (``shutdown()``, also what SIGINT/SIGTERM trigger) runs the
``transport.base.Listener`` sequence once for every listener: stop accepting,
``shutdown()`` (HTTP/1.1 closes idle keep-alive connections, H2/H3 send
GOAWAY), then waits — on events, never by polling — until every listener is
closed and the dispatcher is idle, for at most ``--graceful-timeout`` seconds.
What is left then is aborted and cancelled.  Lifespan shutdown runs last, then
the sockets are closed.  A second signal ends the wait at once and skips the
lifespan shutdown.

``serve()`` and ``run()`` are the public entry points; ``run_config()`` is what
the CLI calls, and ``run_with_reload()`` is ``--reload``.  With ``--workers`` > 1
(or ``--max-requests``) ``run_config()`` hands over to ``supervisor.run(config)``.

Why one module of ~800 lines: DESIGN.md allows processes and signals only
here, in ``supervisor.py`` and in ``transport/``, and each part is short —
:class:`Server` (the wiring), the entry points, and the ``--reload`` parent
(:class:`_Reloader`, which could join the supervisor) — most lines are the
docstrings that say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import importlib
import importlib.util
import os
import signal
import ssl
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, Iterable, Sequence

from . import __version__, log
from .asgi.app import load_app, wrap_app
from .asgi.dispatch import Dispatcher
from .asgi.lifespan import Lifespan
from .asgi.types import ASGIApp
from .config import Config, ConfigError
from .errors import AppLoadError, LifespanError, QuicserveError
from .interfaces import ConnectionContext, ResponseDefaults, Statistics
from .protocols.altsvc import alt_svc_value
from .transport import sockets
from .transport.base import Listener
from .transport.sockets import BindError, BoundAddress, BoundSocket

if TYPE_CHECKING:
    from .supervisor import WorkerContext

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_LIFESPAN = 3

#: How long aborted connections get to go away after the graceful deadline.
_ABORT_GRACE = 2.0
#: The demo app served when no app is given.
DEMO_APP = "quicserve.demo:app"

ShutdownTrigger = Callable[[], Awaitable[object]]
AppArg = ASGIApp | str | None

error_log = log.error_logger


class StartupError(QuicserveError):
    """The server cannot start (TLS files, a missing feature); one-line message."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One address the server listens on, as bound (the real port for port 0)."""

    #: "tcp" (also unix sockets) or "udp" (QUIC).
    transport: str
    #: TLS on TCP, always True for QUIC.
    secure: bool
    address: BoundAddress

    @property
    def url(self) -> str:
        scheme = "https" if self.secure else "http"
        if isinstance(self.address, str):
            return f"{scheme}+unix:{self.address}"
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}"


class Server:
    """One quicserve server (one worker) on its own event loop.

    ``Server(config, app=...)``, then ``await start()``, then either
    ``await serve_until(trigger)`` or ``await shutdown()`` when done.  ``app``
    is an ASGI application (ASGI 2 and WSGI are wrapped), a ``"module:attr"``
    string, or None for ``config.app`` (and, failing that, ``--static DIR`` or
    the demo app).  ``worker`` is the supervisor's hand-over (``--workers``):
    the sockets it opened (the server then opens none), the worker's id and
    count for connection-ID steering, the shared QUIC secret, and a callback
    made once the worker serves.

    Error handling: :meth:`start` raises ``AppLoadError`` (the app cannot be
    imported), ``StartupError`` (TLS files, missing features),
    ``sockets.BindError`` (an address cannot be bound) or ``LifespanError``
    (the app's lifespan startup failed; its message is the exception's), and
    leaves nothing open behind it.  :meth:`shutdown` does not raise for the
    app's or a client's misbehaviour; those are logged.

    Resource handling: every socket, listener, connection and app task the
    server creates is released by :meth:`shutdown`, which is idempotent and
    safe to call concurrently (later callers wait for the first).
    """

    def __init__(self, config: Config | None = None, *, app: AppArg = None,
                 worker: WorkerContext | None = None) -> None:
        self.config = config if config is not None else Config()
        self._app_arg = app
        self._worker = worker
        self._stats = Statistics()
        self._state: dict[str, Any] = {}
        self._bound: list[BoundSocket] = []
        self._listeners: list[Listener] = []
        self._addresses: list[ListenAddress] = []
        self._lifespan: Lifespan | None = None
        self._dispatcher: Dispatcher | None = None
        self._stop_requested: asyncio.Event | None = None
        self._forced: asyncio.Event | None = None
        self._closed: asyncio.Event | None = None
        self._shutdown_started = False
        self._signals: list[int] = []
        self._signal_count = 0
        #: The collector thresholds before start() raised them (None: untouched).
        self._gc_previous: tuple[int, int, int] | None = None

    # -- public ------------------------------------------------------------------

    @property
    def addresses(self) -> tuple[ListenAddress, ...]:
        """Where the server listens (after :meth:`start`)."""
        return tuple(self._addresses)

    def statistics(self) -> dict[str, int]:
        """A snapshot of the live counters: tcp_connections, quic_sessions,
        streams, app_tasks, requests, datagram counts, ..."""
        return self._stats.snapshot()

    @property
    def http3(self) -> bool:
        """True when at least one QUIC endpoint is serving."""
        return any(a.transport == "udp" for a in self._addresses)

    async def start(self) -> None:
        """Load the app, bind, run lifespan startup and start serving.

        Error handling and resource handling: see the class docstring.
        """
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._forced = asyncio.Event()
        self._closed = asyncio.Event()
        app = self._load_app()
        tls = self._tls_context()
        self._open_sockets()
        try:
            self._lifespan = Lifespan(app, mode=self.config.lifespan, state=self._state)
            await self._lifespan.startup()
            self._dispatcher = Dispatcher(
                app=app, options=self.config, state=self._state, stats=self._stats,
                access_log=log.AccessLog(self.config.access_logformat),
            )
            await self._start_listeners(tls, loop)
        except BaseException:
            await self._release_after_failed_start()
            raise
        self._log_ready()
        self._gc_previous = _raise_gc_threshold(self.config.gc_threshold)
        if self._worker is not None:
            self._worker.on_started(self._stats)

    async def serve_until(self, trigger: ShutdownTrigger | None = None) -> None:
        """Serve until ``trigger()`` returns (or :meth:`request_shutdown` / a
        signal), then shut down gracefully.  Starts the server if needed.

        Error handling: as :meth:`start`; an exception from ``trigger()``
        propagates after the shutdown.

        Resource handling: the server is shut down when this returns, whatever
        happens, including cancellation.
        """
        if self._stop_requested is None:
            await self.start()
        stop = self._stop_requested
        if stop is None:  # pragma: no cover - start() set it
            raise RuntimeError("server did not start")
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
        if trigger is not None:
            waiters.add(asyncio.ensure_future(trigger()))
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                future.result()  # the trigger's exception, if it raised
        finally:
            for future in waiters:
                future.cancel()
            await self.shutdown()

    def request_shutdown(self) -> None:
        """Ask :meth:`serve_until` to return and shut the server down."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    def force_shutdown(self) -> None:
        """End the graceful wait now (what a second signal does)."""
        self.request_shutdown()
        if self._forced is not None:
            self._forced.set()

    async def shutdown(self) -> None:
        """Graceful shutdown (see the module docstring).  Idempotent."""
        if self._closed is None:
            return
        if self._shutdown_started:
            await self._closed.wait()
            return
        self._shutdown_started = True
        try:
            await self._shutdown()
        finally:
            self.remove_signal_handlers()
            self._close_sockets()
            _restore_gc_threshold(self.config.gc_threshold, self._gc_previous)
            self._closed.set()

    # -- signals -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM start a graceful shutdown; a second one forces it.
        SIGHUP is logged and ignored: a process serving alone has nothing to
        restart it with (``--workers`` or ``--reload`` do), and in a worker
        the supervisor, which gets the same SIGHUP from a process-group
        hangup, replaces the workers one at a time.

        Only in the main thread (the loop cannot take signals elsewhere); a
        no-op otherwise.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum, handler in ((signal.SIGINT, self._on_signal),
                                (signal.SIGTERM, self._on_signal),
                                (signal.SIGHUP, self._on_hangup)):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, handler, signum)
                self._signals.append(signum)

    def remove_signal_handlers(self) -> None:
        if not self._signals:
            return
        loop = asyncio.get_running_loop()
        for signum in self._signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        self._signals.clear()

    def _on_signal(self, signum: int) -> None:
        self._signal_count += 1
        name = signal.Signals(signum).name
        if self._signal_count == 1:
            error_log.info("%s received: shutting down gracefully (at most %gs; again to exit "
                           "at once)", name, self.config.graceful_timeout)
            self.request_shutdown()
        else:
            error_log.warning("%s received again: exiting at once", name)
            self.force_shutdown()

    def _on_hangup(self, signum: int) -> None:
        if self._worker is not None:
            error_log.info("SIGHUP ignored by the worker: the supervisor restarts workers")
        else:
            error_log.warning("SIGHUP ignored: restarting needs --workers N (rolling restart) "
                              "or --reload; SIGTERM stops the server gracefully")

    # -- start-up steps ----------------------------------------------------------------

    def _load_app(self) -> ASGIApp:
        arg = self._app_arg if self._app_arg is not None else self.config.app
        if arg is not None and self.config.static is not None:
            error_log.warning("--static %s is ignored: an application is given",
                              self.config.static)
        if isinstance(arg, str):
            return load_app(arg, factory=self.config.factory, app_dir=self.config.app_dir)
        if arg is not None:
            return wrap_app(arg)
        if self.config.static is not None:
            return _static_app(self.config.static)
        return load_app(DEMO_APP)

    def _tls_context(self) -> ssl.SSLContext | None:
        config = self.config
        keylog = os.environ.get("SSLKEYLOGFILE") or None
        if keylog and config.tls:
            error_log.warning("SSLKEYLOGFILE is set: TLS secrets are written to %s; anyone who "
                              "can read it can decrypt this server's traffic", keylog)
        certfile, keyfile = config.certfile, config.keyfile
        if certfile is None or keyfile is None or not config.binds():
            return None
        from .transport.tls import create_ssl_context

        try:
            return create_ssl_context(
                certfile=certfile, keyfile=keyfile,
                password=config.keyfile_password, ca_certs=config.ca_certs,
                verify_mode=config.verify_mode, alpn=list(_tcp_alpn()), keylog_file=keylog,
            )
        except QuicserveError as exc:
            raise StartupError(_one_line(exc)) from exc
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise StartupError(f"cannot load the certificate {config.certfile}: "
                               f"{_one_line(exc)}") from exc

    def _open_sockets(self) -> None:
        if self._worker is not None:
            self._bound = [*self._worker.tcp, *self._worker.udp]
            return
        config = self.config
        try:
            for spec in config.binds() + config.insecure_binds():
                self._bound.append(sockets.open_tcp(spec, backlog=config.backlog))
            for spec in config.quic_binds():
                self._bound.append(sockets.open_udp(spec))
        except BaseException:
            self._close_sockets()
            raise

    def _is_secure(self, bound: BoundSocket) -> bool:
        """TLS for ``--bind`` sockets when a certificate is configured; never
        for ``--insecure-bind``.  TCP sockets are always ordered binds first
        (here and in the supervisor's hand-over), so position decides; the
        bind strings cannot, since two ``127.0.0.1:0`` binds look alike."""
        if bound.kind == "udp":
            return True
        tcp = [b for b in self._bound if b.kind == "tcp"]
        return self.config.tls and tcp.index(bound) < len(self.config.binds())

    async def _start_listeners(self, tls: ssl.SSLContext | None,
                               loop: asyncio.AbstractEventLoop) -> None:
        udp = [b for b in self._bound if b.kind == "udp"]
        quic_listeners = await self._start_quic(udp, loop)
        ports = [addr[1] for l in quic_listeners for addr in _inet(l.addresses)]
        alt_svc = alt_svc_value(ports, max_age=self.config.alt_svc_max_age,
                                alpns=self.config.quic_alpn, enabled=self.config.alt_svc)
        for bound in self._bound:
            if bound.kind != "tcp":
                continue
            secure = self._is_secure(bound) and tls is not None
            ctx = self._context(loop, alt_svc if secure else None)
            listener = await _start_tcp(bound, ctx=ctx, config=self.config,
                                        ssl_context=tls if secure else None)
            self._listeners.append(listener)
            self._addresses.append(ListenAddress("tcp", secure, bound.address))
        self._listeners.extend(quic_listeners)
        self._addresses.extend(ListenAddress("udp", True, b.address) for b in udp
                               if quic_listeners)

    async def _start_quic(self, udp: list[BoundSocket],
                          loop: asyncio.AbstractEventLoop) -> list[Listener]:
        if not udp:
            return []
        if importlib.util.find_spec("quicserve.transport.udp") is None:
            names = ", ".join(str(b.spec) for b in udp)
            error_log.warning("HTTP/3 is not available in this build (no quicserve.transport.udp):"
                              " --quic-bind %s is not served and no Alt-Svc is sent", names)
            for bound in udp:
                sockets.close(bound)
            self._bound = [b for b in self._bound if b.kind != "udp"]
            return []
        udp_module = importlib.import_module("quicserve.transport.udp")
        from .quic.tokens import QuicSecrets

        worker = self._worker
        if worker is not None:
            secrets = QuicSecrets.from_master(worker.quic_secret)
        else:
            try:
                secrets = QuicSecrets.load(self.config.quic_secret_file)
            except QuicserveError as exc:
                raise StartupError(_one_line(exc)) from exc
        ctx = self._context(loop, None)
        listeners: list[Listener] = []
        handoffs = worker.udp_handoff if worker is not None else ()
        for index, bound in enumerate(udp):
            try:
                listeners.append(await udp_module.open_udp_endpoint(
                    bound.sock, ctx=ctx, config=self.config, secrets=secrets,
                    worker_id=worker.worker_id if worker else 0,
                    worker_count=worker.worker_count if worker else 1,
                    handoff=handoffs[index] if index < len(handoffs) else None,
                    replay=worker.ticket_replay if worker is not None else None))
            except (OSError, ValueError) as exc:
                for listener in listeners:
                    listener.abort()
                raise StartupError(f"cannot serve QUIC on {bound.spec}: {_one_line(exc)}") from exc
        return listeners

    def _context(self, loop: asyncio.AbstractEventLoop, alt_svc: bytes | None) -> ConnectionContext:
        if self._dispatcher is None:  # pragma: no cover - start() made it
            raise RuntimeError("dispatcher missing")
        config = self.config
        defaults = ResponseDefaults(
            server=b"quicserve" if config.server_header else None,
            date=config.date_header,
            extra=config.extra_headers(),
            alt_svc=alt_svc,
        )
        return ConnectionContext(options=config, stream_factory=self._dispatcher,
                                 response_defaults=defaults, stats=self._stats, clock=loop.time)

    def _log_ready(self) -> None:
        for address in self._addresses:
            if address.transport == "udp":
                error_log.info("listening on %s (QUIC: %s)", address.url,
                               ", ".join(self.config.quic_alpn))
            else:
                protocols = ", ".join(_tcp_alpn()) if address.secure else "http/1.1"
                error_log.info("listening on %s (TCP: %s)", address.url, protocols)
        error_log.info("quicserve %s ready (pid %d)", __version__, os.getpid())

    async def _release_after_failed_start(self) -> None:
        for listener in self._listeners:
            listener.stop_accepting()
            listener.abort()
        self._listeners.clear()
        if self._lifespan is not None:
            with contextlib.suppress(Exception):
                await self._lifespan.shutdown()
        self._close_sockets()
        if self._closed is not None:
            self._closed.set()
        self._shutdown_started = True

    # -- shutdown steps --------------------------------------------------------------------

    async def _shutdown(self) -> None:
        for listener in self._listeners:
            listener.stop_accepting()
        for listener in self._listeners:
            listener.shutdown()
        drained = await self._drain(self.config.graceful_timeout)
        if not drained:
            self._abort_rest()
            # Aborted connections and cancelled tasks finish their cleanup
            # (finally blocks, connection_lost) before the lifespan shutdown.
            if not await self._drain(_ABORT_GRACE, forced_ends_wait=False):
                error_log.warning("some connections or tasks did not end after the abort")
        forced = self._forced is not None and self._forced.is_set()
        if self._lifespan is not None and not forced:
            await self._lifespan.shutdown()
        error_log.info("quicserve stopped (pid %d)", os.getpid())

    async def _drain(self, timeout: float, *, forced_ends_wait: bool = True) -> bool:
        """Wait until every listener closed and no stream is active; False when
        the deadline passed or a forced shutdown cut the wait short."""
        waiters: list[Awaitable[None]] = [l.wait_closed() for l in self._listeners]
        if self._dispatcher is not None:
            waiters.append(self._dispatcher.wait_idle())
        drain = asyncio.ensure_future(asyncio.gather(*waiters))
        forced = (asyncio.ensure_future(self._forced.wait())
                  if self._forced is not None and forced_ends_wait else None)
        pending = {drain} | ({forced} if forced else set())
        try:
            done, _ = await asyncio.wait(pending, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if forced is not None:
                forced.cancel()
        if drain in done:
            if drain.exception() is not None:
                error_log.error("a listener failed while closing", exc_info=drain.exception())
            return True
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        return False

    def _abort_rest(self) -> None:
        active = self._dispatcher.active if self._dispatcher is not None else 0
        stats = self._stats
        error_log.warning("graceful shutdown cut short: closing %d TCP connections and %d QUIC "
                          "sessions, cancelling %d requests", stats.tcp_connections,
                          stats.quic_sessions, active)
        for listener in self._listeners:
            listener.abort()
        if self._dispatcher is not None:
            self._dispatcher.cancel_all()

    def _close_sockets(self) -> None:
        for bound in self._bound:
            sockets.close(bound)
        self._bound.clear()


# --------------------------------------------------------------------------
# Public entry points.


async def serve(app: AppArg = None, config: Config | None = None, *,
                shutdown_trigger: ShutdownTrigger | None = None, **options: Any) -> None:
    """Serve ``app`` until ``shutdown_trigger()`` returns, then shut down gracefully.

    ``app`` is an ASGI application, a ``"module:attr"`` string, or None (the
    demo app, or ``config.app``).  ``options`` are :class:`Config` fields and
    override ``config``.  Without a ``shutdown_trigger``, SIGINT and SIGTERM
    trigger the shutdown (when called from the main thread); with one, signal
    handling is left to the caller.

    Error handling: raises ``ConfigError`` for a bad option, ``AppLoadError``,
    ``sockets.BindError``, ``StartupError`` or ``LifespanError`` (the app's
    lifespan startup failed) before serving; nothing is left open then.
    Errors of the application while serving are logged and answered (500),
    never raised here.

    Resource handling: every socket, connection and task is closed or
    finished when this returns, including when the awaiting task is
    cancelled; in-flight requests get ``graceful_timeout`` seconds first.
    """
    config = _with_options(config, options)
    server = Server(config, app=app)
    await server.start()
    if shutdown_trigger is None:
        server.install_signal_handlers()
    await server.serve_until(shutdown_trigger)


def run(app: AppArg = None, **options: Any) -> None:
    """Serve ``app`` in this process until SIGINT/SIGTERM (blocking).

    ``app`` is an ASGI application, a ``"module:attr"`` string, or None for
    the demo app; ``options`` are :class:`Config` fields.  Logging is
    configured from the options (``log_level``, ``access_log``, ...).

    Error handling: a bad option raises ``ConfigError``.  Start-up failures
    are logged on ``quicserve.error`` and end the process with
    ``SystemExit(1)``; a lifespan startup failure logs the app's message and
    ends it with ``SystemExit(3)``.

    Resource handling: everything the server opened is closed when this
    returns or raises.  With ``workers`` > 1 the supervisor owns the worker
    processes and stops them before returning.
    """
    if isinstance(app, str):
        options.setdefault("app", app)
        app = None
    code = run_config(_with_options(None, options), app=app)
    if code != EXIT_OK:
        raise SystemExit(code)


def run_config(config: Config, *, app: AppArg = None,
               worker: WorkerContext | None = None) -> int:
    """Run a server from a complete Config (the CLI's entry); the exit status.

    With ``--workers`` > 1 or ``--max-requests`` this hands over to
    ``supervisor.run(config)``, which calls it back in every worker process
    with ``worker`` set.
    """
    log.configure(level=config.log_level, access_log=config.access_log,
                  access_logfile=config.access_logfile)
    if worker is None and (config.workers > 1 or config.max_requests is not None):
        # --max-requests recycles the serving process, so even one worker
        # needs the supervisor to start its replacement on the same sockets.
        return _run_workers(config, app)
    try:
        loop_factory = _loop_factory(config.loop)
    except ConfigError as exc:
        print(f"quicserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        _run_coroutine(_serve_process(app, config, worker), loop_factory)
    except LifespanError as exc:
        error_log.error("application startup failed: %s", exc)
        return EXIT_LIFESPAN
    except (AppLoadError, BindError, StartupError) as exc:
        error_log.error("%s", exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return EXIT_OK
    return EXIT_OK


async def _serve_process(app: AppArg, config: Config, worker: WorkerContext | None) -> None:
    """``serve()`` for a whole process: signal handlers on."""
    server = Server(config, app=app, worker=worker)
    await server.start()
    server.install_signal_handlers()
    await server.serve_until()


def _run_workers(config: Config, app: AppArg) -> int:
    if app is not None and not isinstance(app, str):
        error_log.error("--workers/--max-requests need the app as module:attr, not an object")
        return EXIT_USAGE
    if isinstance(app, str):
        config = config.replace(app=app)
    if importlib.util.find_spec("quicserve.supervisor") is None:
        error_log.error("--workers %d: worker processes are not available in this build "
                        "(no quicserve.supervisor); use --workers 1", config.workers)
        return EXIT_USAGE
    supervisor = importlib.import_module("quicserve.supervisor")
    code: int = supervisor.run(config)
    return code


# --------------------------------------------------------------------------
# --reload: a parent process that restarts a server child on .py changes.


def run_with_reload(config: Config, argv: Sequence[str]) -> int:
    """Run ``python -m quicserve ARGV`` (without ``--reload``) as a child and
    restart it whenever a ``.py`` file under ``--reload-dirs`` changes.

    Error handling: without ``watchfiles`` this logs how to install it and
    returns 1.  A child that exits on its own (a syntax error, a failed
    lifespan startup) is reported and restarted after the next change.

    Resource handling: the child runs in its own process group, so a
    terminal's Ctrl-C reaches only this process, which forwards each
    SIGINT/SIGTERM to the child once and waits for it to exit.
    """
    log.configure(level=config.log_level, access_log=config.access_log,
                  access_logfile=config.access_logfile)
    if importlib.util.find_spec("watchfiles") is None:
        error_log.error("--reload needs watchfiles: pip install 'quicserve[reload]'")
        return EXIT_FAILURE
    from .cli import child_argv

    command = [sys.executable, "-m", "quicserve", *child_argv(argv)]
    dirs = [os.path.abspath(d) for d in (config.reload_dirs or (config.app_dir,))]
    return asyncio.run(_reload_loop(command, dirs))


class _Reloader:
    """The ``--reload`` parent: one child at a time, restarted on changes.

    Waits on four things at once — the next batch of file changes, the
    child's exit, SIGHUP (restart the child now) and SIGINT/SIGTERM — with
    ``asyncio.wait``; nothing polls.
    """

    def __init__(self, command: list[str], dirs: list[str]) -> None:
        self._command = command
        self._dirs = dirs
        self._env = dict(os.environ, QUICSERVE_RELOAD="0")
        self._stop = asyncio.Event()
        self._restart = asyncio.Event()
        self._child: asyncio.subprocess.Process | None = None
        self._signals: list[int] = []

    async def run(self) -> int:
        import watchfiles

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._restart.set)
        watcher = watchfiles.awatch(*self._dirs, watch_filter=watchfiles.PythonFilter(),
                                    stop_event=self._stop)
        error_log.info("--reload: watching %s", ", ".join(self._dirs))
        await self._spawn()
        change = asyncio.ensure_future(anext(watcher))
        stopping = asyncio.ensure_future(self._stop.wait())
        hangup = asyncio.ensure_future(self._restart.wait())
        try:
            while True:
                exited = asyncio.ensure_future(self._child.wait()) if self._child else None
                waiting = {change, stopping, hangup} | ({exited} if exited else set())
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if exited is not None:
                    exited.cancel()
                if stopping.done():
                    return await self._stop_child(self._signals[0])
                if change.done() or hangup.done():
                    if change.done():
                        _log_changes(change)
                        change = asyncio.ensure_future(anext(watcher))
                    else:
                        error_log.info("--reload: SIGHUP received; restarting the server")
                        self._restart.clear()
                        hangup = asyncio.ensure_future(self._restart.wait())
                    await self._stop_child(signal.SIGTERM)
                    await self._spawn()
                elif self._child is not None and self._child.returncode is not None:
                    error_log.error("--reload: the server exited with status %d; it restarts "
                                    "after the next change", self._child.returncode)
                    self._child = None
        finally:
            change.cancel()
            stopping.cancel()
            hangup.cancel()

    def _on_signal(self, signum: int) -> None:
        if self._stop.is_set() and self._child is not None and self._child.returncode is None:
            self._child.send_signal(signum)  # a second signal: the child exits at once
        self._signals.append(signum)
        self._stop.set()

    async def _spawn(self) -> None:
        self._child = await asyncio.create_subprocess_exec(
            *self._command, env=self._env, start_new_session=True,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()))

    async def _stop_child(self, signum: int) -> int:
        child, self._child = self._child, None
        if child is None:
            return EXIT_OK
        if child.returncode is None:
            child.send_signal(signum)
            self._child = child  # reachable by a second signal while it drains
        code = await child.wait()
        self._child = None
        return EXIT_OK if code in (0, -signal.SIGTERM, -signal.SIGINT) else code


def _die_with_parent(parent: int) -> None:
    """In the reload child, before exec: SIGTERM when the parent dies (Linux
    PR_SET_PDEATHSIG), since its own session keeps it from the parent's
    terminal signals."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the child outlives a killed parent
    if os.getppid() != parent:
        os._exit(EXIT_FAILURE)


async def _reload_loop(command: list[str], dirs: list[str]) -> int:
    return await _Reloader(command, dirs).run()


def _log_changes(change: asyncio.Future[Any]) -> None:
    if change.cancelled() or change.exception() is not None:
        return
    paths = sorted({os.path.relpath(path) for _, path in change.result()})
    error_log.info("--reload: %s changed; restarting", ", ".join(paths[:5]))


# --------------------------------------------------------------------------
# Helpers.


def _with_options(config: Config | None, options: dict[str, Any]) -> Config:
    if config is None:
        return Config(**options)
    return config.replace(**options) if options else config


def _static_app(directory: str) -> ASGIApp:
    if importlib.util.find_spec("quicserve.static") is None:
        raise StartupError("--static is not available in this build (no quicserve.static)")
    if not os.path.isdir(directory):
        raise StartupError(f"--static {directory}: not a directory")
    static = importlib.import_module("quicserve.static")
    return wrap_app(static.app_for(directory))


def _tcp_alpn() -> tuple[str, ...]:
    """ALPN offered on TLS listeners: h2 first when the H2 adapter exists."""
    if importlib.util.find_spec("quicserve.protocols.h2") is not None:
        return ("h2", "http/1.1")
    return ("http/1.1",)


def _tcp_adapters() -> dict[str, Any]:
    """ALPN/switch key -> adapter factory.  HTTP/1.1 may switch to h2c (prior
    knowledge or ``Upgrade``) only when the H2 adapter exists."""
    from .protocols.h11 import H11Adapter

    if importlib.util.find_spec("quicserve.protocols.h2") is None:
        return {"http/1.1": functools.partial(H11Adapter, h2c=False)}
    from .protocols.h2 import H2Adapter

    return {"http/1.1": H11Adapter, "h2": H2Adapter}


async def _start_tcp(bound: BoundSocket, *, ctx: ConnectionContext, config: Config,
                     ssl_context: ssl.SSLContext | None) -> Listener:
    from .transport.tcp import TcpListener
    from .transport.tlsinfo import leaf_certificate_pem

    server_cert = None
    if ssl_context is not None and config.certfile is not None:
        server_cert = leaf_certificate_pem(config.certfile)
    listener = TcpListener(sock=bound.sock, ctx=ctx, adapters=_tcp_adapters(),
                           ssl_context=ssl_context,
                           tls_handshake_timeout=config.tls_handshake_timeout,
                           keep_alive=config.keep_alive, backlog=config.backlog,
                           server_cert=server_cert)
    await listener.start()
    return listener


def _raise_gc_threshold(threshold: int) -> tuple[int, int, int] | None:
    """Raise the cycle collector's generation-0 threshold to ``threshold``.

    Under load a server allocates and frees objects so fast that Python's
    default (a collection every 700 net new container objects) runs the
    collector hundreds of times a second, and its passes (which also promote
    in-flight objects to older generations, so those get traversed again)
    cost a tenth of the CPU of a small HTTP/3 request.  A higher threshold
    keeps the collector for what it is for -- reference cycles, which the
    request path itself does not make -- at the cost of cyclic garbage
    living a little longer.  Never lowers a threshold, and leaves a collector
    switched off by threshold (0) alone.  Returns the previous setting when
    it changed it."""
    previous = gc.get_threshold()
    if not threshold or not previous[0] or previous[0] >= threshold:
        return None
    gc.set_threshold(threshold, previous[1], previous[2])
    error_log.debug("cycle collector threshold %d (was %d)", threshold, previous[0])
    return previous


def _restore_gc_threshold(threshold: int, previous: tuple[int, int, int] | None) -> None:
    """Undo :func:`_raise_gc_threshold`, unless someone changed it since."""
    if previous is not None and gc.get_threshold()[0] == threshold:
        gc.set_threshold(*previous)


def _inet(addresses: Iterable[object]) -> list[tuple[str, int]]:
    return [(str(a[0]), int(a[1])) for a in addresses if isinstance(a, tuple)]


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on: uvloop for auto (when installed) and uvloop."""
    if choice == "asyncio":
        return None
    if importlib.util.find_spec("uvloop") is None:
        if choice == "uvloop":
            raise ConfigError("--loop", "uvloop is not installed (pip install 'quicserve[fast]')")
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run_coroutine(coro: Coroutine[Any, Any, None],
                   loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(coro)
        return
    if loop_factory is not None:  # pragma: no cover - Python 3.10
        loop = loop_factory()
        try:
            loop.run_until_complete(coro)
        finally:
            loop.close()
        return
    asyncio.run(coro)  # pragma: no cover - Python 3.10
