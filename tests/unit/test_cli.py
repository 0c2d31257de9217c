"""The command line: generated flags, one-line errors with exit status 2, precedence.

Bad values never reach a server (the configuration is refused first), so these
tests run ``cli.main`` in-process; two of them run the real console entry point
(``python -m quicserve``) to prove there is no traceback and the exit status is
what a shell sees.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import quicserve
from quicserve import cli
from quicserve.config import Config, iter_cli_fields

ROOT = Path(__file__).resolve().parents[2]

#: A value no check accepts, for options whose parser takes any string.
_BAD_STRINGS = {
    "bind": "nowhere",
    "insecure_bind": "[::1]80",
    "quic_bind": "unix:/tmp/quic.sock",
    "header": "no-colon-here",
    "forwarded_allow_ips": "10.0.0.300",
    "quic_alpn": "h9",
}


def _bad_values(f: dataclasses.Field[Any]) -> list[str]:
    """Values the option must refuse; empty when any value is acceptable."""
    kind = str(f.type)
    if f.name in _BAD_STRINGS:
        return [_BAD_STRINGS[f.name]]
    values = []
    if kind.startswith("int"):
        values.append("twelve")
    elif kind.startswith("float"):
        values.append("soon")
    elif f.metadata["check"] is not None:
        values.append("bogus-choice")
    if f.metadata["check"] is not None and kind.startswith(("int", "float")):
        values.append("-1")
    return values


BAD_CASES = [
    pytest.param(f, value, id=f"{f.name}={value}")
    for f in iter_cli_fields() if not cli.is_flag(f)
    for value in _bad_values(f)
]


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def assert_one_line_error(err: str, prefix: str) -> None:
    assert err.count("\n") == 1, err
    assert err.startswith(f"quicserve: error: {prefix}"), err
    assert "Traceback" not in err


def test_every_checked_option_has_a_bad_value_case() -> None:
    """Guards the generator above: a new option with a parser or a check must
    be covered by BAD_CASES (add it to _BAD_STRINGS if it takes strings)."""
    covered = {case.values[0].name for case in BAD_CASES}  # type: ignore[attr-defined]
    wanted = {f.name for f in iter_cli_fields()
              if not cli.is_flag(f) and (f.metadata["check"] is not None
                                         or not str(f.type).startswith(("str", "tuple")))}
    assert wanted <= covered, wanted - covered


@pytest.mark.parametrize(("f", "value"), BAD_CASES)
def test_bad_value_is_one_line_exit_2(capsys: pytest.CaptureFixture[str],
                                      f: dataclasses.Field[Any], value: str) -> None:
    flag = cli.option_flags(f)[0]
    code, err = run_main(capsys, f"{flag}={value}")
    assert code == cli.EXIT_USAGE
    assert_one_line_error(err, f"{flag}: ")


@pytest.mark.parametrize("f", [f for f in iter_cli_fields() if cli.is_flag(f)],
                         ids=lambda f: f.name)
def test_bad_boolean_in_environment(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str],
                                    f: dataclasses.Field[Any]) -> None:
    name = cli.env_name(f)
    monkeypatch.setenv(name, "maybe")
    code, err = run_main(capsys)
    assert code == cli.EXIT_USAGE
    assert_one_line_error(err, f"{name}: expected a boolean")


def test_error_names_the_flag_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, "-w", "0")
    assert code == cli.EXIT_USAGE
    assert_one_line_error(err, "-w: must be between 1 and 256")


def test_unknown_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, "--keep-alvie", "3")
    assert code == cli.EXIT_USAGE
    assert_one_line_error(err, "unrecognized arguments: --keep-alvie")


def test_missing_value_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, "--keep-alive")
    assert code == cli.EXIT_USAGE
    assert_one_line_error(err, "argument --keep-alive: expected one argument")


def test_bad_combination_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, "--certfile", "cert.pem")
    assert code == cli.EXIT_USAGE
    assert_one_line_error(err, "--certfile: --certfile and --keyfile go together")


def test_bad_config_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run_main(capsys, "--config", str(tmp_path / "missing.toml"))
    assert code == cli.EXIT_USAGE
    assert_one_line_error(err, "--config: cannot read")


def test_every_option_has_a_flag() -> None:
    parser = cli.build_parser()
    known = {flag for action in parser._actions for flag in action.option_strings}
    for f in iter_cli_fields():
        assert set(cli.option_flags(f)) <= known, f.name
        if f.metadata["negative"]:
            assert f.metadata["negative"] in known, f.name


def test_only_typed_options_are_set() -> None:
    assert cli.parse_args([], environ={"UNRELATED": "1"}) == Config()


def test_values_and_switches() -> None:
    config = cli.parse_args(
        ["pkg.mod:app", "-b", "127.0.0.1:1", "--bind", "[::1]:2,unix:/tmp/x.sock",
         "--no-server-header", "--proxy-headers", "--header", "Cache-Control: a, b",
         "--header", "X-A: 1", "--keep-alive", "2.5", "--lifespan", "off"],
        environ={"UNRELATED": "1"},
    )
    assert config.app == "pkg.mod:app"
    assert config.bind == ("127.0.0.1:1", "[::1]:2", "unix:/tmp/x.sock")
    assert config.server_header is False
    assert config.proxy_headers is True
    assert config.header == ("Cache-Control: a, b", "X-A: 1")
    assert config.keep_alive == 2.5
    assert config.lifespan == "off"


def test_negative_flag_overrides_environment() -> None:
    config = cli.parse_args(["--no-date-header"], environ={"QUICSERVE_DATE_HEADER": "1"})
    assert config.date_header is False
    config = cli.parse_args([], environ={"QUICSERVE_DATE_HEADER": "0"})
    assert config.date_header is False


def test_precedence_cli_env_file_default(tmp_path: Path) -> None:
    toml = tmp_path / "q.toml"
    toml.write_text('keep_alive = 1\nread_timeout = 2\ngraceful_timeout = 3\n'
                    'bind = ["127.0.0.1:7"]\n')
    config = cli.parse_args(
        ["--config", str(toml), "--keep-alive", "100"],
        environ={"QUICSERVE_KEEP_ALIVE": "10", "QUICSERVE_READ_TIMEOUT": "20"},
    )
    assert (config.keep_alive, config.read_timeout, config.graceful_timeout) == (100, 20, 3)
    assert config.bind == ("127.0.0.1:7",)
    assert config.backlog == Config().backlog


def test_child_argv_drops_reload() -> None:
    assert cli.child_argv(["app:x", "--reload", "-b", "1.2.3.4:5"]) == ["app:x", "-b", "1.2.3.4:5"]


# -- the real entry point -------------------------------------------------------


def _quicserve(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quicserve", *argv], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_version() -> None:
    result = _quicserve("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"quicserve {quicserve.__version__}"


def test_entry_point_bad_value_has_no_traceback() -> None:
    result = _quicserve("--keep-alive", "-1")
    assert result.returncode == 2
    assert result.stderr == "quicserve: error: --keep-alive: must not be negative\n"
    assert result.stdout == ""


def test_help_lists_every_option() -> None:
    result = _quicserve("--help")
    assert result.returncode == 0
    for f in iter_cli_fields():
        assert cli.option_flags(f)[0] in result.stdout, f.name
