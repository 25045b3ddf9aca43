"""The job queue in the metadata database, shared by every worker of the cluster.

A worker leases the earliest due job of the kinds it handles: on PostgreSQL the row is locked with
`FOR UPDATE SKIP LOCKED`, so concurrent workers pass over each other's candidates; on SQLite the
write transaction (BEGIN IMMEDIATE) serializes leasing, and the same statement runs without the
clause. A lease expires unless its worker renews it; an expired lease makes the job due again, so a
job whose worker died runs again elsewhere. Every change of a leased job names the lease owner, so a
worker that lost its lease cannot overwrite what the next one did."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from shipyard.db.engine import read_transaction, write_transaction
from shipyard.db.models import Job, JobSchedule
from shipyard.domain.jobs import FINISHED, JOB_STATES, WAITING, JobConflict, JobNotFound, JobRecord, JobState
from shipyard.domain.management import Listing

JOBS = cast(Any, Job.__table__)
SCHEDULES = cast(Any, JobSchedule.__table__)
MAX_ERROR = 4000
# the unique key of a schedule's job: the prefix, the schedule's name, ":" and the period's start in ms
SCHEDULED_PREFIX = "schedule:"


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds before attempt n+1 after n failures: base * 2^(n-1), at most `cap`."""

    base: float = 5.0
    cap: float = 3600.0

    def after(self, failures: int) -> float:
        return float(min(self.cap, self.base * 2 ** max(0, failures - 1)))


