"""Access checks that wait for the database do not stall the event loop: a real `shipyard serve` on
PostgreSQL, with a table locked by the test so that the check's query waits, while the same worker
answers /healthz."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.support.postgres import PostgresServer
from tests.support.server import ServerProcess, start_server

PASSWORD = "loop-test-password"
SWIFT = 2.0  # seconds: /healthz answers in milliseconds; the locked query waits until released


@pytest.fixture
def served(postgres: PostgresServer, tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    url = postgres.create_database("loop")
    server = start_server(
        tmp_path / "data",
        auth=True,
        extra_env={
            "SHIPYARD_DATABASE_URL": url,
            "SHIPYARD_ADMIN_PASSWORD": PASSWORD,
            "SHIPYARD_WORKERS": "1",
        },
    )
    try:
        yield server, url
    finally:
        server.stop()


def token(server: ServerProcess, scope: str) -> str:
    r = httpx.get(
        f"{server.url}/token", params={"service": "shipyard", "scope": scope}, auth=("admin", PASSWORD)
    )
    r.raise_for_status()
    return str(r.json()["token"])


@contextmanager
def locked(url: str, table: str) -> Iterator[psycopg.Connection]:
    """Hold `table` locked until the block ends: every query on it waits meanwhile."""
    with psycopg.connect(url) as holder:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield holder
        finally:
            holder.rollback()


def wait_until_a_query_waits(url: str) -> None:
    deadline = time.monotonic() + 30
    with psycopg.connect(url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            found = watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ).fetchone()
            if found:
                time.sleep(0.2)  # the request behind it, if another query got there first
                return
            time.sleep(0.02)
    pytest.fail("the request never reached the locked table")


def assert_healthz_answers(server: ServerProcess) -> None:
    started = time.monotonic()
    r = httpx.get(f"{server.url}/healthz", timeout=SWIFT + 3)
    assert r.status_code == 200
    assert time.monotonic() - started < SWIFT, "the worker's event loop was blocked"


def test_the_catalog_filter_waits_off_the_event_loop(served: tuple[ServerProcess, str]) -> None:
    server, url = served
    bearer = {"authorization": "Bearer " + token(server, "registry:catalog:*")}
    with ThreadPoolExecutor(1) as pool:
        with locked(url, "repository_settings"):  # public repositories are read for the filter
            listing = pool.submit(httpx.get, f"{server.url}/v2/_catalog", headers=bearer, timeout=60)
            wait_until_a_query_waits(url)
            assert_healthz_answers(server)
            assert not listing.done()
        assert listing.result().status_code == 200


def test_a_principal_view_refresh_waits_off_the_event_loop(served: tuple[ServerProcess, str]) -> None:
    server, url = served
    # a push into an account this worker has not seen makes it ask the database whether it exists now
    bearer = {"authorization": "Bearer " + token(server, "repository:nosuch/app:pull,push")}
    with ThreadPoolExecutor(1) as pool:
        with locked(url, "auth_changes"):
            push = pool.submit(
                httpx.post, f"{server.url}/v2/nosuch/app/blobs/uploads/", headers=bearer, timeout=60
            )
            wait_until_a_query_waits(url)
            assert_healthz_answers(server)
            assert not push.done()
        refused = push.result()
        assert refused.status_code == 404
        assert refused.json()["errors"][0]["code"] == "NAME_UNKNOWN"
