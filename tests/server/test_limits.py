"""Timeouts, the connection limit, request validation and trusted proxy headers."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from shipyard.server.types import AccessRecord, Receive, Scope, Send
from tests.server.apps import echo, lifespan, respond
from tests.server.conftest import Reader, request, serving

pytestmark = pytest.mark.usefixtures("server_loop")


def described(body: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(body)
    return document


def test_a_partial_head_after_a_short_request_is_timed_out() -> None:
    # the head begins while the first request (a few ms) is still being answered
    with (
        serving(echo, header_timeout=0.5, keep_alive_timeout=1.0) as server,
        server.connect(timeout=8) as sock,
    ):
        reader = Reader(sock)
        sock.sendall(request("GET", "/?sleep=0.2"))
        time.sleep(0.05)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: slow")
        assert reader.response().status == 200
        started = time.monotonic()
        response = reader.response()
        assert response.status == 408
        assert response.headers["x-request-id"]
        assert reader.closed()
        assert time.monotonic() - started < 4


received: list[dict[str, Any]] = []


class ReaderApp:
    def __init__(self) -> None:
        self.records: list[AccessRecord] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await reader_app(scope, receive, send)

    def access_observer(self, record: AccessRecord) -> None:
        self.records.append(record)


async def reader_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the body and records what receive() said; answers only if the body was whole."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    total = 0
    while True:
        message = await receive()
        received.append(dict(message))
        if message["type"] == "http.disconnect":
            return
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await respond(send, 200, str(total).encode())


def _body_timeout_case(sock: socket.socket, trickle: bool) -> None:
    received.clear()
    sock.sendall(request("PUT", "/", {"Content-Length": str(10 * 1024**3)}))
    started = time.monotonic()
    reader = Reader(sock)
    if trickle:
        sock.settimeout(0.3)
        response = None
        for _ in range(30):
            try:
                sock.sendall(b"x")
                response = reader.response()
                break
            except TimeoutError:
                continue
        assert response is not None
        sock.settimeout(5)
    else:
        response = reader.response()
    assert response.status == 408
    assert reader.closed()
    assert time.monotonic() - started < 6
    deadline = time.monotonic() + 2
    while not (received and received[-1]["type"] == "http.disconnect") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert received[-1]["type"] == "http.disconnect"


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickle"])
def test_a_body_that_stops_or_trickles_gets_408_and_the_app_hears_disconnect(trickle: bool) -> None:
    app = ReaderApp()
    with serving(app, body_timeout=1.0) as server, server.connect(timeout=8) as sock:
        _body_timeout_case(sock, trickle)
    assert [r.status for r in app.records] == [408]
    assert app.records[0].method == "PUT"


def test_a_body_that_keeps_arriving_is_not_timed_out() -> None:
    # deadlines are checked once a second: 1.5 s is the shortest timeout that a steady stream always meets
    with serving(reader_app, body_timeout=1.5) as server, server.connect(timeout=8) as sock:
        size = 30 * 64 * 1024
        sock.sendall(request("PUT", "/", {"Content-Length": str(size)}))
        for _ in range(30):  # 3 s in all, twice the timeout, at 64 KiB per 0.1 s
            sock.sendall(b"y" * 64 * 1024)
            time.sleep(0.1)
        response = Reader(sock).response()
        assert response.status == 200
        assert response.body == str(size).encode()


def test_connections_past_the_limit_get_503_and_are_closed() -> None:
    app = ReaderApp()
    with serving(app, max_connections=2) as server:
        first, second = server.connect(), server.connect()
        for sock in (first, second):
            sock.sendall(request("GET", "/"))
            assert Reader(sock).response().status == 200
        with server.connect() as third:
            reader = Reader(third)
            response = reader.response()
            assert response.status == 503
            assert json.loads(response.body)["errors"][0]["code"] == "UNAVAILABLE"
            assert reader.closed()
        assert len(server.worker.state.connections) == 2
        first.close()
        deadline = time.monotonic() + 3
        while len(server.worker.state.connections) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        with server.connect() as fourth:
            fourth.sendall(request("GET", "/"))
            assert Reader(fourth).response().status == 200
        second.close()
    assert sorted(r.status for r in app.records) == [200, 200, 200, 503]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["no-host", "two-hosts", "te-on-http10"],
)
def test_ambiguous_requests_get_400(raw: bytes) -> None:
    with serving(echo) as server, server.connect() as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        assert reader.response().status == 400
        assert reader.closed()


def test_a_fragment_is_stripped_from_the_target() -> None:
    with serving(echo) as server, server.connect() as sock:
        sock.sendall(request("GET", "/a/b?x=1#frag"))
        document = described(Reader(sock).response().body)
        assert document["path"] == "/a/b"
        assert document["query_string"] == "x=1"
        sock.sendall(request("GET", "/c#only"))
        document = described(Reader(sock).response().body)
        assert document["path"] == "/c"
        assert document["query_string"] == ""


def _host(document: dict[str, Any]) -> list[str]:
    return [v for k, v in document["headers"] if k == "host"]


FORWARDED_HEADERS = {
    "X-Forwarded-For": "203.0.113.7, 10.0.0.5",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "registry.example",
}


def test_forwarded_headers_are_ignored_unless_the_peer_is_trusted() -> None:
    # loopback is not trusted by default
    with serving(echo) as server, server.connect() as sock:
        sock.sendall(request("GET", "/", FORWARDED_HEADERS))
        document = described(Reader(sock).response().body)
        assert document["client"][0] == "127.0.0.1"
        assert document["scheme"] == "http"
        assert _host(document) == ["test"]


def test_x_forwarded_headers_from_a_trusted_proxy() -> None:
    with serving(echo, forwarded_allow_ips=("127.0.0.0/8", "10.0.0.0/8")) as server, server.connect() as sock:
        sock.sendall(request("GET", "/", FORWARDED_HEADERS))
        document = described(Reader(sock).response().body)
        # 10.0.0.5 is a trusted proxy too: the client is the first untrusted address from the right
        assert document["client"][0] == "203.0.113.7"
        assert document["scheme"] == "https"
        assert _host(document) == ["registry.example"]


def test_rfc7239_forwarded_from_a_trusted_proxy() -> None:
    with serving(echo, forwarded_allow_ips=("127.0.0.1",)) as server, server.connect() as sock:
        forwarded = 'for="[2001:db8::1]:4711";proto=https;host=reg.example:8443'
        sock.sendall(request("GET", "/", {"Forwarded": forwarded}))
        document = described(Reader(sock).response().body)
        assert document["client"][0] == "2001:db8::1"
        assert document["scheme"] == "https"
        assert _host(document) == ["reg.example:8443"]