class JobStore:
    def __init__(
        self,
        engine: Engine,
        *,
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff()
        self.clock = clock
        self._postgres = engine.dialect.name == "postgresql"

    # -- producers -----------------------------------------------------------------------------

    def enqueue(
        self,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        unique_key: str | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> int | None:
        """The new job's id; None when a job with `unique_key` exists already (nothing is added)."""
        with write_transaction(self.engine) as connection:
            return self.enqueue_in(
                connection, kind, payload, unique_key=unique_key, run_at=run_at, max_attempts=max_attempts
            )

    def enqueue_in(
        self,
        connection: Connection,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        unique_key: str | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> int | None:
        """Enqueue inside the caller's transaction: the job exists exactly when the caller's change does."""
        now = self.clock()
        values = {
            "kind": kind,
            "payload": json.dumps(payload or {}, separators=(",", ":")),
            "state": "queued",
            "attempts": 0,
            "max_attempts": max_attempts or self.max_attempts,
            "run_at": run_at or now,
            "unique_key": unique_key,
            "created_at": now,
            "updated_at": now,
        }
        dialect_insert = postgresql.insert if self._postgres else sqlite.insert
        statement = dialect_insert(JOBS).values(**values)
        if unique_key is not None:
            statement = statement.on_conflict_do_nothing(index_elements=["unique_key"])
        row = connection.execute(statement.returning(JOBS.c.id)).first()
        return None if row is None else int(row[0])

    # -- workers -------------------------------------------------------------------------------

    def lease(self, owner: str, kinds: Collection[str], seconds: float) -> JobRecord | None:
        """The earliest due job of `kinds`, now running under `owner` until renewed or `seconds` pass.
        A job whose lease expired counts as an attempt that failed; past its last attempt it is dead."""
        if not kinds:
            return None
        while True:
            # an idle worker asks often: it looks first in a read transaction, which on SQLite does not
            # take the write lock that the registry's own writes wait for
            with read_transaction(self.engine) as connection:
                if connection.execute(select(JOBS.c.id).where(self._due(kinds)).limit(1)).first() is None:
                    return None
            with write_transaction(self.engine) as connection:
                now = self.clock()
                candidate = connection.execute(
                    select(JOBS)
                    .where(self._due(kinds, now))
                    .order_by(JOBS.c.run_at, JOBS.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if candidate is None:
                    return None
                if candidate.state == "running" and candidate.attempts >= candidate.max_attempts:
                    connection.execute(
                        update(JOBS)
                        .where(JOBS.c.id == candidate.id)
                        .values(
                            state="dead",
                            lease_owner=None,
                            lease_expires_at=None,
                            last_error=f"the lease of {candidate.lease_owner} expired: its worker died "
                            f"or stalled on the last of {candidate.max_attempts} attempts",
                            updated_at=now,
                            finished_at=now,
                        )
                    )
                    continue
                values: dict[str, Any] = {
                    "state": "running",
                    "attempts": candidate.attempts + 1,
                    "lease_owner": owner,
                    "lease_expires_at": now + timedelta(seconds=seconds),
                    "updated_at": now,
                }
                if candidate.state == "running":
                    values["last_error"] = f"the lease of {candidate.lease_owner} expired"
                row = connection.execute(
                    update(JOBS).where(JOBS.c.id == candidate.id).values(**values).returning(*JOBS.c)
                ).one()
                return _record(row)

    def _due(self, kinds: Collection[str], now: datetime | None = None) -> Any:
        now = now or self.clock()
        return and_(
            JOBS.c.kind.in_(list(kinds)),
            or_(
                and_(JOBS.c.state.in_(WAITING), JOBS.c.run_at <= now),
                and_(JOBS.c.state == "running", JOBS.c.lease_expires_at <= now),
            ),
        )

    def heartbeat(self, job_id: int, owner: str, seconds: float) -> bool:
        """Renew the lease; False when it is no longer `owner`'s (it expired and another worker took it)."""
        now = self.clock()
        with write_transaction(self.engine) as connection:
            result = connection.execute(
                update(JOBS)
                .where(self._held(job_id, owner))
                .values(lease_expires_at=now + timedelta(seconds=seconds), updated_at=now)
            )
            return result.rowcount == 1

    def complete(self, job_id: int, owner: str) -> bool:
        now = self.clock()
        with write_transaction(self.engine) as connection:
            result = connection.execute(
                update(JOBS)
                .where(self._held(job_id, owner))
                .values(
                    state="done", lease_owner=None, lease_expires_at=None, updated_at=now, finished_at=now
                )
            )
            return result.rowcount == 1

    def fail(self, job_id: int, owner: str, error: str) -> JobRecord | None:
        """Record a failed attempt: due again after the backoff, or dead after the last attempt. None
        when the lease was no longer `owner`'s."""
        now = self.clock()
        with write_transaction(self.engine) as connection:
            job = connection.execute(select(JOBS).where(self._held(job_id, owner)).with_for_update()).first()
            if job is None:
                return None
            values: dict[str, Any] = {
                "lease_owner": None,
                "lease_expires_at": None,
                "last_error": error[:MAX_ERROR],
                "updated_at": now,
            }
            if job.attempts >= job.max_attempts:
                values.update(state="dead", finished_at=now)
            else:
                values.update(
                    state="failed", run_at=now + timedelta(seconds=self.backoff.after(job.attempts))
                )
            row = connection.execute(
                update(JOBS).where(JOBS.c.id == job_id).values(**values).returning(*JOBS.c)
            ).one()
            return _record(row)

    def release(self, job_id: int, owner: str) -> bool:
        """Give a leased job back untried (its worker is stopping): due at once, the attempt not counted."""
        now = self.clock()
        with write_transaction(self.engine) as connection:
            result = connection.execute(
                update(JOBS)
                .where(self._held(job_id, owner))
                .values(
                    state="queued",
                    attempts=JOBS.c.attempts - 1,
                    lease_owner=None,
                    lease_expires_at=None,
                    run_at=now,
                    updated_at=now,
                )
            )
            return result.rowcount == 1

    def _held(self, job_id: int, owner: str) -> Any:
        return and_(JOBS.c.id == job_id, JOBS.c.lease_owner == owner, JOBS.c.state == "running")

    # -- schedules -----------------------------------------------------------------------------

    def claim_period(self, name: str, kind: str, period: float) -> tuple[datetime, int | None] | None:
        """If the schedule's period is due, move it on to the next period boundary and enqueue its
        job, in one transaction: however many workers ask, one claims each period. Periods are
        aligned to multiples of `period` since the epoch (in milliseconds), so every worker agrees on
        them. Answers (the next due time, the job id or None) when this caller claimed a period (None
        for the id when the previous period's job has not finished: one runs at a time), else None."""
        with write_transaction(self.engine) as connection:
            now = self.clock()
            current = connection.execute(
                select(SCHEDULES.c.next_run_at).where(SCHEDULES.c.name == name).with_for_update()
            ).scalar()
            following = _next_boundary(now, period)
            if current is None:
                dialect_insert = postgresql.insert if self._postgres else sqlite.insert
                inserted = connection.execute(
                    dialect_insert(SCHEDULES)
                    .values(name=name, next_run_at=following)
                    .on_conflict_do_nothing(index_elements=["name"])
                    .returning(SCHEDULES.c.name)
                ).first()
                if inserted is None:
                    return None
                due = _boundary_before(now, period)
            else:
                due = cast(datetime, _aware(current))
                if due > now:
                    if (due - now).total_seconds() <= period:
                        return None
                    # further off than a whole period: the period was shortened since; this one is due
                    due = _boundary_before(now, period)
                # compare-and-set: a second worker that read the same time finds it moved
                moved = connection.execute(
                    update(SCHEDULES)
                    .where(SCHEDULES.c.name == name, SCHEDULES.c.next_run_at == current)
                    .values(next_run_at=following)
                )
                if moved.rowcount != 1:
                    return None
            prefix = f"{SCHEDULED_PREFIX}{name}:"
            unfinished = connection.execute(
                select(JOBS.c.id)
                .where(
                    JOBS.c.kind == kind,
                    JOBS.c.state.in_(("queued", "running", "failed")),
                    JOBS.c.unique_key.startswith(prefix, autoescape=True),
                )
                .limit(1)
            ).first()
            if unfinished is not None:
                return following, None
            stamp = round(due.timestamp() * 1000)
            # the next period is the retry of a scheduled job: it runs once per period
            job = self.enqueue_in(connection, kind, {}, unique_key=f"{prefix}{stamp}", max_attempts=1)
            return following, job

    def next_run(self, name: str) -> datetime | None:
        with read_transaction(self.engine) as connection:
            value = connection.execute(
                select(SCHEDULES.c.next_run_at).where(SCHEDULES.c.name == name)
            ).scalar()
            return _aware(value)

    # -- administration ------------------------------------------------------------------------

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        kind: str | None = None,
        limit: int = 100,
        last: int | None = None,
    ) -> Listing[JobRecord]:
        """Newest first, `limit` at a time after the job id `last`."""
        query = select(JOBS).order_by(JOBS.c.id.desc()).limit(limit + 1)
        if state is not None:
            query = query.where(JOBS.c.state == state)
        if kind is not None:
            query = query.where(JOBS.c.kind == kind)
        if last is not None:
            query = query.where(JOBS.c.id < last)
        with read_transaction(self.engine) as connection:
            rows = connection.execute(query).all()
        records = [_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Listing(records, str(records[-1].id) if more and records else None)

    def get(self, job_id: int) -> JobRecord:
        with read_transaction(self.engine) as connection:
            row = connection.execute(select(JOBS).where(JOBS.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(f"no job {job_id}")
        return _record(row)

    def retry(self, job_id: int) -> JobRecord:
        """Run a dead, failed or cancelled job again now, with all its attempts."""
        return self._change(
            job_id,
            ("dead", "failed", "cancelled"),
            "only a dead, failed or cancelled job can be retried",
            state="queued",
            attempts=0,
            finished_at=None,
        )

    def cancel(self, job_id: int) -> JobRecord:
        """A job that waits (queued, or failed and due again) never runs; a running one cannot be stopped."""
        return self._change(
            job_id,
            WAITING,
            "only a queued or failed job can be cancelled",
            state="cancelled",
            finished_at=True,
        )

    def _change(self, job_id: int, allowed: Collection[str], refusal: str, **values: Any) -> JobRecord:
        now = self.clock()
        if values.get("finished_at") is True:
            values["finished_at"] = now
        with write_transaction(self.engine) as connection:
            row = connection.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.state.in_(list(allowed)))
                .values(run_at=now, updated_at=now, **values)
                .returning(*JOBS.c)
            ).first()
            if row is not None:
                return _record(row)
            state = connection.execute(select(JOBS.c.state).where(JOBS.c.id == job_id)).scalar()
        if state is None:
            raise JobNotFound(f"no job {job_id}")
        raise JobConflict(f"job {job_id} is {state}: {refusal}")

    def prune(self, older_than: timedelta, *, scheduled_done_older_than: timedelta | None = None) -> int:
        """Delete finished jobs (done, dead, cancelled) that finished longer ago than `older_than`; the
        successful runs of schedules already after `scheduled_done_older_than` (a schedule of one
        second leaves 86,400 of them a day, and their failures stay as long as the others)."""
        now = self.clock()
        with write_transaction(self.engine) as connection:
            result = connection.execute(
                delete(JOBS).where(JOBS.c.state.in_(FINISHED), JOBS.c.finished_at < now - older_than)
            )
            pruned = int(result.rowcount)
            if scheduled_done_older_than is not None:
                result = connection.execute(
                    delete(JOBS).where(
                        JOBS.c.state == "done",
                        JOBS.c.unique_key.startswith(SCHEDULED_PREFIX, autoescape=True),
                        JOBS.c.finished_at < now - scheduled_done_older_than,
                    )
                )
                pruned += int(result.rowcount)
            return pruned

    def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state, 0 for those with none)."""
        with read_transaction(self.engine) as connection:
            rows = connection.execute(select(JOBS.c.state, func.count()).group_by(JOBS.c.state)).all()
        found = {row[0]: int(row[1]) for row in rows}
        return {state: found.get(state, 0) for state in JOB_STATES}


def _next_boundary(now: datetime, period: float) -> datetime:
    step = max(1, round(period * 1000))
    ms = math.floor(now.timestamp() * 1000)
    return datetime.fromtimestamp((ms // step + 1) * step / 1000, UTC)


def _boundary_before(now: datetime, period: float) -> datetime:
    step = max(1, round(period * 1000))
    ms = math.floor(now.timestamp() * 1000)
    return datetime.fromtimestamp((ms // step) * step / 1000, UTC)


def _record(row: Any) -> JobRecord:
    payload = json.loads(row.payload) if row.payload else {}
    return JobRecord(
        id=row.id,
        kind=row.kind,
        payload=payload if isinstance(payload, dict) else {"value": payload},
        state=row.state,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        run_at=cast(datetime, _aware(row.run_at)),
        lease_owner=row.lease_owner,
        lease_expires_at=_aware(row.lease_expires_at),
        last_error=row.last_error,
        unique_key=row.unique_key,
        created_at=cast(datetime, _aware(row.created_at)),
        updated_at=cast(datetime, _aware(row.updated_at)),
        finished_at=_aware(row.finished_at),
    )
