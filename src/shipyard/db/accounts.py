"""Queries for accounts, principals, repository visibility and policies, and the audit log."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, exists, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from shipyard.db import gc
from shipyard.db.engine import read_transaction, write_transaction
from shipyard.db.metadata import _aware, utcnow
from shipyard.db.models import (
    Account,
    AuditEvent,
    AuthChanges,
    Principal,
    Repository,
    RepositoryPolicy,
    RepositorySettings,
)
from shipyard.domain.accounts import AccountRecord, PrincipalRecord, RepositoryAccess
from shipyard.domain.errors import RegistryError
from shipyard.domain.management import AuditRecord, Listing

T = TypeVar("T")

log = logging.getLogger(__name__)


class Conflict(RegistryError):
    code = "CONFLICT"
    message = "already exists"


class NotFound(RegistryError):
    code = "NOT_FOUND"
    message = "not found"


_PRINCIPAL_COLUMNS = (
    Principal.id,
    Account.name.label("account"),
    Principal.kind,
    Principal.login,
    Principal.role,
    Principal.disabled,
    Principal.token_generation,
    Principal.created_at,
    Principal.description,
    Account.disabled.label("account_disabled"),
    Principal.owner_id,
    Principal.secret_hash,
)


def _principal(r: Any) -> PrincipalRecord:
    return PrincipalRecord(
        id=int(r.id),
        account=r.account,
        kind=r.kind,
        login=r.login,
        role=r.role,
        disabled=bool(r.disabled),
        token_generation=int(r.token_generation),
        created_at=_aware(r.created_at),
        description=r.description,
        account_disabled=bool(r.account_disabled),
        owner_id=None if r.owner_id is None else int(r.owner_id),
    )


@dataclass(frozen=True)
class AuthChangeSet:
    """What changed in accounts and principals after a serial: see `AccountStore.auth_changes_since`."""

    serial: int
    deletions: int
    # account name -> disabled, for the accounts written since
    accounts: dict[str, bool]
    principals: list[PrincipalRecord]
    # every principal id and account name that exists, when something was deleted since (else None)
    existing_principals: frozenset[int] | None = None
    existing_accounts: frozenset[str] | None = None


class AccountStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        self._change_listeners: list[Callable[[], None]] = []

    # -- change feed ---------------------------------------------------------------------------

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each committed write to accounts or principals made through this store."""
        self._change_listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._change_listeners:
            try:
                listener()
            except Exception:
                log.exception("an account change listener failed")

    @staticmethod
    def _next_serial(conn: Connection, *, deletion: bool = False) -> int:
        """Take the next change serial in this transaction. The update locks the counter row until the
        transaction ends, so serials are taken in commit order: a reader that sees serial N also sees every
        row stamped with a serial up to N. Writers take it before touching any other row, so that two
        writers never wait for each other's locks in opposite orders."""
        values: dict[str, object] = {"serial": AuthChanges.serial + 1}
        if deletion:
            values["deletions"] = AuthChanges.deletions + 1
        serial = conn.execute(
            update(AuthChanges).where(AuthChanges.id == 1).values(**values).returning(AuthChanges.serial)
        ).scalar()
        if serial is None:  # a database whose counter row went missing
            conn.execute(insert(AuthChanges).values(id=1, serial=1, deletions=1 if deletion else 0))
            serial = 1
        return int(serial)

    def auth_changes_since(self, serial: int, deletions: int) -> AuthChangeSet | None:
        """Accounts and principals written after change serial `serial` (all of them for a negative one),
        or None when nothing was written or deleted since (`serial` and `deletions` are still current)."""
        with read_transaction(self.engine) as conn:
            row = conn.execute(
                select(AuthChanges.serial, AuthChanges.deletions).where(AuthChanges.id == 1)
            ).first()
            current, deleted = (0, 0) if row is None else (int(row.serial), int(row.deletions))
            if serial >= 0 and current == serial and deleted == deletions:
                return None
            # only up to `current`: rows stamped later may belong to transactions not yet committed
            accounts = conn.execute(
                select(Account.name, Account.disabled).where(
                    Account.change_serial > serial, Account.change_serial <= current
                )
            ).all()
            principals = conn.execute(
                select(*_PRINCIPAL_COLUMNS)
                .join(Account, Account.id == Principal.account_id)
                .where(Principal.change_serial > serial, Principal.change_serial <= current)
            ).all()
            existing_principals = existing_accounts = None
            if serial >= 0 and deleted != deletions:
                existing_principals = frozenset(int(i) for i in conn.execute(select(Principal.id)).scalars())
                existing_accounts = frozenset(conn.execute(select(Account.name)).scalars())
        return AuthChangeSet(
            current,
            deleted,
            {r.name: bool(r.disabled) for r in accounts},
            [_principal(r) for r in principals],
            existing_principals,
            existing_accounts,
        )

    # -- accounts ------------------------------------------------------------------------------

    def create_account(self, name: str) -> AccountRecord:
        now = utcnow()
        try:
            with write_transaction(self.engine) as conn:
                account_id = conn.execute(
                    insert(Account)
                    .values(name=name, disabled=False, created_at=now, change_serial=self._next_serial(conn))
                    .returning(Account.id)
                ).scalar_one()
        except IntegrityError:
            raise Conflict(f"account exists: {name}") from None
        self._notify()
        return AccountRecord(int(account_id), name, False, now)

    def get_account(self, name: str) -> AccountRecord | None:
        with read_transaction(self.engine) as conn:
            row = conn.execute(
                select(Account.id, Account.name, Account.disabled, Account.created_at).where(
                    Account.name == name
                )
            ).first()
        return (
            None
            if row is None
            else AccountRecord(int(row.id), row.name, bool(row.disabled), _aware(row.created_at))
        )

    def list_accounts(self) -> list[AccountRecord]:
        with read_transaction(self.engine) as conn:
            rows = conn.execute(
                select(Account.id, Account.name, Account.disabled, Account.created_at).order_by(Account.name)
            ).all()
        return [AccountRecord(int(r.id), r.name, bool(r.disabled), _aware(r.created_at)) for r in rows]

    def set_account_disabled(self, name: str, disabled: bool) -> None:
        with write_transaction(self.engine) as conn:
            result = conn.execute(
                update(Account)
                .where(Account.name == name)
                .values(disabled=disabled, change_serial=self._next_serial(conn))
            )
            if not result.rowcount:
                raise NotFound(f"no account {name}")
        self._notify()

    def delete_account(self, name: str) -> None:
        with write_transaction(self.engine) as conn:
            account_id = conn.execute(select(Account.id).where(Account.name == name)).scalar()
            if account_id is None:
                raise NotFound(f"no account {name}")
            self._next_serial(conn, deletion=True)
            conn.execute(delete(RepositoryPolicy).where(RepositoryPolicy.account_id == account_id))
            conn.execute(delete(Principal).where(Principal.account_id == account_id))
            conn.execute(delete(Account).where(Account.id == account_id))
        self._notify()

    def count_accounts(self) -> int:
        with read_transaction(self.engine) as conn:
            return int(conn.execute(select(func.count()).select_from(Account)).scalar_one())

    # -- principals ----------------------------------------------------------------------------

    def create_principal(
        self,
        account: str,
        *,
        kind: str,
        login: str,
        role: str,
        secret_hash: str,
        owner_id: int | None = None,
        description: str | None = None,
    ) -> PrincipalRecord:
        now = utcnow()
        try:
            with write_transaction(self.engine) as conn:
                account_id = conn.execute(select(Account.id).where(Account.name == account)).scalar()
                if account_id is None:
                    raise NotFound(f"no account {account}")
                conn.execute(
                    insert(Principal).values(
                        account_id=account_id,
                        kind=kind,
                        login=login,
                        role=role,
                        secret_hash=secret_hash,
                        disabled=False,
                        token_generation=0,
                        owner_id=owner_id,
                        description=description,
                        created_at=now,
                        change_serial=self._next_serial(conn),
                    )
                )
        except IntegrityError:
            raise Conflict(f"login exists: {login}") from None
        self._notify()
        found = self.get_principal(login)
        assert found is not None
        return found[0]

    def get_principal(self, login: str) -> tuple[PrincipalRecord, str] | None:
        """The principal and its secret hash."""
        with read_transaction(self.engine) as conn:
            row = conn.execute(
                select(*_PRINCIPAL_COLUMNS)
                .join(Account, Account.id == Principal.account_id)
                .where(Principal.login == login)
            ).first()
        return None if row is None else (_principal(row), row.secret_hash)

    def get_principal_by_id(self, principal_id: int) -> PrincipalRecord | None:
        with read_transaction(self.engine) as conn:
            row = conn.execute(
                select(*_PRINCIPAL_COLUMNS)
                .join(Account, Account.id == Principal.account_id)
                .where(Principal.id == principal_id)
            ).first()
        return None if row is None else _principal(row)

    def list_principals(self, account: str, kind: str | None = None) -> list[PrincipalRecord]:
        with read_transaction(self.engine) as conn:
            query = (
                select(*_PRINCIPAL_COLUMNS)
                .join(Account, Account.id == Principal.account_id)
                .where(Account.name == account)
            )
            if kind is not None:
                query = query.where(Principal.kind == kind)
            rows = conn.execute(query.order_by(Principal.login)).all()
        return [_principal(r) for r in rows]

    def update_principal(
        self,
        login: str,
        *,
        disabled: bool | None = None,
        role: str | None = None,
        secret_hash: str | None = None,
        bump_generation: bool = False,
    ) -> None:
        values: dict[str, object] = {}
        if disabled is not None:
            values["disabled"] = disabled
        if role is not None:
            values["role"] = role
        if secret_hash is not None:
            values["secret_hash"] = secret_hash
        if bump_generation:
            values["token_generation"] = Principal.token_generation + 1
        if not values:
            return
        with write_transaction(self.engine) as conn:
            values["change_serial"] = self._next_serial(conn)
            result = conn.execute(update(Principal).where(Principal.login == login).values(**values))
            if not result.rowcount:
                raise NotFound(f"no principal {login}")
        self._notify()

    def delete_principal(self, login: str) -> None:
        with write_transaction(self.engine) as conn:
            self._next_serial(conn, deletion=True)
            result = conn.execute(delete(Principal).where(Principal.login == login))
            if not result.rowcount:
                raise NotFound(f"no principal {login}")
        self._notify()

    def repository_access(self, repository: str) -> RepositoryAccess:
        with read_transaction(self.engine) as conn:
            visibility = conn.execute(
                select(RepositorySettings.visibility).where(RepositorySettings.repository == repository)
            ).scalar()
            rows = conn.execute(
                select(Account.name, RepositoryPolicy.actions)
                .join(Account, Account.id == RepositoryPolicy.account_id)
                .where(RepositoryPolicy.repository == repository)
            ).all()
        grants = {r.name: frozenset(r.actions.split(",")) for r in rows}
        return RepositoryAccess(repository, "public" if visibility == "public" else "private", grants)

    def set_visibility(self, repository: str, visibility: str) -> None:
        now = utcnow()
        upsert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        with write_transaction(self.engine) as conn:
            conn.execute(
                upsert(RepositorySettings)
                .values(repository=repository, visibility=visibility, updated_at=now)
                .on_conflict_do_update(
                    index_elements=["repository"], set_={"visibility": visibility, "updated_at": now}
                )
            )

    def set_untagged_retention(self, repository: str, days: int | None) -> None:
        """GC deletes the repository's manifests that have had no tag for `days` (None: never). The
        manifests untagged now count from now."""
        now = utcnow()
        upsert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        with write_transaction(self.engine) as conn:
            conn.execute(
                upsert(RepositorySettings)
                .values(
                    repository=repository, visibility="private", untagged_retention_days=days, updated_at=now
                )
                .on_conflict_do_update(
                    index_elements=["repository"], set_={"untagged_retention_days": days, "updated_at": now}
                )
            )
            if days is not None:
                gc.queue_untagged_manifests(conn, repository)

    def untagged_retention(self, repository: str) -> int | None:
        with read_transaction(self.engine) as conn:
            return conn.execute(
                select(RepositorySettings.untagged_retention_days).where(
                    RepositorySettings.repository == repository
                )
            ).scalar()

    def public_repositories(self) -> set[str]:
        with read_transaction(self.engine) as conn:
            return set(
                conn.execute(
                    select(RepositorySettings.repository).where(RepositorySettings.visibility == "public")
                ).scalars()
            )

    def shared_with(self, account: str) -> set[str]:
        """Repositories that policies share with `account`."""
        with read_transaction(self.engine) as conn:
            return set(
                conn.execute(
                    select(RepositoryPolicy.repository)
                    .join(Account, Account.id == RepositoryPolicy.account_id)
                    .where(Account.name == account)
                ).scalars()
            )

    def set_policy(self, repository: str, account: str, actions: frozenset[str]) -> None:
        now = utcnow()
        upsert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        with write_transaction(self.engine) as conn:
            account_id = conn.execute(select(Account.id).where(Account.name == account)).scalar()
            if account_id is None:
                raise NotFound(f"no account {account}")
            if not actions:
                conn.execute(
                    delete(RepositoryPolicy).where(
                        RepositoryPolicy.repository == repository, RepositoryPolicy.account_id == account_id
                    )
                )
                return
            text = ",".join(sorted(actions))
            conn.execute(
                upsert(RepositoryPolicy)
                .values(repository=repository, account_id=account_id, actions=text, created_at=now)
                .on_conflict_do_update(index_elements=["repository", "account_id"], set_={"actions": text})
            )

    def policies(self, repository: str) -> dict[str, frozenset[str]]:
        return self.repository_access(repository).grants

    def forget_repository(self, repository: str) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(delete(RepositoryPolicy).where(RepositoryPolicy.repository == repository))
            conn.execute(delete(RepositorySettings).where(RepositorySettings.repository == repository))

    # -- audit ---------------------------------------------------------------------------------

    def audit(
        self, event: str, *, principal: str | None, source: str | None, action: str | None, reason: str
    ) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(
                insert(AuditEvent).values(
                    at=utcnow(), event=event, principal=principal, source=source, action=action, reason=reason
                )
            )

    def audit_events(self, limit: int = 100) -> list[dict[str, object]]:
        with read_transaction(self.engine) as conn:
            rows = conn.execute(
                select(
                    AuditEvent.at,
                    AuditEvent.event,
                    AuditEvent.principal,
                    AuditEvent.source,
                    AuditEvent.action,
                    AuditEvent.reason,
                )
                .order_by(AuditEvent.id.desc())
                .limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    def record_event(
        self,
        action: str,
        *,
        principal: str,
        source: str,
        account: str | None,
        target: str | None,
        outcome: str,
        reason: str,
    ) -> None:
        """A management action, allowed or not. Fields longer than their columns are cut (a refused
        request may carry any text), so that the event is still written."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                insert(AuditEvent).values(
                    at=utcnow(),
                    event="management",
                    principal=principal[:255],
                    source=source[:255],
                    action=action[:255],
                    account=None if account is None else account[:64],
                    target=None if target is None else target[:255],
                    outcome=outcome[:16],
                    reason=reason,
                )
            )

    def audit_page(self, limit: int, last: int | None, *, account: str | None = None) -> Listing[AuditRecord]:
        """Events newest first, those before event `last`; with `account`, only that account's."""
        query = select(
            AuditEvent.id,
            AuditEvent.at,
            AuditEvent.event,
            AuditEvent.principal,
            AuditEvent.source,
            AuditEvent.action,
            AuditEvent.account,
            AuditEvent.target,
            AuditEvent.outcome,
            AuditEvent.reason,
        )
        if account is not None:
            query = query.where(AuditEvent.account == account)
        if last is not None:
            query = query.where(AuditEvent.id < last)
        with read_transaction(self.engine) as conn:
            rows = conn.execute(query.order_by(AuditEvent.id.desc()).limit(limit + 1)).all()
        records = [
            AuditRecord(
                id=int(r.id),
                at=_aware(r.at),
                event=r.event,
                principal=r.principal,
                source=r.source,
                action=r.action,
                account=r.account,
                target=r.target,
                outcome=r.outcome,
                reason=r.reason,
            )
            for r in rows
        ]
        return _listing(records, limit, lambda e: str(e.id))

    # -- pages of listings: ORDER BY the key, WHERE key > last, LIMIT n + 1 ---------------------

    def accounts_page(
        self, limit: int, last: str | None, *, only: str | None = None
    ) -> Listing[AccountRecord]:
        query = select(Account.id, Account.name, Account.disabled, Account.created_at)
        if only is not None:
            query = query.where(Account.name == only)
        if last is not None:
            query = query.where(Account.name > last)
        with read_transaction(self.engine) as conn:
            rows = conn.execute(query.order_by(Account.name).limit(limit + 1)).all()
        records = [AccountRecord(int(r.id), r.name, bool(r.disabled), _aware(r.created_at)) for r in rows]
        return _listing(records, limit, lambda a: a.name)

    def principals_page(
        self, account: str, kind: str, limit: int, last: str | None, *, owner_id: int | None = None
    ) -> Listing[PrincipalRecord]:
        """An account's principals of one kind by login; with `owner_id`, only that user's keys."""
        query = (
            select(*_PRINCIPAL_COLUMNS)
            .join(Account, Account.id == Principal.account_id)
            .where(Account.name == account, Principal.kind == kind)
        )
        if owner_id is not None:
            query = query.where(Principal.owner_id == owner_id)
        if last is not None:
            query = query.where(Principal.login > last)
        with read_transaction(self.engine) as conn:
            rows = conn.execute(query.order_by(Principal.login).limit(limit + 1)).all()
        return _listing([_principal(r) for r in rows], limit, lambda p: p.login)

    def repositories_page(
        self, account: str, limit: int, last: str | None, *, viewer: str | None = None
    ) -> Listing[str]:
        """Names of the account's repositories; with `viewer` (another account), only those it may
        pull: public ones and those a policy lets it pull."""
        query = select(Repository.name).where(
            Repository.name >= f"{account}/",
            Repository.name < f"{account}0",  # '/' + 1 == '0'
        )
        if viewer is not None:
            public = exists().where(
                RepositorySettings.repository == Repository.name, RepositorySettings.visibility == "public"
            )
            shared = exists().where(
                RepositoryPolicy.repository == Repository.name,
                RepositoryPolicy.account_id
                == select(Account.id).where(Account.name == viewer).scalar_subquery(),
                RepositoryPolicy.actions.contains("pull"),
            )
            query = query.where(or_(public, shared))
        if last is not None:
            query = query.where(Repository.name > last)
        with read_transaction(self.engine) as conn:
            names = list(conn.execute(query.order_by(Repository.name).limit(limit + 1)).scalars())
        return _listing(names, limit, lambda name: name)

    def policies_page(
        self, repository: str, limit: int, last: str | None
    ) -> Listing[tuple[str, frozenset[str]]]:
        """The accounts that policies on the repository grant to, by name, and their actions."""
        query = (
            select(Account.name, RepositoryPolicy.actions)
            .join(Account, Account.id == RepositoryPolicy.account_id)
            .where(RepositoryPolicy.repository == repository)
        )
        if last is not None:
            query = query.where(Account.name > last)
        with read_transaction(self.engine) as conn:
            rows = conn.execute(query.order_by(Account.name).limit(limit + 1)).all()
        grants = [(str(r.name), frozenset(str(r.actions).split(","))) for r in rows]
        return _listing(grants, limit, lambda grant: grant[0])


def _listing(rows: list[T], limit: int, key: Callable[[T], str]) -> Listing[T]:
    """`rows` were fetched with LIMIT limit + 1: one more than the page says there is a next one."""
    if len(rows) > limit:
        return Listing(rows[:limit], key(rows[limit - 1]))
    return Listing(rows)
