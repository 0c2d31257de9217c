"""One frozen :class:`Config`: every default, limit and timeout in one place.

Theory of operation
-------------------
``Config`` is inert data.  It never opens a socket, builds an SSL context or
computes a header; ``server.py`` does that from it.  Each field carries its
documentation and its command-line spelling in ``dataclasses.field`` metadata,
so the CLI (``cli.py``), the environment (``QUICSERVE_<NAME>``) and the TOML
file (``--config``) are all generated from the one table below and cannot
drift apart.

Precedence is CLI > environment > file > default: :func:`build_config` merges
the layers as dictionaries of raw values, then converts and validates each value
once, so an error always names the option the way the user spelled it
(``--keep-alive``, ``QUICSERVE_KEEP_ALIVE`` or ``keep_alive`` in the file).

This module is a leaf: it imports nothing of quicserve, so it defines its own
:class:`ConfigError` (a ``ValueError``); ``errors`` re-exports nothing of it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad option value.  ``option`` names it the way the user wrote it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


# --------------------------------------------------------------------------
# Value parsers.  Each takes the raw value (str from CLI/env, any from TOML)
# and returns the typed value or raises ValueError with a short reason.


def _to_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean, got {raw!r}")


def _to_int(raw: object) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"expected an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    text = str(raw).strip().replace("_", "")
    multipliers = {"k": 1024, "m": 1024**2, "g": 1024**3}
    if text and text[-1].lower() in multipliers:
        return int(text[:-1]) * multipliers[text[-1].lower()]
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def _to_float(raw: object) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"expected a number, got {raw!r}")
    try:
        return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {raw!r}") from None


def _to_str(raw: object) -> str:
    return str(raw)


def _to_list(raw: object) -> tuple[str, ...]:
    if isinstance(raw, (list, tuple)):
        return tuple(str(item) for item in raw)
    text = str(raw)
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _non_negative(value: float) -> None:
    if value < 0:
        raise ValueError("must not be negative")


def _positive(value: float) -> None:
    if value <= 0:
        raise ValueError("must be positive")


def _choice(*choices: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")

    return check


def _range(low: int, high: int) -> Callable[[int], None]:
    def check(value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")

    return check


# --------------------------------------------------------------------------
# Bind strings.  Pure parsing; transport/sockets.py opens what they describe.


@dataclass(frozen=True, slots=True)
class BindSpec:
    """A parsed ``--bind`` / ``--quic-bind`` value."""

    kind: str  # "inet", "unix" or "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_bind(text: str, *, allow_unix: bool = True) -> BindSpec:
    """Parse ``host:port``, ``[v6]:port``, ``unix:PATH`` or ``fd://N``."""
    if text.startswith("unix:"):
        if not allow_unix:
            raise ValueError("unix sockets cannot carry QUIC")
        path = text[len("unix:"):]
        if not path:
            raise ValueError("unix: needs a path")
        return BindSpec("unix", path=path)
    if text.startswith("fd://"):
        try:
            fd = int(text[len("fd://"):])
        except ValueError:
            raise ValueError(f"bad file descriptor in {text!r}") from None
        if fd < 0:
            raise ValueError(f"bad file descriptor in {text!r}")
        return BindSpec("fd", fd=fd)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"expected [address]:port, got {text!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad IPv6 address in {text!r}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected host:port, got {text!r}")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets: [{host}]:{port_text}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return BindSpec("inet", host=host or "0.0.0.0", port=port)


def _check_binds(values: tuple[str, ...]) -> None:
    for value in values:
        parse_bind(value)


def _check_quic_binds(values: tuple[str, ...]) -> None:
    for value in values:
        parse_bind(value, allow_unix=False)


