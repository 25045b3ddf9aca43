"""Login passwords and registry tokens are checked against an in-memory view of the principals: no
database query per check, yet a principal disabled, revoked or deleted, here or by another process on
the same database, is refused within `principal_max_age_seconds`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event

from shipyard.auth.credentials import hash_secret
from shipyard.db.accounts import AccountStore
from shipyard.db.engine import make_engine
from shipyard.domain.errors import Unauthorized
from shipyard.services.identity import IdentityService, TokenAccess
from tests.auth.conftest import PASSWORD, AuthRegistry, bearer, challenge, decode, make_auth_registry
from tests.conftest import DATABASES
from tests.support.server import start_server

SMALL_BOUND = 0.3


@contextmanager
def counted_queries(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture(params=DATABASES)
def slow_view(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuthRegistry]:
    """A registry whose view refreshes only when told to (or after a minute)."""
    yield from make_auth_registry(request, tmp_path / "data", request.param, principal_max_age_seconds=60)


@pytest.fixture(params=DATABASES)
def quick_view(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuthRegistry]:
    """A registry whose view may be at most SMALL_BOUND seconds old."""
    yield from make_auth_registry(
        request, tmp_path / "data", request.param, principal_max_age_seconds=SMALL_BOUND
    )


@pytest.fixture
def elsewhere(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Another process's AccountStore on the registry's database: its writes notify no one here."""
    engines: list[Engine] = []

    def store(registry: AuthRegistry) -> AccountStore:
        engine = make_engine(registry.app.settings.resolved_database_url)
        engines.append(engine)
        return AccountStore(engine)

    yield store
    for engine in engines:
        engine.dispose()


def login_password(registry: AuthRegistry, login: str) -> str:
    r = registry.client.post("/api/v1/auth/login-password", auth=(login, PASSWORD))
    assert r.status_code == 200, r.text
    password: str = r.json()["password"]
    return password


def works(registry: AuthRegistry, password: str) -> bool:
    """Whether /token takes the login password."""
    r = registry.token_response("repository:alpha/app:pull", login="shipyard", password=password)
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


def pulls(registry: AuthRegistry, token: str) -> bool:
    r = registry.client.get("/v2/alpha/app/tags/list", headers=bearer(token))
    if r.status_code == 401:
        assert challenge(r)["error"] == "invalid_token", r.text
        return False
    assert r.status_code == 404, r.text  # allowed; the repository does not exist
    return True


def wait_past(bound: float) -> None:
    time.sleep(bound + 0.1)


# -- no database round trip ------------------------------------------------------------------------


def test_a_login_password_and_a_registry_token_are_checked_without_a_query(slow_view: AuthRegistry) -> None:
    identity = slow_view.identity
    password = login_password(slow_view, "alpha-writer")
    token = slow_view.token("repository:alpha/app:pull", login="alpha-writer")
    access = TokenAccess(identity)
    access.authenticate(f"Bearer {token}")  # verified and cached
    with counted_queries(slow_view.app.engine) as statements:
        for _ in range(50):
            principal = identity.login("shipyard", password, "192.0.2.1")
            assert principal.login == "alpha-writer"
            who = access.authenticate(f"Bearer {token}", "192.0.2.1")
            assert who.subject == "alpha-writer"
    assert statements == []


