"""Config: conversion, validation, bind parsing, TOML, and precedence.

Pure tests: no sockets, no server.  The command-line side is in test_cli.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from quicserve.config import (
    BindSpec,
    Config,
    ConfigError,
    build_config,
    env_options,
    load_toml,
    parse_bind,
    parse_header,
)

ROOT = Path(__file__).resolve().parents[2]


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "quicserve.toml"
    path.write_text(text)
    return str(path)


# -- conversion -------------------------------------------------------------


def test_keyword_values_are_converted_like_cli_values() -> None:
    assert Config(keep_alive="5") == Config(keep_alive=5.0)
    assert Config(workers="3").workers == 3
    assert Config(bind="127.0.0.1:1,[::1]:2").bind == ("127.0.0.1:1", "[::1]:2")
    assert Config(h11_max_incomplete_size="16k").h11_max_incomplete_size == 16384
    assert Config(server_header="off").server_header is False


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("keep_alive", -1, "must not be negative"),
    ("read_timeout", 0, "must be positive"),
    ("workers", 0, "must be between 1 and 256"),
    ("lifespan", "sometimes", "expected one of auto, on, off"),
    ("bind", ("localhost",), "expected host:port"),
    ("quic_bind", ("unix:/tmp/q",), "unix sockets cannot carry QUIC"),
    ("header", ("no colon",), "expected NAME:VALUE"),
    ("quic_max_streams", 5000, "between 1 and 1000"),
    ("forwarded_allow_ips", ("not-an-ip",), "not an address or network"),
])
def test_bad_keyword_value_names_the_option(name: str, value: object, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**{name: value})
    assert info.value.option == "--" + name.replace("_", "-")
    assert reason in info.value.message


def test_certificate_and_key_go_together() -> None:
    with pytest.raises(ConfigError, match="--certfile and --keyfile go together"):
        Config(certfile="cert.pem")


def test_quic_needs_a_certificate() -> None:
    with pytest.raises(ConfigError, match="QUIC needs --certfile"):
        Config(quic_bind=("127.0.0.1:4433",))


def test_default_bind_only_when_nothing_is_bound() -> None:
    assert Config().binds() == (BindSpec("inet", host="127.0.0.1", port=8000),)
    assert Config(insecure_bind=("127.0.0.1:9",)).binds() == ()


# -- bind strings -----------------------------------------------------------


@pytest.mark.parametrize(("text", "spec"), [
    ("127.0.0.1:8443", BindSpec("inet", host="127.0.0.1", port=8443)),
    ("[::1]:0", BindSpec("inet", host="::1", port=0)),
    (":80", BindSpec("inet", host="0.0.0.0", port=80)),
    ("localhost:8000", BindSpec("inet", host="localhost", port=8000)),
    ("unix:/tmp/q.sock", BindSpec("unix", path="/tmp/q.sock")),
    ("fd://3", BindSpec("fd", fd=3)),
])
def test_parse_bind(text: str, spec: BindSpec) -> None:
    assert parse_bind(text) == spec


@pytest.mark.parametrize("text", [
    "8000", "::1:80", "[::1]80", "[nothost]:1", "host:http", "host:70000", "unix:", "fd://x",
    "fd://-1",
])
def test_parse_bind_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bind(text)


def test_bind_spec_round_trips_through_str() -> None:
    for text in ("127.0.0.1:1", "[::1]:2", "unix:/x", "fd://4"):
        assert str(parse_bind(text)) == text


def test_parse_header() -> None:
    assert parse_header("X-Frame-Options: DENY") == (b"x-frame-options", b"DENY")
    with pytest.raises(ValueError):
        parse_header("X-Bad: a\r\nInjected: b")
    with pytest.raises(ValueError):
        parse_header("bad name: x")


# -- TOML -------------------------------------------------------------------


def test_toml_top_level_and_table(tmp_path: Path) -> None:
    flat = write_toml(tmp_path, 'keep_alive = 7\nbind = ["127.0.0.1:1"]\n')
    assert load_toml(flat) == {"keep_alive": 7.0, "bind": ("127.0.0.1:1",)}
    nested = write_toml(tmp_path, '[quicserve]\nkeep-alive = "8"\n')
    assert Config.from_toml(nested).keep_alive == 8.0


def test_toml_unknown_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "keep_alvie = 7\n")
    with pytest.raises(ConfigError, match="keep_alvie: unknown option"):
        load_toml(path)


def test_toml_bad_value_names_file_and_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "keep_alive = -3\n")
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert info.value.option == f"{path}: keep_alive"


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "keep_alive = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(path)


def test_toml_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml(str(tmp_path / "nope.toml"))


# -- environment and precedence ----------------------------------------------


def test_env_options_are_converted_and_named() -> None:
    assert env_options({"QUICSERVE_KEEP_ALIVE": "9", "OTHER": "x"}) == {"keep_alive": 9.0}
    with pytest.raises(ConfigError) as info:
        env_options({"QUICSERVE_WORKERS": "many"})
    assert info.value.option == "QUICSERVE_WORKERS"


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "keep_alive = 1\nread_timeout = 2\ngraceful_timeout = 3\n")
    environ = {"QUICSERVE_KEEP_ALIVE": "10", "QUICSERVE_READ_TIMEOUT": "20"}
    config = build_config({"keep_alive": 100.0}, environ=environ, config_file=path)
    assert config.keep_alive == 100.0          # CLI
    assert config.read_timeout == 20.0         # environment
    assert config.graceful_timeout == 3.0      # file
    assert config.backlog == Config().backlog  # default


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "keep_alive = 4\n")
    config = build_config({}, environ={"QUICSERVE_CONFIG": path})
    assert config.keep_alive == 4.0


# -- the README table ----------------------------------------------------------


def test_readme_options_table_is_current() -> None:
    """README.md's options table is generated from Config; regenerate it with
    ``python docs/options.py --write`` when this fails."""
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "options.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
