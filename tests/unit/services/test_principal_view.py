"""PrincipalView over AccountStore's change feed, on SQLite, with a clock the test moves: when it asks
the database, what it learns, and how it behaves when the database fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.db import migrate
from shipyard.db.accounts import AccountStore, AuthChangeSet
from shipyard.db.engine import make_engine
from shipyard.services.principals import PrincipalView


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(AccountStore):
    """Counts change-feed queries; `fail` makes them raise as an unreachable database would."""

    calls = 0
    fail = False

    def auth_changes_since(self, serial: int, deletions: int) -> AuthChangeSet | None:
        self.calls += 1
        if self.fail:
            raise ConnectionError("database unreachable")
        return super().auth_changes_since(serial, deletions)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[CountingStore, AccountStore]]:
    """The view's store, and another process's store on the same database."""
    engine = make_engine(f"sqlite:///{tmp_path / 'shipyard.db'}")
    other_engine = make_engine(f"sqlite:///{tmp_path / 'shipyard.db'}")
    migrate.upgrade(engine)
    here, elsewhere = CountingStore(engine), AccountStore(other_engine)
    elsewhere.create_account("acme")
    elsewhere.create_principal("acme", kind="user", login="dev", role="writer", secret_hash="x")
    yield here, elsewhere
    engine.dispose()
    other_engine.dispose()


def test_the_view_asks_the_database_only_when_older_than_max_age(
    stores: tuple[CountingStore, AccountStore],
) -> None:
    here, elsewhere = stores
    clock, wall = Clock(), Clock()
    view = PrincipalView(here, 5.0, clock=clock, wall_clock=wall)
    found = elsewhere.get_principal("dev")
    assert found is not None
    dev = found[0]
    assert view.get(dev.id) == dev  # the first lookup loads everything
    assert here.calls == 1
    elsewhere.update_principal("dev", disabled=True)
    clock.now += 4.9
    principal = view.get(dev.id)
    assert principal is not None and not principal.disabled  # not told, and not due
    assert here.calls == 1
    clock.now += 0.1
    principal = view.get(dev.id)
    assert principal is not None and principal.disabled
    assert here.calls == 2
    # an account's state applies to its principals without reloading them
    elsewhere.set_account_disabled("acme", True)
    assert view.refresh()
    principal = view.get(dev.id)
    assert principal is not None and principal.account_disabled and not principal.active
    # nothing changed: one cheap query, nothing applied
    assert view.refresh() and here.calls == 4


def test_writes_through_the_view_s_own_store_apply_at_once(
    stores: tuple[CountingStore, AccountStore],
) -> None:
    here, _ = stores
    clock = Clock()
    view = PrincipalView(here, 60.0, clock=clock)
    found = here.get_principal("dev")
    assert found is not None
    assert view.get(found[0].id) is not None
    here.update_principal("dev", bump_generation=True, role="reader")
    principal = view.get(found[0].id)
    assert principal is not None and principal.token_generation == 1 and principal.role == "reader"
    here.delete_account("acme")
    assert view.get(found[0].id) is None


def test_deletions_by_another_process_are_seen(stores: tuple[CountingStore, AccountStore]) -> None:
    here, elsewhere = stores
    view = PrincipalView(here, 60.0)
    keep = elsewhere.create_principal("acme", kind="robot", login="acme+ci", role="writer", secret_hash="x")
    found = elsewhere.get_principal("dev")
    assert found is not None
    assert view.get(found[0].id) is not None and view.get(keep.id) is not None
    elsewhere.delete_principal("dev")
    assert view.get(found[0].id) is not None  # not refreshed yet
    assert view.refresh()
    assert view.get(found[0].id) is None
    assert view.get(keep.id) is not None


def test_an_unreachable_database_leaves_the_last_state_and_is_retried_after_max_age(
    stores: tuple[CountingStore, AccountStore], caplog: pytest.LogCaptureFixture
) -> None:
    here, elsewhere = stores
    clock = Clock()
    view = PrincipalView(here, 5.0, clock=clock)
    found = elsewhere.get_principal("dev")
    assert found is not None
    assert view.get(found[0].id) is not None
    here.fail = True
    clock.now += 5.0
    with caplog.at_level("WARNING", logger="shipyard.services.principals"):
        for _ in range(3):
            assert view.get(found[0].id) is not None
    assert here.calls == 2  # one failed attempt, not one per lookup
    assert sum("could not refresh" in r.getMessage() for r in caplog.records) == 1
    clock.now += 5.0
    assert view.get(found[0].id) is not None
    assert here.calls == 3
    here.fail = False
    elsewhere.update_principal("dev", disabled=True)
    clock.now += 5.0
    principal = view.get(found[0].id)
    assert principal is not None and principal.disabled


def test_a_view_that_never_loaded_knows_no_one(stores: tuple[CountingStore, AccountStore]) -> None:
    here, elsewhere = stores
    here.fail = True
    view = PrincipalView(here, 5.0)
    found = elsewhere.get_principal("dev")
    assert found is not None
    assert view.get(found[0].id) is None
    assert not view.loaded
