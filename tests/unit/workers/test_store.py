"""The job store on SQLite and PostgreSQL: leases, expiry, retries with backoff, dead jobs, cancel,
retry by hand, unique keys and schedule periods."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from shipyard.db import migrate
from shipyard.db.engine import make_engine
from shipyard.domain.jobs import JobConflict, JobNotFound, JobRecord
from shipyard.workers.store import Backoff, JobStore
from tests.support.postgres import PostgresServer
from tests.unit.db.databases import icu_database


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shipyard.db'}"
    else:
        url = icu_database(request.getfixturevalue("postgres"))
    engine = make_engine(url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(engine: Engine, clock: Clock) -> JobStore:
    return JobStore(engine, max_attempts=3, backoff=Backoff(base=10, cap=25), clock=clock)


def test_a_leased_job_is_not_leased_again_until_its_lease_expires(store: JobStore, clock: Clock) -> None:
    job_id = store.enqueue("gc", {"repository": "a/b"})
    assert job_id is not None
    job = store.lease("w1", ["gc"], 30)
    assert job is not None and job.id == job_id
    assert (job.state, job.attempts, job.lease_owner) == ("running", 1, "w1")
    assert job.payload == {"repository": "a/b"}
    assert store.lease("w2", ["gc"], 30) is None
    clock.advance(29)
    assert store.heartbeat(job_id, "w1", 30)  # renewed: now until +59
    clock.advance(29)
    assert store.lease("w2", ["gc"], 30) is None
    clock.advance(31)  # the worker died: no heartbeat came
    again = store.lease("w2", ["gc"], 30)
    assert again is not None and (again.id, again.attempts, again.lease_owner) == (job_id, 2, "w2")
    assert again.last_error is not None and "w1" in again.last_error
    # the first worker lost its lease: it can neither renew, finish nor fail the job
    assert not store.heartbeat(job_id, "w1", 30)
    assert not store.complete(job_id, "w1")
    assert store.fail(job_id, "w1", "boom") is None
    assert store.complete(job_id, "w2")
    done = store.get(job_id)
    assert (done.state, done.lease_owner, done.finished_at) == ("done", None, clock.now)


def test_only_the_kinds_a_worker_handles_are_leased(store: JobStore) -> None:
    store.enqueue("webhook")
    assert store.lease("w1", ["gc"], 30) is None
    assert store.lease("w1", [], 30) is None
    job = store.lease("w1", ["gc", "webhook"], 30)
    assert job is not None and job.kind == "webhook"


def test_jobs_are_leased_in_the_order_they_are_due(store: JobStore, clock: Clock) -> None:
    later = store.enqueue("gc", run_at=clock.now + timedelta(seconds=5))
    first = store.enqueue("gc")
    second = store.enqueue("gc")
    assert [store.lease("w", ["gc"], 30).id for _ in range(2)] == [first, second]  # type: ignore[union-attr]
    assert store.lease("w", ["gc"], 30) is None
    clock.advance(5)
    assert store.lease("w", ["gc"], 30).id == later  # type: ignore[union-attr]


def test_failures_back_off_exponentially_then_the_job_is_dead(store: JobStore, clock: Clock) -> None:
    job_id = store.enqueue("gc")
    assert job_id is not None
    waits = []
    for attempt in (1, 2):
        job = store.lease("w", ["gc"], 30)
        assert job is not None and job.attempts == attempt
        failed = store.fail(job_id, "w", f"boom {attempt}")
        assert failed is not None and failed.state == "failed" and failed.last_error == f"boom {attempt}"
        waits.append((failed.run_at - clock.now).total_seconds())
        clock.advance(waits[-1] - 1)
        assert store.lease("w", ["gc"], 30) is None  # not before its backoff
        clock.advance(1)
    assert waits == [10, 20]
    job = store.lease("w", ["gc"], 30)
    assert job is not None and job.attempts == 3
    dead = store.fail(job_id, "w", "boom 3")
    assert dead is not None and (dead.state, dead.last_error) == ("dead", "boom 3")
    clock.advance(3600)
    assert store.lease("w", ["gc"], 30) is None
    assert Backoff(base=10, cap=25).after(5) == 25


def test_a_job_whose_worker_dies_on_every_attempt_ends_dead(store: JobStore, clock: Clock) -> None:
    job_id = store.enqueue("gc")
    for _ in range(3):
        assert store.lease("w", ["gc"], 30) is not None
        clock.advance(31)
    assert store.lease("w", ["gc"], 30) is None
    dead = store.get(job_id)  # type: ignore[arg-type]
    assert dead.state == "dead" and "expired" in (dead.last_error or "")


def test_cancel_and_retry_by_hand(store: JobStore, clock: Clock) -> None:
    waiting = store.enqueue("gc")
    running = store.enqueue("gc", run_at=clock.now - timedelta(seconds=1))
    assert waiting is not None and running is not None
    assert store.lease("w", ["gc"], 30).id == running  # type: ignore[union-attr]
    with pytest.raises(JobConflict, match="running"):
        store.cancel(running)
    with pytest.raises(JobConflict, match="queued"):
        store.retry(waiting)
    assert store.cancel(waiting).state == "cancelled"
    assert store.lease("w", ["gc"], 30) is None
    with pytest.raises(JobConflict):
        store.cancel(waiting)
    retried = store.retry(waiting)
    assert (retried.state, retried.attempts, retried.finished_at) == ("queued", 0, None)
    assert store.lease("w", ["gc"], 30).id == waiting  # type: ignore[union-attr]
    with pytest.raises(JobNotFound):
        store.retry(10**9)
    with pytest.raises(JobNotFound):
        store.get(10**9)


def test_a_dead_job_retried_by_hand_gets_all_its_attempts_again(store: JobStore) -> None:
    job_id = store.enqueue("gc", max_attempts=1)
    assert job_id is not None
    store.lease("w", ["gc"], 30)
    assert store.fail(job_id, "w", "boom").state == "dead"  # type: ignore[union-attr]
    retried = store.retry(job_id)
    assert (retried.state, retried.attempts, retried.last_error) == ("queued", 0, "boom")


def test_release_gives_the_job_back_untried(store: JobStore) -> None:
    job_id = store.enqueue("gc")
    assert job_id is not None
    store.lease("w1", ["gc"], 30)
    assert store.release(job_id, "w1")
    job = store.lease("w2", ["gc"], 30)
    assert job is not None and (job.id, job.attempts) == (job_id, 1)


def test_an_enqueue_with_a_key_that_exists_adds_nothing(store: JobStore) -> None:
    first = store.enqueue("gc", unique_key="gc:a/b")
    assert first is not None
    assert store.enqueue("gc", unique_key="gc:a/b") is None
    assert store.enqueue("gc", unique_key="gc:a/c") not in (None, first)
    assert len(store.list_jobs(kind="gc")) == 2


def test_listing_pages_newest_first_and_filters(store: JobStore) -> None:
    ids = [store.enqueue("gc" if i % 2 else "webhook") for i in range(5)]
    first = store.list_jobs(limit=2)
    assert [j.id for j in first] == ids[:2:-1][:2] == [ids[4], ids[3]]
    assert first.next == str(ids[3])
    rest = store.list_jobs(limit=10, last=int(first.next))
    assert [j.id for j in rest] == [ids[2], ids[1], ids[0]] and rest.next is None
    assert [j.id for j in store.list_jobs(kind="gc")] == [ids[3], ids[1]]
    store.lease("w", ["webhook"], 30)
    assert [j.id for j in store.list_jobs(state="running")] == [ids[0]]


def test_prune_deletes_only_jobs_finished_long_ago(store: JobStore, clock: Clock) -> None:
    old = store.enqueue("gc")
    store.lease("w", ["gc"], 30)
    store.complete(old, "w")  # type: ignore[arg-type]
    clock.advance(100)
    waiting = store.enqueue("gc", run_at=clock.now + timedelta(days=1))
    assert store.prune(timedelta(seconds=50)) == 1
    assert [j.id for j in store.list_jobs()] == [waiting]


def test_the_successful_runs_of_schedules_go_sooner(store: JobStore, clock: Clock) -> None:
    claimed = store.claim_period("tick", "tick", 1)
    assert claimed is not None and claimed[1] is not None
    store.lease("w", ["tick"], 30)
    store.complete(claimed[1], "w")
    other = store.enqueue("gc")
    store.lease("w", ["gc"], 30)
    store.complete(other, "w")  # type: ignore[arg-type]
    clock.advance(2)
    assert store.prune(timedelta(days=7), scheduled_done_older_than=timedelta(seconds=3)) == 0
    clock.advance(2)
    assert store.prune(timedelta(days=7), scheduled_done_older_than=timedelta(seconds=3)) == 1
    assert [j.id for j in store.list_jobs()] == [other]


def test_each_period_of_a_schedule_is_claimed_once(store: JobStore, clock: Clock) -> None:
    clock.now = datetime(2026, 12, 1, 12, 0, 0, 400_000, tzinfo=UTC)
    claimed = store.claim_period("gc", "gc", 1)
    assert claimed is not None
    following, job_id = claimed
    assert following == datetime(2026, 12, 1, 12, 0, 1, tzinfo=UTC) and job_id is not None
    assert store.claim_period("gc", "gc", 1) is None  # the same period, asked again
    clock.advance(0.7)  # 12:00:01.1: the next period, but the first job has not run
    assert store.claim_period("gc", "gc", 1) == (datetime(2026, 12, 1, 12, 0, 2, tzinfo=UTC), None)
    store.lease("w", ["gc"], 30)
    store.complete(job_id, "w")
    clock.advance(1)  # 12:00:02.1
    claimed = store.claim_period("gc", "gc", 1)
    assert claimed is not None and claimed[1] is not None
    assert store.get(claimed[1]).unique_key == "schedule:gc:" + str(
        int(datetime(2026, 12, 1, 12, 0, 2, tzinfo=UTC).timestamp() * 1000)
    )
    assert store.next_run("gc") == datetime(2026, 12, 1, 12, 0, 3, tzinfo=UTC)


def test_a_shortened_period_takes_effect_at_once(store: JobStore, clock: Clock) -> None:
    first = store.claim_period("gc", "gc", 3600)
    assert first is not None and first[1] is not None
    store.lease("w", ["gc"], 30)
    store.complete(first[1], "w")
    clock.advance(5)
    claimed = store.claim_period("gc", "gc", 1)  # the next hour is further off than a period of 1 s
    assert claimed is not None and claimed[1] is not None
    assert claimed[0] == datetime(2026, 12, 1, 12, 0, 6, tzinfo=UTC)
    assert store.claim_period("gc", "gc", 1) is None


def test_workers_racing_for_a_period_enqueue_one_job(engine: Engine) -> None:
    stores = [JobStore(engine) for _ in range(6)]
    results: list[object] = []
    barrier = threading.Barrier(len(stores))

    def claim(store: JobStore) -> None:
        barrier.wait()
        results.append(store.claim_period("purge", "purge", 3600))

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    assert len(stores[0].list_jobs(kind="purge")) == 1


def test_concurrent_workers_lease_each_job_once(engine: Engine) -> None:
    producer = JobStore(engine)
    ids = {producer.enqueue("gc") for _ in range(30)}
    leased: list[int] = []
    lock = threading.Lock()

    def work(owner: str) -> None:
        store = JobStore(engine)
        while (job := store.lease(owner, ["gc"], 30)) is not None:
            with lock:
                leased.append(job.id)
            assert store.complete(job.id, owner)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(leased) == sorted(ids)


def test_on_postgresql_a_locked_candidate_is_skipped_not_waited_for(postgres: PostgresServer) -> None:
    """(SQLite has no row locks: its write transaction serializes leasing instead.)"""
    from sqlalchemy import select

    from shipyard.workers.store import JOBS

    engine = make_engine(postgres.create_database())
    try:
        migrate.upgrade(engine)
        store = JobStore(engine)
        first, second = store.enqueue("gc"), store.enqueue("gc")
        leased: list[object] = []
        with engine.connect() as other, other.begin():
            # another worker's leasing transaction, between its SELECT ... FOR UPDATE and its UPDATE
            other.execute(select(JOBS.c.id).where(JOBS.c.id == first).with_for_update())
            thread = threading.Thread(target=lambda: leased.append(store.lease("w", ["gc"], 30)))
            thread.start()
            thread.join(5)
            waited = thread.is_alive()
        thread.join()
        assert not waited, "leasing waited for the other transaction's lock"
        [job] = leased
        assert isinstance(job, JobRecord) and job.id == second
    finally:
        engine.dispose()


def test_counts_by_state(store: JobStore) -> None:
    store.enqueue("gc")
    store.enqueue("gc")
    store.lease("w", ["gc"], 30)
    assert store.counts() == {"queued": 1, "running": 1, "done": 0, "failed": 0, "dead": 0, "cancelled": 0}
