"""Responses: framing (length, chunked, none), files sent with sendfile, and errors of the application."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard.server.protocol import _PAUSE_FILE, HttpProtocol
from shipyard.server.types import Receive, Scope, Send
from tests.server.apps import respond
from tests.server.conftest import Reader, Running, request, serving

# every test here runs on both event loops
pytestmark = pytest.mark.usefixtures("server_loop")


async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for part in (b"one ", b"", b"two ", b"three"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def whole(scope: Scope, receive: Receive, send: Send) -> None:
    """No content-length from the application, but all of the body in one message."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-kind", b"whole")]})
    await send({"type": "http.response.body", "body": b"all at once"})


def test_streamed_response_is_chunked() -> None:
    with serving(streaming) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request())
        response = reader.response()
        assert response.chunked
        assert response.body == b"one two three"
        sock.sendall(request())  # the connection stays usable
        assert reader.response().body == b"one two three"


def test_a_body_sent_at_once_gets_a_content_length() -> None:
    with serving(whole) as server, server.connect() as sock:
        sock.sendall(request())
        response = Reader(sock).response()
        assert response.headers["content-length"] == "11"
        assert response.body == b"all at once"


async def sized(scope: Scope, receive: Receive, send: Send) -> None:
    status = int(scope["path"].strip("/") or 200)
    await respond(send, status, b"0123456789")


def test_head_has_headers_but_no_body() -> None:
    with serving(sized) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("HEAD", "/"))
        response = reader.response(head=True)
        assert response.status == 200
        assert response.headers["content-length"] == "10"
        sock.sendall(request("GET", "/"))  # nothing of the HEAD's body got in the way
        assert reader.response().body == b"0123456789"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    with serving(sized) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("GET", f"/{status}") + request("GET", "/200"))
        assert reader.response().status == status
        assert reader.response().body == b"0123456789"


def test_application_exception_before_the_response_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError("the application is broken")

    with (
        caplog.at_level(logging.ERROR, "shipyard.server"),
        serving(broken) as server,
        server.connect() as sock,
    ):
        reader = Reader(sock)
        sock.sendall(request())
        response = reader.response()
        assert response.status == 500
        assert response.headers["content-type"] == "application/json"
        assert response.body == b'{"errors":[{"code":"UNKNOWN","message":"internal server error"}]}'
        sock.sendall(request())  # and the connection carries on
        assert reader.response().status == 500
    assert "the application is broken" in caplog.text
    assert any(record.exc_info for record in caplog.records)


def test_application_exception_after_the_response_started_closes_the_connection() -> None:
    async def half(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("broken halfway")

    with serving(half) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request())
        with pytest.raises(ConnectionError):
            reader.response()


def test_header_injection_is_refused() -> None:
    async def injecting(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"x-evil", b"a\r\nset-cookie: b")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    with serving(injecting) as server, server.connect() as sock:
        sock.sendall(request())
        response = Reader(sock).response()
        assert response.status == 500
        assert "set-cookie" not in response.headers


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return path


