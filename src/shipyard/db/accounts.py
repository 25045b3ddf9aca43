"""Queries for accounts, principals, repository visibility and policies, and the audit log."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from shipyard.db.engine import read_transaction, write_transaction
from shipyard.db.metadata import _aware, utcnow
from shipyard.db.models import Account, AuditEvent, Principal, RepositoryPolicy, RepositorySettings
from shipyard.domain.accounts import AccountRecord, PrincipalRecord, RepositoryAccess
from shipyard.domain.errors import RegistryError


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


class AccountStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name

    # -- accounts ------------------------------------------------------------------------------

    def create_account(self, name: str) -> AccountRecord:
        now = utcnow()
        try:
            with write_transaction(self.engine) as conn:
                account_id = conn.execute(
                    insert(Account).values(name=name, disabled=False, created_at=now).returning(Account.id)
                ).scalar_one()
        except IntegrityError:
            raise Conflict(f"account exists: {name}") from None
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
            result = conn.execute(update(Account).where(Account.name == name).values(disabled=disabled))
            if not result.rowcount:
                raise NotFound(f"no account {name}")

    def delete_account(self, name: str) -> None:
        with write_transaction(self.engine) as conn:
            account_id = conn.execute(select(Account.id).where(Account.name == name)).scalar()
            if account_id is None:
                raise NotFound(f"no account {name}")
            conn.execute(delete(RepositoryPolicy).where(RepositoryPolicy.account_id == account_id))
            conn.execute(delete(Principal).where(Principal.account_id == account_id))
            conn.execute(delete(Account).where(Account.id == account_id))

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
                    )
                )
        except IntegrityError:
            raise Conflict(f"login exists: {login}") from None
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
            result = conn.execute(update(Principal).where(Principal.login == login).values(**values))
            if not result.rowcount:
                raise NotFound(f"no principal {login}")

    def delete_principal(self, login: str) -> None:
        with write_transaction(self.engine) as conn:
            result = conn.execute(delete(Principal).where(Principal.login == login))
            if not result.rowcount:
                raise NotFound(f"no principal {login}")

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