def parse_header(text: str) -> tuple[bytes, bytes]:
    """Parse ``--header NAME:VALUE`` into a lowercase (name, value) pair."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"expected NAME:VALUE, got {text!r}")
    token_chars = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
    if not set(name.lower()) <= token_chars:
        raise ValueError(f"bad header name {name!r}")
    value = value.strip()
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError("header values cannot contain CR, LF or NUL")
    return name.lower().encode("ascii"), value.encode("latin-1")


def _check_headers(values: tuple[str, ...]) -> None:
    for value in values:
        parse_header(value)


def _check_networks(values: tuple[str, ...]) -> None:
    for value in values:
        if value in ("*", "unix"):
            continue
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"not an address or network: {value!r}") from None


def _check_alpn(values: tuple[str, ...]) -> None:
    for value in values:
        if value not in ("h3", "hq-interop"):
            raise ValueError(f"unsupported ALPN {value!r} (h3, hq-interop)")
    if not values:
        raise ValueError("needs at least one ALPN")


def _check_quic_streams(value: int) -> None:
    if not 1 <= value <= 1000:
        raise ValueError(f"must be between 1 and 1000, got {value}")


# --------------------------------------------------------------------------
# The table.


def opt(
    default: Any,
    help: str,
    *,
    parse: Callable[[object], Any],
    check: Callable[[Any], None] | None = None,
    flags: tuple[str, ...] = (),
    negative: str | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """Declare one option.

    ``flags`` are the command-line spellings (the first is the canonical one;
    by default ``--field-name``); ``negative`` is a ``--no-...`` flag for
    booleans.  ``parse`` converts a raw value, ``check`` validates it.
    """
    meta = {
        "help": help,
        "parse": parse,
        "check": check,
        "flags": flags,
        "negative": negative,
        "metavar": metavar,
        "cli": cli,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Every setting of a quicserve server, with its default.

    Build one with keyword arguments, :meth:`from_toml`, or
    :func:`build_config` (what the CLI uses).  Values given as keyword
    arguments are converted and validated the same way as CLI values, so
    ``Config(keep_alive="5")`` and ``Config(keep_alive=5.0)`` are equal and
    ``Config(keep_alive=-1)`` raises :class:`ConfigError`.
    """

    # -- application ------------------------------------------------------
    app: str | None = opt(None, "the ASGI app as module:attr; the demo app when omitted",
                          parse=_to_str, cli=False)
    factory: bool = opt(False, "treat APP as a factory: call it with no arguments to get the app",
                        parse=_to_bool)
    app_dir: str = opt(".", "directory added to sys.path before the app is imported",
                       parse=_to_str, metavar="DIR")
    root_path: str = opt("", "the ASGI root_path for apps mounted below a prefix", parse=_to_str,
                         metavar="PATH")
    lifespan: str = opt("auto", "run the ASGI lifespan protocol: auto (if the app supports it), on, off",
                        parse=_to_str, check=_choice("auto", "on", "off"))
    static: str | None = opt(None, "serve the files under DIR (as the app when no APP is given)",
                             parse=_to_str, flags=("--static", "--www"), metavar="DIR")

    # -- listeners --------------------------------------------------------
    bind: tuple[str, ...] = opt((), "TCP address to serve: host:port, [v6]:port, unix:PATH or fd://N "
                                "(repeatable; TLS when a certificate is given)",
                                parse=_to_list, check=_check_binds, flags=("--bind", "-b"),
                                metavar="ADDRESS")
    insecure_bind: tuple[str, ...] = opt((), "TCP address served without TLS even when a certificate "
                                         "is given (repeatable)",
                                         parse=_to_list, check=_check_binds, metavar="ADDRESS")
    quic_bind: tuple[str, ...] = opt((), "UDP address for HTTP/3 over QUIC: host:port or [v6]:port "
                                     "(repeatable; needs a certificate)",
                                     parse=_to_list, check=_check_quic_binds, metavar="ADDRESS")
    backlog: int = opt(2048, "TCP listen backlog", parse=_to_int, check=_positive)
    workers: int = opt(1, "worker processes", parse=_to_int, check=_range(1, 256),
                       flags=("--workers", "-w"))
    loop: str = opt("auto", "event loop: auto (uvloop when installed), asyncio, uvloop",
                    parse=_to_str, check=_choice("auto", "asyncio", "uvloop"))
    gc_threshold: int = opt(10000, "while serving, run Python's cycle collector after this many "
                            "new objects instead of 700 (only ever raised; restored on "
                            "shutdown; 0 leaves the interpreter's setting alone)",
                            parse=_to_int, check=_non_negative, metavar="N")

    # -- TLS ----------------------------------------------------------------
    certfile: str | None = opt(None, "PEM certificate chain for TLS and QUIC", parse=_to_str,
                               metavar="FILE")
    keyfile: str | None = opt(None, "PEM private key for the certificate", parse=_to_str,
                              metavar="FILE")
    keyfile_password: str | None = opt(None, "password of an encrypted keyfile", parse=_to_str,
                                       metavar="PASSWORD")
    ca_certs: str | None = opt(None, "CA bundle to verify client certificates with", parse=_to_str,
                               metavar="FILE")
    verify_mode: str | None = opt(None, "client certificate verification: none, optional, required "
                                  "(default: required when --ca-certs is given)",
                                  parse=_to_str, check=_choice("none", "optional", "required"))
    tls_handshake_timeout: float = opt(10.0, "seconds a TLS handshake may take", parse=_to_float,
                                       check=_positive)

    # -- HTTP/1.1 and general timeouts ----------------------------------------
    keep_alive: float = opt(5.0, "seconds an idle keep-alive connection is kept open",
                            parse=_to_float, check=_non_negative, metavar="SECONDS")
    read_timeout: float = opt(30.0, "seconds a client may take to send a whole request head, "
                              "or between two body reads the app waits for",
                              parse=_to_float, check=_positive, metavar="SECONDS")
    write_timeout: float = opt(60.0, "seconds a TCP client may leave the server's send buffer "
                               "full without reading (HTTP/1.1 and HTTP/2); then it is closed",
                               parse=_to_float, check=_positive, metavar="SECONDS")
    graceful_timeout: float = opt(30.0, "seconds in-flight requests get to finish on shutdown",
                                  parse=_to_float, check=_non_negative, metavar="SECONDS")
    h11_max_incomplete_size: int = opt(16384, "largest HTTP/1.1 request head in bytes (431 beyond)",
                                       parse=_to_int, check=_positive, metavar="BYTES")
    limit_concurrency: int | None = opt(None, "most requests served at once; 503 beyond",
                                        parse=_to_int, check=_positive, metavar="N")
    max_requests: int | None = opt(None, "restart a worker after this many requests",
                                   parse=_to_int, check=_positive, metavar="N")
    max_requests_jitter: int = opt(0, "random 0..N added to --max-requests per worker",
                                   parse=_to_int, check=_non_negative, metavar="N")
    stream_high_water: int = opt(65536, "bytes buffered per stream in either direction before "
                                 "backpressure applies", parse=_to_int, check=_positive,
                                 metavar="BYTES")

    # -- response headers -------------------------------------------------------
    server_header: bool = opt(True, "send a Server header", parse=_to_bool,
                              negative="--no-server-header")
    date_header: bool = opt(True, "send a Date header", parse=_to_bool, negative="--no-date-header")
    header: tuple[str, ...] = opt((), "extra response header NAME:VALUE (repeatable)",
                                  parse=_to_list, check=_check_headers, metavar="NAME:VALUE")
    alt_svc: bool = opt(True, "advertise HTTP/3 with Alt-Svc on TLS responses", parse=_to_bool,
                        negative="--no-alt-svc")
    alt_svc_max_age: int = opt(86400, "Alt-Svc ma= in seconds", parse=_to_int, check=_non_negative,
                               metavar="SECONDS")

    # -- proxies ----------------------------------------------------------------
    proxy_headers: bool = opt(False, "trust X-Forwarded-For/-Proto and Forwarded from "
                              "--forwarded-allow-ips", parse=_to_bool)
    forwarded_allow_ips: tuple[str, ...] = opt(("127.0.0.1", "::1"), "proxy addresses or networks "
                                               "whose forwarding headers are trusted ('*' for all)",
                                               parse=_to_list, check=_check_networks,
                                               metavar="ADDRESSES")

    # -- logging ----------------------------------------------------------------
    log_level: str = opt("info", "log level: critical, error, warning, info, debug, trace",
                         parse=lambda raw: str(raw).lower(),
                         check=_choice("critical", "error", "warning", "info", "debug", "trace"))
    access_log: bool = opt(True, "write an access log line per request", parse=_to_bool,
                           negative="--no-access-log")
    access_logfile: str = opt("-", "access log destination: a path, or - for stdout", parse=_to_str,
                              metavar="PATH")
    access_logformat: str = opt(
        '%(h)s "%(r)s" %(s)s %(b)s %(D)sms',
        "access log format; fields: h client, r request line, m method, U path, q query, "
        "H protocol, s status, b bytes, D milliseconds, T seconds, a user agent",
        parse=_to_str, metavar="FORMAT")

    # -- reload -------------------------------------------------------------------
    reload: bool = opt(False, "restart when Python files change (development only)",
                       parse=_to_bool)
    reload_dirs: tuple[str, ...] = opt((), "directories watched by --reload (default: the app dir)",
                                       parse=_to_list, metavar="DIRS")

    # -- HTTP/2 -------------------------------------------------------------------
    h2_max_concurrent_streams: int = opt(100, "HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS",
                                         parse=_to_int, check=_positive)
    h2_initial_window_size: int = opt(262144, "HTTP/2 initial stream receive window in bytes",
                                      parse=_to_int, check=_range(1, 2**31 - 1))
    h2_max_frame_size: int = opt(16384, "HTTP/2 SETTINGS_MAX_FRAME_SIZE",
                                 parse=_to_int, check=_range(16384, 2**24 - 1))
    h2_max_header_list_size: int = opt(65536, "HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE in bytes",
                                       parse=_to_int, check=_positive)
    h2_max_resets_per_window: int = opt(200, "client stream resets tolerated per flood window "
                                        "before GOAWAY ENHANCE_YOUR_CALM", parse=_to_int,
                                        check=_positive)
    h2_max_control_frames_per_window: int = opt(1000, "PING/SETTINGS/empty frames tolerated per "
                                                "flood window", parse=_to_int, check=_positive)
    h2_flood_window: float = opt(10.0, "seconds of the HTTP/2 flood-detection window",
                                 parse=_to_float, check=_positive)
    h2_stalled_window_timeout: float = opt(30.0, "seconds a response may wait on a zero flow-"
                                           "control window", parse=_to_float, check=_positive)

    # -- WebSocket ------------------------------------------------------------------
    ws_ping_interval: float | None = opt(20.0, "seconds between server pings (0 turns them off)",
                                         parse=_to_float, check=_non_negative)
    ws_ping_timeout: float = opt(20.0, "seconds to wait for a pong before closing",
                                 parse=_to_float, check=_positive)
    ws_max_message_size: int = opt(16 * 1024 * 1024, "largest WebSocket message in bytes "
                                   "(close 1009 beyond)", parse=_to_int, check=_positive)
    ws_per_message_deflate: bool = opt(True, "offer permessage-deflate on HTTP/1.1 WebSockets",
                                       parse=_to_bool, negative="--no-ws-per-message-deflate")

    # -- QUIC / HTTP/3 ----------------------------------------------------------------
    quic_alpn: tuple[str, ...] = opt(("h3",), "ALPNs offered on QUIC: h3, hq-interop",
                                     parse=_to_list, check=_check_alpn, metavar="ALPNS")
    quic_retry: bool = opt(False, "validate client addresses with a Retry before any handshake",
                           parse=_to_bool)
    quic_0rtt: bool = opt(True, "accept 0-RTT early data on resumed connections", parse=_to_bool,
                          negative="--no-quic-0rtt")
    quic_0rtt_unsafe: bool = opt(False, "serve unsafe methods that arrive in 0-RTT instead of "
                                 "answering 425 Too Early", parse=_to_bool)
    quic_idle_timeout: float = opt(30.0, "seconds before an idle QUIC connection is closed",
                                   parse=_to_float, check=_positive)
    quic_max_streams: int = opt(128, "concurrent bidirectional streams per QUIC connection "
                                "(raised with MAX_STREAMS as they close)", parse=_to_int,
                                check=_check_quic_streams)
    quic_max_data: int = opt(4 * 1024 * 1024, "QUIC connection receive window in bytes",
                             parse=_to_int, check=_positive)
    quic_max_stream_data: int = opt(1024 * 1024, "QUIC stream receive window in bytes",
                                    parse=_to_int, check=_positive)
    quic_congestion_control: str = opt("reno", "QUIC congestion control: reno, cubic",
                                       parse=_to_str, check=_choice("reno", "cubic"))
    quic_max_datagram_size: int = opt(1350, "largest UDP payload sent (1200 is the floor)",
                                      parse=_to_int, check=_range(1200, 65527))
    quic_max_connections: int = opt(10000, "most concurrent QUIC connections per worker",
                                    parse=_to_int, check=_positive)
    quic_qlog_dir: str | None = opt(None, "write a qlog file per QUIC connection into DIR",
                                    parse=_to_str, metavar="DIR")
    quic_secret_file: str | None = opt(None, "file with the key for Retry tokens, session tickets "
                                       "and stateless resets (shared by servers that must "
                                       "accept each other's); random per start when omitted",
                                       parse=_to_str, metavar="FILE")
    quic_stateless_reset_rate: int = opt(100, "stateless resets sent per second at most",
                                         parse=_to_int, check=_non_negative)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "app":
                continue
            converted = _convert(f, value, f"--{f.name.replace('_', '-')}")
            if converted != value:
                object.__setattr__(self, f.name, converted)
        self._check_combinations()

    def _check_combinations(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("--certfile", "--certfile and --keyfile go together")
        if self.quic_bind and self.certfile is None:
            raise ConfigError("--quic-bind", "QUIC needs --certfile and --keyfile")
        if self.max_requests_jitter and self.max_requests is None:
            raise ConfigError("--max-requests-jitter", "needs --max-requests")

    # -- derived values (pure) -------------------------------------------------

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    def binds(self) -> tuple[BindSpec, ...]:
        """The TCP listeners; 127.0.0.1:8000 when nothing at all is bound."""
        binds = self.bind
        if not binds and not self.insecure_bind and not self.quic_bind:
            binds = ("127.0.0.1:8000",)
        return tuple(parse_bind(b) for b in binds)

    def insecure_binds(self) -> tuple[BindSpec, ...]:
        return tuple(parse_bind(b) for b in self.insecure_bind)

    def quic_binds(self) -> tuple[BindSpec, ...]:
        return tuple(parse_bind(b, allow_unix=False) for b in self.quic_bind)

    def extra_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        return tuple(parse_header(h) for h in self.header)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_toml(cls, path: str, **overrides: Any) -> Config:
        """Read a TOML file (top-level keys, or a ``[quicserve]`` table)."""
        raw = load_toml(path)
        raw.update(overrides)
        return cls(**raw)

    @classmethod
    def option_fields(cls) -> tuple[dataclasses.Field[Any], ...]:
        return dataclasses.fields(cls)


def _convert(f: dataclasses.Field[Any], raw: object, spelled: str) -> Any:
    parse = f.metadata["parse"]
    check = f.metadata["check"]
    try:
        value = parse(raw)
        if check is not None:
            check(value)
    except ValueError as exc:
        raise ConfigError(spelled, str(exc)) from None
    return value


def load_toml(path: str) -> dict[str, Any]:
    """The option table of a TOML file, keys checked against :class:`Config`."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
    table = data.get("quicserve", data)
    if not isinstance(table, dict):
        raise ConfigError("--config", f"{path}: [quicserve] must be a table")
    known = {f.name for f in dataclasses.fields(Config)}
    result: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{path}: {key}", "unknown option")
        result[name] = _convert(_field(name), value, f"{path}: {key}")
    return result


def _field(name: str) -> dataclasses.Field[Any]:
    for f in dataclasses.fields(Config):
        if f.name == name:
            return f
    raise KeyError(name)


def env_options(environ: Mapping[str, str]) -> dict[str, Any]:
    """Options set as ``QUICSERVE_<NAME>`` environment variables."""
    result: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        key = "QUICSERVE_" + f.name.upper()
        if key in environ:
            result[f.name] = _convert(f, environ[key], key)
    return result


def build_config(
    cli: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """Merge CLI > environment > file > defaults into one :class:`Config`.

    ``cli`` holds already-converted values keyed by field name, only for the
    options the user actually gave.
    """
    env = env_options(os.environ if environ is None else environ)
    path = config_file or env.pop("config", None) or (environ or os.environ).get("QUICSERVE_CONFIG")
    merged: dict[str, Any] = load_toml(path) if path else {}
    merged.update(env)
    merged.update(cli)
    return Config(**merged)


def iter_cli_fields() -> Iterable[dataclasses.Field[Any]]:
    return (f for f in dataclasses.fields(Config) if f.metadata["cli"])
