"""Bytes of HTTP/1.1 that the server writes: status lines, the Date header, its own error responses."""

from __future__ import annotations

import http
import time
from email.utils import formatdate

STATUS_LINES: dict[int, bytes] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("latin-1"))
    for status in http.HTTPStatus
}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED = b"transfer-encoding: chunked\r\n"
CLOSE = b"connection: close\r\n"
KEEP_ALIVE = b"connection: keep-alive\r\n"
LAST_CHUNK = b"0\r\n\r\n"

# statuses whose responses never have a body (RFC 9110 6.4.1), besides any response to HEAD
NO_BODY_STATUSES = frozenset({204, 304, *range(100, 200)})

INTERNAL_ERROR_BODY = b'{"errors":[{"code":"UNKNOWN","message":"internal server error"}]}'


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status {status!r}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


class Clock:
    """The Date header, formatted once a second rather than once a response."""

    __slots__ = ("date_header", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self.date_header = b""
        self.tick()

    def tick(self) -> None:
        self.now = time.monotonic()
        self.date_header = b"date: " + formatdate(usegmt=True).encode("ascii") + b"\r\n"


def error_response(
    clock: Clock, status: int, body: bytes, content_type: bytes = b"text/plain", request_id: bytes = b""
) -> bytes:
    """A complete response that closes the connection: for requests the server refuses by itself."""
    return b"".join(
        [
            status_line(status),
            clock.date_header,
            b"x-request-id: " + request_id + b"\r\n" if request_id else b"",
            b"content-type: ",
            content_type,
            b"\r\ncontent-length: %d\r\n" % len(body),
            CLOSE,
            b"\r\n",
            body,
        ]
    )
