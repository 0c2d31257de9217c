"""The import directions of DESIGN.md, enforced by reading every module's AST.

Rules (a module may import only what its layer allows; everything counts, also
imports inside functions and under ``TYPE_CHECKING``):

* ``interfaces``, ``errors``, ``config``: nothing of quicserve.
* ``log``: only ``interfaces`` and ``errors``.
* ``protocols/``: ``protocols``, ``interfaces``, ``errors``, ``log``.
* ``asgi/``: ``asgi``, ``interfaces``, ``errors``, ``log``.
* ``quic/``: ``quic``, ``protocols``, ``interfaces``, ``errors``, ``log``, ``config``.
* ``transport/``: ``transport``, ``quic``, ``protocols``, ``interfaces``, ``errors``,
  ``log``, ``config`` — never ``asgi`` (the stream factory is passed in).
* ``demo``, ``static`` (applications): ``interfaces``, ``errors``, ``log``, ``asgi``.
* ``server``, ``supervisor``, ``cli``, ``__init__``, ``__main__``: wiring, anything.

And I/O: only ``transport/``, ``server.py`` and ``supervisor.py`` may import
``socket``, ``ssl``, ``signal``, ``subprocess`` or ``multiprocessing`` (``quic/``
may import ``ssl`` for aioquic's verify-mode constants).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "quicserve"

LEAF: frozenset[str] = frozenset()
BASE = frozenset({"interfaces", "errors", "log"})

#: layer -> the quicserve layers it may import.  None means "anything".
ALLOWED: dict[str, frozenset[str] | None] = {
    "interfaces": LEAF,
    "errors": LEAF,
    "config": LEAF,
    "log": frozenset({"interfaces", "errors"}),
    "protocols": BASE | {"protocols"},
    "asgi": BASE | {"asgi"},
    "quic": BASE | {"quic", "protocols", "config"},
    "transport": BASE | {"transport", "quic", "protocols", "config"},
    "demo": BASE | {"asgi"},
    "static": BASE | {"asgi"},
    "server": None,
    "supervisor": None,
    "cli": None,
    "__init__": None,
    "__main__": None,
}

IO_MODULES = frozenset({"socket", "ssl", "signal", "subprocess", "multiprocessing"})
IO_LAYERS = frozenset({"transport", "server", "supervisor"})
#: The one exception: ``quic/settings.py`` fills aioquic's QuicConfiguration,
#: whose ``verify_mode`` is an ``ssl.VerifyMode``; it uses the constants, not sockets.
IO_EXCEPTIONS = {"quic": frozenset({"ssl"})}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(name: str) -> str:
    """``quicserve.protocols.h11`` -> ``protocols``; ``quicserve`` -> ``__init__``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_in(source: str, module: str, *, is_package: bool) -> list[tuple[int, str]]:
    """Absolute module names imported by ``source`` (relative imports resolved)."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.extend((node.lineno, name) for name in _from_targets(node, package))
    return found


def _from_targets(node: ast.ImportFrom, package: str) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        anchor = package.split(".")
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    # ``from pkg import x`` may import the submodule ``pkg.x``: count each name.
    return [f"{base}.{alias.name}" if base else alias.name for alias in node.names]


def all_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def violations_in(source: str, module: str, *, is_package: bool = False) -> list[str]:
    own = layer_of(module)
    allowed = ALLOWED.get(own, None)
    problems = []
    for line, target in imports_in(source, module, is_package=is_package):
        top = target.split(".")[0]
        where = f"{module}:{line}"
        if top in IO_MODULES and own not in IO_LAYERS and top not in IO_EXCEPTIONS.get(own, ()):
            problems.append(f"{where} imports {target}: I/O belongs in transport/, server, supervisor")
        if top != "quicserve" or allowed is None:
            continue
        target_layer = layer_of(target)
        if target_layer != own and target_layer not in allowed:
            problems.append(f"{where} ({own}) imports {target} ({target_layer})")
    return problems


def violations(path: Path) -> list[str]:
    return violations_in(path.read_text(encoding="utf-8"), module_name(path),
                         is_package=path.name == "__init__.py")


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_import_directions(path: Path) -> None:
    assert violations(path) == []


def test_every_module_has_a_layer() -> None:
    """A new top-level module must be placed in ALLOWED explicitly."""
    layers = {layer_of(module_name(p)) for p in all_modules()}
    assert layers <= set(ALLOWED), layers - set(ALLOWED)


# -- the checker itself -------------------------------------------------------------


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("quicserve.protocols.probe", "from ..asgi import http\n", "imports quicserve.asgi.http"),
    ("quicserve.protocols.probe", "import socket\n", "imports socket"),
    ("quicserve.asgi.probe", "import ssl\n", "imports ssl"),
    ("quicserve.transport.probe", "from quicserve.asgi.dispatch import Dispatcher\n",
     "imports quicserve.asgi.dispatch"),
    ("quicserve.interfaces", "from . import config\n", "imports quicserve.config"),
    ("quicserve.asgi.probe", "from .. import config\n", "imports quicserve.config"),
    ("quicserve.quic.probe", "def f():\n    from ..transport import udp\n",
     "imports quicserve.transport.udp"),
    ("quicserve.protocols.probe",
     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from quicserve import server\n",
     "imports quicserve.server"),
])
def test_checker_catches_violations(module: str, source: str, expected: str) -> None:
    found = violations_in(source, module)
    assert len(found) == 1 and expected in found[0], found


def test_checker_accepts_allowed_imports() -> None:
    source = ("from ..interfaces import RequestHead\nfrom .. import errors\n"
              "from . import base\nimport asyncio\n")
    assert violations_in(source, "quicserve.protocols.probe") == []
    assert violations_in("import socket\nfrom .asgi import dispatch\n", "quicserve.server") == []
    assert violations_in("from ..quic import router\nimport socket\n",
                         "quicserve.transport.probe") == []
