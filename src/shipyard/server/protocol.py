"""An HTTP/1.1 connection: parsing (httptools), keep-alive, pipelining, flow control and timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import os
import socket
import time
from collections import deque
from typing import Any, BinaryIO, cast
from urllib.parse import unquote

import httptools

from shipyard.server import http11
from shipyard.server.access import AccessLog, RequestIds
from shipyard.server.config import ServerConfig
from shipyard.server.cycle import RequestCycle
from shipyard.server.types import ASGIApp, Headers

log = logging.getLogger("shipyard.server")

ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}
EXTENSIONS: dict[str, dict[str, Any]] = {"http.response.pathsend": {}, "http.response.zerocopysend": {}}
# one receive buffer per worker: the parser copies out of it whatever it keeps
READ_BUFFER_SIZE = 1024 * 1024
# after a response to a request whose body was not read, how long the server still swallows what the client
# sends before it closes: closing on unread bytes resets the connection, and the reset can destroy the
# response before the client has read it
LINGER_SECONDS = 2.0
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}

# request headers that on_headers_complete looks at
_NOTABLE = frozenset({b"transfer-encoding", b"expect", b"x-request-id", b"host"})
_FORWARDED = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_NOTABLE_BEHIND_PROXY = _NOTABLE | _FORWARDED
# A body must keep arriving: at least this much of it per body_timeout window, else 408. A body that stops
# and one that trickles (a byte a second holds a connection, a buffer and a task for hours) both fail it;
# like Kestrel's minimum data rate (240 B/s), it is a rate and not a deadline for the whole body, so a
# 10 GiB layer on a slow but live link still gets through. 16 KiB per 60 s is about Kestrel's 240 B/s.
MIN_BODY_BYTES = 16 * 1024

# reasons for not reading the socket; reading resumes when none is left
_PAUSE_BODY = 1  # the application has not yet taken the body bytes buffered for it
_PAUSE_PIPELINE = 2  # a pipelined request waits for the one before it
_PAUSE_FILE = 4  # the kernel writes a file response to the socket: nothing else may be written meanwhile

# a file response on TLS is read and encrypted in pieces of this size
COPY_CHUNK = 256 * 1024


class ServerState:
    """What the connections of one worker share."""

    __slots__ = (
        "access",
        "app",
        "clock",
        "config",
        "connections",
        "context",
        "lifespan_state",
        "read_buffer",
        "request_ids",
        "scheme",
        "stopping",
        "trusted_proxies",
    )

    def __init__(self, app: ASGIApp, config: ServerConfig, *, tls: bool) -> None:
        self.app = app
        self.config = config
        self.clock = http11.Clock()
        self.connections: set[HttpProtocol] = set()
        # each request runs in a copy of this, the server's own: not in what an earlier request of its
        # connection set (a pipelined request is started from the end of the one before)
        self.context = contextvars.copy_context()
        self.lifespan_state: dict[str, Any] | None = None
        self.read_buffer = memoryview(bytearray(READ_BUFFER_SIZE))
        self.scheme = "https" if tls else "http"
        self.stopping = False
        self.access = AccessLog(app, enabled=config.access_log, log_format=config.log_format)
        self.trusted_proxies = [ipaddress.ip_network(n, strict=False) for n in config.forwarded_allow_ips]
        self.request_ids = RequestIds()

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_proxies)

    def tick(self) -> None:
        """Once a second: a fresh Date header, and connections past their deadline."""
        clock = self.clock
        clock.tick()
        self.access.flush()
        now = clock.now
        for conn in [c for c in self.connections if c.deadline is not None and c.deadline < now]:
            conn.deadline_passed()


class _Refused(Exception):
    """A request the server answers itself, without the application."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpProtocol(asyncio.BufferedProtocol):
    __slots__ = (
        "body_window",
        "client",
        "closed",
        "cycle",
        "deadline",
        "drain_waiter",
        "head_deadline",
        "head_size",
        "header_bytes",
        "headers",
        "in_message",
        "keep_alive",
        "limits",
        "lingering",
        "loop",
        "parser",
        "parsing",
        "paused",
        "pending_error",
        "pipeline",
        "refusal",
        "server",
        "starting",
        "state",
        "transport",
        "trusted",
        "url",
        "write_paused",
    )

    def __init__(self, state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.limits = state.config
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.cycle: RequestCycle | None = None  # the request the application is answering
        self.pipeline: deque[RequestCycle] = deque()  # requests waiting for it, in order
        self.parsing: RequestCycle | None = None  # the request whose body is arriving
        self.url = b""
        self.headers: Headers = []
        self.header_bytes = 0
        self.head_size = 0
        self.in_message = False  # between the first byte of a request and the end of its headers
        self.keep_alive = True
        self.closed = False
        self.lingering = False
        self.starting = False
        self.paused = 0
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.pending_error: bytes | None = None
        self.refusal: _Refused | None = None
        self.deadline: float | None = None
        self.head_deadline = 0.0  # when the request head now arriving must be complete
        self.body_window = 0  # body bytes since the body deadline was last moved
        self.trusted = False  # the peer is a proxy whose forwarding headers are believed

    # -- transport events -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's transports, or uvloop's (which do not derive from asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # never corked (TCP_CORK, nginx's tcp_nopush): a corked 1 GiB blob GET on loopback went at
            # 0.8-1.8 GB/s and the client spent 1.5-3x the CPU receiving it, against 2.1-2.8 GB/s uncorked
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server = _address(transport.get_extra_info("sockname"))
        self.client = _address(transport.get_extra_info("peername"))
        state = self.state
        if len(state.connections) >= state.config.max_connections:
            # refused before it holds more than its socket: the worker stays within its descriptors
            log.warning("%d connections open: refusing one more", len(state.connections))
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"too many connections"}]}'
            request_id = state.request_ids.choose(None)
            self.transport.write(
                http11.error_response(state.clock, 503, body, b"application/json", request_id)
            )
            self.closed = True
            self.transport.close()
            self._log_refused(503, request_id)
            return
        if state.trusted_proxies and self.client is not None:
            self.trusted = state.is_trusted(self.client[0])
        state.connections.add(self)
        self.deadline = self.state.clock.now + self.state.config.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.state.connections.discard(self)
        for cycle in (self.cycle, self.parsing, *self.pipeline):
            if cycle is not None:
                cycle.disconnect()
        self.pipeline.clear()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool | None:
        if self.lingering or (self.cycle is None and not self.pipeline):
            return None  # the transport closes itself
        # the client half-closed: a body still expected will not come; answer what is in flight, then close
        self.keep_alive = False
        for cycle in (self.cycle, *self.pipeline):
            if cycle is not None:
                cycle.keep_alive = False
        if self.parsing is not None and not self.parsing.body_complete:
            self.parsing.fail_body()
        if self.transport.get_extra_info("sslcontext") is not None:
            return None  # TLS cannot stay half-open
        return True

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.state.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.lingering or self.pending_error is not None or self.closed:
            return
        if self.in_message:
            self.header_bytes += nbytes
        try:
            self.parser.feed_data(self.state.read_buffer[:nbytes])
        except httptools.HttpParserUpgrade:
            # no protocol switching here: answer the request as HTTP, then close; what follows is not HTTP
            self.keep_alive = False
            self.pending_error = b""
            self._pause(_PAUSE_PIPELINE)
        except httptools.HttpParserError as exc:
            self._refuse(self.refusal or _Refused(400, f"malformed request: {exc}"))
        else:
            limits = self.limits
            if self.in_message and self.header_bytes > limits.max_header_bytes + limits.max_request_line:
                self._refuse(_Refused(431, "request header fields too large"))
        if self.cycle is None and self.pipeline:
            self._run_next()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- parser callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_size = 0
        self.in_message = True
        self.head_deadline = self.state.clock.now + self.limits.header_timeout
        if self.cycle is None:
            self.deadline = self.head_deadline

    def on_url(self, url: bytes) -> None:
        url = self.url = self.url + url
        if len(url) > self.limits.max_request_line:
            self.refusal = _Refused(414, "request target too long")
            raise self.refusal

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        size = self.head_size = self.head_size + len(name) + len(value) + 4
        if size > self.limits.max_header_bytes:
            self.refusal = _Refused(431, "request header fields too large")
            raise self.refusal

    def on_headers_complete(self) -> None:
        self.in_message = False
        self.header_bytes = 0
        # until the body is complete (on_message_complete, at once when there is none)
        self.deadline = self.state.clock.now + self.limits.body_timeout
        self.body_window = 0
        parser = self.parser
        state = self.state
        url = self.url
        headers = self.headers
        expect: bytes | None = None
        if len(headers) > self.limits.max_headers:
            self.refusal = _Refused(431, "too many request header fields")
            raise self.refusal
        request_id: bytes | None = None
        body_checked = False
        hosts = 0
        forwarded = False
        notable = _NOTABLE_BEHIND_PROXY if self.trusted else _NOTABLE
        for name, value in headers:
            if name in notable:
                if name == b"x-request-id":
                    request_id = value
                elif name == b"host":
                    hosts += 1
                elif name in _FORWARDED:
                    forwarded = True
                elif not body_checked:
                    # two headers change how the body is read
                    body_checked = True
                    expect = self._body_headers(headers)
        version = parser.get_http_version()
        if hosts > 1 or (hosts == 0 and version != "1.0"):
            # RFC 9112 3.2: exactly one Host in HTTP/1.1; two would let a proxy and us disagree on it
            self.refusal = _Refused(400, "a request needs exactly one Host header")
            raise self.refusal
        if body_checked and version == "1.0" and any(n == b"transfer-encoding" for n, _ in headers):
            # RFC 9112 6.1: Transfer-Encoding on HTTP/1.0 is a smuggling vector, not a body framing
            self.refusal = _Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
            raise self.refusal
        if b"#" in url:
            url = url.partition(b"#")[0]  # a fragment is the client's own business, never the server's
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        elif url == b"*":
            raw_path, query = url, b""
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self.refusal = _Refused(400, "invalid request target")
                raise self.refusal from None
            raw_path, query = parsed.path or b"/", parsed.query or b""
        method_bytes = parser.get_method()
        method = _METHODS.get(method_bytes) or method_bytes.decode("ascii")
        path = raw_path.decode("utf-8", "replace")
        if b"%" in raw_path:
            path = unquote(path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": state.scheme,
            "method": method,
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": headers,
            "extensions": EXTENSIONS,
        }
        if forwarded:
            _apply_forwarded(scope, state)
        if state.lifespan_state is not None:
            scope["state"] = state.lifespan_state.copy()
        keep_alive = self.keep_alive and parser.should_keep_alive() and not state.stopping
        if request_id is None:  # the usual case, without a call (RequestIds.choose does the same)
            ids = state.request_ids
            request_id = b"%s%x" % (ids.prefix, next(ids.counter))
        else:
            request_id = state.request_ids.choose(request_id)
        cycle = RequestCycle(self, scope, keep_alive, method == "HEAD", version == "1.0", request_id)
        if expect is not None and version != "1.0":
            if expect.lower() != b"100-continue":
                self.refusal = _Refused(417, "unsupported expectation")
                raise self.refusal
            cycle.expect_continue = True
        self.parsing = cycle
        pipeline = self.pipeline
        pipeline.append(cycle)
        if self.cycle is not None or len(pipeline) > 1:
            self._pause(_PAUSE_PIPELINE)

    def _body_headers(self, headers: Headers) -> bytes | None:
        """Checks Transfer-Encoding; returns Expect."""
        expect = None
        codings: list[bytes] = []
        for name, value in headers:
            if name == b"expect":
                expect = value.strip()
            elif name == b"transfer-encoding":
                codings += [c for c in (c.strip().lower() for c in value.split(b",")) if c]
        if codings:
            # RFC 9112 6.1 and 6.3: only chunked is understood here, and it must come last
            if codings[-1] != b"chunked":
                self.refusal = _Refused(400, "the body length of this request cannot be determined")
                raise self.refusal
            if len(codings) > 1:
                self.refusal = _Refused(501, "unsupported transfer coding")
                raise self.refusal
        return expect

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None or cycle.response_complete:
            return  # a body the application answered without reading: swallowed
        cycle.add_body(body)
        window = self.body_window = self.body_window + len(body)
        if window >= MIN_BODY_BYTES:
            self.body_window = 0
            self.deadline = self.state.clock.now + self.limits.body_timeout
        if cycle.buffered > self.limits.body_buffer_limit:
            self._pause(_PAUSE_BODY)

    def on_message_complete(self) -> None:
        cycle = self.parsing
        if cycle is not None:
            self.parsing = None
            cycle.finish_body()
        if not self.lingering:
            if self.cycle is None and not self.pipeline:  # answered before its body was all in
                self.deadline = self.state.clock.now + self.limits.keep_alive_timeout
            else:
                self.deadline = None

    # -- running requests -------------------------------------------------------------------------------

    def _run_next(self) -> None:
        self.starting = True
        pipeline = self.pipeline
        try:
            while self.cycle is None and pipeline and not self.closed:
                cycle = self.cycle = pipeline.popleft()
                if self.paused and not pipeline:
                    self._resume(_PAUSE_PIPELINE)
                cycle.task = self.loop.create_task(cycle.run(), context=self.state.context.copy())
        finally:
            self.starting = False

    def response_complete(self, cycle: RequestCycle) -> None:
        if cycle is not self.cycle or self.closed:
            return
        self.cycle = None
        if cycle.buffered:
            cycle.chunks.clear()
            cycle.buffered = 0
        # an application that answers without reading the whole body: the rest is swallowed as it
        # arrives (on_body drops it), and the connection carries on after it
        if not cycle.keep_alive or not self.keep_alive or self.state.stopping:
            self._close(linger=not cycle.body_complete or bool(self.pipeline) or self.in_message)
            return
        if self.paused:
            self._resume(_PAUSE_BODY)
        if self.pipeline:
            if not self.starting:
                self.loop.call_soon(self._run_next)
        elif self.pending_error is not None:
            self.write(self.pending_error)
            self._close(linger=True)
        elif not self.in_message:
            self.deadline = self.state.clock.now + self.limits.keep_alive_timeout
        else:
            # a request head began while this response was being made: its header timeout still holds
            self.deadline = self.head_deadline

    def body_drained(self, cycle: RequestCycle) -> None:
        if self.paused & _PAUSE_BODY and cycle.buffered <= self.state.config.body_buffer_limit // 2:
            self._resume(_PAUSE_BODY)

    # -- writing ----------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        while self.write_paused and not self.closed:
            waiter = self.drain_waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self.drain_waiter = None

    async def sendfile(self, file: BinaryIO, offset: int, count: int) -> int:
        """Bytes of `file` sent from `offset`, at most `count`: zero-copy (os.sendfile) on plain TCP,
        read and written in pieces on TLS. A broken connection is a disconnect."""
        if self.closed or self.transport.is_closing():
            self.connection_lost(None)
            return 0
        sock = self.transport.get_extra_info("socket")
        try:
            if sock is None or self.transport.get_extra_info("sslcontext") is not None:
                return await self._copy_file(file.fileno(), offset, count)
            return await self._sendfile(sock.fileno(), file.fileno(), offset, count)
        except OSError as exc:
            log.debug("sending a file failed: %s", exc)
            self.abort()
            return 0

    async def _sendfile(self, sock_fd: int, file_fd: int, offset: int, count: int) -> int:
        # The kernel copies from the page cache to the socket, a piece per call, as much as the socket takes
        # (the same calls as asyncio's own loop.sendfile, which uvloop lacks). Through a descriptor of our
        # own: the transport may close its one meanwhile, and its number may then name another socket.
        fd = os.dup(sock_fd)
        self._pause(_PAUSE_FILE)  # no reading: an answer to a bad pipelined request would cut in
        try:
            # what the transport still holds (the head) goes out before the kernel writes the socket itself
            while self.transport.get_write_buffer_size() and not self.closed:
                await self._writable(fd)
                await asyncio.sleep(0)
            sent = 0
            while sent < count and not self.closed:
                try:
                    n = os.sendfile(fd, file_fd, offset + sent, count - sent)
                except BlockingIOError:
                    n = -1
                if n == 0:
                    break  # the file is shorter than said
                if n > 0:
                    sent += n
                if sent < count:
                    await self._writable(fd)  # the other connections get their turn between pieces
            return sent
        finally:
            os.close(fd)
            self._resume(_PAUSE_FILE)

    async def _writable(self, fd: int) -> None:
        """Until `fd` takes more bytes, or the connection is lost (which wakes the drain waiter too)."""
        waiter = self.drain_waiter = self.loop.create_future()
        self.loop.add_writer(fd, _wake, waiter)
        try:
            await waiter
        finally:
            self.loop.remove_writer(fd)
            self.drain_waiter = None

    async def _copy_file(self, file_fd: int, offset: int, count: int) -> int:
        sent = 0
        while sent < count and not self.closed:
            size = min(COPY_CHUNK, count - sent)
            piece = await self.loop.run_in_executor(None, os.pread, file_fd, size, offset + sent)
            if not piece:
                break
            self.write(piece)
            sent += len(piece)
            await self.drain()
        return sent

    # -- closing -----------------------------------------------------------------------------------------

    def abort(self) -> None:
        if not self.closed:
            self.transport.abort()
            self.connection_lost(None)

    def _close(self, *, linger: bool) -> None:
        if self.closed:
            return
        if not linger:
            self.transport.close()
            return
        # send FIN after what is buffered, swallow what the client still sends, close on its FIN or later
        self.lingering = True
        self.paused = 0
        self.transport.resume_reading()
        self.deadline = self.state.clock.now + LINGER_SECONDS
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def _refuse(self, refusal: _Refused) -> None:
        """Answer a request the parser rejected, after the responses still owed, then close."""
        self.refusal = None
        if self.parsing is not None:
            # the body of a request in flight broke off: its application hears of a disconnect
            self.parsing.fail_body()
            self.parsing = None
            self.pending_error = b""  # parse nothing more
            self._pause(_PAUSE_PIPELINE)
            return
        request_id = self.state.request_ids.choose(None)
        message = str(refusal).encode() + b"\n"
        response = http11.error_response(self.state.clock, refusal.status, message, request_id=request_id)
        self._log_refused(refusal.status, request_id)
        if self.cycle is None and not self.pipeline:
            self.write(response)
            self._close(linger=True)
        else:
            self.pending_error = response
            self._pause(_PAUSE_PIPELINE)

    def _log_refused(self, status: int, request_id: bytes) -> None:
        """An access record for a request the server answered itself: no method or path it could trust."""
        access = self.state.access
        if access.wanted:
            client = self.client[0] if self.client else "-"
            rid = request_id.decode()
            access.note((time.time(), client, "-", "-", None, status, 0, 0, 0.0, rid, None, None))

    def deadline_passed(self) -> None:
        self.deadline = None
        if self.closed:
            return
        if self.lingering:
            self.transport.close()
        elif self.parsing is not None and not self.parsing.body_complete:
            self._body_timed_out(self.parsing)
        elif self.cycle is not None or self.pipeline:
            return
        elif self.in_message:
            log.info("closing a connection that sent no complete request headers in time")
            request_id = self.state.request_ids.choose(None)
            message = b"request headers took too long\n"
            self.write(http11.error_response(self.state.clock, 408, message, request_id=request_id))
            self._log_refused(408, request_id)
            self._close(linger=True)
        else:
            self.transport.close()

    def _body_timed_out(self, cycle: RequestCycle) -> None:
        if self.paused or cycle.expect_continue:
            # not the client's fault: we are not reading, or it waits for our 100 Continue
            self.deadline = self.state.clock.now + self.limits.body_timeout
            return
        log.info("closing a connection whose request body stopped arriving")
        self.parsing = None
        answered = cycle.response_started
        cycle.disconnect()  # receive() now gives http.disconnect, and what the app sends goes nowhere
        if cycle is self.cycle and not answered:
            message = b"request body took too long\n"
            self.write(http11.error_response(self.state.clock, 408, message, request_id=cycle.request_id))
            cycle.status = 408  # its own access record says so, once the application returns
            self._close(linger=True)
        else:
            self.abort()

    def shutdown(self) -> None:
        """Graceful shutdown: close when idle, else after the response in flight."""
        self.keep_alive = False
        if self.cycle is None and not self.pipeline and not self.in_message:
            self._close(linger=False)

    # -- flow control --------------------------------------------------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()


