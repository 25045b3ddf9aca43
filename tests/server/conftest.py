"""An in-process server (one worker on a thread) and a raw HTTP/1.1 client over plain sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from shipyard.server.config import ServerConfig, new_event_loop
from shipyard.server.types import ASGIApp
from shipyard.server.worker import Worker


@dataclass
class Running:
    worker: Worker
    port: int
    errors: list[BaseException] = field(default_factory=list)

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


# the event loop of the servers `serving` starts; the `server_loop` fixture runs a test on each
_LOOP = {"kind": "auto"}


@pytest.fixture(params=["uvloop", "asyncio"])
def server_loop(request: pytest.FixtureRequest) -> Iterator[str]:
    """uvloop is what the workers run (a dependency); asyncio's own loop is what they run without it."""
    _LOOP["kind"] = request.param
    try:
        yield request.param
    finally:
        _LOOP["kind"] = "auto"


@contextlib.contextmanager
def serving(app: ASGIApp, **options: object) -> Iterator[Running]:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options.setdefault("event_loop", _LOOP["kind"])
    config = ServerConfig(app="tests:in-process", port=port, **options)  # type: ignore[arg-type]
    worker = Worker(app, config, sock)
    running = Running(worker, port)
    ready = threading.Event()

    def run() -> None:
        try:
            with asyncio.Runner(loop_factory=lambda: new_event_loop(config.event_loop)) as runner:
                runner.run(worker.run(on_ready=ready.set))
        except BaseException as exc:  # reported by the test, not lost in the thread
            running.errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="test-server", daemon=True)
    thread.start()
    assert ready.wait(10), "the server did not start"
    try:
        yield running
    finally:
        worker.stop()
        thread.join(20)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"
    assert not running.errors, running.errors


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    raw_head: bytes
    chunked: bool = False


class Reader:
    """Reads responses off one connection, one after another (pipelined ones included)."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        self.buffer += data
        return bool(data)

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before {marker!r}: {self.buffer[:200]!r}")
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise ConnectionError(f"closed after {len(self.buffer)} of {size} bytes")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def response(self, *, head: bool = False) -> Response:
        raw = self._until(b"\r\n\r\n")
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        version, status, *reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"header {name} twice"
            headers[name.lower()] = value.strip()
        code = int(status)
        if head or code in (204, 304) or 100 <= code < 200:
            return Response(code, " ".join(reason), headers, b"", raw)
        if "content-length" in headers:
            return Response(
                code, " ".join(reason), headers, self._exactly(int(headers["content-length"])), raw
            )
        if headers.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int(self._until(b"\r\n"), 16)
                if size == 0:
                    assert self._until(b"\r\n") == b""
                    break
                parts.append(self._exactly(size))
                assert self._exactly(2) == b"\r\n"
            return Response(code, " ".join(reason), headers, b"".join(parts), raw, chunked=True)
        while self._fill():  # delimited by the end of the connection
            pass
        body, self.buffer = self.buffer, b""
        return Response(code, " ".join(reason), headers, body, raw)

    def closed(self) -> bool:
        """Whether the server closed the connection (after whatever is still buffered)."""
        try:
            return not self.buffer and not self._fill()
        except ConnectionResetError:
            return True


def request(
    method: str = "GET", target: str = "/", headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test"]
    merged = dict(headers or {})
    if body and "transfer-encoding" not in {k.lower() for k in merged}:
        merged.setdefault("Content-Length", str(len(body)))
    lines += [f"{name}: {value}" for name, value in merged.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