def test_a_login_password_works_while_the_database_is_unreachable(
    slow_view: AuthRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = slow_view.identity
    password = login_password(slow_view, "alpha-writer")
    token = slow_view.token("repository:alpha/app:pull", login="alpha-writer")
    access = TokenAccess(identity)
    access.authenticate(f"Bearer {token}")

    def unreachable(*_args: object, **_kwargs: object) -> None:
        raise ConnectionError("database unreachable")

    for name in ("auth_changes_since", "get_principal", "get_principal_by_id", "audit"):
        monkeypatch.setattr(identity.accounts, name, unreachable)
    # even when the view is due for a refresh, which fails: it answers from its last state
    identity.principals._fresh_until = float("-inf")
    assert identity.login("shipyard", password, "192.0.2.1").login == "alpha-writer"
    assert access.authenticate(f"Bearer {token}").subject == "alpha-writer"
    assert not identity.principals.refresh()


def test_registry_tokens_name_the_token_generation(slow_view: AuthRegistry) -> None:
    token = slow_view.token("repository:alpha/app:pull", login="alpha-writer")
    _, claims = decode(token)
    assert claims["gen"] == 0 and claims["acct"] == "alpha" and isinstance(claims["pid"], int)
    anonymous = decode(slow_view.token())[1]
    assert "gen" not in anonymous and "pid" not in anonymous


# -- changes made in this process: at once --------------------------------------------------------


def test_changes_made_here_apply_at_once_to_registry_tokens(slow_view: AuthRegistry) -> None:
    registry = slow_view
    accounts = registry.identity.accounts
    token = registry.token("repository:alpha/app:pull", login="alpha-writer")
    assert pulls(registry, token)
    marker = registry.mark()
    accounts.update_principal("alpha-writer", disabled=True)
    assert not pulls(registry, token)
    accounts.update_principal("alpha-writer", disabled=False)
    assert pulls(registry, token)
    accounts.set_account_disabled("alpha", True)
    assert not pulls(registry, token)
    accounts.set_account_disabled("alpha", False)
    assert pulls(registry, token)
    accounts.update_principal("alpha-writer", bump_generation=True)
    assert not pulls(registry, token)
    assert pulls(registry, registry.token("repository:alpha/app:pull", login="alpha-writer"))
    reasons = [
        (e["event"], e["principal"], e["reason"])
        for e in registry.audit_since(marker)
        if e["event"] == "token-rejected"
    ]
    assert reasons == [
        ("token-rejected", "alpha-writer", "principal or account disabled"),
        ("token-rejected", "alpha-writer", "principal or account disabled"),
        ("token-rejected", "alpha-writer", "token generation was bumped"),
    ]


def test_a_deleted_principal_s_registry_token_stops_at_once(slow_view: AuthRegistry) -> None:
    accounts = slow_view.identity.accounts
    accounts.create_principal(
        "alpha", kind="user", login="short-lived", role="reader", secret_hash=hash_secret("pw")
    )
    token = slow_view.token("repository:alpha/app:pull", login="short-lived", password="pw")
    assert pulls(slow_view, token)
    accounts.delete_principal("short-lived")
    assert not pulls(slow_view, token)


# -- changes made by another process: after a refresh, within the bound ----------------------------


def test_another_process_disabling_a_principal_is_seen_after_a_refresh(
    slow_view: AuthRegistry, elsewhere: Any
) -> None:
    registry = slow_view
    other: AccountStore = elsewhere(registry)
    password = login_password(registry, "alpha-writer")
    token = registry.token("repository:alpha/app:pull", login="alpha-writer")
    assert works(registry, password) and pulls(registry, token)
    other.update_principal("alpha-writer", disabled=True)
    # this process was not told: its view is a minute old at most, so it still answers from memory
    assert works(registry, password) and pulls(registry, token)
    assert registry.identity.principals.refresh()
    assert not works(registry, password) and not pulls(registry, token)
    other.update_principal("alpha-writer", disabled=False)
    assert registry.identity.principals.refresh()
    assert works(registry, password) and pulls(registry, token)


@pytest.mark.parametrize("change", ["disable", "disable-account", "bump-generation", "delete"])
def test_another_process_s_change_stops_login_passwords_and_tokens_within_the_bound(
    quick_view: AuthRegistry, elsewhere: Any, change: str
) -> None:
    registry = quick_view
    other: AccountStore = elsewhere(registry)
    password = login_password(registry, "alpha-writer")
    token = registry.token("repository:alpha/app:pull", login="alpha-writer")
    bystander = registry.token("repository:beta/app:pull", login="beta-writer")
    assert works(registry, password) and pulls(registry, token)
    if change == "disable":
        other.update_principal("alpha-writer", disabled=True)
    elif change == "disable-account":
        other.set_account_disabled("alpha", True)
    elif change == "bump-generation":
        other.update_principal("alpha-writer", bump_generation=True)
    else:
        other.delete_principal("alpha-writer")
    wait_past(SMALL_BOUND)
    assert not pulls(registry, token)
    assert not works(registry, password)
    # nobody else is affected
    r = registry.client.get("/v2/beta/app/tags/list", headers=bearer(bystander))
    assert r.status_code == 404, r.text


def test_a_principal_created_by_another_process_is_known_at_once(
    slow_view: AuthRegistry, elsewhere: Any
) -> None:
    registry = slow_view
    other: AccountStore = elsewhere(registry)
    assert registry.identity.principals.refresh()  # the view is fresh, and knows nothing of it
    created = other.create_principal(
        "alpha", kind="user", login="newcomer", role="writer", secret_hash=hash_secret("pw")
    )
    # another worker issues the login password; this one has not refreshed since
    worker = IdentityService(other, registry.identity.keys, registry.identity.config)
    password, _ = worker.issue_login_password(created)
    assert registry.identity.login("shipyard", password, "192.0.2.1").login == "newcomer"


def test_a_deleted_principal_s_old_token_costs_no_query(
    slow_view: AuthRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = slow_view
    identity = registry.identity
    access = TokenAccess(identity)
    identity.accounts.create_principal(
        "alpha", kind="user", login="gone", role="writer", secret_hash=hash_secret("pw")
    )
    token = registry.token("repository:alpha/app:pull", login="gone", password="pw")
    access.authenticate(f"Bearer {token}")
    identity.accounts.delete_principal("gone")
    _, claims = decode(token)
    # once the view is newer than the token, an unknown principal is not looked for again
    identity.principals._loaded_at = claims["iat"] + 10
    identity.principals._fresh_until = float("inf")
    monkeypatch.setattr(identity, "audit", lambda *args, **kwargs: None)  # the audit log writes to SQL
    with counted_queries(registry.app.engine) as statements, pytest.raises(Unauthorized):
        access.authenticate(f"Bearer {token}")
    assert statements == []


# -- a real server with two workers, and another process writing to its database ------------------


def test_two_workers_refuse_a_principal_another_process_disabled(tmp_path: Path) -> None:
    bound = 1.0
    data_dir = tmp_path / "data"
    server = start_server(
        data_dir,
        auth=True,
        extra_env={
            "SHIPYARD_ADMIN_PASSWORD": "pw",
            "SHIPYARD_WORKERS": "2",
            "SHIPYARD_PRINCIPAL_MAX_AGE_SECONDS": str(bound),
        },
    )
    engine = make_engine(f"sqlite:///{data_dir / 'shipyard.db'}")
    try:
        # the operator's process: not a worker of the server
        other = AccountStore(engine)
        other.create_account("gamma")
        other.create_principal(
            "gamma", kind="user", login="gamma-dev", role="writer", secret_hash=hash_secret("pw")
        )
        with httpx.Client(base_url=server.url, timeout=30) as client:
            r = client.post("/api/v1/auth/login-password", auth=("gamma-dev", "pw"))
            assert r.status_code == 200, r.text
            password = r.json()["password"]
            params = {"service": "shipyard", "scope": "repository:gamma/app:pull"}

            def token_status() -> int:
                return client.get("/token", params=params, auth=("shipyard", password)).status_code

            r = client.get("/token", params=params, auth=("shipyard", password))
            assert r.status_code == 200, r.text
            token = r.json()["token"]
            # several requests: each worker answers some of them
            for _ in range(6):
                assert client.get("/v2/gamma/app/tags/list", headers=bearer(token)).status_code == 404
                assert token_status() == 200
            other.update_principal("gamma-dev", disabled=True)
            time.sleep(bound + 0.5)
            for _ in range(6):
                r = client.get("/v2/gamma/app/tags/list", headers=bearer(token))
                assert r.status_code == 401 and challenge(r)["error"] == "invalid_token", r.text
                assert token_status() == 401
    finally:
        engine.dispose()
        server.stop()


def test_a_token_seen_before_is_refused_once_it_expired_or_the_view_changed(
    slow_view: AuthRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose token was seen before skips verification; expiry and any change to the view
    still end that."""
    import shipyard.services.identity as identity_module

    identity = slow_view.identity
    access = TokenAccess(identity)
    token = slow_view.token("repository:alpha/app:pull", login="alpha-writer")
    header = f"Bearer {token}"
    first = access.authenticate(header, "192.0.2.7")
    assert access.authenticate(header, "192.0.2.7") is first  # answered from the table
    assert access.authenticate(header, "192.0.2.8") is not first  # another source: its own entry
    # a change to any principal moves the view on: the next request checks the token's principal again
    identity.accounts.update_principal("alpha-writer", disabled=True)
    with pytest.raises(Unauthorized):
        access.authenticate(header, "192.0.2.7")
    identity.accounts.update_principal("alpha-writer", disabled=False)
    again = access.authenticate(header, "192.0.2.7")
    assert again is not first and again.subject == "alpha-writer"
    # past its expiry (and the leeway) the table does not answer, and verification refuses it
    _, payload = decode(token)
    late = float(payload["exp"]) + 31
    monkeypatch.setattr(identity_module.time, "time", lambda: late)
    with pytest.raises(Unauthorized):
        access.authenticate(header, "192.0.2.7")
