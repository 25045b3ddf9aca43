"""A small pool of its own for password hashing (argon2), with a cap on waiting work.

Each hash takes tens of milliseconds and megabytes of memory. Run on the pool that serves uploads, a
stream of logins for unknown users took every thread and grew the heap for good; here at most
`workers` hashes run at once, at most `max_waiting` more wait, and past that a login is refused at
once (429) instead of queueing without bound."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from shipyard.auth.limiter import LoginThrottled

T = TypeVar("T")


class HashingBusy(LoginThrottled):
    def __init__(self) -> None:
        super().__init__("too many logins at once; try again shortly", 1)


class HashingPool:
    def __init__(self, workers: int = 2, max_waiting: int = 8) -> None:
        self.workers = workers
        self.max_waiting = max_waiting
        self._slots = threading.BoundedSemaphore(workers + max_waiting)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="shipyard-hash")

    def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` on the pool and wait for it; HashingBusy when the pool and its queue are full."""
        if not self._slots.acquire(blocking=False):
            raise HashingBusy()
        try:
            return self._executor.submit(fn, *args).result()
        finally:
            self._slots.release()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
