"""A worker process: loads the application, runs its lifespan, serves the inherited listening socket.

Started by the supervisor as `python -m shipyard.server.worker --fd N ... CONFIG_JSON`; stops gracefully on
SIGTERM or SIGINT, and when the supervisor goes away (the lifeline pipe reaches end of file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import ssl
import sys
from collections.abc import Callable

from shipyard.server.config import ServerConfig, configure_logging, load_app, new_event_loop
from shipyard.server.lifespan import Lifespan, LifespanFailed
from shipyard.server.protocol import HttpProtocol, ServerState
from shipyard.server.types import ASGIApp

log = logging.getLogger("shipyard.server")

# the exit status of a worker whose application failed to start
STARTUP_FAILED = 3


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    context.set_alpn_protocols(["http/1.1"])
    return context


class Worker:
    """Serves one listening socket until told to stop; usable in-process (tests) as well."""

    def __init__(self, app: ASGIApp, config: ServerConfig, sock: socket.socket) -> None:
        self.app = app
        self.config = config
        self.sock = sock
        self.ssl = tls_context(config)
        self.state = ServerState(app, config, tls=self.ssl is not None)
        self.started: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        """Begin a graceful shutdown (from any thread)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)

    async def run(self, *, on_ready: Callable[[], None] | None = None) -> None:
        """Raises LifespanFailed when the application's start-up fails."""
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.started = asyncio.Event()
        lifespan = Lifespan(self.app)
        await lifespan.startup()
        state = self.state
        state.lifespan_state = lifespan.state if lifespan.supported else None
        # what the application loaded stays for good: spare the collector from scanning it again and again
        gc.freeze()
        server = await loop.create_server(
            lambda: HttpProtocol(state, loop), sock=self.sock, ssl=self.ssl, backlog=self.config.backlog
        )
        ticker = _Ticker(loop, state)
        if on_ready is not None:
            on_ready()
        self.started.set()
        try:
            await self._stop.wait()
        finally:
            await self._shut_down(server)
            ticker.cancel()
            state.access.flush()
            await lifespan.shutdown()

    async def _shut_down(self, server: asyncio.Server) -> None:
        """Stop accepting, let requests in flight finish within the grace period, then cut the rest."""
        state = self.state
        server.close()
        state.stopping = True
        for conn in list(state.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.graceful_timeout
        while state.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if state.connections:
            log.warning(
                "%d connections still busy after the grace period: closing them", len(state.connections)
            )
        tasks = []
        for conn in list(state.connections):
            for cycle in (conn.cycle, *conn.pipeline):
                if cycle is not None and cycle.task is not None and not cycle.task.done():
                    cycle.task.cancel()
                    tasks.append(cycle.task)
            conn.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=2)


class _Ticker:
    def __init__(self, loop: asyncio.AbstractEventLoop, state: ServerState) -> None:
        self.loop = loop
        self.state = state
        self.handle = loop.call_later(1.0, self._tick)

    def _tick(self) -> None:
        self.state.tick()
        self.handle = self.loop.call_later(1.0, self._tick)

    def cancel(self) -> None:
        self.handle.cancel()


def raise_descriptor_limit(max_connections: int) -> None:
    """Lift the soft limit on open files to what max_connections may take, within the hard limit: a
    connection can hold its socket, a file it sends and a second descriptor of its socket meanwhile."""
    needed = 3 * max_connections + 256  # and the database, the logs, the application's own files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-file limit (%d) is below what %d connections may need (%d): lower max_connections",
            soft,
            max_connections,
            needed,
        )


async def _serve(
    config: ServerConfig, fd: int, ready_fd: int | None, lifeline_fd: int | None, access_fd: int | None
) -> int:
    loop = asyncio.get_running_loop()
    raise_descriptor_limit(config.max_connections)
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    app = load_app(config.app, factory=config.factory)
    worker = Worker(app, config, sock)
    if access_fd is not None:
        worker.state.access.send_to(access_fd)  # the supervisor writes the lines
    else:
        # configure_logging writes to standard error: the access log joins it there, in batches
        worker.state.access.buffer_to(sys.stderr.fileno())
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    if lifeline_fd is not None:
        # the supervisor holds the other end: end of file means it is gone, and so should we be
        def orphaned() -> None:
            loop.remove_reader(lifeline_fd)
            log.warning("the supervisor is gone: shutting down")
            worker.stop()

        loop.add_reader(lifeline_fd, orphaned)

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)

    try:
        await worker.run(on_ready=ready)
    except LifespanFailed as exc:
        log.error("the application failed to start: %s", exc)
        return STARTUP_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shipyard.server.worker")
    parser.add_argument("--fd", type=int, required=True, help="the inherited listening socket")
    parser.add_argument("--ready-fd", type=int, help="write a byte here once serving")
    parser.add_argument("--lifeline-fd", type=int, help="end of file here means the supervisor is gone")
    parser.add_argument("--access-fd", type=int, help="send the access log's raw records here, in batches")
    parser.add_argument("config", help="ServerConfig as JSON")
    args = parser.parse_args(argv)
    config = ServerConfig.from_json(args.config)
    configure_logging(config.log_level)
    runner = asyncio.Runner(loop_factory=lambda: new_event_loop(config.event_loop))
    with contextlib.suppress(KeyboardInterrupt), runner:
        return runner.run(_serve(config, args.fd, args.ready_fd, args.lifeline_fd, args.access_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
