"""HTTP/1.1 on the wire: keep-alive, pipelining, request bodies, 100-continue, limits and malformed input."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from typing import Any

import pytest

from shipyard.server.types import Receive, Scope, Send
from tests.server.apps import echo, respond
from tests.server.conftest import Reader, request, serving

# every test here runs on both event loops
pytestmark = pytest.mark.usefixtures("server_loop")


def described(body: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(body)
    return document


def test_keep_alive_serves_requests_one_after_another_on_one_connection() -> None:
    with serving(echo) as server, server.connect() as sock:
        reader = Reader(sock)
        for n in range(3):
            sock.sendall(request("GET", f"/n/{n}"))
            response = reader.response()
            assert response.status == 200
            assert described(response.body)["path"] == f"/n/{n}"
            assert "connection" not in response.headers
            assert "date" in response.headers
        assert len(server.worker.state.connections) == 1


def test_responses_are_not_held_back_by_nagle() -> None:
    """Small responses go out at once: every accepted TCP connection has TCP_NODELAY."""
    with serving(echo) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("GET", "/"))
        assert reader.response().status == 200
        (connection,) = server.worker.state.connections
        accepted = connection.transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_connection_close_is_answered_then_closed() -> None:
    with serving(echo) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("GET", "/", {"Connection": "close"}))
        response = reader.response()
        assert response.status == 200
        assert response.headers["connection"] == "close"
        assert reader.closed()


def test_http10_closes_unless_asked_to_keep_alive() -> None:
    with serving(echo) as server:
        with server.connect() as sock:
            reader = Reader(sock)
            sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
            response = reader.response()
            assert response.status == 200
            assert described(response.body)["http_version"] == "1.0"
            assert response.headers["connection"] == "close"
            assert reader.closed()
        with server.connect() as sock:
            reader = Reader(sock)
            for _ in range(2):
                sock.sendall(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                response = reader.response()
                assert response.status == 200
                assert response.headers["connection"] == "keep-alive"


async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for part in (b"one ", b"two ", b"three"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_http10_streamed_response_is_delimited_by_closing() -> None:
    with serving(streaming) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = reader.response()
        assert not response.chunked and "content-length" not in response.headers
        assert response.body == b"one two three"


def test_pipelined_requests_are_answered_in_order() -> None:
    """The first request takes longest; the answers still come in the order the requests were sent."""
    with serving(echo) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(
            request("GET", "/first?sleep=0.3")
            + request("POST", "/second?sleep=0.1", body=b"x" * 70000)
            + request("GET", "/third")
        )
        paths = [described(reader.response().body)["path"] for _ in range(3)]
        assert paths == ["/first", "/second", "/third"]


def test_chunked_request_body() -> None:
    body = b"".join(bytes([n]) * (1000 * n) for n in range(1, 40))
    chunks = b"".join(b"%x\r\n%b\r\n" % (1000 * n, bytes([n]) * (1000 * n)) for n in range(1, 40))
    with serving(echo) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("PATCH", "/upload", {"Transfer-Encoding": "chunked"}) + chunks + b"0\r\n\r\n")
        document = described(reader.response().body)
        assert document["body_length"] == len(body)
        assert document["body_sha256"] == hashlib.sha256(body).hexdigest()
        # and the connection carries on
        sock.sendall(request("GET", "/after"))
        assert described(reader.response().body)["path"] == "/after"


def test_expect_100_continue_when_the_application_reads_the_body() -> None:
    with serving(echo) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("PUT", "/blob", {"Expect": "100-continue", "Content-Length": "5"}))
        interim = reader.response()
        assert interim.status == 100
        sock.sendall(b"hello")
        response = reader.response()
        assert response.status == 200
        assert described(response.body)["body_length"] == 5


async def refuses_unread(scope: Scope, receive: Receive, send: Send) -> None:
    await respond(send, 401, b"log in first\n")


def test_no_100_continue_when_the_application_answers_without_reading() -> None:
    with serving(refuses_unread) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("PUT", "/blob", {"Expect": "100-continue", "Content-Length": "1000000"}))
        response = reader.response()
        assert response.status == 401  # not a 100 first
        assert response.headers["connection"] == "close"
        assert reader.closed()


@pytest.mark.parametrize(
    "raw",
    [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"],
    ids=["request-line", "header", "version"],
)
def test_malformed_request_gets_400_and_the_connection_closes(raw: bytes) -> None:
    with serving(echo) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(raw)
        response = reader.response()
        assert response.status == 400
        assert response.headers["connection"] == "close"
        assert reader.closed()


def test_a_good_request_before_garbage_is_still_answered() -> None:
    with serving(echo) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("GET", "/good?sleep=0.1") + b"NOT HTTP AT ALL\r\n\r\n")
        assert described(reader.response().body)["path"] == "/good"
        assert reader.response().status == 400
        assert reader.closed()


def test_oversized_headers_get_431() -> None:
    with serving(echo, max_header_bytes=8192) as server:
        with server.connect() as sock:
            reader = Reader(sock)
            sock.sendall(request("GET", "/", {"X-Big": "a" * 9000}))
            assert reader.response().status == 431
            assert reader.closed()
        with server.connect() as sock:  # many small ones add up
            reader = Reader(sock)
            sock.sendall(request("GET", "/", {f"X-{n}": "b" * 100 for n in range(100)}))
            assert reader.response().status == 431
        with server.connect() as sock:  # one that never ends
            reader = Reader(sock)
            sock.sendall(b"GET / HTTP/1.1\r\nX-Endless: ")
            for _ in range(64):
                sock.sendall(b"c" * 4096)
            assert reader.response().status == 431
            assert reader.closed()


def test_overlong_request_target_gets_414() -> None:
    with serving(echo, max_request_line=1024) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("GET", "/" + "p" * 2000))
        assert reader.response().status == 414


@pytest.mark.parametrize(("coding", "status"), [("gzip, chunked", 501), ("gzip", 400)])
def test_unsupported_transfer_coding(coding: str, status: int) -> None:
    """RFC 9112 6.1: a coding the server does not know is 501; chunked not last is 400."""
    with serving(echo) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("POST", "/", {"Transfer-Encoding": coding}) + b"5\r\nhello\r\n0\r\n\r\n")
        assert reader.response().status == status
        assert reader.closed()


def test_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    with serving(echo, keep_alive_timeout=0.5) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("GET", "/"))
        assert reader.response().status == 200
        started = time.monotonic()
        assert reader.closed()
        assert 0.4 < time.monotonic() - started < 4


def test_slow_request_headers_get_408() -> None:
    with serving(echo, header_timeout=0.5) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: slow")  # and the rest never comes
        response = reader.response()
        assert response.status == 408
        assert reader.closed()


def test_request_scope() -> None:
    with serving(echo) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("GET", "/v2/a%20b/%C3%A9t%C3%A9?x=1&y=%20", {"X-Mixed-Case": "Value"}))
        document = described(reader.response().body)
        assert document["type"] == "http"
        assert document["asgi"] == {"version": "3.0", "spec_version": "2.3"}
        assert document["http_version"] == "1.1"
        assert document["method"] == "GET"
        assert document["scheme"] == "http"
        assert document["path"] == "/v2/a b/été"
        assert document["raw_path"] == "/v2/a%20b/%C3%A9t%C3%A9"
        assert document["query_string"] == "x=1&y=%20"
        assert document["root_path"] == ""
        assert ["x-mixed-case", "Value"] in document["headers"]
        assert document["client"] == list(sock.getsockname())
        assert document["server"] == ["127.0.0.1", server.port]
        assert document["extensions"] == ["http.response.pathsend", "http.response.zerocopysend"]
        assert document["state"] == {}


def test_request_body_is_flow_controlled() -> None:
    """An application that does not read: the server stops reading the socket after a few MiB."""
    release = asyncio.Event()
    received: list[int] = []

    async def slow_reader(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await release.wait()
        total = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        received.append(total)
        await respond(send, 200, b"ok")

    size = 64 * 1024 * 1024
    with serving(slow_reader, body_buffer_limit=2 * 1024 * 1024) as server, server.connect() as sock:
        sock.sendall(request("PUT", "/", {"Content-Length": str(size)}))
        sock.setblocking(False)
        sent = 0
        chunk = b"z" * (1 << 20)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        (conn,) = server.worker.state.connections
        assert conn.cycle is not None
        buffered = conn.cycle.buffered
        assert buffered <= 2 * 1024 * 1024 + (1 << 20), buffered
        assert sent < size / 2
        server.worker._loop.call_soon_threadsafe(release.set)  # type: ignore[union-attr]
        sock.setblocking(True)
        sock.sendall(b"z" * (size - sent))
        assert Reader(sock).response().status == 200
        assert received == [size]


def test_disconnect_reaches_the_application_and_later_sends_do_no_harm() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != "/wait":
            await respond(send, 200, b"here")
            return
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                seen.append("disconnect")
                break
        # answering a client that is gone must not break the server
        await respond(send, 200, b"too late")

    with serving(app) as server:
        with server.connect() as sock:
            sock.sendall(request("PUT", "/wait", {"Content-Length": "1000"}) + b"x" * 10)
            time.sleep(0.2)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen == ["disconnect"]
        # the server still serves
        with server.connect() as sock:
            sock.sendall(request("GET", "/", {"Content-Length": "0"}))
            sock.shutdown(socket.SHUT_WR)  # a half-close: the answer still comes
            assert Reader(sock).response().status == 200


def test_a_body_the_application_did_not_read_is_swallowed_and_the_connection_carries_on() -> None:
    with serving(refuses_unread) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("PUT", "/first", {"Content-Length": "300000"}))
        assert reader.response().status == 401
        sock.sendall(b"y" * 300000 + request("PUT", "/second", body=b"{}"))
        assert reader.response().status == 401
        sock.sendall(request("GET", "/third"))
        assert reader.response().status == 401
