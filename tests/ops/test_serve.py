"""Health, readiness and metrics of a real `shipyard serve` with two workers, and a quiet start."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import ServerProcess, start_server

PASSWORD = "ops-admin-password-0123"
TOKEN = "metrics-token-for-the-ops-tests"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("ops") / "data"
    env = {"SHIPYARD_ADMIN_PASSWORD": PASSWORD, "SHIPYARD_METRICS_TOKEN": TOKEN, "SHIPYARD_WORKERS": "2"}
    running = start_server(data_dir, auth=True, extra_env=env)
    yield running
    running.stop()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def scrape(server: ServerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    # a worker hands its figures to the shared files within a second or two (the answering worker
    # at once): wait, so that the other worker's last requests count too
    time.sleep(2.2)
    response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def test_healthz_answers_without_authentication(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    head = httpx.head(f"{server.url}/healthz")
    assert head.status_code == 200
    assert head.content == b""


def test_readyz_names_each_check(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "storage": "ok", "migrations": "ok"},
    }
    assert httpx.head(f"{server.url}/readyz").status_code == 200
    refused = httpx.post(f"{server.url}/readyz")
    assert refused.status_code == 405
    assert refused.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_request_counts_add_up_across_workers(server: ServerProcess) -> None:
    before = scrape(server)
    requests = 120
    for _ in range(requests):
        # a connection each, so that both workers take some of them
        assert httpx.get(f"{server.url}/v2/").status_code == 401
    after = scrape(server)
    labels = {"route": "/v2/", "method": "GET"}
    counted = value(after, "shipyard_http_requests_total", status="401", **labels) - value(
        before, "shipyard_http_requests_total", status="401", **labels
    )
    assert counted == requests
    timed = value(after, "shipyard_http_request_duration_seconds_count", **labels) - value(
        before, "shipyard_http_request_duration_seconds_count", **labels
    )
    assert timed == requests
    sent = value(after, "shipyard_http_sent_bytes_total", route="/v2/") - value(
        before, "shipyard_http_sent_bytes_total", route="/v2/"
    )
    assert sent > 0 and sent % requests == 0  # the same error body each time
    # the counts came from both workers' files, not from the worker that answered the scrape
    pids = {re.sub(r"\D", "", f.name) for f in (server.data_dir / "metrics").glob("counter_*.db")}
    assert len(pids) >= 2, pids


def test_requests_are_counted_by_route_template(server: ServerProcess) -> None:
    before = scrape(server)
    for name in ("admin/one", "admin/two"):
        assert httpx.get(f"{server.url}/v2/{name}/manifests/latest").status_code == 401
    after = scrape(server)
    labels = {"route": "/v2/{name}/manifests/{reference}", "method": "GET", "status": "401"}
    name = "shipyard_http_requests_total"
    assert value(after, name, **labels) - value(before, name, **labels) == 2
    assert not any("admin/one" in str(key) for key in after)


def test_failed_logins_are_counted(server: ServerProcess) -> None:
    before = value(scrape(server), "shipyard_failed_logins_total")
    for _ in range(3):
        form = {"grant_type": "password", "username": "admin", "password": "wrong", "service": "shipyard"}
        response = httpx.post(f"{server.url}/token", data=form)
        assert response.status_code in (401, 429)
    ok = httpx.post(
        f"{server.url}/token",
        data={"grant_type": "password", "username": "admin", "password": PASSWORD, "service": "shipyard"},
    )
    after = scrape(server)
    assert value(after, "shipyard_failed_logins_total") - before == 3 + (ok.status_code == 429)


def test_pool_and_cache_metrics_are_present(server: ServerProcess) -> None:
    scraped = scrape(server)
    assert value(scraped, "shipyard_db_pool_size") > 0
    assert ("shipyard_uploads_in_progress", frozenset()) in scraped


def test_a_wrong_metrics_token_is_refused(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/metrics", headers={"authorization": "Bearer not-the-token"})
    assert response.status_code == 403
    assert response.json()["errors"][0]["code"] == "DENIED"
    good = httpx.get(f"{server.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert good.status_code == 200
    assert TOKEN not in server.log()


def test_start_up_prints_no_library_chatter(server: ServerProcess) -> None:
    httpx.get(f"{server.url}/readyz")  # the readiness check runs alembic in a worker
    log = server.log()
    assert log.startswith("Shipyard "), log[:500]
    for chatter in ("alembic", "Context impl", "Will assume", "setup plugin"):
        assert chatter not in log, log


def test_migrate_prints_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "shipyard", "migrate", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stderr == ""
    assert done.stdout.startswith("database at ") and done.stdout.count("\n") == 1, done.stdout


def test_readyz_is_503_when_the_schema_is_behind(tmp_path: Path) -> None:
    import sqlite3

    running = start_server(tmp_path / "data")
    try:
        assert httpx.get(f"{running.url}/readyz").status_code == 200
        with sqlite3.connect(tmp_path / "data" / "shipyard.db") as db:
            db.execute("UPDATE alembic_version SET version_num = '0001'")
        response = httpx.get(f"{running.url}/readyz")
        assert response.status_code == 503
        assert response.json() == {
            "status": "unavailable",
            "checks": {"database": "ok", "storage": "ok", "migrations": "failed"},
        }
        assert httpx.get(f"{running.url}/healthz").status_code == 200
    finally:
        running.stop()
