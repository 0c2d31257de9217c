"""Real frameworks, unchanged, on a real quicserve: Starlette and FastAPI.

Routing, path parameters, JSON both ways, a streaming response, lifespan
state (a context manager yielding state that reaches ``request.state``), and
an exception turned into a 500 by the framework.  The client is httpx over
loopback sockets.
"""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator, Iterator

import pytest

httpx = pytest.importorskip("httpx")
starlette = pytest.importorskip("starlette")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from tests.support.server import ThreadedServer  # noqa: E402

SHUTDOWN_LOG: list[str] = []


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
    yield {"pool": "connected", "started": True}
    SHUTDOWN_LOG.append(type(app).__name__)


async def _numbers() -> AsyncIterator[bytes]:
    for i in range(5):
        yield f"{i}\n".encode()


def starlette_app() -> Starlette:
    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("starlette home")

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": int(request.path_params["item_id"]),
                             "q": request.query_params.get("q")})

    async def echo_json(request: Request) -> JSONResponse:
        data = await request.json()
        return JSONResponse({"received": data, "pool": request.state.pool})

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(_numbers(), media_type="text/plain")

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("boom")

    return Starlette(routes=[
        Route("/", home),
        Route("/items/{item_id:int}", item),
        Route("/json", echo_json, methods=["POST"]),
        Route("/stream", stream),
        Route("/boom", boom),
    ], lifespan=lifespan)


import fastapi  # noqa: E402 - the test extra installs it
from pydantic import BaseModel  # noqa: E402


class Item(BaseModel):
    """At module level: FastAPI resolves the (string) annotations here."""

    name: str
    price: float


def fastapi_app() -> Any:
    app = fastapi.FastAPI(lifespan=lifespan)

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"framework": "fastapi"}

    @app.get("/items/{item_id}")
    async def item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"id": item_id, "q": q}

    @app.post("/json")
    async def echo_json(item: Item, request: fastapi.Request) -> dict[str, Any]:
        return {"received": item.model_dump(), "pool": request.state.pool}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(_numbers(), media_type="text/plain")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    return app


@pytest.fixture(params=["starlette", "fastapi"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    app = starlette_app() if request.param == "starlette" else fastapi_app()
    SHUTDOWN_LOG.clear()
    with ThreadedServer(app, insecure_bind=["127.0.0.1:0"], lifespan="on",
                        access_log=False) as server:
        yield request.param, server.url("")
    # Lifespan shutdown ran when the server stopped.
    assert SHUTDOWN_LOG == [type(app).__name__]


def test_routing_and_path_parameters(served: tuple[str, str]) -> None:
    name, base = served
    with httpx.Client(base_url=base, timeout=10) as client:
        home = client.get("/")
        item = client.get("/items/42", params={"q": "x y"})
        missing = client.get("/nope")
        bad_param = client.get("/items/not-a-number")
    assert home.status_code == 200
    assert home.text == "starlette home" if name == "starlette" else home.json() == {
        "framework": "fastapi"}
    assert item.json() == {"id": 42, "q": "x y"}
    assert missing.status_code == 404
    assert bad_param.status_code in (404, 422)


def test_json_and_lifespan_state(served: tuple[str, str]) -> None:
    name, base = served
    payload = {"name": "widget", "price": 2.5}
    with httpx.Client(base_url=base, timeout=10) as client:
        response = client.post("/json", json=payload)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"received": payload, "pool": "connected"}


def test_streaming_response(served: tuple[str, str]) -> None:
    _, base = served
    with httpx.Client(base_url=base, timeout=10) as client:
        with client.stream("GET", "/stream") as response:
            chunks = list(response.iter_bytes())
            encoding = response.headers.get("transfer-encoding")
    assert b"".join(chunks) == b"0\n1\n2\n3\n4\n"
    assert encoding == "chunked"


def test_framework_exception_is_500_and_server_keeps_serving(served: tuple[str, str]) -> None:
    _, base = served
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/boom").status_code == 500
        assert client.get("/items/1").json() == {"id": 1, "q": None}
