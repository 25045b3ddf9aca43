"""An in-process cache of manifest lookups, and what keeps it correct across processes.

Entries are keyed by (repository, reference), the reference being a tag or a digest exactly as a
client sends it (a tag never holds ':' and a digest always does, so the two cannot collide). A digest's
content never changes, but a DELETE of the manifest or of its repository removes it, and a tag moves;
so every change to a repository's manifests or tags drops all of that repository's entries:

- in this process, synchronously, right after the change commits (a client sees its own writes);
- in other processes sharing the database: on SQLite, the metadata store checks `PRAGMA data_version`
  before a hit, at most once every 10 ms (any commit by another connection clears the cache); on
  PostgreSQL, each writer sends a NOTIFY in the transaction of the change and `PostgresChangeListener`
  drops the repository named in it. While the listener is not connected the cache is off: a missed
  notification cannot go stale.
- Neither is instant: the data version is asked only once every 10 ms, and a NOTIFY reaches the other
  processes a moment after the commit. So the worker processes of one server, on either database, share
  a `SharedChangeCounter` (a memory-mapped file in the data directory) that a writer bumps before it
  answers its client, and every hit checks it first: a client whose write was answered never reads the
  old state from another worker. Other processes on the database (another server, a SQL shell) are seen
  within 10 ms on SQLite, and by the NOTIFY alone (milliseconds) on PostgreSQL.

A lookup that misses reads the database and offers the row with the generation it saw before reading;
an invalidation in between bumps the generation, so a row read before a change is never stored after it.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shipyard.domain.records import StoredManifest

log = logging.getLogger(__name__)

# the NOTIFY channel; the payload is "<origin> <repository>" (names hold no spaces), the origin telling
# each process which notifications are its own: those it has acted on already, synchronously
CHANNEL = "shipyard_manifests"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# what an entry costs besides its content (keys, record, dict slots), for the byte budget
_ENTRY_OVERHEAD = 256


class ManifestCache:
    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES, enabled: bool = True) -> None:
        self._max_bytes = max_bytes
        self._repositories: dict[str, dict[str, StoredManifest]] = {}
        # every entry in insertion order with its cost: the oldest go first when the budget is full
        self._order: dict[tuple[str, str], int] = {}
        self._bytes = 0
        self._generation = 0
        self._enabled = enabled
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def generation(self) -> int:
        """Take this before reading the database; hand it to `put` with what was read."""
        return self._generation

    def get(self, repository: str, reference: str) -> StoredManifest | None:
        # lock-free: dict reads are atomic, and invalidation swaps or pops whole dicts
        references = self._repositories.get(repository)
        return None if references is None else references.get(reference)

    def put(self, repository: str, reference: str, manifest: StoredManifest, generation: int) -> None:
        cost = len(manifest.content) + _ENTRY_OVERHEAD
        if cost > self._max_bytes:
            return
        with self._lock:
            if not self._enabled or generation != self._generation:
                return  # the database changed (or the cache went off) after the row was read
            key = (repository, reference)
            old = self._order.pop(key, None)
            if old is not None:
                self._bytes -= old
            while self._order and self._bytes + cost > self._max_bytes:
                (evicted_repository, evicted_reference), evicted_cost = next(iter(self._order.items()))
                del self._order[(evicted_repository, evicted_reference)]
                self._bytes -= evicted_cost
                references = self._repositories.get(evicted_repository)
                if references is not None:
                    references.pop(evicted_reference, None)
                    if not references:
                        del self._repositories[evicted_repository]
            self._repositories.setdefault(repository, {})[reference] = manifest
            self._order[key] = cost
            self._bytes += cost

    def forget_repository(self, repository: str) -> None:
        """Drop every entry of `repository` (a tag, manifest or the repository itself changed)."""
        with self._lock:
            self._generation += 1
            references = self._repositories.pop(repository, None)
            if references:
                for reference in references:
                    self._bytes -= self._order.pop((repository, reference), 0)

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def disable(self) -> None:
        """Clear and stop caching (the invalidation feed is down)."""
        with self._lock:
            self._enabled = False
            self._clear()

    def enable(self) -> None:
        """Start caching afresh (the invalidation feed is up; what it missed meanwhile is forgotten)."""
        with self._lock:
            self._clear()
            self._enabled = True

    def _clear(self) -> None:
        self._generation += 1
        self._repositories = {}
        self._order = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._order)


class SharedChangeCounter:
    """A counter in a memory-mapped file that the processes of one host share: `bump` after a change
    commits, `value` before trusting the cache. Reading it costs no system call."""

    SIZE = 8

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if os.fstat(self._fd).st_size < self.SIZE:
                    os.ftruncate(self._fd, self.SIZE)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(self._fd, self.SIZE)
        except BaseException:
            os.close(self._fd)
            raise

    def value(self) -> int:
        return int.from_bytes(self._map[: self.SIZE], "little")

    def bump(self) -> tuple[int, int]:
        """Count one change; returns the values before and after."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # one writer at a time across processes
        try:
            before = self.value()
            after = (before + 1) % (1 << 63)
            self._map[: self.SIZE] = after.to_bytes(self.SIZE, "little")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return before, after

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


Connect = Callable[[], Any]


class PostgresChangeListener:
    """A daemon thread that LISTENs for manifest changes made by other processes and drops them from
    the cache; while its connection is down the cache is off, and reconnecting turns it back on."""

    def __init__(
        self,
        connect: Connect,
        cache: ManifestCache,
        origin: str,
        *,
        retry_seconds: float = 1.0,
        ping_seconds: float = 10.0,
    ) -> None:
        self._connect = connect
        self._origin = origin
        self._cache = cache
        self._retry = retry_seconds
        self._ping = ping_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._backend_pid: int | None = None
        self._heard = 0
        self._failures = 0  # connection attempts failed or lost in a row

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def heard(self) -> int:
        """How many changes made by other processes this listener has acted on."""
        return self._heard

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend serving the LISTEN, while connected."""
        return self._backend_pid if self.connected else None

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="shipyard-manifest-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)
        self._cache.disable()

    def _run(self) -> None:
        self._failures = 0
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._failures += 1
                # the first loss is worth a warning; a database that stays down, one line a minute or so
                if self._failures == 1 or self._failures % 60 == 0:
                    log.warning("manifest cache is off: change listener disconnected (%s); retrying", exc)
                self._stop.wait(self._retry)
        self._lost()

    def _listen(self) -> None:
        try:
            connection = self._connect()
        except Exception:
            self._lost()
            raise
        try:
            connection.execute(f"LISTEN {CHANNEL}")
            self._backend_pid = connection.info.backend_pid
            self._cache.enable()
            self._connected.set()
            if self._failures:
                log.warning("manifest change listener reconnected; manifest cache is on again")
                self._failures = 0
            quiet_since = time.monotonic()
            while not self._stop.is_set():
                # short waits, so that stop() is heard within half a second
                for notify in connection.notifies(timeout=0.5):
                    origin, _, repository = notify.payload.partition(" ")
                    if origin != self._origin:
                        self._cache.forget_repository(repository)
                        self._heard += 1
                    quiet_since = time.monotonic()
                if time.monotonic() - quiet_since >= self._ping:
                    connection.execute("SELECT 1")  # a quiet connection may be a dead one
                    quiet_since = time.monotonic()
        finally:
            self._lost()
            try:
                connection.close()
            except Exception:
                log.debug("could not close the listener connection", exc_info=True)

    def _lost(self) -> None:
        self._connected.clear()
        self._cache.disable()
