"""Loading apps by name and adapting ASGI2 and WSGI apps."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

from quicserve.asgi.app import interface_of, load_app, wrap_app
from quicserve.errors import AppLoadError
from tests.support import apps
from tests.unit.asgi.helpers import Server, head, run


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterable[Path]:
    (tmp_path / "qs_sample_app.py").write_text(textwrap.dedent("""
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"sample"})

        class Nested:
            inner = app

        def create():
            return app

        def broken_factory():
            raise ValueError("bad settings")

        not_callable = 42
    """))
    (tmp_path / "qs_broken_app.py").write_text("import qs_missing_dependency\n")
    yield tmp_path
    for name in ("qs_sample_app", "qs_broken_app"):
        sys.modules.pop(name, None)


def test_load_module_attr(app_dir: Path) -> None:
    app = load_app("qs_sample_app:app", app_dir=str(app_dir))
    assert run(Server(app).request()).body == b"sample"
    assert load_app("qs_sample_app:Nested.inner", app_dir=str(app_dir)) is not None


def test_load_factory(app_dir: Path) -> None:
    app = load_app("qs_sample_app:create", factory=True, app_dir=str(app_dir))
    assert run(Server(app).request()).body == b"sample"


@pytest.mark.parametrize(("spec", "factory", "message"), [
    ("qs_sample_app", False, "module:attribute"),
    ("qs_no_such_module:app", False, 'could not import module "qs_no_such_module"'),
    ("qs_broken_app:app", False, "qs_missing_dependency"),
    ("qs_sample_app:missing", False, 'attribute "missing" not found'),
    ("qs_sample_app:broken_factory", True, "bad settings"),
    ("qs_sample_app:not_callable", False, "not a callable"),
])
def test_load_errors_are_one_line(app_dir: Path, spec: str, factory: bool, message: str) -> None:
    with pytest.raises(AppLoadError) as info:
        load_app(spec, factory=factory, app_dir=str(app_dir))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_demo_app_loads() -> None:
    app = load_app("quicserve.demo:app")
    assert run(Server(app).request(head("GET", b"/health"))).body == b"ok\n"


# -- interfaces ---------------------------------------------------------------------------


class ASGI2App:
    def __init__(self, scope: Any) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        await apps.respond(send, 200, b"asgi2 " + self.scope["path"].encode())


def asgi2_function(scope: Any) -> Callable[..., Any]:
    async def instance(receive: Any, send: Any) -> None:
        await apps.respond(send, 200, b"asgi2 function")
    return instance


class ASGI3Instance:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await apps.respond(send, 200, b"asgi3 instance")


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("201 Created", [("Content-Type", "text/plain"), ("X-Path", environ["PATH_INFO"])])
    return [b"wsgi:", environ["REQUEST_METHOD"].encode(), b":", body,
            b":", environ["QUERY_STRING"].encode(), b":", environ.get("HTTP_X_TEST", "").encode()]


def test_interface_detection() -> None:
    assert interface_of(apps.hello) == "asgi3"
    assert interface_of(ASGI3Instance()) == "asgi3"
    assert interface_of(ASGI2App) == "asgi2"
    assert interface_of(asgi2_function) == "asgi2"
    assert interface_of(wsgi_app) == "wsgi"


def test_asgi2_class_and_function_are_wrapped() -> None:
    assert run(Server(wrap_app(ASGI2App)).request(head(target=b"/p"))).body == b"asgi2 /p"
    assert run(Server(wrap_app(asgi2_function)).request()).body == b"asgi2 function"
    assert run(Server(wrap_app(ASGI3Instance())).request()).body == b"asgi3 instance"


def test_wsgi_app_runs_in_a_thread() -> None:
    request = head("PUT", b"/w/x?a=1", headers=[(b"x-test", b"yes")])
    sink = run(Server(wrap_app(wsgi_app)).request(request, [b"pay", b"load"]))
    assert sink.status == 201
    assert sink.headers[b"x-path"] == b"/w/x"
    assert sink.body == b"wsgi:PUT:payload:a=1:yes"
    assert sink.ended


def test_wsgi_exception_gives_500() -> None:
    def failing(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raise RuntimeError("wsgi boom")

    assert run(Server(wrap_app(failing)).request()).status == 500
