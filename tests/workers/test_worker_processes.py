"""Real `shipyard worker` processes, and `shipyard serve` with its embedded worker, sharing one queue
on SQLite and on PostgreSQL: a worker killed with SIGKILL while it holds a lease, and schedules that
several workers race for."""

from __future__ import annotations

import itertools
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from shipyard.db import migrate
from shipyard.db.engine import make_engine
from shipyard.domain.jobs import JobRecord
from shipyard.workers.store import JobStore
from tests.conftest import DATABASES, database_url
from tests.support.server import start_server
from tests.support.workers import WorkerProcess, start_worker

pytestmark = pytest.mark.slow

LEASE = 2.0
FAST = {"SHIPYARD_JOB_LEASE_SECONDS": str(LEASE), "SHIPYARD_JOB_POLL_SECONDS": "0.2"}
SLOW_HANDLER = ["--extra-handler", "test-slow=tests.support.job_handlers:slow"]
FINISHED_LINE = re.compile(r"job (\d+) (\S+) done in")


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    url = database_url(request.param, request, tmp_path / "data")
    engine = make_engine(url)
    migrate.upgrade(engine)
    yield url, engine
    engine.dispose()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def wait_for(
    what: str, check: Callable[[], JobRecord | bool | None], timeout: float = 30
) -> JobRecord | bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


def test_a_job_whose_worker_is_killed_runs_again_elsewhere_and_completes_once(
    database: tuple[str, Engine], tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    url, engine = database
    store = JobStore(engine)
    trace = tmp_path / "trace"
    first = start_worker(
        tmp_path / "data", url, tmp_path / "first.log", extra_env=FAST, extra_args=SLOW_HANDLER
    )
    workers.append(first)
    job_id = store.enqueue("test-slow", {"seconds": 4, "trace": str(trace), "name": "slow"})
    assert job_id is not None

    def running() -> JobRecord | None:
        job = store.get(job_id)
        return job if job.state == "running" else None

    leased = wait_for("the first worker leases the job", running)
    assert isinstance(leased, JobRecord) and f":{first.pid}:" in (leased.lease_owner or "")
    second = start_worker(
        tmp_path / "data", url, tmp_path / "second.log", extra_env=FAST, extra_args=SLOW_HANDLER
    )
    workers.append(second)
    # longer than a lease: the heartbeat keeps it the first worker's, the second does not take it
    time.sleep(LEASE * 1.5)
    held = store.get(job_id)
    assert (held.state, held.attempts, held.lease_owner) == ("running", 1, leased.lease_owner)
    first.kill()

    def finished() -> JobRecord | None:
        job = store.get(job_id)
        return job if job.state not in ("queued", "running", "failed") else None

    done = wait_for("the job finishes elsewhere", finished)
    assert isinstance(done, JobRecord)
    assert (done.state, done.attempts, done.lease_owner) == ("done", 2, None)
    assert done.last_error is not None and leased.lease_owner in done.last_error  # why it ran again
    runs = trace.read_text().split()
    # two starts, one in each worker; one completion, in the second
    starts = [runs[i + 2] for i in range(0, len(runs), 3) if runs[i] == "start"]
    completions = [runs[i + 2] for i in range(0, len(runs), 3) if runs[i] == "done"]
    assert starts == [str(first.pid), str(second.pid)]
    assert completions == [str(second.pid)]
    finished_here = [m.group(1) for m in FINISHED_LINE.finditer(second.log()) if m.group(2) == "test-slow"]
    assert finished_here == [str(job_id)]


def test_two_workers_and_the_embedded_one_run_each_period_of_a_schedule_once(
    database: tuple[str, Engine], tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    url, engine = database
    every_second = {**FAST, "SHIPYARD_UPLOAD_PURGE_INTERVAL_SECONDS": "1"}
    server = start_server(tmp_path / "data", extra_env={"SHIPYARD_DATABASE_URL": url, **every_second})
    try:
        for name in ("first", "second"):
            workers.append(
                start_worker(tmp_path / "data", url, tmp_path / f"{name}.log", extra_env=every_second)
            )
        # all three race for each period once all three run (starting one takes seconds on a busy machine)
        wait_for(
            "every worker runs",
            lambda: all("runs job kinds" in log for log in (server.log(), *(w.log() for w in workers))),
        )
        time.sleep(3)
        for worker in workers:
            assert worker.stop() == 0, worker.log()
    finally:
        server.stop()
    logs = {"embedded": server.log(), **{f"worker {w.pid}": w.log() for w in workers}}
    # every worker ran: the embedded one announced itself in the server's log, once (it never died)
    assert all(log.count("runs job kinds") == 1 for log in logs.values()), logs
    assert "the supervisor is gone" not in logs["embedded"]
    jobs = JobStore(engine).list_jobs(kind="purge-uploads", limit=1000)
    periods = [job.unique_key for job in jobs]
    assert len(periods) == len(set(periods)) >= 3, periods
    assert all(key is not None and key.startswith("schedule:purge-uploads:") for key in periods)
    stamps = sorted(int(key.rsplit(":", 1)[1]) for key in periods if key)
    # periods of one second, each once (a machine too busy to claim one in its second may skip it)
    assert all(
        later > earlier and (later - earlier) % 1000 == 0 for earlier, later in itertools.pairwise(stamps)
    ), stamps
    assert all(job.state == "done" and job.attempts == 1 for job in jobs), jobs
    ran = Counter(
        int(m.group(1))
        for log in logs.values()
        for m in FINISHED_LINE.finditer(log)
        if m.group(2) == "purge-uploads"
    )
    assert sorted(ran) == sorted(job.id for job in jobs)
    assert set(ran.values()) == {1}, ran


def test_sigterm_lets_the_running_job_finish_then_the_worker_exits(
    tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'shipyard.db'}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        store = JobStore(engine)
        worker = start_worker(
            tmp_path / "data", url, tmp_path / "worker.log", extra_env=FAST, extra_args=SLOW_HANDLER
        )
        workers.append(worker)
        trace = tmp_path / "trace"
        job_id = store.enqueue("test-slow", {"seconds": 2, "trace": str(trace), "name": "slow"})
        later = store.enqueue("test-slow", {"seconds": 0, "trace": str(trace), "name": "later"})
        assert job_id is not None and later is not None
        wait_for("the worker runs the job", lambda: store.get(job_id).state == "running")
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=30) == 0, worker.log()
        assert store.get(job_id).state == "done"
        assert store.get(later).state == "queued"  # nothing more was leased after SIGTERM
        assert "stopped" in worker.log()
    finally:
        engine.dispose()


def test_serve_no_worker_runs_no_job_worker(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", extra_args=["--no-worker"])
    try:
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children]
        assert len(commands) == 1 and b"shipyard.server.worker" in commands[0], commands
    finally:
        server.stop()
    assert "runs job kinds" not in server.log()
