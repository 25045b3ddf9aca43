"""Managing accounts, principals, repositories and policies, with every operation authorized and
every change audited here.

Who may do what:
- a superuser (an admin of the account `admin`) manages everything, and alone creates and removes
  accounts;
- an account's admins manage its users, robots, access keys, repositories and policies, and read its
  audit events;
- every member sees its account, its users and robots, and the repositories it may pull; creates
  and deletes its own access keys (users only) and revokes its own login passwords.

Secrets are generated here, handed back once in `Created`, and stored only as argon2 hashes. Every
call that changes state, allowed or not, writes an audit event: who, what, from where (`source`: the
client's address, or LOCAL_SOURCE for calls from inside the process), the outcome and why. No secret
ever goes into an event.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from shipyard.auth.credentials import hash_secret, new_key_id, new_secret
from shipyard.db.accounts import AccountStore, Conflict, NotFound
from shipyard.db.gc import GcStore
from shipyard.db.metadata import MetadataStore
from shipyard.domain.accounts import (
    POLICY_ACTIONS,
    ROLES,
    SUPERUSER_ACCOUNT,
    AccountRecord,
    PrincipalKind,
    PrincipalRecord,
    Role,
    Visibility,
    account_of,
    actions_for,
    is_superuser,
    validate_account_name,
    validate_user_name,
)
from shipyard.domain.errors import Denied, PaginationInvalid, RegistryError, RequestInvalid
from shipyard.domain.management import DEFAULT_PAGE, MAX_PAGE, AuditRecord, Listing, Outcome
from shipyard.domain.names import validate_name
from shipyard.domain.records import Usage

log = logging.getLogger(__name__)
audit_log = logging.getLogger("shipyard.audit")

ROBOT_SEPARATOR = "+"
ROBOT_ROLES: tuple[Role, ...] = ("writer", "reader")
VISIBILITIES: tuple[Visibility, ...] = ("private", "public")
# the source of calls made inside the process rather than through the API
LOCAL_SOURCE = "local"
_KIND_NAMES: dict[str, str] = {"user": "user", "robot": "robot", "access_key": "access-key"}


class ManagementInvalid(RequestInvalid):
    message = "invalid management request"


class OwnAccountPolicy(RegistryError):
    """A policy for the account that owns the repository: a well-formed request that the state of
    the repository, not its shape, refuses."""

    code = "CONFLICT"
    message = "the account owns the repository"


class NotMember(NotFound):
    """Answered as "no such account" so that outsiders learn nothing; the audit says what happened."""

    def __init__(self, actor: PrincipalRecord, account: str) -> None:
        super().__init__(f"no account {account}")
        self.reason = f"{actor.login} is not a member of {account}"


@dataclass(frozen=True, slots=True)
class Created:
    """A new principal and its secret: the only time the secret is seen."""

    principal: PrincipalRecord
    secret: str


@dataclass(frozen=True, slots=True)
class RepositoryInfo:
    name: str
    visibility: Visibility
    # account -> actions granted by policies
    policies: dict[str, frozenset[str]]
    # what the caller may do
    actions: frozenset[str]
    # bytes stored, from the counters GC keeps (None when the repository has no row yet)
    usage: Usage | None = None
    untagged_retention_days: int | None = None


class _Event:
    """What an audited call fills in as it learns it: the target, and what changed."""

    __slots__ = ("detail", "target")

    def __init__(self, target: str | None, detail: str) -> None:
        self.target = target
        self.detail = detail


def robot_login(account: str, name: str) -> str:
    return f"{account}{ROBOT_SEPARATOR}{name}"


def _role(value: str, allowed: tuple[Role, ...] = ROLES) -> Role:
    for role in allowed:
        if value == role:
            return role
    raise ManagementInvalid(f"invalid role {value!r}: one of {', '.join(allowed)}")


def _user_id(principal: PrincipalRecord) -> int:
    """The user behind a principal: an access key acts for its owner."""
    return principal.owner_id if principal.owner_id is not None else principal.id


def _page_size(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise PaginationInvalid(f"n must be between 1 and {MAX_PAGE}, not {limit}")
    return limit


class AccountService:
    def __init__(self, accounts: AccountStore, metadata: MetadataStore) -> None:
        self.accounts = accounts
        self.metadata = metadata
        self._storage = GcStore(metadata.engine)

    # -- audit ---------------------------------------------------------------------------------

    @contextmanager
    def _audited(
        self,
        actor: PrincipalRecord,
        source: str,
        action: str,
        account: str | None,
        target: str | None,
        detail: str = "",
    ) -> Iterator[_Event]:
        """Run the body as one audited action: allowed when it returns, denied when authorization
        refuses it, failed on any other error (which is re-raised either way)."""
        event = _Event(target, detail)
        outcome: Outcome = "allowed"
        reason = ""
        try:
            yield event
        except NotMember as error:
            outcome, reason = "denied", error.reason
            raise
        except Denied as error:
            outcome, reason = "denied", str(error)
            raise
        except RegistryError as error:
            outcome, reason = "failed", str(error)
            raise
        except BaseException as error:
            outcome, reason = "failed", f"internal error ({type(error).__name__})"
            raise
        finally:
            if outcome != "allowed" and event.detail:
                reason = f"{reason} ({event.detail})"
            self._record(actor, source, action, account, event.target, outcome, reason or event.detail)

    def _record(
        self,
        actor: PrincipalRecord,
        source: str,
        action: str,
        account: str | None,
        target: str | None,
        outcome: Outcome,
        reason: str,
    ) -> None:
        audit_log.log(
            logging.INFO if outcome == "allowed" else logging.WARNING,
            "%s %s principal=%s source=%s account=%s target=%s reason=%s",
            action,
            outcome,
            actor.login,
            source,
            account or "-",
            target or "-",
            reason or "-",
        )
        try:
            self.accounts.record_event(
                action,
                principal=actor.login,
                source=source,
                account=account,
                target=target,
                outcome=outcome,
                reason=reason,
            )
        except Exception:
            # the action itself stands (or has failed) either way; the log line above keeps the trace
            log.exception("could not write the audit event")

    def audit_events(
        self,
        actor: PrincipalRecord,
        account: str | None = None,
        *,
        limit: int = DEFAULT_PAGE,
        last: int | None = None,
    ) -> Listing[AuditRecord]:
        """Audit events, newest first: a superuser reads every account's (or, with `account`, one
        account's); an account's admins read their account's."""
        if is_superuser(actor):
            # also the events of accounts deleted since
            return self.accounts.audit_page(_page_size(limit), last, account=account)
        account = account or actor.account
        self._require_admin(actor, account)
        return self.accounts.audit_page(_page_size(limit), last, account=account)

    # -- authorization -------------------------------------------------------------------------

    @staticmethod
    def _require_superuser(actor: PrincipalRecord) -> None:
        if not is_superuser(actor):
            raise Denied("only registry administrators may do this")

    @staticmethod
    def _is_admin_of(actor: PrincipalRecord, account: str) -> bool:
        return is_superuser(actor) or (actor.active and actor.account == account and actor.role == "admin")

    def _require_admin(self, actor: PrincipalRecord, account: str) -> AccountRecord:
        found = self._require_member(actor, account)
        if not self._is_admin_of(actor, account):
            raise Denied(f"only admins of {account} may do this")
        return found

    def _require_member(self, actor: PrincipalRecord, account: str) -> AccountRecord:
        # non-members learn nothing about other accounts, not even whether they exist
        if not (is_superuser(actor) or (actor.active and actor.account == account)):
            raise NotMember(actor, account)
        found = self.accounts.get_account(account)
        if found is None:
            raise NotFound(f"no account {account}")
        return found

    def _principal_in(self, account: str, login: str, kind: PrincipalKind | None) -> PrincipalRecord:
        found = self.accounts.get_principal(login)
        if found is None or found[0].account != account or (kind is not None and found[0].kind != kind):
            raise NotFound(f"no {(kind or 'principal').replace('_', ' ')} {login} in {account}")
        return found[0]

    # -- accounts ------------------------------------------------------------------------------

    def list_accounts(
        self, actor: PrincipalRecord, *, limit: int = DEFAULT_PAGE, last: str | None = None
    ) -> Listing[AccountRecord]:
        """Every account for a superuser; the caller's own for anyone else."""
        only = None if is_superuser(actor) else actor.account
        return self.accounts.accounts_page(_page_size(limit), last, only=only)

    def get_account(self, actor: PrincipalRecord, account: str) -> AccountRecord:
        return self._require_member(actor, account)

    def create_account(
        self, actor: PrincipalRecord, account: str, *, source: str = LOCAL_SOURCE
    ) -> AccountRecord:
        with self._audited(actor, source, "account.create", account, account):
            self._require_superuser(actor)
            return self.accounts.create_account(validate_account_name(account))

    def set_account_disabled(
        self, actor: PrincipalRecord, account: str, disabled: bool, *, source: str = LOCAL_SOURCE
    ) -> AccountRecord:
        action = "account.disable" if disabled else "account.enable"
        with self._audited(actor, source, action, account, account):
            self._require_superuser(actor)
            if account == SUPERUSER_ACCOUNT and disabled:
                raise Denied(f"the account {SUPERUSER_ACCOUNT} cannot be disabled")
            self.accounts.set_account_disabled(account, disabled)
            return self._require_member(actor, account)

    def delete_account(self, actor: PrincipalRecord, account: str, *, source: str = LOCAL_SOURCE) -> None:
        with self._audited(actor, source, "account.delete", account, account):
            self._require_superuser(actor)
            if account == SUPERUSER_ACCOUNT:
                raise Denied(f"the account {SUPERUSER_ACCOUNT} cannot be deleted")
            if self.accounts.get_account(account) is None:
                raise NotFound(f"no account {account}")
            if self.metadata.catalog(1, None, namespaces=[account]).items:
                raise Conflict(f"account {account} still has repositories: delete them first")
            self.accounts.delete_account(account)

    # -- users and robots ----------------------------------------------------------------------

    def list_principals(
        self,
        actor: PrincipalRecord,
        account: str,
        kind: PrincipalKind,
        *,
        limit: int = DEFAULT_PAGE,
        last: str | None = None,
    ) -> Listing[PrincipalRecord]:
        """An account's users, robots or access keys by login; a non-admin sees only its own keys."""
        self._require_member(actor, account)
        owner = None
        if kind == "access_key" and not self._is_admin_of(actor, account):
            owner = _user_id(actor)
        return self.accounts.principals_page(account, kind, _page_size(limit), last, owner_id=owner)

    def create_user(
        self,
        actor: PrincipalRecord,
        account: str,
        name: str,
        role: str,
        password: str | None = None,
        *,
        source: str = LOCAL_SOURCE,
    ) -> Created:
        """A user logs in with `name`. Without `password`, one is generated."""
        with self._audited(actor, source, "user.create", account, name, f"role {role}"):
            self._require_admin(actor, account)
            checked = _role(role)
            if checked == "admin" and account == SUPERUSER_ACCOUNT and not is_superuser(actor):
                raise Denied("only registry administrators may create registry administrators")
            secret = password or new_secret()
            if len(secret) < 8:
                raise ManagementInvalid("passwords have at least 8 characters")
            principal = self.accounts.create_principal(
                account,
                kind="user",
                login=validate_user_name(name),
                role=checked,
                secret_hash=hash_secret(secret),
            )
            return Created(principal, "" if password else secret)

    def create_robot(
        self,
        actor: PrincipalRecord,
        account: str,
        name: str,
        role: str,
        description: str | None = None,
        *,
        source: str = LOCAL_SOURCE,
    ) -> Created:
        """A robot logs in as `<account>+<name>` with a generated secret."""
        login = robot_login(account, name)
        with self._audited(actor, source, "robot.create", account, login, f"role {role}"):
            self._require_admin(actor, account)
            secret = new_secret()
            principal = self.accounts.create_principal(
                account,
                kind="robot",
                login=robot_login(account, validate_user_name(name)),
                role=_role(role, ROBOT_ROLES),
                secret_hash=hash_secret(secret),
                description=description,
            )
            return Created(principal, secret)

    def update_principal(
        self,
        actor: PrincipalRecord,
        account: str,
        login: str,
        kind: PrincipalKind,
        *,
        role: str | None = None,
        disabled: bool | None = None,
        reset_secret: bool = False,
        source: str = LOCAL_SOURCE,
    ) -> tuple[PrincipalRecord, str | None]:
        """Change a user's or robot's role, enable or disable it, or give it a new secret (returned)."""
        changes = [
            *([] if role is None else ["role"]),
            *([] if disabled is None else ["disable" if disabled else "enable"]),
            *(["reset-secret"] if reset_secret else []),
        ]
        action = f"{_KIND_NAMES[kind]}.{'+'.join(changes) or 'update'}"
        with self._audited(actor, source, action, account, login) as event:
            self._require_admin(actor, account)
            target = self._principal_in(account, login, kind)
            checked = None if role is None else _role(role, ROBOT_ROLES if kind == "robot" else ROLES)
            if checked is not None:
                event.detail = f"role {target.role} -> {checked}"
            if target.id == actor.id and (disabled or (checked is not None and checked != target.role)):
                raise Denied("you cannot disable or demote yourself")
            if checked == "admin" and account == SUPERUSER_ACCOUNT and not is_superuser(actor):
                raise Denied("only registry administrators may create registry administrators")
            secret = new_secret() if reset_secret else None
            self.accounts.update_principal(
                login,
                role=checked,
                disabled=disabled,
                secret_hash=None if secret is None else hash_secret(secret),
                # a new secret or a disabled principal: the login passwords issued before stop working
                bump_generation=reset_secret or bool(disabled),
            )
            # an access key acts with its user's role and only while its user may act
            for key in self._keys_of(target):
                self.accounts.update_principal(
                    key.login, role=checked, disabled=disabled, bump_generation=bool(disabled)
                )
            return self._principal_in(account, login, kind), secret

    def delete_principal(
        self,
        actor: PrincipalRecord,
        account: str,
        login: str,
        kind: PrincipalKind,
        *,
        source: str = LOCAL_SOURCE,
    ) -> None:
        with self._audited(actor, source, f"{_KIND_NAMES[kind]}.delete", account, login) as event:
            self._require_member(actor, account)
            target = self._principal_in(account, login, kind)
            own_key = kind == "access_key" and target.owner_id == _user_id(actor)
            if not (own_key or self._is_admin_of(actor, account)):
                raise Denied(f"only admins of {account} may do this")
            if target.id == actor.id:
                raise Denied("you cannot delete yourself")
            keys = self._keys_of(target)
            for key in keys:
                self.accounts.delete_principal(key.login)
            self.accounts.delete_principal(login)
            if keys:
                event.detail = f"with its access keys {', '.join(k.login for k in keys)}"

    def revoke(
        self, actor: PrincipalRecord, account: str, login: str, *, source: str = LOCAL_SOURCE
    ) -> PrincipalRecord:
        """Bump the token generation: every login password issued to `login` stops working."""
        with self._audited(actor, source, "principal.revoke", account, login) as event:
            self._require_member(actor, account)
            target = self._principal_in(account, login, None)
            mine = target.id == actor.id or target.owner_id == _user_id(actor)
            if not (mine or self._is_admin_of(actor, account)):
                raise Denied(f"only admins of {account} may do this")
            self.accounts.update_principal(login, bump_generation=True)
            revoked = self._principal_in(account, login, None)
            event.detail = f"token generation {target.token_generation} -> {revoked.token_generation}"
            return revoked

    def _keys_of(self, principal: PrincipalRecord) -> list[PrincipalRecord]:
        if principal.kind != "user":
            return []
        return [
            p
            for p in self.accounts.list_principals(principal.account, "access_key")
            if p.owner_id == principal.id
        ]

    # -- access keys ---------------------------------------------------------------------------

    def create_access_key(
        self,
        actor: PrincipalRecord,
        account: str,
        description: str | None = None,
        *,
        source: str = LOCAL_SOURCE,
    ) -> Created:
        """An access key of the calling user: login = a new key id, the user's role, a new secret."""
        with self._audited(actor, source, "access-key.create", account, None) as event:
            self._require_member(actor, account)
            if actor.kind != "user" or actor.account != account:
                raise Denied("only users create access keys, in their own account")
            secret = new_secret()
            principal = self.accounts.create_principal(
                account,
                kind="access_key",
                login=new_key_id(),
                role=actor.role,
                secret_hash=hash_secret(secret),
                owner_id=actor.id,
                description=description,
            )
            event.target = principal.login
            event.detail = f"for {actor.login}, role {principal.role}"
            return Created(principal, secret)

    # -- repositories --------------------------------------------------------------------------

    def _info(self, actor: PrincipalRecord, name: str) -> RepositoryInfo:
        access = self.accounts.repository_access(name)
        return RepositoryInfo(
            name,
            access.visibility,
            access.grants,
            actions_for(actor, access),
            self._storage.repository_usage(name),
            self.accounts.untagged_retention(name),
        )

    def account_usage(self, actor: PrincipalRecord, account: str) -> Usage:
        """The bytes of the blobs the account's repositories link, each blob once; unique: linked by no
        other account."""
        self._require_member(actor, account)
        return self._storage.namespace_usage(account)

    def set_untagged_retention(
        self, actor: PrincipalRecord, name: str, days: int | None, *, source: str = LOCAL_SOURCE
    ) -> RepositoryInfo:
        detail = "never" if days is None else f"{days} days"
        with self._audited(actor, source, "repository.untagged-retention", account_of(name), name, detail):
            self._require_existing_as_admin(actor, name)
            self.accounts.set_untagged_retention(name, days)
            return self._info(actor, name)

    def list_repositories(
        self, actor: PrincipalRecord, account: str, *, limit: int = DEFAULT_PAGE, last: str | None = None
    ) -> Listing[RepositoryInfo]:
        """The account's repositories that the caller may pull: all of them for its members (every
        role pulls), the public and shared ones for anyone else."""
        if self.accounts.get_account(account) is None:
            raise NotFound(f"no account {account}")
        member = is_superuser(actor) or (actor.active and actor.account == account)
        viewer = None if member else actor.account
        names = self.accounts.repositories_page(account, _page_size(limit), last, viewer=viewer)
        return Listing((self._info(actor, name) for name in names), names.next)

    def get_repository(self, actor: PrincipalRecord, name: str) -> RepositoryInfo:
        validate_name(name)
        if not self.metadata.repository_exists(name):
            raise NotFound(f"no repository {name}")
        info = self._info(actor, name)
        if "pull" not in info.actions:
            raise NotFound(f"no repository {name}")
        return info

    def list_policies(
        self, actor: PrincipalRecord, name: str, *, limit: int = DEFAULT_PAGE, last: str | None = None
    ) -> Listing[tuple[str, frozenset[str]]]:
        """The policies on a repository that the caller may see: (grantee account, actions)."""
        self.get_repository(actor, name)
        return self.accounts.policies_page(name, _page_size(limit), last)

    def create_repository(
        self, actor: PrincipalRecord, name: str, visibility: str = "private", *, source: str = LOCAL_SOURCE
    ) -> RepositoryInfo:
        account = account_of(name)
        with self._audited(actor, source, "repository.create", account, name, f"visibility {visibility}"):
            validate_name(name)
            if "/" not in name:
                raise ManagementInvalid("a repository name is <account>/<name>")
            self._require_admin(actor, account)
            checked = self._visibility(visibility)
            if not self.metadata.create_repository(name):
                raise Conflict(f"repository exists: {name}")
            self.accounts.set_visibility(name, checked)
            return self._info(actor, name)

    def delete_repository(self, actor: PrincipalRecord, name: str, *, source: str = LOCAL_SOURCE) -> None:
        with self._audited(actor, source, "repository.delete", account_of(name), name):
            self._require_admin(actor, account_of(validate_name(name)))
            if not self.metadata.delete_repository(name):
                raise NotFound(f"no repository {name}")
            self.accounts.forget_repository(name)

    def set_visibility(
        self, actor: PrincipalRecord, name: str, visibility: str, *, source: str = LOCAL_SOURCE
    ) -> RepositoryInfo:
        with self._audited(actor, source, "repository.visibility", account_of(name), name, visibility):
            self._require_existing_as_admin(actor, name)
            self.accounts.set_visibility(name, self._visibility(visibility))
            return self._info(actor, name)

    def set_policy(
        self,
        actor: PrincipalRecord,
        name: str,
        grantee: str,
        actions: frozenset[str],
        *,
        source: str = LOCAL_SOURCE,
    ) -> RepositoryInfo:
        """Grant `grantee` (another account) pull, or pull and push, on the repository."""
        detail = f"{grantee}: {','.join(sorted(actions))}"
        with self._audited(actor, source, "policy.grant", account_of(name), name, detail):
            owner = self._require_existing_as_admin(actor, name)
            if grantee == owner:
                raise OwnAccountPolicy("an account's own members need no policy")
            unknown = actions - POLICY_ACTIONS
            if unknown or not actions:
                raise ManagementInvalid(f"policy actions are {', '.join(sorted(POLICY_ACTIONS))}")
            self.accounts.set_policy(name, grantee, actions)
            return self._info(actor, name)

    def remove_policy(
        self, actor: PrincipalRecord, name: str, grantee: str, *, source: str = LOCAL_SOURCE
    ) -> RepositoryInfo:
        with self._audited(actor, source, "policy.revoke", account_of(name), name, grantee):
            self._require_existing_as_admin(actor, name)
            if grantee not in self.accounts.policies(name):
                raise NotFound(f"no policy for {grantee} on {name}")
            self.accounts.set_policy(name, grantee, frozenset())
            return self._info(actor, name)

    def _require_existing_as_admin(self, actor: PrincipalRecord, name: str) -> str:
        account = account_of(validate_name(name))
        self._require_admin(actor, account)
        if not self.metadata.repository_exists(name):
            raise NotFound(f"no repository {name}")
        return account

    @staticmethod
    def _visibility(value: str) -> Visibility:
        for visibility in VISIBILITIES:
            if value == visibility:
                return visibility
        raise ManagementInvalid(f"invalid visibility {value!r}: private or public")
