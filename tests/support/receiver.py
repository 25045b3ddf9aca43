"""A real HTTP receiver of webhooks for tests, on a thread of its own: it records every request and
answers with the statuses a test scripts; and a dead receiver that accepts connections and never
answers."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    def __init__(
        self, statuses: Callable[[int], int] = lambda _: 200, tls: ssl.SSLContext | None = None
    ) -> None:
        self.requests: list[Received] = []
        self.statuses = statuses
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    number = len(receiver.requests)
                    receiver.requests.append(
                        Received(
                            time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()}, body
                        )
                    )
                    receiver._lock.notify_all()
                status = receiver.statuses(number)
                answer = f"answer {number}".encode()
                self.send_response(status)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.tls = tls
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return self.url_for("127.0.0.1")

    def url_for(self, host: str) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{host}:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.requests)} requests within {timeout} s, wanted {count}")
                self._lock.wait(left)
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiver(
    statuses: Callable[[int], int] = lambda _: 200, tls: ssl.SSLContext | None = None
) -> Iterator[Receiver]:
    r = Receiver(statuses, tls)
    try:
        yield r
    finally:
        r.close()


@contextmanager
def dead_receiver() -> Iterator[str]:
    """A URL whose host completes TCP handshakes (the listen backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    finally:
        sock.close()
