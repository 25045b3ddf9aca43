"""/api/v1/jobs and `shipyard jobs` against a real `shipyard serve` (authentication on, its embedded
worker running): registry administrators see and act on the queue, nobody else does."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine

from shipyard.db.engine import make_engine
from shipyard.workers.store import JobStore
from tests.support.manage_cli import ManageCli, serve_with_auth
from tests.support.server import ServerProcess

ADMIN_PASSWORD = "jobs-admin-password"
MEMBER_PASSWORD = "jobs-member-password"
# no worker handles this kind: its jobs stay queued for the tests to act on
KIND = "test-nobody-handles"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve_with_auth(tmp_path_factory, "jobs-api", ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def engine(server: ServerProcess) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{server.data_dir / 'shipyard.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> JobStore:
    return JobStore(engine)


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, auth=("admin", ADMIN_PASSWORD), timeout=30) as client:
        yield client


@pytest.fixture
def cli(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> ManageCli:
    return ManageCli(server, capsys, monkeypatch, ADMIN_PASSWORD)


def test_the_embedded_worker_runs_the_scheduled_jobs(admin: httpx.Client) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        jobs = admin.get("/api/v1/jobs", params={"kind": "purge-uploads", "state": "done"}).json()["jobs"]
        if jobs:
            break
        time.sleep(0.2)
    assert jobs, "the embedded worker ran no upload purge"
    assert jobs[0]["unique_key"].startswith("schedule:purge-uploads:")
    assert jobs[0]["attempts"] == 1 and jobs[0]["finished_at"] is not None


def test_list_filter_page_show_cancel_and_retry(admin: httpx.Client, store: JobStore) -> None:
    ids = [store.enqueue(KIND, {"n": n}) for n in range(3)]
    page = admin.get("/api/v1/jobs", params={"kind": KIND, "n": 2})
    assert page.status_code == 200
    assert [j["id"] for j in page.json()["jobs"]] == [ids[2], ids[1]]
    assert page.headers["link"] == f'</api/v1/jobs?kind={KIND}&n=2&last={ids[1]}>; rel="next"'
    rest = admin.get(page.headers["link"].partition("<")[2].partition(">")[0]).json()["jobs"]
    assert [j["id"] for j in rest] == [ids[0]] and rest[0]["payload"] == {"n": 0}

    job = admin.get(f"/api/v1/jobs/{ids[0]}").json()
    assert (job["state"], job["kind"], job["attempts"], job["lease_owner"]) == ("queued", KIND, 0, None)
    cancelled = admin.post(f"/api/v1/jobs/{ids[0]}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.headers["cache-control"] == "no-store"
    again = admin.post(f"/api/v1/jobs/{ids[0]}/cancel")
    assert again.status_code == 409
    assert again.json()["errors"][0]["code"] == "CONFLICT"
    assert "cancelled" in again.json()["errors"][0]["detail"]
    assert admin.post(f"/api/v1/jobs/{ids[1]}/retry").status_code == 409  # queued: nothing to retry
    retried = admin.post(f"/api/v1/jobs/{ids[0]}/retry").json()
    assert (retried["state"], retried["attempts"]) == ("queued", 0)
    states = {
        j["id"]: j["state"] for j in admin.get("/api/v1/jobs", params={"state": "queued"}).json()["jobs"]
    }
    assert set(ids) <= set(states)
    audit = admin.get("/api/v1/audit", params={"n": 5}).json()["events"]
    assert [e["action"] for e in audit[:2]] == ["retry-job", "cancel-job"]
    assert audit[0]["target"] == f"job {ids[0]} ({KIND})"


def test_bad_requests_and_unknown_jobs(admin: httpx.Client) -> None:
    missing = admin.get("/api/v1/jobs/999999999")
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "NOT_FOUND"
    assert admin.post("/api/v1/jobs/999999999/retry").status_code == 404
    for params in (
        {"state": "sleeping"},
        {"state": ""},
        {"last": "x"},
        {"last": ""},
        {"n": "0"},
        {"limit": "3"},
    ):
        answer = admin.get("/api/v1/jobs", params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert answer.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert admin.get("/api/v1/jobs/0").status_code == 400
    assert admin.get("/api/v1/jobs/abc").status_code == 400
    assert admin.delete("/api/v1/jobs/1").status_code == 405


def test_only_registry_administrators_see_or_touch_jobs(
    server: ServerProcess, cli: ManageCli, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = store.enqueue(KIND)
    assert cli.run("accounts", "create", "acme")[0] == 0
    monkeypatch.setenv("MEMBER_PASSWORD", MEMBER_PASSWORD)
    code, _, err = cli.run(
        "users", "create", "acme", "boss", "--role", "admin", "--password-env", "MEMBER_PASSWORD"
    )
    assert code == 0, err
    with httpx.Client(base_url=server.url, auth=("boss", MEMBER_PASSWORD), timeout=30) as member:
        for method, path in (
            ("GET", "/api/v1/jobs"),
            ("GET", f"/api/v1/jobs/{job_id}"),
            ("POST", f"/api/v1/jobs/{job_id}/retry"),
            ("POST", f"/api/v1/jobs/{job_id}/cancel"),
        ):
            answer = member.request(method, path)
            assert answer.status_code == 403, (method, path, answer.text)
            assert answer.json()["errors"][0]["code"] == "DENIED"
    anonymous = httpx.get(f"{server.url}/api/v1/jobs", timeout=30)
    assert anonymous.status_code == 401
    assert store.get(job_id).state == "queued"  # nobody but an administrator changed it
    code, _, err = cli.run("jobs", "list", user="boss", password=MEMBER_PASSWORD)
    assert code == 1 and "registry administrators" in err and "403" in err and err.count("\n") == 1


def test_the_jobs_commands(cli: ManageCli, store: JobStore) -> None:
    job_id = store.enqueue(KIND, {"repository": "acme/app"})
    code, out, err = cli.run("jobs", "list", "--kind", KIND, "--state", "queued", "--limit", "1")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["ID", "KIND", "STATE", "ATTEMPTS", "RUN_AT", "LAST_ERROR"]
    assert row.split()[:4] == [str(job_id), KIND, "queued", "0/5"]
    code, out, _ = cli.run("jobs", "show", str(job_id))
    assert code == 0 and 'payload           {"repository": "acme/app"}' in out
    assert cli.json("jobs", "cancel", str(job_id))["state"] == "cancelled"
    code, out, _ = cli.run("jobs", "retry", str(job_id))
    assert code == 0 and "state             queued" in out
    code, out, err = cli.run("jobs", "show", "999999999")
    assert code == 1 and out == "" and err == "shipyard: no job 999999999 (NOT_FOUND), HTTP 404\n"
    code, _, err = cli.run("jobs", "retry", str(job_id))  # queued already
    assert code == 1 and "CONFLICT" in err and "409" in err and err.count("\n") == 1


def test_metrics_count_the_jobs_by_state(server: ServerProcess, store: JobStore) -> None:
    store.enqueue(KIND)
    counts = store.counts()
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    shown = {
        state: float(value)
        for state, value in re.findall(r'^shipyard_jobs\{state="(\w+)"\} (\S+)$', text, re.MULTILINE)
    }
    # no worker takes jobs of this kind: the one just queued is counted
    assert set(shown) == set(counts) and shown["queued"] >= 1
