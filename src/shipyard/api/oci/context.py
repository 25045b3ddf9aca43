"""What every /v2 handler is given."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from shipyard.services.access import AccessPolicy
from shipyard.services.ingest import BlobIngest
from shipyard.services.registry import RegistryService

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Context:
    registry: RegistryService
    access: AccessPolicy
    executor: Executor
    # the token service's name and the registry's public URL, for WWW-Authenticate challenges;
    # None when authentication is off
    auth_service: str | None = None
    public_url: str | None = None
    ingest: BlobIngest = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ingest", BlobIngest(self.registry, self.executor))

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A hot-path read: inline when the metadata store answers in microseconds, else off the loop."""
        if self.registry.reads_are_instant:
            return fn(*args, **kwargs)
        return await self.run(fn, *args, **kwargs)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking work (SQL, file I/O, hashing) off the event loop."""
        loop = asyncio.get_running_loop()
        if kwargs:
            return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))
        return await loop.run_in_executor(self.executor, fn, *args)
