"""The ``quicserve`` command: argparse → :class:`Config` → :func:`server.run`.

Theory of operation
-------------------
The parser is generated from the field metadata of :class:`quicserve.config.Config`
(``iter_cli_fields()``), so every option has a flag and the flags cannot drift
from the table: a field's flags are its ``flags`` metadata, or ``--field-name``;
a boolean gets ``--x`` (sets it true) and, when the table names one, a
``negative`` flag such as ``--no-server-header``; a tuple option is repeatable.

Only the options the user actually typed reach :func:`config.build_config`
(every argument defaults to ``argparse.SUPPRESS``), which merges them over the
environment (``QUICSERVE_<NAME>``), the ``--config`` TOML file and the defaults.
Each typed value is converted here, so an error names the flag exactly as the
user spelled it (``-w`` or ``--workers``).

Every user error is one line on stderr, ``quicserve: error: <option>: <reason>``,
and exit status 2; never a traceback.  Exit status 3 means the application's
lifespan startup failed (``server.run`` logs the app's message).

This module does no I/O beyond printing; ``--reload`` and the server itself live
in ``server.py`` (the only place, with ``transport/`` and ``supervisor.py``, that
may touch processes and sockets).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Mapping, NoReturn, Sequence

from . import __version__
from .config import Config, ConfigError, build_config, iter_cli_fields

#: Exit statuses.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_LIFESPAN = 3

#: Tuple options whose values may themselves contain commas, so a repeated flag
#: is never split on commas (``--header "Cache-Control: a, b"``).
_UNSPLIT = frozenset({"header"})


class UsageError(Exception):
    """A bad command line; the message is the whole error line after ``error:``."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors raise instead of printing usage and exiting, so
    that :func:`main` prints exactly one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def option_flags(f: dataclasses.Field[Any]) -> tuple[str, ...]:
    """The command-line spellings of a Config field; the first is canonical."""
    flags: tuple[str, ...] = f.metadata["flags"]
    return flags or ("--" + f.name.replace("_", "-"),)


def env_name(f: dataclasses.Field[Any]) -> str:
    return "QUICSERVE_" + f.name.upper()


def is_flag(f: dataclasses.Field[Any]) -> bool:
    """Booleans are switches on the command line (no value)."""
    return isinstance(f.default, bool)


def is_repeatable(f: dataclasses.Field[Any]) -> bool:
    return isinstance(f.default, tuple)


def _help(f: dataclasses.Field[Any]) -> str:
    text: str = f.metadata["help"]
    default = f.default
    if is_flag(f) or default is None or default == ():
        shown = ""
    elif isinstance(default, tuple):
        shown = f"default: {','.join(default)}; "
    else:
        shown = f"default: {default}; "
    # argparse %-formats help strings.
    return f"{text} ({shown}env {env_name(f)})".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    """The parser, generated from the Config table."""
    parser = _Parser(
        prog="quicserve",
        description="Serve an ASGI application over HTTP/3 (QUIC), HTTP/2 and HTTP/1.1.",
        epilog="Precedence: command line > environment (QUICSERVE_<NAME>) > --config file "
               "> defaults.  Exit status: 0 ok, 1 failure, 2 bad option, 3 lifespan "
               "startup failed.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("app", nargs="?", metavar="APP",
                        help="the ASGI application as module:attr (default: the demo app, "
                             "or the files of --static DIR)")
    parser.add_argument("--config", metavar="FILE.toml", dest="config_file",
                        help="read options from a TOML file (top-level keys or a [quicserve] "
                             "table; env QUICSERVE_CONFIG)")
    parser.add_argument("--version", action="version", version=f"quicserve {__version__}")
    for f in iter_cli_fields():
        _add_option(parser, f)
    return parser


def _add_option(parser: argparse.ArgumentParser, f: dataclasses.Field[Any]) -> None:
    flags = option_flags(f)
    if is_flag(f):
        parser.add_argument(*flags, dest=f.name, action="store_const", const=(True, flags[0]),
                            help=_help(f))
        negative = f.metadata["negative"]
        if negative:
            parser.add_argument(negative, dest=f.name, action="store_const",
                                const=(False, negative), help=f"turn {flags[0]} off")
        return
    metavar = f.metadata["metavar"] or _default_metavar(f)
    action = _Append if is_repeatable(f) else _Store
    parser.add_argument(*flags, dest=f.name, action=action, metavar=metavar, help=_help(f))


def _default_metavar(f: dataclasses.Field[Any]) -> str:
    kind = str(f.type)
    if kind.startswith("int"):
        return "N"
    if kind.startswith("float"):
        return "SECONDS"
    return f.name.upper()


class _Store(argparse.Action):
    """Keep the raw value together with the flag the user typed."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, (values, option_string or self.option_strings[0]))


class _Append(argparse.Action):
    """A repeatable option: every occurrence is kept, with the last flag typed."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        previous: list[Any] = getattr(namespace, self.dest, ([], ""))[0]
        setattr(namespace, self.dest, ([*previous, values], option_string or self.option_strings[0]))


def _fields_by_name() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in iter_cli_fields()}


def _convert(f: dataclasses.Field[Any], raw: Any, spelled: str) -> Any:
    """Convert and check one typed value; errors name ``spelled``."""
    if is_repeatable(f) and isinstance(raw, list):
        if f.name not in _UNSPLIT:
            raw = [part.strip() for item in raw for part in item.split(",") if part.strip()]
    try:
        value = f.metadata["parse"](raw)
        check = f.metadata["check"]
        if check is not None:
            check(value)
    except ValueError as exc:
        raise ConfigError(spelled, str(exc)) from None
    return value


def parse_args(argv: Sequence[str] | None = None,
               environ: Mapping[str, str] | None = None) -> Config:
    """Turn a command line (and the environment) into a Config.

    Raises :class:`UsageError` or :class:`ConfigError`; :func:`main` prints them.
    """
    namespace = vars(build_parser().parse_args(argv))
    config_file = namespace.pop("config_file", None)
    fields = _fields_by_name()
    given: dict[str, Any] = {}
    app = namespace.pop("app", None)
    if app is not None:
        given["app"] = app
    for name, (raw, spelled) in namespace.items():
        f = fields[name]
        given[name] = raw if is_flag(f) else _convert(f, raw, spelled)
    return build_config(given, environ=environ, config_file=config_file)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script.  Returns the exit status."""
    try:
        config = parse_args(argv)
    except (UsageError, ConfigError) as exc:
        return usage_error(str(exc))
    from . import server  # the heavy imports wait until the options are good

    if config.reload:
        args = list(sys.argv[1:] if argv is None else argv)
        return server.run_with_reload(config, args)
    return server.run_config(config)


def usage_error(message: str) -> int:
    print(f"quicserve: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def child_argv(argv: Sequence[str]) -> list[str]:
    """The command line of a server process started by ``--reload``: the same
    options with ``--reload`` removed (the parent does the watching)."""
    return [arg for arg in argv if arg != "--reload"]
