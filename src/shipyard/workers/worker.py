"""The worker: claims the schedules' due periods, leases jobs and runs their handlers, one at a time.

Any number of workers, in any number of processes and machines, share one queue (see store.py).
While a handler runs, a heartbeat thread renews its lease; if the worker dies, the lease expires and
the job runs again elsewhere, so handlers must be idempotent."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shipyard.domain.jobs import JobRecord
from shipyard.workers.store import JobStore, utcnow

log = logging.getLogger("shipyard.worker")

Handler = Callable[[dict[str, Any]], object]


@dataclass(frozen=True, slots=True)
class Schedule:
    """Run a job of `kind` once per `every` seconds across the whole cluster."""

    name: str
    every: float
    kind: str


@dataclass
class Handlers:
    """kind -> the callable that runs a job of that kind with its payload."""

    by_kind: dict[str, Handler] = field(default_factory=dict)

    def add(self, kind: str, handler: Handler) -> None:
        if kind in self.by_kind:
            raise ValueError(f"a handler for job kind {kind!r} exists already")
        self.by_kind[kind] = handler


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        store: JobStore,
        handlers: Handlers,
        schedules: list[Schedule],
        *,
        lease_seconds: float = 30.0,
        poll_seconds: float = 1.0,
        owner: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        unknown = sorted({s.kind for s in schedules} - set(handlers.by_kind))
        if unknown:
            raise ValueError(f"schedules of job kinds without a handler: {', '.join(unknown)}")
        self.store = store
        self.handlers = handlers
        self.schedules = schedules
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.owner = owner or worker_id()
        self.clock = clock
        self.stopping = threading.Event()
        # when each schedule is next due, as last seen: the database is asked only from then on
        self._due: dict[str, float] = {}

    def stop(self) -> None:
        """Lease nothing more; the job that runs now finishes first."""
        self.stopping.set()

    def run(self) -> None:
        log.info("worker %s runs job kinds %s", self.owner, ", ".join(sorted(self.handlers.by_kind)))
        while not self.stopping.is_set():
            try:
                self.claim_schedules()
                ran = self.run_one()
            except Exception:
                # the database went away for a moment, say: try again after a pause, not in a hot loop
                log.exception("worker %s: the job queue failed", self.owner)
                ran = False
            if not ran:
                self.stopping.wait(self._idle_wait())

    def _idle_wait(self) -> float:
        soonest = min(self._due.values(), default=time.time() + self.poll_seconds)
        return max(0.05, min(self.poll_seconds, soonest - time.time()))

    def claim_schedules(self) -> None:
        now = time.time()
        for schedule in self.schedules:
            if self._due.get(schedule.name, 0.0) > now:
                continue
            claimed = self.store.claim_period(schedule.name, schedule.kind, schedule.every)
            if claimed is not None:
                self._due[schedule.name] = claimed[0].timestamp()
                continue
            following = self.store.next_run(schedule.name)
            # never later than one period from now: a worker with a shorter period than the one that
            # set the time claims the next period itself (see claim_period)
            soonest = now + schedule.every
            self._due[schedule.name] = min(following.timestamp(), soonest) if following else soonest

    def run_one(self) -> bool:
        """Lease one due job and run it; False when none was due."""
        job = self.store.lease(self.owner, list(self.handlers.by_kind), self.lease_seconds)
        if job is None:
            return False
        self.execute(job)
        return True

    def execute(self, job: JobRecord) -> None:
        handler = self.handlers.by_kind[job.kind]
        beat = _Heartbeat(self, job)
        beat.start()
        started = time.monotonic()
        error: str | None = None
        try:
            handler(job.payload)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.debug("job %d failed", job.id, exc_info=True)
        finally:
            beat.stop()
        took = time.monotonic() - started
        if error is None:
            if self.store.complete(job.id, self.owner):
                log.info("job %d %s done in %.3f s (attempt %d)", job.id, job.kind, took, job.attempts)
            else:
                log.warning("job %d %s finished after its lease was lost: it may run again", job.id, job.kind)
            return
        failed = self.store.fail(job.id, self.owner, error)
        if failed is None:
            log.warning("job %d %s failed after its lease was lost: %s", job.id, job.kind, error)
        elif failed.state == "dead":
            log.error(
                "job %d %s failed (attempt %d of %d), dead: %s",
                job.id,
                job.kind,
                job.attempts,
                job.max_attempts,
                error,
            )
        else:
            log.warning(
                "job %d %s failed (attempt %d of %d), runs again at %s: %s",
                job.id,
                job.kind,
                job.attempts,
                job.max_attempts,
                failed.run_at.isoformat(timespec="seconds"),
                error,
            )


class _Heartbeat:
    """Renews a running job's lease every third of its length."""

    def __init__(self, worker: Worker, job: JobRecord) -> None:
        self.worker = worker
        self.job = job
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"shipyard-lease-{job.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        interval = self.worker.lease_seconds / 3
        while not self._done.wait(interval):
            try:
                held = self.worker.store.heartbeat(self.job.id, self.worker.owner, self.worker.lease_seconds)
            except Exception:
                log.exception("job %d: renewing the lease failed", self.job.id)
                continue
            if not held:
                log.warning("job %d %s: the lease was lost to another worker", self.job.id, self.job.kind)
                return
