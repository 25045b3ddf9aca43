"""The worker loop in-process, on a real database: handlers that fail, schedules, one log line per
job, and the lease renewed while a handler runs longer than it."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shipyard.db import migrate
from shipyard.db.engine import make_engine
from shipyard.workers.store import Backoff, JobStore
from shipyard.workers.worker import Handlers, Schedule, Worker


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'shipyard.db'}")
    migrate.upgrade(engine)
    return JobStore(engine, max_attempts=2, backoff=Backoff(base=0.2, cap=1))


def test_a_failing_handler_is_retried_then_dead_with_its_error(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[dict[str, Any]] = []

    def broken(payload: dict[str, Any]) -> None:
        calls.append(payload)
        raise RuntimeError("the disk is full")

    handlers = Handlers()
    handlers.add("broken", broken)
    worker = Worker(store, handlers, [], lease_seconds=5, poll_seconds=0.05)
    job_id = store.enqueue("broken", {"n": 1})
    assert job_id is not None
    with caplog.at_level(logging.INFO, logger="shipyard.worker"):
        assert worker.run_one()
        failed = store.get(job_id)
        assert (failed.state, failed.last_error) == ("failed", "RuntimeError: the disk is full")
        assert not worker.run_one()  # not before its backoff
        time.sleep(0.25)
        assert worker.run_one()
    dead = store.get(job_id)
    assert (dead.state, dead.attempts) == ("dead", 2)
    assert calls == [{"n": 1}, {"n": 1}]
    lines = [
        r.getMessage() for r in caplog.records if r.name == "shipyard.worker" and "job" in r.getMessage()
    ]
    assert len(lines) == 2
    assert "failed (attempt 1 of 2), runs again at" in lines[0]
    assert "failed (attempt 2 of 2), dead: RuntimeError: the disk is full" in lines[1]


def test_the_heartbeat_keeps_a_long_job_leased(store: JobStore) -> None:
    release = threading.Event()
    handlers = Handlers()
    handlers.add("long", lambda payload: release.wait(10))
    worker = Worker(store, handlers, [], lease_seconds=1, poll_seconds=0.05)
    job_id = store.enqueue("long")
    assert job_id is not None
    runner = threading.Thread(target=worker.run_one)
    runner.start()
    try:
        time.sleep(2.5)  # more than two lease lengths
        assert store.lease("other", ["long"], 1) is None
        assert store.get(job_id).lease_owner == worker.owner
    finally:
        release.set()
        runner.join()
    assert store.get(job_id).state == "done"


def test_run_claims_schedules_and_stops_when_asked(store: JobStore) -> None:
    ran = threading.Event()
    handlers = Handlers()
    handlers.add("tick", lambda payload: ran.set())
    worker = Worker(store, handlers, [Schedule("tick", 1, "tick")], poll_seconds=0.05)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert ran.wait(10)
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    [job] = store.list_jobs(kind="tick")
    assert job.state == "done" and (job.unique_key or "").startswith("schedule:tick:")


def test_a_schedule_needs_a_handler_and_a_kind_one_handler(store: JobStore) -> None:
    with pytest.raises(ValueError, match="without a handler: gc"):
        Worker(store, Handlers(), [Schedule("gc", 60, "gc")])
    handlers = Handlers()
    handlers.add("gc", lambda payload: None)
    with pytest.raises(ValueError, match="exists already"):
        handlers.add("gc", lambda payload: None)
