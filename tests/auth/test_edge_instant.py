"""What the /v2 edge asks on the event loop answers from memory; what would need a query says so, and
the edge then asks in a worker thread (tests/auth/test_event_loop.py shows the loop stays free)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.services.identity import TokenAccess
from tests.auth.conftest import AuthRegistry, make_auth_registry
from tests.auth.test_principal_view import counted_queries

MAX_AGE = 0.3


@pytest.fixture
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuthRegistry]:
    yield from make_auth_registry(request, tmp_path / "data", "sqlite", principal_max_age_seconds=MAX_AGE)


def test_a_known_token_and_a_push_into_a_known_account_need_no_query(registry: AuthRegistry) -> None:
    token = registry.token("repository:alpha/app:pull,push", login="alpha-writer")
    access = TokenAccess(registry.identity)
    header = f"Bearer {token}"
    assert access.known_caller(header, "192.0.2.1") is None  # never seen: authenticate checks it
    who = access.authenticate(header, "192.0.2.1")
    registry.identity.principals.refresh()
    with counted_queries(registry.app.engine) as statements:
        assert access.known_caller(header, "192.0.2.1") is who
        assert access.authorizes_instantly(who, "alpha/app", "push")
        access.authorize(who, "alpha/app", "push")
        assert access.authorizes_instantly(who, "alpha/app", "pull")
    assert statements == []
    actor = access.actor(who)
    assert actor.may("alpha/app", "push") and not actor.may("alpha/app", "delete")


def test_what_would_need_a_query_is_left_to_a_worker_thread(registry: AuthRegistry) -> None:
    token = registry.token("repository:alpha/app:pull,push", login="alpha-writer")
    access = TokenAccess(registry.identity)
    who = access.authenticate(f"Bearer {token}")
    # an account the view does not know may have been created by another process since
    assert not access.authorizes_instantly(who, "nosuch/app", "push")
    time.sleep(MAX_AGE + 0.1)  # the view is stale: a lookup would refresh it first
    with counted_queries(registry.app.engine) as statements:
        assert access.known_caller(f"Bearer {token}") is None
        assert not access.authorizes_instantly(who, "alpha/app", "push")
    assert statements == []