def file_app(path: Path, offset: int | None, count: int | None, *, length: bool = True) -> object:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        size = path.stat().st_size
        sent = (count if count is not None else size - (offset or 0)) if length else None
        headers = [] if sent is None else [(b"content-length", str(sent).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with path.open("rb") as file:
            message: dict[str, object] = {"type": "http.response.zerocopysend", "file": file}
            if offset is not None:
                message["offset"] = offset
            if count is not None:
                message["count"] = count
            await send(message)

    return app


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the bytes each os.sendfile call sends (asyncio calls it for loop.sendfile)."""
    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        sent = real(out_fd, in_fd, offset, count)
        calls.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counting)
    return calls


@pytest.mark.parametrize(
    ("offset", "count"), [(None, None), (0, 1), (1000, 2 * 1024 * 1024), (5, None)], ids=str
)
def test_zerocopysend(blob: Path, sendfile_calls: list[int], offset: int | None, count: int | None) -> None:
    data = blob.read_bytes()
    start = offset or 0
    expected = data[start : start + count] if count is not None else data[start:]
    with serving(file_app(blob, offset, count)) as server, server.connect() as sock:  # type: ignore[arg-type]
        reader = Reader(sock)
        sock.sendall(request())
        response = reader.response()
        assert response.body == expected
        sock.sendall(request())  # and again on the same connection
        assert reader.response().body == expected
    assert sum(sendfile_calls) == 2 * len(expected)  # every byte went out through os.sendfile


@pytest.fixture
def corked_sends(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the socket was corked (TCP_CORK) at each os.sendfile call."""
    states: list[bool] = []
    real = os.sendfile

    def observing(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        with socket.fromfd(out_fd, socket.AF_INET, socket.SOCK_STREAM) as same:
            states.append(same.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) != 0)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", observing)
    return states


def test_a_large_file_goes_out_uncorked_with_nodelay(blob: Path, corked_sends: list[bool]) -> None:
    """Never TCP_CORK (nginx's tcp_nopush): corked, a blob GET on loopback went at about half the speed."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await file_app(blob, 0, None)(scope, receive, send)  # type: ignore[operator]

    data = blob.read_bytes()
    with serving(app) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request("GET", "/large"))
        assert reader.response().body == data
        (connection,) = server.worker.state.connections
        accepted = connection.transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert corked_sends and not any(corked_sends)


def test_zerocopysend_without_content_length_is_chunked(blob: Path, sendfile_calls: list[int]) -> None:
    app = file_app(blob, 100, 5000, length=False)
    with serving(app) as server, server.connect() as sock:  # type: ignore[arg-type]
        sock.sendall(request())
        response = Reader(sock).response()
        # one message with more_body false: the server knows the length and says so
        assert response.headers["content-length"] == "5000"
        assert response.body == blob.read_bytes()[100:5100]
    assert sum(sendfile_calls) == 5000


def test_pathsend(blob: Path, sendfile_calls: list[int]) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        size = blob.stat().st_size
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % size)]}
        )
        await send({"type": "http.response.pathsend", "path": str(blob)})

    with serving(app) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request() + request("HEAD"))
        assert reader.response().body == blob.read_bytes()
        head = reader.response(head=True)
        assert head.headers["content-length"] == str(blob.stat().st_size)
    assert sum(sendfile_calls) == blob.stat().st_size


def test_zerocopysend_over_tls(blob: Path, tmp_path: Path) -> None:
    from shipyard.auth.certs import issue_server_certificate

    certs = issue_server_certificate(tmp_path / "certs", ["127.0.0.1"])
    app = file_app(blob, 7, None)
    with serving(app, tls_cert=str(certs.server_cert), tls_key=str(certs.server_key)) as server:  # type: ignore[arg-type]
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        with server.connect() as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            reader = Reader(sock)
            sock.sendall(request())
            assert reader.response().body == blob.read_bytes()[7:]


@pytest.fixture
def big(tmp_path: Path) -> Path:
    """More than loopback's socket buffers hold: a client that does not read stalls the response."""
    path = tmp_path / "big"
    path.write_bytes(os.urandom(32 * 1024 * 1024))
    return path


def big_or_small(big: Path) -> object:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/big":
            await file_app(big, None, None)(scope, receive, send)  # type: ignore[operator]
        else:
            await respond(send, 200, b"small")

    return app


def _file_in_flight(server: Running) -> HttpProtocol | None:
    for conn in list(server.worker.state.connections):
        if conn.cycle is not None and conn.paused & _PAUSE_FILE:
            return conn
    return None


def _wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_client_that_does_not_read_its_file_holds_up_no_one(big: Path) -> None:
    with serving(big_or_small(big)) as server, server.connect() as stalled, server.connect() as other:  # type: ignore[arg-type]
        stalled.sendall(request("GET", "/big"))
        _wait_for(lambda: _file_in_flight(server))
        time.sleep(0.2)  # the socket is full by now: the server waits for it to take more
        other.sendall(request("GET", "/small"))
        assert Reader(other).response().body == b"small"
        assert _file_in_flight(server) is not None  # answered while the file was still going out
        reader = Reader(stalled)
        assert reader.response().body == big.read_bytes()
        stalled.sendall(request("GET", "/small"))  # and the connection reads requests again
        assert reader.response().body == b"small"


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_client_that_leaves_during_a_file_response(big: Path) -> None:
    with serving(big_or_small(big)) as server:  # type: ignore[arg-type]
        with server.connect() as sock:
            sock.sendall(request("GET", "/small"))
            assert Reader(sock).response().body == b"small"
        _wait_for(lambda: not server.worker.state.connections)
        before = _open_descriptors()
        with server.connect() as sock:
            sock.sendall(request("GET", "/big"))
            assert sock.recv(65536)
            _wait_for(lambda: _file_in_flight(server))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
        _wait_for(lambda: not server.worker.state.connections)
        assert _open_descriptors() == before  # the server's own descriptor of the socket is closed too
        with server.connect() as sock:
            sock.sendall(request("GET", "/small"))
            assert Reader(sock).response().body == b"small"
