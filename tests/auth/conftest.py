"""An in-process registry with authentication ON (SQLite and PostgreSQL), its accounts and users,
and helpers to get, decode and forge tokens."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.app import Shipyard, build
from shipyard.auth.credentials import hash_secret
from shipyard.auth.keys import b64url, b64url_decode
from shipyard.config import Settings
from shipyard.services.identity import IdentityService
from tests.conftest import DATABASES, database_url
from tests.support.asgi import SyncASGITransport

BASE = "http://registry.test"
SOURCE = "127.0.0.1"  # httpx.ASGITransport's default client address
PASSWORD = "secret-pw"

# login -> (account, role)
USERS = {
    "alpha-writer": ("alpha", "writer"),
    "alpha-reader": ("alpha", "reader"),
    "beta-writer": ("beta", "writer"),
}


class SourcedTransport(SyncASGITransport):
    """The in-process transport, with the client address the app sees chosen by the test."""

    def __init__(self, app: Any, source: str) -> None:
        super().__init__(app)
        self._transport = httpx.ASGITransport(app=app, client=(source, 4711))


class _Shared(httpx.BaseTransport):
    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._client._transport
        return transport.handle_request(request)

    def close(self) -> None:  # the owner closes the shared transport
        pass


@dataclass
class AuthRegistry:
    app: Shipyard
    database: str
    data_dir: Path
    clients: list[httpx.Client]

    @property
    def identity(self) -> IdentityService:
        assert self.app.identity is not None
        return self.app.identity

    @property
    def client(self) -> httpx.Client:
        return self.clients[0]

    def client_from(self, source: str) -> httpx.Client:
        client = httpx.Client(transport=SourcedTransport(self.app.asgi, source), base_url=BASE, timeout=60)
        self.clients.append(client)
        return client

    def authed(self, token: str) -> httpx.Client:
        """A client that sends `token` as its Bearer token (sharing the main client's transport)."""
        return httpx.Client(transport=_Shared(self.client), base_url=BASE, headers=bearer(token), timeout=60)

    def token(
        self,
        scopes: Sequence[str] | str = (),
        login: str | None = None,
        password: str = PASSWORD,
        client: httpx.Client | None = None,
    ) -> str:
        """GET /token with Basic credentials (or anonymously); the JWT."""
        r = self.token_response(scopes, login, password, client)
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token

    def token_response(
        self,
        scopes: Sequence[str] | str = (),
        login: str | None = None,
        password: str = PASSWORD,
        client: httpx.Client | None = None,
    ) -> httpx.Response:
        params: list[tuple[str, str]] = [("service", "shipyard")]
        params += [("scope", s) for s in ([scopes] if isinstance(scopes, str) else scopes)]
        auth = (login, password) if login is not None else None
        return (client or self.client).get("/token", params=params, auth=auth)

    def audit_since(self, marker: int) -> list[dict[str, object]]:
        """Audit events written after `mark()` returned `marker`, oldest first."""
        events = self.identity.accounts.audit_events(limit=1000)
        return list(reversed(events[: max(0, len(events) - marker)]))

    def mark(self) -> int:
        return len(self.identity.accounts.audit_events(limit=1000))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def segment(document: dict[str, Any]) -> str:
    return b64url(json.dumps(document, separators=(",", ":"), sort_keys=True).encode())


def standard_payload(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": "shipyard",
        "sub": "alpha-writer",
        "aud": "shipyard",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "forged",
        "access": [{"type": "repository", "name": "alpha/app", "actions": ["pull", "push"]}],
    }
    payload.update(overrides)
    return payload


def basic(login: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()}


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["errors"][0]["code"]
    return code


def challenge(response: httpx.Response) -> dict[str, str]:
    """The parameters of a `WWW-Authenticate: Bearer k="v",...` header."""
    header = response.headers["www-authenticate"]
    scheme, _, rest = header.partition(" ")
    assert scheme == "Bearer", header
    out: dict[str, str] = {}
    for part in rest.split('",'):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip().strip('"')
    return out


def make_auth_registry(
    request: pytest.FixtureRequest, data_dir: Path, database: str, **settings: Any
) -> Iterator[AuthRegistry]:
    url = database_url(database, request, data_dir)
    # these tests look at each audit event; the aggregation has tests of its own against a server
    settings.setdefault("failed_auth_audit_window_seconds", 0)
    app = build(
        Settings(data_dir=data_dir, database_url=url, admin_password="pw", **settings), run_migrations=True
    )
    assert app.identity is not None
    app.identity.bootstrap("pw")
    accounts = app.identity.accounts
    secret = hash_secret(PASSWORD)
    for account in ("alpha", "beta"):
        accounts.create_account(account)
    for login, (account, role) in USERS.items():
        accounts.create_principal(account, kind="user", login=login, role=role, secret_hash=secret)
    registry = AuthRegistry(app, database, data_dir, [])
    registry.clients.append(httpx.Client(transport=SyncASGITransport(app.asgi), base_url=BASE, timeout=60))
    try:
        yield registry
    finally:
        for client in registry.clients:
            client.close()
        app.close()


@pytest.fixture(scope="module", params=DATABASES)
def auth_registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthRegistry]:
    """Shared by a module's tests: create your own users/repositories when you change state."""
    data_dir = tmp_path_factory.mktemp(f"auth-{request.param}")
    yield from make_auth_registry(request, data_dir, request.param)


@pytest.fixture(params=DATABASES)
def fresh_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuthRegistry]:
    """One per test: for tests that rotate keys or otherwise change registry-wide state."""
    yield from make_auth_registry(request, tmp_path / "data", request.param)
