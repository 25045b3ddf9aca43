"""The ASGI lifespan protocol: start-up before a worker accepts connections, shutdown after the last."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shipyard.server.types import ASGIApp, Message

log = logging.getLogger("shipyard.server")


class LifespanFailed(Exception):
    pass


class Lifespan:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.supported = True
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._startup: asyncio.Future[str | None] | None = None
        self._shutdown: asyncio.Future[str | None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Raises LifespanFailed with the application's message when its start-up fails."""
        loop = asyncio.get_running_loop()
        self._startup = loop.create_future()
        self._shutdown = loop.create_future()
        self._task = loop.create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        waiting: list[asyncio.Future[Any]] = [self._startup, self._task]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not self._startup.done():
            return  # the application ended without answering: it does not speak lifespan
        failure = self._startup.result()
        if failure is not None:
            raise LifespanFailed(failure)

    async def shutdown(self) -> None:
        if self._task is None or self._task.done() or self._shutdown is None:
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        waiting: list[asyncio.Future[Any]] = [self._shutdown, self._task]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if self._shutdown.done() and (failure := self._shutdown.result()) is not None:
            log.error("lifespan shutdown failed: %s", failure)

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.3"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            if self._startup is not None and not self._startup.done():
                # an application that raises at once does not support lifespan (ASGI spec); say so quietly
                self.supported = False
                log.debug("the application does not support lifespan: %r", exc)
            else:
                log.exception("exception in the lifespan of the application")
        finally:
            for future in (self._startup, self._shutdown):
                if future is not None and not future.done():
                    future.set_result(None)

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._resolve(self._startup, None)
        elif kind == "lifespan.startup.failed":
            self._resolve(self._startup, message.get("message") or "lifespan startup failed")
        elif kind == "lifespan.shutdown.complete":
            self._resolve(self._shutdown, None)
        elif kind == "lifespan.shutdown.failed":
            self._resolve(self._shutdown, message.get("message") or "lifespan shutdown failed")
        else:
            raise RuntimeError(f"unexpected lifespan message {kind!r}")

    @staticmethod
    def _resolve(future: asyncio.Future[str | None] | None, value: str | None) -> None:
        if future is not None and not future.done():
            future.set_result(value)
