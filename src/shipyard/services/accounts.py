"""Managing accounts, principals, repositories and policies, with every operation authorized here.

Who may do what:
- a superuser (an admin of the account `admin`) manages everything, and alone creates and removes
  accounts;
- an account's admins manage its users, robots, access keys, repositories and policies;
- every member sees its account, its users and robots, and the repositories it may pull; creates
  and deletes its own access keys (users only) and revokes its own login passwords.

Secrets are generated here, handed back once in `Created`, and stored only as argon2 hashes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shipyard.auth.credentials import hash_secret, new_key_id, new_secret
from shipyard.db.accounts import AccountStore, Conflict, NotFound
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
from shipyard.domain.errors import Denied, RequestInvalid
from shipyard.domain.names import validate_name

log = logging.getLogger(__name__)

ROBOT_SEPARATOR = "+"
ROBOT_ROLES: tuple[Role, ...] = ("writer", "reader")
VISIBILITIES: tuple[Visibility, ...] = ("private", "public")
_PAGE = 1000


class ManagementInvalid(RequestInvalid):
    message = "invalid management request"


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


class AccountService:
    def __init__(self, accounts: AccountStore, metadata: MetadataStore) -> None:
        self.accounts = accounts
        self.metadata = metadata

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
            raise NotFound(f"no account {account}")
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

    def list_accounts(self, actor: PrincipalRecord) -> list[AccountRecord]:
        if is_superuser(actor):
            return self.accounts.list_accounts()
        own = self.accounts.get_account(actor.account)
        return [] if own is None else [own]

    def get_account(self, actor: PrincipalRecord, account: str) -> AccountRecord:
        return self._require_member(actor, account)

    def create_account(self, actor: PrincipalRecord, account: str) -> AccountRecord:
        self._require_superuser(actor)
        return self.accounts.create_account(validate_account_name(account))

    def set_account_disabled(self, actor: PrincipalRecord, account: str, disabled: bool) -> AccountRecord:
        self._require_superuser(actor)
        if account == SUPERUSER_ACCOUNT and disabled:
            raise Denied(f"the account {SUPERUSER_ACCOUNT} cannot be disabled")
        self.accounts.set_account_disabled(account, disabled)
        return self._require_member(actor, account)

    def delete_account(self, actor: PrincipalRecord, account: str) -> None:
        self._require_superuser(actor)
        if account == SUPERUSER_ACCOUNT:
            raise Denied(f"the account {SUPERUSER_ACCOUNT} cannot be deleted")
        if self.accounts.get_account(account) is None:
            raise NotFound(f"no account {account}")
        if self._repository_names(account):
            raise Conflict(f"account {account} still has repositories: delete them first")
        self.accounts.delete_account(account)

    # -- users and robots ----------------------------------------------------------------------

    def list_principals(
        self, actor: PrincipalRecord, account: str, kind: PrincipalKind
    ) -> list[PrincipalRecord]:
        self._require_member(actor, account)
        principals = self.accounts.list_principals(account, kind)
        if kind == "access_key" and not self._is_admin_of(actor, account):
            principals = [p for p in principals if p.owner_id == _user_id(actor)]
        return principals

    def create_user(
        self, actor: PrincipalRecord, account: str, name: str, role: str, password: str | None = None
    ) -> Created:
        """A user logs in with `name`. Without `password`, one is generated."""
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
        log.info("user %s created in %s by %s", principal.login, account, actor.login)
        return Created(principal, "" if password else secret)

    def create_robot(
        self, actor: PrincipalRecord, account: str, name: str, role: str, description: str | None = None
    ) -> Created:
        """A robot logs in as `<account>+<name>` with a generated secret."""
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
        log.info("robot %s created by %s", principal.login, actor.login)
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
    ) -> tuple[PrincipalRecord, str | None]:
        """Change a user's or robot's role, enable or disable it, or give it a new secret (returned)."""
        self._require_admin(actor, account)
        target = self._principal_in(account, login, kind)
        checked = None if role is None else _role(role, ROBOT_ROLES if kind == "robot" else ROLES)
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

    def delete_principal(self, actor: PrincipalRecord, account: str, login: str, kind: PrincipalKind) -> None:
        self._require_member(actor, account)
        target = self._principal_in(account, login, kind)
        own_key = kind == "access_key" and target.owner_id == _user_id(actor)
        if not (own_key or self._is_admin_of(actor, account)):
            raise Denied(f"only admins of {account} may do this")
        if target.id == actor.id:
            raise Denied("you cannot delete yourself")
        for key in self._keys_of(target):
            self.accounts.delete_principal(key.login)
        self.accounts.delete_principal(login)
        log.info("%s %s deleted by %s", kind, login, actor.login)

    def revoke(self, actor: PrincipalRecord, account: str, login: str) -> PrincipalRecord:
        """Bump the token generation: every login password issued to `login` stops working."""
        self._require_member(actor, account)
        target = self._principal_in(account, login, None)
        mine = target.id == actor.id or target.owner_id == _user_id(actor)
        if not (mine or self._is_admin_of(actor, account)):
            raise Denied(f"only admins of {account} may do this")
        self.accounts.update_principal(login, bump_generation=True)
        return self._principal_in(account, login, None)

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
        self, actor: PrincipalRecord, account: str, description: str | None = None
    ) -> Created:
        """An access key of the calling user: login = a new key id, the user's role, a new secret."""
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
        log.info("access key %s created for %s", principal.login, actor.login)
        return Created(principal, secret)

    # -- repositories --------------------------------------------------------------------------

    def _repository_names(self, account: str) -> list[str]:
        names: list[str] = []
        last: str | None = None
        while True:
            page = self.metadata.catalog(_PAGE, last, namespaces=[account])
            names.extend(page.items)
            if not page.has_more or not page.items:
                return names
            last = page.items[-1]

    def _info(self, actor: PrincipalRecord, name: str) -> RepositoryInfo:
        access = self.accounts.repository_access(name)
        return RepositoryInfo(name, access.visibility, access.grants, actions_for(actor, access))

    def list_repositories(self, actor: PrincipalRecord, account: str) -> list[RepositoryInfo]:
        """The account's repositories that the caller may pull."""
        if self.accounts.get_account(account) is None:
            raise NotFound(f"no account {account}")
        infos = [self._info(actor, name) for name in self._repository_names(account)]
        return [info for info in infos if "pull" in info.actions]

    def get_repository(self, actor: PrincipalRecord, name: str) -> RepositoryInfo:
        validate_name(name)
        if not self.metadata.repository_exists(name):
            raise NotFound(f"no repository {name}")
        info = self._info(actor, name)
        if "pull" not in info.actions:
            raise NotFound(f"no repository {name}")
        return info

    def create_repository(
        self, actor: PrincipalRecord, name: str, visibility: str = "private"
    ) -> RepositoryInfo:
        account = account_of(validate_name(name))
        if "/" not in name:
            raise ManagementInvalid("a repository name is <account>/<name>")
        self._require_admin(actor, account)
        checked = self._visibility(visibility)
        if not self.metadata.create_repository(name):
            raise Conflict(f"repository exists: {name}")
        self.accounts.set_visibility(name, checked)
        return self._info(actor, name)

    def delete_repository(self, actor: PrincipalRecord, name: str) -> None:
        self._require_admin(actor, account_of(validate_name(name)))
        if not self.metadata.delete_repository(name):
            raise NotFound(f"no repository {name}")
        self.accounts.forget_repository(name)
        log.info("repository %s deleted by %s", name, actor.login)

    def set_visibility(self, actor: PrincipalRecord, name: str, visibility: str) -> RepositoryInfo:
        self._require_existing_as_admin(actor, name)
        self.accounts.set_visibility(name, self._visibility(visibility))
        return self._info(actor, name)

    def set_policy(
        self, actor: PrincipalRecord, name: str, grantee: str, actions: frozenset[str]
    ) -> RepositoryInfo:
        """Grant `grantee` (another account) pull, or pull and push, on the repository."""
        owner = self._require_existing_as_admin(actor, name)
        if grantee == owner:
            raise ManagementInvalid("an account's own members need no policy")
        unknown = actions - POLICY_ACTIONS
        if unknown or not actions:
            raise ManagementInvalid(f"policy actions are {', '.join(sorted(POLICY_ACTIONS))}")
        self.accounts.set_policy(name, grantee, actions)
        return self._info(actor, name)

    def remove_policy(self, actor: PrincipalRecord, name: str, grantee: str) -> RepositoryInfo:
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
