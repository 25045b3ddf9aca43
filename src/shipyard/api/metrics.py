"""Prometheus metrics: fed by the server's access records and by samplers, served on /metrics.

With several worker processes every process writes its values to files in a directory of the server's
(prometheus-client's multiprocess mode) and a scrape, answered by any one worker, sums the files."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hmac
import ipaddress
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from shipyard.api.errors import error_body
from shipyard.api.http import JSON, refused_unless_read, respond
from shipyard.api.types import Receive, Scope, Send

log = logging.getLogger(__name__)

PATH = "/metrics"
MetricsAccess = Literal["loopback", "any", "token"]

# a client picks the method; anything else shares one label so it cannot grow the series without bound
_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
_UNMATCHED = "unmatched"
_TOKEN_ROUTE = "/token"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# how stale a worker's figures may be in a scrape answered by another worker
_FLUSH_SECONDS = 1.0
_PID_FILE = re.compile(r"_(\d+)\.db$")


class Finished(Protocol):
    """What the metrics read of a finished request (the server's AccessRecord)."""

    @property
    def route(self) -> str | None: ...
    @property
    def method(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def bytes_received(self) -> int: ...
    @property
    def bytes_sent(self) -> int: ...
    @property
    def duration(self) -> float: ...
    @property
    def time(self) -> float: ...


Sampler = Callable[["Metrics"], None]
# requests, latency, bytes received, bytes sent, failed logins (None unless a refused login)
_Children = tuple[Counter, Histogram, Counter, Counter, Counter | None]


class Metrics:
    def __init__(self, *, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        # a registry of our own, not the global one: tests build many applications in one process
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "shipyard_http_requests", "finished requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "shipyard_http_request_duration_seconds",
            "time from the complete request head to the last byte sent",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.received = Counter(
            "shipyard_http_received_bytes", "request body bytes received", ["route"], registry=r
        )
        self.sent = Counter("shipyard_http_sent_bytes", "response body bytes sent", ["route"], registry=r)
        self.failed_logins = Counter(
            "shipyard_failed_logins", "token requests refused (401) or throttled (429)", registry=r
        )
        self.manifest_cache = Counter(
            "shipyard_manifest_cache_lookups", "manifest cache lookups", ["result"], registry=r
        )
        self.uploads_in_progress = Gauge(
            "shipyard_uploads_in_progress",
            "upload sessions open in the blob store",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.jobs = Gauge(
            "shipyard_jobs",
            "background jobs in the queue, by state (finished ones until they are pruned)",
            ["state"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.db_pool_checked_out = Gauge(
            "shipyard_db_pool_checked_out",
            "database connections in use",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.db_pool_size = Gauge(
            "shipyard_db_pool_size", "database connection pool size", multiprocess_mode="livesum", registry=r
        )
        self._children: dict[tuple[str | None, str, int], _Children] = {}
        # per request only plain numbers change; flush() hands them to prometheus-client, whose every
        # increment is a locked write to a shared file in multiprocess mode
        self._bounds = (*_LATENCY_BUCKETS, float("inf"))
        self._pending: dict[tuple[str | None, str, int], list[Any]] = {}
        self._flush_due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._totals: dict[str, int] = {}
        # per-worker samplers run periodically and before a scrape; scrape samplers only before a scrape
        self.samplers: list[Sampler] = []
        self.scrape_samplers: list[Sampler] = []

    def observe(self, record: Finished) -> None:
        """Called once per finished request on the event loop: a dict lookup and a few additions."""
        key = (record.route, record.method, record.status)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = [0, 0.0, 0, 0, [0] * len(self._bounds)]
            if self._loop is None:
                self._loop = _running_loop()
        duration = record.duration
        pending[0] += 1
        pending[1] += duration
        pending[2] += record.bytes_received
        pending[3] += record.bytes_sent
        pending[4][bisect.bisect_left(self._bounds, duration)] += 1
        if record.time >= self._flush_due:
            self.flush()
            self._flush_due = record.time + _FLUSH_SECONDS

    def flush(self) -> None:
        """Hand the pending figures to the metrics; only on the event loop's thread, like observe()."""
        pending, self._pending = self._pending, {}
        for key, (count, duration, received_bytes, sent_bytes, buckets) in pending.items():
            children = self._children.get(key)
            if children is None:
                children = self._bind(key)
            requests, latency, received, sent, failed = children
            requests.inc(count)
            # prometheus-client has no bulk observe: its histogram child keeps a sum and one
            # counter value per bucket
            latency._sum.inc(duration)
            for value, bucket in zip(buckets, latency._buckets, strict=True):
                if value:
                    bucket.inc(value)
            if received_bytes:
                received.inc(received_bytes)
            if sent_bytes:
                sent.inc(sent_bytes)
            if failed is not None:
                failed.inc(count)

    def flush_soon(self) -> None:
        """From another thread: have the event loop flush what its requests left pending."""
        loop = self._loop
        if self._pending and loop is not None and not loop.is_closed():
            # the loop may close between the look and the call (a worker shutting down)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.flush)

    def _bind(self, key: tuple[str | None, str, int]) -> _Children:
        route, method, status = key
        route_label = route or _UNMATCHED
        method_label = method if method in _METHODS else "other"
        children = (
            self.requests.labels(route_label, method_label, str(status)),
            self.latency.labels(route_label, method_label),
            self.received.labels(route_label),
            self.sent.labels(route_label),
            self.failed_logins if route == _TOKEN_ROUTE and status in (401, 429) else None,
        )
        self._children[key] = children
        return children

    def count_to(self, name: str, counter: Counter, total: int) -> None:
        """Advance `counter` to a running `total` kept elsewhere (plain ints on hot paths)."""
        step = total - self._totals.get(name, 0)
        if step > 0:
            counter.inc(step)
            self._totals[name] = total

    def sample(self) -> None:
        """Run the samplers (any thread), and have pending request figures flushed."""
        self.flush_soon()
        for sampler in self.samplers:
            try:
                sampler(self)
            except Exception:
                log.exception("metrics sampler failed")

    def render(self) -> bytes:
        self.flush()
        self.sample()
        for sampler in self.scrape_samplers:
            try:
                sampler(self)
            except Exception:
                log.exception("metrics sampler failed")
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        self._forget_dead_workers()
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def _forget_dead_workers(self) -> None:
        # a worker that crashed never said goodbye: its live gauges must not count any more
        assert self.multiprocess_dir is not None
        pids = set()
        for name in os.listdir(self.multiprocess_dir):
            if name.startswith("gauge_live") and (found := _PID_FILE.search(name)):
                pids.add(int(found[1]))
        for pid in pids:
            if not _alive(pid):
                multiprocess.mark_process_dead(pid, str(self.multiprocess_dir))  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        """A worker that exits cleanly takes its live gauges with it."""
        self.flush()
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), str(self.multiprocess_dir))  # type: ignore[no-untyped-call]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MetricsEndpoint:
    """GET /metrics for the clients the `metrics_access` and `metrics_token` settings let in."""

    def __init__(self, metrics: Metrics, *, access: MetricsAccess, token: str | None) -> None:
        if access == "token" and not token:
            raise ValueError("metrics_access 'token' needs metrics_token")
        self.metrics = metrics
        self.access = access
        self._token = token.encode() if token else None

    def _refusal(self, scope: Scope) -> tuple[int, bytes, dict[str, str]] | None:
        offered = _bearer(scope)
        if offered is not None:
            if self._token is not None and hmac.compare_digest(offered, self._token):
                return None
            return 403, error_body("DENIED", "this token may not read the metrics"), {}
        if self.access == "any" or (self.access == "loopback" and _from_loopback(scope)):
            return None
        if self._token is not None:
            challenge = {"www-authenticate": 'Bearer realm="metrics"'}
            return 401, error_body("UNAUTHORIZED", "the metrics need a bearer token"), challenge
        return 403, error_body("DENIED", "the metrics are served to loopback clients only"), {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if await refused_unless_read(method, send):
            return
        head = method == "HEAD"
        refusal = self._refusal(scope)
        if refusal is not None:
            status, body, headers = refusal
            await respond(send, status, {"content-type": JSON, **headers}, body, head=head)
            return
        await respond(send, 200, {"content-type": CONTENT_TYPE_LATEST}, self.metrics.render(), head=head)


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            return credentials.strip() if scheme.lower() == b"bearer" else b""
    return None


def _from_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False