def _apply_forwarded(scope: dict[str, Any], state: ServerState) -> None:
    """Client, scheme and Host from a trusted proxy's headers (RFC 7239 Forwarded, or X-Forwarded-*)."""
    chain: list[str] = []
    proto = host = None
    headers: Headers = scope["headers"]
    for name, value in headers:
        if name == b"forwarded":
            for element in value.decode("latin-1").split(","):
                for pair in element.split(";"):
                    key, _, item = pair.strip().partition("=")
                    item = item.strip().strip('"')
                    key = key.strip().lower()
                    if key == "for":
                        chain.append(_strip_port(item))
                    elif key == "proto":
                        proto = item
                    elif key == "host":
                        host = item
        elif name == b"x-forwarded-for":
            chain += [_strip_port(a.strip()) for a in value.decode("latin-1").split(",")]
        elif name == b"x-forwarded-proto":
            proto = value.decode("latin-1").split(",")[-1].strip()
        elif name == b"x-forwarded-host":
            host = value.decode("latin-1").split(",")[-1].strip()
    # the nearest proxy appends last: walk back over the proxies we trust to the first address we do not
    for address in reversed(chain):
        if address and not state.is_trusted(address):
            scope["client"] = (address, 0)
            break
    else:
        if chain and chain[0]:
            scope["client"] = (chain[0], 0)
    if proto is not None and proto.lower() in ("http", "https"):
        scope["scheme"] = proto.lower()
    if host and all(c.isalnum() or c in ".-:[]_" for c in host):
        scope["headers"] = [(n, v) for n, v in headers if n != b"host"] + [(b"host", host.encode("ascii"))]


def _strip_port(address: str) -> str:
    if address.startswith("["):
        return address[1:].partition("]")[0]
    if address.count(":") == 1:
        return address.partition(":")[0]
    return address


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None
