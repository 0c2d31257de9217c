#!/usr/bin/env python3
"""Run every benchmark module in bench/ and print one table per comparison.

    python bench/run.py                       everything, results into docs/benchmarks.md
    python bench/run.py --only h1,h3          some modules
    python bench/run.py --rounds 5 --duration 15
    python bench/run.py --quick               1 round, short loads (a smoke run)
    python bench/run.py --no-write            print only

A module is any ``bench/<name>.py`` with ``TITLE`` and ``run(ctx)`` (see
``bench/common.py``); they run in the order h1, h2, h3, ws, then the rest
alphabetically.  ``make bench`` runs this with the defaults.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import shlex
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Group, machine, make_context, render, splice_section  # noqa: E402

ORDER = ("h1", "h2", "h3", "ws")
REPORT = ROOT / "docs" / "benchmarks.md"
PREAMBLE = """# Benchmarks

Produced by `make bench` (`python bench/run.py`): every server runs as its own
process on its own port, access logs off, measured in the same run with the
rounds interleaved (the order rotates each round); the figure is the median
of the rounds and the ratio is against the baseline named in each table.  The
load comes from independent clients (wrk, h2load, gtlsclient).  Each module
below rewrites only its own section.
"""


def discover(only: set[str] | None) -> list[tuple[str, ModuleType]]:
    names = sorted(p.stem for p in (ROOT / "bench").glob("*.py")
                   if p.stem not in ("run", "common", "__init__"))
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    found = []
    for name in names:
        if only is not None and name not in only:
            continue
        module = importlib.import_module(f"bench.{name}")
        if hasattr(module, "run") and hasattr(module, "TITLE"):
            found.append((name, module))
    if only is not None:
        missing = only - {name for name, _ in found}
        if missing:
            raise SystemExit(f"no benchmark module named {', '.join(sorted(missing))}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated module names (h1,h2,h3,ws,...)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds per duration-based load run")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s: a smoke run")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 3.0
    only = {n.strip() for n in args.only.split(",")} if args.only else None
    ctx = make_context(rounds=args.rounds, duration=args.duration, quick=args.quick)
    command = "python bench/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    results: list[tuple[str, ModuleType, list[Group]]] = []
    failed = 0
    for name, module in discover(only):
        ctx.log(f"== {name}: {module.TITLE}")
        started = time.monotonic()
        try:
            groups = module.run(ctx)
        except Exception as exc:  # one module failing must not hide the others
            ctx.log(f"!! {name} failed: {type(exc).__name__}: {exc}")
            failed += 1
            continue
        ctx.log(f"== {name} done in {time.monotonic() - started:.0f}s")
        results.append((name, module, groups))
        print(f"## {module.TITLE}\n\n{render(groups)}", flush=True)
    if not args.no_write and results:
        write_report(results, command.strip())
    return 1 if failed else 0


def write_report(results: list[tuple[str, ModuleType, list[Group]]], command: str) -> None:
    document = REPORT.read_text(encoding="utf-8") if REPORT.exists() else PREAMBLE
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for name, module, groups in results:
        body = (f"## {module.TITLE}\n\n_{stamp}; {machine()}; command: `{command}`_\n\n"
                f"{render(groups)}")
        document = splice_section(document, name, body)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(document, encoding="utf-8")
    print(f"results written to {REPORT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
