#!/usr/bin/env python3
"""Generate the options table of README.md from the Config metadata.

    python docs/options.py              print the table (Markdown)
    python docs/options.py --write      rewrite it in README.md between the markers
    python docs/options.py --check      exit 1 if README.md's table is out of date

The table lives between ``<!-- options:start -->`` and ``<!-- options:end -->``.
``tests/unit/test_config.py`` runs the check, so the README cannot drift from
``quicserve/config.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from quicserve.cli import env_name, is_flag, option_flags  # noqa: E402
from quicserve.config import iter_cli_fields  # noqa: E402

START = "<!-- options:start -->"
END = "<!-- options:end -->"


def _default(f: dataclasses.Field[Any]) -> str:
    value = f.default
    if value is None or value == () or value == "":
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return "`" + ",".join(value) + "`"
    return f"`{value}`"


def _flags(f: dataclasses.Field[Any]) -> str:
    flags = list(option_flags(f))
    if is_flag(f) and f.metadata["negative"]:
        flags.append(f.metadata["negative"])
    return " ".join(f"`{flag}`" for flag in flags)


def table() -> str:
    rows = [
        "| Option | Environment / TOML key | Default | Meaning |",
        "|---|---|---|---|",
    ]
    for f in iter_cli_fields():
        meaning = f.metadata["help"].replace("|", "\\|")
        rows.append(f"| {_flags(f)} | `{env_name(f)}` / `{f.name}` | {_default(f)} | {meaning} |")
    return "\n".join(rows) + "\n"


def splice(readme: str, body: str) -> str:
    head, sep, rest = readme.partition(START)
    if not sep:
        raise SystemExit(f"README.md has no {START} marker")
    _, sep, tail = rest.partition(END)
    if not sep:
        raise SystemExit(f"README.md has no {END} marker")
    return f"{head}{START}\n{body}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true")
    group.add_argument("--check", action="store_true")
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args(argv)
    body = table()
    if not (args.write or args.check):
        sys.stdout.write(body)
        return 0
    path = Path(args.readme)
    current = path.read_text(encoding="utf-8")
    wanted = splice(current, body)
    if args.check:
        if current != wanted:
            print(f"{path}: the options table is out of date; run python docs/options.py --write",
                  file=sys.stderr)
            return 1
        return 0
    path.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
