"""One request and its response: the ASGI `receive` and `send` of an HTTP/1.1 exchange."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any, BinaryIO

from shipyard.server import http11
from shipyard.server.access import FLUSH_RECORDS, route_path
from shipyard.server.types import Message, Scope

if TYPE_CHECKING:
    from shipyard.server.protocol import HttpProtocol

log = logging.getLogger("shipyard.server")

# how the response body is delimited on the wire
_UNDECIDED, _NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(5)
# response header names the server looks at (the application's own Transfer-Encoding and Connection are
# replaced by the server's: it alone frames the body and decides whether the connection stays open)
_SPECIAL = frozenset({b"content-length", b"transfer-encoding", b"connection", b"date"})
# received pieces at least this large go to the application as they came; smaller ones are joined
_JOIN_BELOW = 64 * 1024
_JOIN_UP_TO = 1024 * 1024
# a body this large goes out in a write of its own rather than being copied behind the head
_SEPARATE_WRITE = 16 * 1024


def _disconnect() -> Message:
    return {"type": "http.disconnect"}


class RequestCycle:
    __slots__ = (
        "body_complete",
        "body_delivered",
        "body_failed",
        "buffered",
        "chunks",
        "conn",
        "disconnected",
        "expect_continue",
        "framing",
        "head",
        "http10",
        "keep_alive",
        "parts",
        "received",
        "remaining",
        "request_id",
        "response_complete",
        "response_started",
        "scope",
        "sent",
        "started",
        "status",
        "task",
        "waiter",
    )

    def __init__(
        self, conn: HttpProtocol, scope: Scope, keep_alive: bool, head: bool, http10: bool, request_id: bytes
    ) -> None:
        self.conn = conn
        self.request_id = request_id
        self.started = time.time()
        self.status = 0
        self.received = 0
        self.sent = 0
        self.scope = scope
        self.keep_alive = keep_alive
        self.head = head
        self.http10 = http10
        self.expect_continue = False
        # the request body, as the parser hands it over
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.body_complete = False
        self.body_delivered = False
        self.body_failed = False  # the body broke off (a parse error, or the client half-closed)
        self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None
        # the response
        self.response_started = False
        self.response_complete = False
        self.parts: list[bytes] | None = None  # the head, until the first body bytes go out with it
        self.framing = _UNDECIDED
        self.remaining = 0
        self.task: asyncio.Task[None] | None = None

    # -- events from the connection -----------------------------------------------------------------

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def add_body(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        self.received += len(data)
        if self.waiter is not None:
            self.wake()

    def finish_body(self) -> None:
        self.body_complete = True
        if self.waiter is not None:
            self.wake()

    def fail_body(self) -> None:
        self.body_failed = True
        self.keep_alive = False
        self.wake()

    def disconnect(self) -> None:
        self.disconnected = True
        self.keep_alive = False
        self.wake()

    # -- the application ----------------------------------------------------------------------------

    async def run(self) -> None:
        conn = self.conn
        try:
            await conn.state.app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            conn.abort()
            raise
        except Exception:
            if self.disconnected:
                log.debug("exception in the application after the client went away", exc_info=True)
            else:
                log.exception("exception in the application: %s %s", self.scope["method"], self.scope["path"])
            if not self.response_started or self.parts is not None:
                # nothing of the response is on the wire yet
                if not self.disconnected:
                    self._internal_error()
            elif not self.response_complete:
                conn.abort()
            self._log_access()
        else:
            self._log_access()
            if self.response_complete or self.disconnected:
                return
            if not self.response_started:
                log.error("the application returned without a response: %s", self.scope["path"])
                self._internal_error()
            else:
                log.error("the application returned before the end of its response: %s", self.scope["path"])
                conn.abort()

    def _log_access(self) -> None:
        access = self.conn.state.access
        if not access.wanted:
            return
        scope = self.scope
        client = scope["client"]
        route = scope.get("route")
        if route is not None and route.__class__ is not str:
            route = route_path(route)
        pending = access.pending
        # the raw fields only, in a plain tuple: the rest is done in batches (see AccessLog)
        pending.append(
            (
                self.started,
                client[0] if client else "-",
                scope["method"],
                scope["path"],
                route,
                self.status or 499,  # no response: the client went away first (nginx's 499)
                self.received,
                self.sent,
                time.time() - self.started,
                self.request_id.decode("ascii"),
                scope.get("principal"),
                scope.get("repository"),
            )
        )
        if len(pending) >= FLUSH_RECORDS:
            access.flush()

    def _internal_error(self) -> None:
        self.response_started = True
        self.keep_alive = self.keep_alive and self.body_complete
        self._begin_head(500, [(b"content-type", b"application/json")])
        self._write_body(http11.INTERNAL_ERROR_BODY, False)

    def _over(self) -> bool:
        """Whether receive() has nothing left to give but http.disconnect."""
        return self.disconnected or self.body_failed or self.response_complete

    def _readable(self) -> bool:
        return bool(self.chunks) or self.body_complete or self._over()

    async def receive(self) -> Message:
        if self._over():
            return _disconnect()
        if not self.chunks:
            if self.body_complete:
                if self.body_delivered:
                    # nothing more to read: the next message is the end of the exchange
                    while not self._over():
                        await self._wait()
                    return _disconnect()
                self.body_delivered = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self.expect_continue:
                self.expect_continue = False
                if not self.response_started:
                    self.conn.write(http11.CONTINUE)
            while not self._readable():
                await self._wait()
            if self._over():
                return _disconnect()
        body = self._take()
        more = not (self.body_complete and not self.chunks)
        if not more:
            self.body_delivered = True
        return {"type": "http.request", "body": body, "more_body": more}

    def _take(self) -> bytes:
        chunks = self.chunks
        if not chunks:
            return b""
        body = chunks.popleft()
        if len(body) < _JOIN_BELOW and chunks and len(chunks[0]) < _JOIN_BELOW:
            pieces = [body]
            size = len(body)
            while chunks and len(chunks[0]) < _JOIN_BELOW and size < _JOIN_UP_TO:
                piece = chunks.popleft()
                pieces.append(piece)
                size += len(piece)
            body = b"".join(pieces)
        self.buffered -= len(body)
        self.conn.body_drained(self)
        return body

    async def _wait(self) -> None:
        waiter = self.waiter = self.conn.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("http.response.start sent twice")
            self._begin_head(message["status"], message.get("headers", ()))
            self.response_started = True
            return
        if not self.response_started:
            raise RuntimeError(f"{kind} sent before http.response.start")
        if self.response_complete:
            raise RuntimeError(f"{kind} sent after the response was complete")
        if self.disconnected:
            return
        if kind == "http.response.body":
            body = message.get("body", b"")
            more = message.get("more_body", False)
            parts = self.parts
            if (
                parts is not None
                and not more
                and self.framing == _LENGTH
                and self.remaining == len(body) < _SEPARATE_WRITE
                and self.keep_alive
                and not (self.http10 or self.expect_continue or self.conn.state.stopping)
            ):
                # the common case, a whole small body as announced, in one write
                self.parts = None
                self.remaining = 0
                self.sent += len(body)
                self.conn.write(parts[0] + b"\r\n" + body)
                self._complete()
                return
            self._write_body(body, more)
            if not self.response_complete and self.conn.write_paused:
                await self.conn.drain()
        elif kind == "http.response.zerocopysend":
            await self._send_open_file(message)
        elif kind == "http.response.pathsend":
            with open(message["path"], "rb") as file:
                await self._send_file(file, 0, os.fstat(file.fileno()).st_size, False)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    # -- the response head ----------------------------------------------------------------------------

    def _begin_head(self, status: int, headers: Any) -> None:
        self.status = status
        parts = [http11.status_line(status), self.conn.state.clock.date_header]
        self.framing = _UNDECIDED
        length: int | None = None
        for name, value in headers:
            lname = name.lower()
            if lname in _SPECIAL:
                if lname == b"content-length":
                    length = int(value)
                    if length < 0:
                        raise RuntimeError(f"invalid content-length {value!r}")
                elif lname == b"date":
                    parts[1] = b""
                else:
                    if lname == b"connection" and b"close" in value.lower():
                        self.keep_alive = False
                    continue
            parts += (name, b": ", value, b"\r\n")
        parts += (b"x-request-id", b": ", self.request_id, b"\r\n")
        block = b"".join(parts)
        # each header is one line: a line break inside a name or value would smuggle in another
        lines = (len(parts) - 2) // 4 + 1 + (parts[1] != b"")
        if block.count(b"\n") != lines or block.count(b"\r") != lines:
            raise RuntimeError("invalid response header: a name or value holds a line break")
        if self.head or status in http11.NO_BODY_STATUSES:
            self.framing = _NONE
        elif length is not None:
            self.framing = _LENGTH
            self.remaining = length
        self.parts = [block]

    def _finish_head(self, final_size: int | None) -> bytes:
        """The head's bytes, once the first body bytes are known (`final_size`: the whole body's size,
        when that is all there will be)."""
        parts = self.parts
        assert parts is not None
        self.parts = None
        if (
            self.keep_alive
            and self.framing != _UNDECIDED
            and not (self.http10 or self.expect_continue or self.conn.state.stopping)
        ):
            return parts[0] + b"\r\n"  # the common case: nothing to add
        if self.framing == _UNDECIDED:
            if final_size is not None:
                self.framing = _LENGTH
                self.remaining = final_size
                parts.append(b"content-length: %d\r\n" % final_size)
            elif not self.http10:
                self.framing = _CHUNKED
                parts.append(http11.CHUNKED)
            else:
                self.framing = _UNTIL_CLOSE
                self.keep_alive = False
        if self.expect_continue and not self.body_complete:
            # the client waits for a 100 Continue it will not get: its body may or may not follow
            self.keep_alive = False
        if not self.keep_alive or self.conn.state.stopping:
            self.keep_alive = False
            parts.append(http11.CLOSE)
        elif self.http10:
            parts.append(http11.KEEP_ALIVE)
        parts.append(b"\r\n")
        return b"".join(parts)

    # -- the response body ----------------------------------------------------------------------------

    def _write_body(self, body: bytes, more: bool) -> None:
        conn = self.conn
        head = b"" if self.parts is None else self._finish_head(None if more else len(body))
        framing = self.framing
        self.sent += len(body)
        if framing == _LENGTH:
            if len(body) > self.remaining:
                raise RuntimeError("response body longer than its content-length")
            self.remaining -= len(body)
        elif framing == _NONE:
            body = b""
        elif framing == _CHUNKED:
            if body:
                body = b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                body += http11.LAST_CHUNK
        if len(body) >= _SEPARATE_WRITE:
            if head:
                conn.write(head)
            conn.write(body)
        elif head or body:
            conn.write(head + body)
        if not more:
            self._complete()

    async def _send_open_file(self, message: Message) -> None:
        file = message["file"]
        if isinstance(file, int):
            file = open(file, "rb", closefd=False)  # noqa: SIM115 - the application owns the descriptor
        offset = message.get("offset")
        if offset is None:
            offset = file.tell()
        count = message.get("count")
        if count is None:
            count = max(0, os.fstat(file.fileno()).st_size - offset)
        await self._send_file(file, offset, count, message.get("more_body", False))

    async def _send_file(self, file: BinaryIO, offset: int, count: int, more: bool) -> None:
        """`count` bytes of `file` from `offset`: os.sendfile on plain TCP, copied on TLS."""
        conn = self.conn
        head = b"" if self.parts is None else self._finish_head(None if more else count)
        framing = self.framing
        if framing == _NONE or count == 0:
            if head:
                conn.write(head)
            if framing == _CHUNKED and not more:
                conn.write(http11.LAST_CHUNK)
            if not more:
                self._complete()
            return
        if framing == _LENGTH:
            if count > self.remaining:
                raise RuntimeError("response body longer than its content-length")
            self.remaining -= count
        elif framing == _CHUNKED:
            head += b"%x\r\n" % count
        if head:
            conn.write(head)
        sent = await conn.sendfile(file, offset, count)
        self.sent += sent
        if self.disconnected:
            return
        if sent < count:
            log.error("%s: the file ended %d bytes before its declared end", self.scope["path"], count - sent)
            conn.abort()
            return
        if framing == _CHUNKED:
            conn.write(b"\r\n" + http11.LAST_CHUNK if not more else b"\r\n")
        if not more:
            self._complete()

    def _complete(self) -> None:
        if self.framing == _LENGTH and self.remaining:
            # shorter than announced: only closing the connection tells the client
            self.keep_alive = False
        self.response_complete = True
        if self.waiter is not None:
            self.wake()
        self.conn.response_complete(self)
