"""HTTPStream driven directly: a request head, body chunks, a recording sink."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from quicserve.errors import ClientDisconnected
from quicserve.interfaces import ConnectionInfo, ResetReason
from tests.support import apps
from tests.unit.asgi.helpers import CONN, CONN_H3, Server, head, run


def messages(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode().splitlines()]


# -- request body --------------------------------------------------------------------


def test_whole_body_in_one_message_when_it_arrived_before_receive() -> None:
    async def main() -> None:
        server = Server(apps.message_log)
        sink = await server.request(head("POST"), [b"ab", b"cd", b"ef"])
        assert sink.status == 200
        got = messages(sink.body)
        assert b"".join(m["body"].encode() for m in got) == b"abcdef"
        assert got[-1]["more_body"] is False
        assert sink.credited == 6
    run(main())


def test_body_chunks_delivered_as_they_arrive_and_credited_when_read() -> None:
    async def main() -> None:
        server = Server(apps.message_log)
        stream, sink = server.open(head("POST"))
        await asyncio.sleep(0)  # the app now waits in receive()
        stream.receive_body(b"one", True)
        await sink.wait_for(lambda: sink.credited == 3)
        stream.receive_body(b"two", True)
        await sink.wait_for(lambda: sink.credited == 6)
        stream.receive_body(b"", False)
        await server.dispatcher.wait_idle()
        assert [(m["body"], m["more_body"]) for m in messages(sink.body)] == [
            ("one", True), ("two", True), ("", False)]
    run(main())


def test_unread_body_is_not_credited_until_the_app_reads_it() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        server = Server(apps.slow_reader(gate))
        stream, sink = server.open(head("POST"))
        stream.receive_body(b"x" * 1000, True)
        stream.receive_body(b"y" * 1000, False)
        await asyncio.sleep(0.01)
        assert sink.credited == 0
        gate.set()
        await server.dispatcher.wait_idle()
        assert sink.credited == 2000
        assert sink.body == b"x" * 1000 + b"y" * 1000
    run(main())


def test_body_left_unread_is_credited_when_the_app_finishes() -> None:
    async def main() -> None:
        server = Server(apps.hello)
        stream, sink = server.open(head("POST"))
        stream.receive_body(b"z" * 500, True)
        await sink.wait_for(lambda: sink.ended)
        stream.receive_body(b"z" * 300, False)  # after the response: dropped at once
        await server.dispatcher.wait_idle()
        assert sink.credited == 800
    run(main())


# -- 100-continue ----------------------------------------------------------------------


EXPECT = ((b"expect", b"100-continue"), (b"content-length", b"4"))


def test_100_continue_sent_on_first_receive_only() -> None:
    async def main() -> None:
        server = Server(apps.message_log)
        stream, sink = server.open(head("POST", headers=EXPECT))
        await sink.wait_for(lambda: bool(sink.heads))
        assert sink.heads == [(100, [])]
        stream.receive_body(b"da", True)
        await sink.wait_for(lambda: sink.credited == 2)
        stream.receive_body(b"ta", False)
        await server.dispatcher.wait_idle()
        assert [h[0] for h in sink.heads] == [100, 200]
    run(main())


def test_no_100_continue_if_the_app_never_reads() -> None:
    async def main() -> None:
        server = Server(apps.hello)
        sink = await server.request(head("POST", headers=EXPECT), [b"data"])
        assert [h[0] for h in sink.heads] == [200]
    run(main())


def test_no_100_continue_when_the_body_already_arrived() -> None:
    async def main() -> None:
        server = Server(apps.echo)
        stream, sink = server.open(head("POST", headers=EXPECT))
        stream.receive_body(b"data", False)
        await server.dispatcher.wait_idle()
        assert [h[0] for h in sink.heads] == [200]
        assert sink.body == b"data"
    run(main())


def test_no_100_continue_on_http_1_0() -> None:
    async def main() -> None:
        server = Server(apps.message_log)
        conn = ConnectionInfo(http_version="1.0", protocol="HTTP/1.0", scheme="http",
                              client=None, server=None)
        stream, sink = server.open(head("POST", headers=EXPECT), conn)
        await asyncio.sleep(0.01)
        stream.receive_body(b"data", False)
        await server.dispatcher.wait_idle()
        assert [h[0] for h in sink.heads] == [200]
    run(main())


# -- disconnect ------------------------------------------------------------------------


def test_abort_wakes_receive_with_http_disconnect() -> None:
    async def main() -> None:
        seen: list[str] = []
        server = Server(apps.wait_for_disconnect(seen))
        stream, sink = server.open(head("POST"))
        stream.receive_body(b"partial", True)
        await sink.wait_for(lambda: sink.credited == 7)
        stream.abort("connection lost")
        await server.dispatcher.wait_idle()
        assert seen == ["http.request", "http.disconnect"]
        assert sink.heads == [] and sink.resets == []
    run(main())


def test_receive_returns_disconnect_after_the_response_completed() -> None:
    async def main() -> None:
        seen: list[str] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await apps.respond(send, 200, b"done")
            seen.append((await receive())["type"])

        server = Server(app)
        stream, sink = server.open(head("POST"))  # the body never completes
        await server.dispatcher.wait_idle()
        assert seen == ["http.disconnect"]
        assert sink.body == b"done"
    run(main())


def test_send_after_disconnect_raises_client_disconnected() -> None:
    async def main() -> None:
        raised: list[BaseException] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            assert (await receive())["type"] == "http.disconnect"
            try:
                await send({"type": "http.response.start", "status": 200, "headers": []})
            except OSError as exc:
                raised.append(exc)

        server = Server(app)
        stream, _ = server.open(head())
        stream.abort("reset")
        await server.dispatcher.wait_idle()
        assert len(raised) == 1 and isinstance(raised[0], ClientDisconnected)
    run(main())


def test_stream_closed_while_sending_raises_client_disconnected(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        server = Server(apps.streaming(n=50))
        stream, sink = server.open(head())
        sink.paused = True
        stream.receive_body(b"", False)
        await sink.wait_for(lambda: bool(sink.heads))
        await asyncio.sleep(0.01)  # the app waits in send()
        sink.close()
        await server.dispatcher.wait_idle()
        assert sink.resets == []
    with caplog.at_level(logging.DEBUG, logger="quicserve.error"):
        run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []  # the app's ClientDisconnected is logged at debug only
    assert any("after disconnect" in r.getMessage() for r in caplog.records)


# -- app failures ------------------------------------------------------------------------


def test_exception_before_the_head_gives_500(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(apps.raise_before_head)
    sink = run(server.request())
    assert sink.status == 500
    assert sink.body == b"Internal Server Error"
    assert sink.ended and sink.resets == []
    assert any("boom before head" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_exception_after_the_head_resets_the_stream() -> None:
    server = Server(apps.raise_after_head)
    sink = run(server.request())
    assert sink.status == 200
    assert sink.body == b"partial"
    assert not sink.ended
    assert sink.resets == [ResetReason.APP_ERROR]


def test_return_without_response_gives_500(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(apps.return_without_response)
    sink = run(server.request())
    assert sink.status == 500
    assert "without starting a response" in caplog.text


def test_return_after_start_but_before_body_gives_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})

    sink = run(Server(app).request())
    assert [h[0] for h in sink.heads] == [500]


def test_return_mid_body_resets() -> None:
    sink = run(Server(apps.return_mid_body).request())
    assert sink.body == b"partial"
    assert sink.resets == [ResetReason.APP_ERROR]


def test_invalid_message_is_logged_with_state_and_type(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="quicserve.error"):
        sink = run(Server(apps.body_before_start).request())
    assert sink.status == 500
    protocol_errors = [r.getMessage() for r in caplog.records if "ASGI protocol error" in r.getMessage()]
    assert len(protocol_errors) == 1
    assert "AWAITING_START" in protocol_errors[0]
    assert "http.response.body" in protocol_errors[0]


def test_invalid_message_after_the_head_resets(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.start", "status": 200, "headers": []})

    sink = run(Server(app).request())
    assert sink.resets == [ResetReason.APP_ERROR]
    assert "STREAMING" in caplog.text and "http.response.start" in caplog.text


def test_unknown_message_type_is_a_protocol_error(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})

    sink = run(Server(app).request())
    assert sink.status == 500
    assert "websocket.accept" in caplog.text


def test_headers_must_be_bytes() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [("x", "y")]})

    sink = run(Server(app).request())
    assert sink.status == 500


def test_response_header_names_are_lowercased() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await apps.respond(send, 200, b"", [(b"X-Thing", b"Value")])

    sink = run(Server(app).request())
    assert sink.headers == {b"x-thing": b"Value"}


# -- response features ------------------------------------------------------------------


def test_trailers_sent_after_the_body() -> None:
    server = Server(apps.trailers_app([(b"grpc-status", b"0")]))
    sink = run(server.request(conn=CONN_H3))
    assert sink.body == b"data"
    assert sink.trailers == [(b"grpc-status", b"0")]
    assert sink.ended


def test_trailers_extension_offered_only_when_the_protocol_supports_it() -> None:
    def extensions(conn: ConnectionInfo) -> dict[str, Any]:
        sink = run(Server(apps.scope_json).request(conn=conn))
        result: dict[str, Any] = json.loads(sink.body)["extensions"]
        return result

    assert "http.response.trailers" in extensions(CONN_H3)
    assert "http.response.trailers" not in extensions(CONN)


def test_trailers_without_announcing_them_is_a_protocol_error(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await apps.respond(send, 200, b"ok")
        await send({"type": "http.response.trailers", "headers": []})

    sink = run(Server(app).request())
    assert sink.body == b"ok" and sink.trailers is None
    assert "DONE" in caplog.text


def test_early_hints_when_offered() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.early_hint", "links": [b"</style.css>; rel=preload"]})
        await apps.respond(send, 200, b"ok")

    conn = ConnectionInfo(http_version="2", protocol="HTTP/2", scheme="https", client=None,
                          server=None, extensions=("http.response.early_hint",))
    sink = run(Server(app).request(conn=conn))
    assert sink.heads[0] == (103, [(b"link", b"</style.css>; rel=preload")])
    assert sink.status == 200
    sink = run(Server(app).request())
    assert [h[0] for h in sink.heads] == [200]  # not offered: ignored


def test_streamed_body_waits_for_sink_backpressure() -> None:
    async def main() -> None:
        server = Server(apps.streaming(n=5, size=3))
        stream, sink = server.open(head())
        sink.paused = True
        stream.receive_body(b"", False)
        await asyncio.sleep(0.01)
        assert sink.chunks == []
        assert sink.heads and sink.heads[0][0] == 200  # the head went out
        sink.resume()
        await server.dispatcher.wait_idle()
        assert sink.body == b"000111222333444"
        assert sink.ended
    run(main())


def test_empty_more_body_chunks_are_not_written() -> None:
    """Only the first empty chunk reaches the protocol: it pushes the held head
    out (an event stream's headers must not wait for its first event)."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    sink = run(Server(app).request())
    assert sink.chunks == [b"", b"x", b""]


def test_access_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="quicserve.access"):
        run(Server(apps.echo).request(head("POST", target=b"/p?q=1"), [b"12345"]))
    lines = [r.getMessage() for r in caplog.records if r.name == "quicserve.access"]
    assert lines == ['127.0.0.1:50000 "POST /p?q=1 HTTP/1.1" 200 5']


def test_cancel_all_resets_running_streams() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        server = Server(apps.slow_reader(gate))
        _, sink = server.open(head())
        await asyncio.sleep(0)
        assert server.dispatcher.active == 1
        server.dispatcher.cancel_all()
        await server.dispatcher.wait_idle()
        assert sink.resets == [ResetReason.CANCELLED]
        assert server.stats.streams == 0 and server.stats.app_tasks == 0
    run(main())
