"""AccountService's audit events and pages, on SQLite: what an event holds when the service is called
in-process, odd inputs, errors that are not the caller's, and the store's keyset pages."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.auth.credentials import hash_secret
from shipyard.db import migrate
from shipyard.db.accounts import AccountStore
from shipyard.db.engine import make_engine
from shipyard.db.metadata import MetadataStore
from shipyard.domain.accounts import PrincipalRecord
from shipyard.domain.errors import Denied, NameInvalid, PaginationInvalid
from shipyard.domain.management import Listing
from shipyard.services.accounts import LOCAL_SOURCE, AccountService


@pytest.fixture
def service(tmp_path: Path) -> Iterator[AccountService]:
    engine = make_engine(f"sqlite:///{tmp_path / 'shipyard.db'}")
    migrate.upgrade(engine)
    yield AccountService(AccountStore(engine), MetadataStore(engine))
    engine.dispose()


@pytest.fixture
def root(service: AccountService) -> PrincipalRecord:
    service.accounts.create_account("admin")
    return service.accounts.create_principal(
        "admin", kind="user", login="root", role="admin", secret_hash=hash_secret("x")
    )


def test_in_process_calls_are_audited_as_local_and_sources_are_kept(
    service: AccountService, root: PrincipalRecord
) -> None:
    service.create_account(root, "acme")
    service.create_user(root, "acme", "dev", "writer", "a-password-of-dev", source="198.51.100.4")
    second, first = service.accounts.audit_page(10, None)
    assert (first.action, first.source, first.account, first.outcome) == (
        "account.create",
        LOCAL_SOURCE,
        "acme",
        "allowed",
    )
    assert (second.action, second.source, second.target, second.reason) == (
        "user.create",
        "198.51.100.4",
        "dev",
        "role writer",
    )
    assert "a-password-of-dev" not in repr(second)


def test_an_overlong_refused_name_is_still_audited(service: AccountService, root: PrincipalRecord) -> None:
    name = "x" * 300 + "/app"
    with pytest.raises(NameInvalid):
        service.create_repository(root, name)
    (event,) = service.accounts.audit_page(10, None)
    assert event.outcome == "failed" and event.account == "x" * 64 and event.target == name[:255]


def test_an_unexpected_error_is_a_failed_event_and_still_raised(
    service: AccountService, root: PrincipalRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.create_account(root, "acme")

    def broken(name: str) -> bool:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(service.metadata, "create_repository", broken)
    with pytest.raises(RuntimeError):
        service.create_repository(root, "acme/app")
    event = service.accounts.audit_page(1, None)[0]
    assert (event.action, event.outcome, event.reason) == (
        "repository.create",
        "failed",
        "internal error (RuntimeError) (visibility private)",
    )


def test_an_audit_that_cannot_be_written_does_not_undo_the_action(
    service: AccountService,
    root: PrincipalRecord,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def unwritable(*args: object, **kwargs: object) -> None:
        raise OSError("read-only database")

    monkeypatch.setattr(service.accounts, "record_event", unwritable)
    with caplog.at_level(logging.INFO):
        service.create_account(root, "acme")
    assert service.accounts.get_account("acme") is not None
    assert "could not write the audit event" in caplog.text
    # the audit logger still has the line
    lines = [r.getMessage() for r in caplog.records if r.name == "shipyard.audit"]
    assert lines == ["account.create allowed principal=root source=local account=acme target=acme reason=-"]


def test_who_reads_which_events(service: AccountService, root: PrincipalRecord) -> None:
    for account in ("acme", "beta"):
        service.create_account(root, account)
    boss = service.create_user(root, "acme", "boss", "admin").principal
    dev = service.create_user(boss, "acme", "dev", "writer").principal
    with pytest.raises(Denied):
        service.create_user(dev, "acme", "nope", "reader")
    acme = service.audit_events(boss)
    assert [(e.action, e.principal, e.outcome) for e in acme] == [
        ("user.create", "dev", "denied"),
        ("user.create", "boss", "allowed"),
        ("user.create", "root", "allowed"),
        ("account.create", "root", "allowed"),
    ]
    assert acme.next is None
    with pytest.raises(Denied):
        service.audit_events(dev)
    assert len(service.audit_events(root)) == 5
    assert [e.account for e in service.audit_events(root, "beta")] == ["beta"]
    page = service.audit_events(boss, limit=3)
    assert len(page) == 3 and page.next == str(page[-1].id)
    rest = service.audit_events(boss, limit=3, last=int(page.next))
    assert [e.principal for e in rest] == ["root"] and rest.next is None
    for bad in (0, 1001):
        with pytest.raises(PaginationInvalid):
            service.audit_events(root, limit=bad)


def test_the_store_pages_by_key(service: AccountService) -> None:
    store = service.accounts
    for name in ("a", "b", "c"):
        store.create_account(name)
    first = store.accounts_page(2, None)
    assert isinstance(first, Listing) and [a.name for a in first] == ["a", "b"] and first.next == "b"
    last = store.accounts_page(2, first.next)
    assert [a.name for a in last] == ["c"] and last.next is None
    assert store.accounts_page(3, None).next is None  # exactly full: no next page
    assert store.accounts_page(2, "c") == []
    assert [a.name for a in store.accounts_page(5, None, only="b")] == ["b"]
