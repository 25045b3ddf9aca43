"""Failed-login limits: per (login, source) and per source, in a sliding window, in bounded memory."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

from shipyard.domain.errors import TooManyRequests


class LoginThrottled(TooManyRequests):
    """A login refused before any password is looked at; `retry_after` is whole seconds for the
    Retry-After header."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = max(1, math.ceil(retry_after))


class _Window:
    """The last `limit` failures of each key, keys ordered by their latest failure. Past `max_keys`
    the key that failed least recently goes first: an expired one if any, else the stalest
    offender, never everyone at once."""

    def __init__(self, limit: int, window: float, max_keys: int) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._failures: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def blocked_for(self, key: Hashable, now: float) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        failures = self._failures.get(key)
        if failures is None:
            return 0.0
        if now - failures[-1] >= self.window:
            del self._failures[key]
            return 0.0
        if len(failures) < self.limit:
            return 0.0
        # the oldest of the last `limit` failures: once it slides out, one more try is allowed
        return max(0.0, failures[0] + self.window - now)

    def fail(self, key: Hashable, now: float) -> None:
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self.limit)
        else:
            self._failures.move_to_end(key)
        failures.append(now)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)


class LoginLimiter:
    """Past `max_failures` failed logins for one login from one source, or `max_source_failures`
    from one source for any logins, within `window` seconds: LoginThrottled until the window slides.
    A success clears its (login, source) count, not the source's: a sprayer that also knows one
    password must not reset its budget with it."""

    def __init__(
        self,
        max_failures: int,
        window: float,
        *,
        max_source_failures: int = 100,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.max_source_failures = max_source_failures
        self.window = window
        self._pairs = _Window(max_failures, window, max_entries)
        self._sources = _Window(max_source_failures, window, max_entries)
        self._clock = clock
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pairs) + len(self._sources)

    def check(self, login: str, source: str) -> None:
        now = self._clock()
        with self._lock:
            pair = self._pairs.blocked_for((login, source), now)
            from_source = self._sources.blocked_for(source, now)
        wait = max(pair, from_source)
        if wait > 0:
            raise LoginThrottled("too many failed logins; try again later", wait)

    def fail(self, login: str, source: str) -> None:
        now = self._clock()
        with self._lock:
            self._pairs.fail((login, source), now)
            self._sources.fail(source, now)

    def succeed(self, login: str, source: str) -> None:
        with self._lock:
            self._pairs.forget((login, source))
