"""AccountService's authorization rules, on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.auth.credentials import hash_secret, verify_secret
from shipyard.db import migrate
from shipyard.db.accounts import AccountStore, Conflict, NotFound
from shipyard.db.engine import make_engine
from shipyard.db.metadata import MetadataStore
from shipyard.domain.accounts import PrincipalRecord
from shipyard.domain.errors import Denied, NameInvalid, RequestInvalid
from shipyard.services.accounts import AccountService, OwnAccountPolicy


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[AccountStore, MetadataStore]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'shipyard.db'}")
    migrate.upgrade(engine)
    yield AccountStore(engine), MetadataStore(engine)
    engine.dispose()


@pytest.fixture
def service(stores: tuple[AccountStore, MetadataStore]) -> AccountService:
    return AccountService(*stores)


def _user(accounts: AccountStore, account: str, login: str, role: str) -> PrincipalRecord:
    if accounts.get_account(account) is None:
        accounts.create_account(account)
    return accounts.create_principal(
        account, kind="user", login=login, role=role, secret_hash=hash_secret("x")
    )


@pytest.fixture
def root(service: AccountService) -> PrincipalRecord:
    return _user(service.accounts, "admin", "root", "admin")


@pytest.fixture
def acme_admin(service: AccountService, root: PrincipalRecord) -> PrincipalRecord:
    service.create_account(root, "acme")
    return service.create_user(root, "acme", "acme-admin", "admin").principal


def test_only_superusers_create_accounts(
    service: AccountService, root: PrincipalRecord, acme_admin: PrincipalRecord
) -> None:
    with pytest.raises(Denied):
        service.create_account(acme_admin, "other")
    with pytest.raises(Conflict):
        service.create_account(root, "acme")
    with pytest.raises(NameInvalid):
        service.create_account(root, "Bad Name")
    assert [a.name for a in service.list_accounts(root)] == ["acme", "admin"]
    assert [a.name for a in service.list_accounts(acme_admin)] == ["acme"]


def test_the_admin_account_cannot_be_disabled_or_deleted(
    service: AccountService, root: PrincipalRecord
) -> None:
    with pytest.raises(Denied):
        service.set_account_disabled(root, "admin", True)
    with pytest.raises(Denied):
        service.delete_account(root, "admin")


def test_account_admins_manage_their_account_only(
    service: AccountService, root: PrincipalRecord, acme_admin: PrincipalRecord
) -> None:
    service.create_account(root, "beta")
    created = service.create_user(acme_admin, "acme", "dev", "writer")
    assert created.secret and created.principal.role == "writer"
    stored = service.accounts.get_principal("dev")
    assert stored is not None and stored[1] != created.secret and verify_secret(stored[1], created.secret)
    # other accounts are invisible: 404, not 403
    with pytest.raises(NotFound):
        service.create_user(acme_admin, "beta", "intruder", "admin")
    with pytest.raises(NotFound):
        service.list_principals(acme_admin, "beta", "user")
    # an account admin may not mint registry administrators
    with pytest.raises(NotFound):
        service.create_user(acme_admin, "admin", "sneaky", "admin")
    with pytest.raises(RequestInvalid):
        service.create_user(acme_admin, "acme", "x", "owner")


def test_writers_and_readers_list_but_do_not_manage(
    service: AccountService, acme_admin: PrincipalRecord
) -> None:
    writer = service.create_user(acme_admin, "acme", "dev", "writer").principal
    assert {p.login for p in service.list_principals(writer, "acme", "user")} == {"acme-admin", "dev"}
    with pytest.raises(Denied):
        service.create_user(writer, "acme", "friend", "reader")
    with pytest.raises(Denied):
        service.create_robot(writer, "acme", "ci", "writer")
    with pytest.raises(Denied):
        service.update_principal(writer, "acme", "acme-admin", "user", disabled=True)
    with pytest.raises(Denied):
        service.delete_principal(writer, "acme", "acme-admin", "user")
    with pytest.raises(Denied):
        service.create_repository(writer, "acme/app")


def test_access_keys_are_their_users_own(service: AccountService, acme_admin: PrincipalRecord) -> None:
    writer = service.create_user(acme_admin, "acme", "dev", "writer").principal
    reader = service.create_user(acme_admin, "acme", "ro", "reader").principal
    key = service.create_access_key(writer, "acme", "laptop")
    assert key.principal.login.startswith("SYK") and key.principal.role == "writer"
    assert key.principal.owner_id == writer.id and key.secret
    reader_key = service.create_access_key(reader, "acme").principal
    # each sees their own; the admin sees all
    assert [p.login for p in service.list_principals(writer, "acme", "access_key")] == [key.principal.login]
    assert len(service.list_principals(acme_admin, "acme", "access_key")) == 2
    # a key acts for its user: it sees its user's keys
    assert [p.login for p in service.list_principals(key.principal, "acme", "access_key")] == [
        key.principal.login
    ]
    with pytest.raises(Denied):
        service.delete_principal(writer, "acme", reader_key.login, "access_key")
    service.delete_principal(reader, "acme", reader_key.login, "access_key")
    # keys cannot mint keys, and a key belongs to the caller's own account
    with pytest.raises(Denied):
        service.create_access_key(key.principal, "acme")
    # demoting or disabling the user carries over to its keys
    service.update_principal(acme_admin, "acme", "dev", "user", role="reader", disabled=True)
    found = service.accounts.get_principal(key.principal.login)
    assert found is not None and found[0].role == "reader" and found[0].disabled
    service.delete_principal(acme_admin, "acme", "dev", "user")
    assert service.accounts.get_principal(key.principal.login) is None


def test_robots_are_namespaced_and_not_admins(service: AccountService, acme_admin: PrincipalRecord) -> None:
    robot = service.create_robot(acme_admin, "acme", "ci", "writer", "CI pipeline")
    assert robot.principal.login == "acme+ci" and robot.principal.kind == "robot" and robot.secret
    with pytest.raises(RequestInvalid):
        service.create_robot(acme_admin, "acme", "boss", "admin")
    with pytest.raises(Conflict):
        service.create_robot(acme_admin, "acme", "ci", "reader")
    principal, secret = service.update_principal(acme_admin, "acme", "acme+ci", "robot", reset_secret=True)
    assert secret and principal.token_generation == 1


def test_nobody_disables_or_deletes_themselves(service: AccountService, acme_admin: PrincipalRecord) -> None:
    with pytest.raises(Denied):
        service.update_principal(acme_admin, "acme", "acme-admin", "user", disabled=True)
    with pytest.raises(Denied):
        service.update_principal(acme_admin, "acme", "acme-admin", "user", role="reader")
    with pytest.raises(Denied):
        service.delete_principal(acme_admin, "acme", "acme-admin", "user")


def test_revoke_bumps_the_generation(service: AccountService, acme_admin: PrincipalRecord) -> None:
    writer = service.create_user(acme_admin, "acme", "dev", "writer").principal
    reader = service.create_user(acme_admin, "acme", "ro", "reader").principal
    assert service.revoke(writer, "acme", "dev").token_generation == 1  # yourself
    assert service.revoke(acme_admin, "acme", "dev").token_generation == 2
    with pytest.raises(Denied):
        service.revoke(reader, "acme", "dev")


def test_repositories_visibility_and_policies(
    service: AccountService, root: PrincipalRecord, acme_admin: PrincipalRecord
) -> None:
    service.create_account(root, "beta")
    beta = service.create_user(root, "beta", "beta-dev", "writer").principal
    acme_reader = service.create_user(acme_admin, "acme", "ro", "reader").principal
    info = service.create_repository(acme_admin, "acme/app")
    assert info.visibility == "private" and info.actions == {"pull", "push", "delete"}
    with pytest.raises(Conflict):
        service.create_repository(acme_admin, "acme/app")
    with pytest.raises(NotFound):
        service.create_repository(acme_admin, "beta/app")
    assert [r.name for r in service.list_repositories(acme_reader, "acme")] == ["acme/app"]
    assert service.list_repositories(beta, "acme") == []
    with pytest.raises(NotFound):
        service.get_repository(beta, "acme/app")

    info = service.set_policy(acme_admin, "acme/app", "beta", frozenset({"pull"}))
    assert info.policies == {"beta": frozenset({"pull"})}
    assert service.get_repository(beta, "acme/app").actions == {"pull"}
    with pytest.raises(RequestInvalid):
        service.set_policy(acme_admin, "acme/app", "beta", frozenset({"delete"}))
    with pytest.raises(OwnAccountPolicy):  # the request is well formed: the repository's state refuses it
        service.set_policy(acme_admin, "acme/app", "acme", frozenset({"pull"}))
    with pytest.raises(NotFound):
        service.set_policy(acme_admin, "acme/app", "nobody", frozenset({"pull"}))
    service.remove_policy(acme_admin, "acme/app", "beta")
    with pytest.raises(NotFound):
        service.remove_policy(acme_admin, "acme/app", "beta")

    service.set_visibility(acme_admin, "acme/app", "public")
    assert service.get_repository(beta, "acme/app").actions == {"pull"}
    with pytest.raises(RequestInvalid):
        service.set_visibility(acme_admin, "acme/app", "secret")

    with pytest.raises(Conflict):
        service.delete_account(root, "acme")  # it still has a repository
    with pytest.raises(Denied):
        service.delete_repository(acme_reader, "acme/app")
    service.delete_repository(acme_admin, "acme/app")
    assert not service.metadata.repository_exists("acme/app")
    assert service.accounts.repository_access("acme/app").visibility == "private"
    with pytest.raises(NotFound):
        service.delete_repository(acme_admin, "acme/app")
    service.delete_account(root, "acme")
    assert service.accounts.get_principal("ro") is None


def test_superusers_see_everything(
    service: AccountService, root: PrincipalRecord, acme_admin: PrincipalRecord
) -> None:
    service.create_repository(acme_admin, "acme/app")
    assert [r.name for r in service.list_repositories(root, "acme")] == ["acme/app"]
    robot = service.create_robot(root, "acme", "deploy", "reader").principal
    assert robot.login == "acme+deploy"
