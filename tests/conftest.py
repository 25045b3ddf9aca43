"""Shared fixtures: a PostgreSQL server per session, and registries on SQLite and PostgreSQL,
in-process and as a real `shipyard serve` process."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shipyard.app import Shipyard, build
from shipyard.config import Settings
from tests.support.asgi import SyncASGITransport
from tests.support.postgres import PostgresServer, find_binary, start_postgres
from tests.support.server import ServerProcess, start_server
from tests.support.tools import in_ci

DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if find_binary("initdb") is None:
        if in_ci():
            pytest.fail("missing tool: PostgreSQL server (initdb)")
        pytest.skip("missing tool: PostgreSQL server (initdb)")
    server = start_postgres()
    yield server
    server.stop()


def database_url(kind: str, request: pytest.FixtureRequest, data_dir: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{data_dir / 'shipyard.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@dataclass
class Registry:
    """A registry under test, reached over HTTP either way."""

    kind: str  # "app" (in-process ASGI) or "server" (a real shipyard serve process)
    database: str
    client: httpx.Client
    data_dir: Path
    app: Shipyard | None = None
    server: ServerProcess | None = None


def _make_registry(
    mode: str,
    database: str,
    request: pytest.FixtureRequest,
    data_dir: Path,
    env: dict[str, str] | None = None,
) -> Iterator[Registry]:
    url = database_url(database, request, data_dir)
    if mode == "app":
        options = {"insecure_no_auth": "true", **_settings_from(env or {})}
        settings = Settings(data_dir=data_dir, database_url=url, **options)
        app = build(settings, run_migrations=True)
        transport = SyncASGITransport(app.asgi)
        client = httpx.Client(transport=transport, base_url="http://registry.test", timeout=60)
        try:
            yield Registry(mode, database, client, data_dir, app=app)
        finally:
            client.close()
            app.close()
    else:
        server = start_server(data_dir, extra_env={"SHIPYARD_DATABASE_URL": url, **(env or {})})
        client = httpx.Client(base_url=server.url, timeout=60)
        try:
            yield Registry(mode, database, client, data_dir, server=server)
        finally:
            client.close()
            server.stop()


def _settings_from(env: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("SHIPYARD_").lower(): v for k, v in env.items()}


@pytest.fixture(
    scope="module",
    params=[("app", "sqlite"), ("app", "postgresql"), ("server", "sqlite"), ("server", "postgresql")],
    ids=["app-sqlite", "app-postgresql", "server-sqlite", "server-postgresql"],
)
def registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    mode, database = request.param
    data_dir = tmp_path_factory.mktemp(f"registry-{mode}-{database}")
    yield from _make_registry(mode, database, request, data_dir)


@pytest.fixture(scope="module", params=DATABASES)
def app_registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """In-process only (fast), on both databases: for tests that look inside the app."""
    data_dir = tmp_path_factory.mktemp(f"app-{request.param}")
    yield from _make_registry("app", request.param, request, data_dir)


@pytest.fixture
def make_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """Build extra registries with their own settings (e.g. deletes disabled)."""
    made: list[Iterator[Registry]] = []

    def factory(mode: str = "app", database: str = "sqlite", env: dict[str, str] | None = None) -> Registry:
        data_dir = tmp_path / f"{mode}-{database}-{len(made)}"
        gen = _make_registry(mode, database, request, data_dir, env)
        made.append(gen)
        return next(gen)

    yield factory
    for gen in made:
        for _ in gen:
            pass
