"""Accounts, principals, roles and grants: plain records and the rules that relate them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from shipyard.domain.errors import NameInvalid

Role = Literal["admin", "writer", "reader"]
PrincipalKind = Literal["user", "access_key", "robot"]
Visibility = Literal["private", "public"]

ROLES: tuple[Role, ...] = ("admin", "writer", "reader")
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"pull", "push", "delete"}),
    "writer": frozenset({"pull", "push", "delete"}),
    "reader": frozenset({"pull"}),
}
POLICY_ACTIONS = frozenset({"pull", "push"})

# Account names are the first component of repository names, so they follow that grammar, shorter.
ACCOUNT_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
USER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def validate_account_name(name: str) -> str:
    if len(name) > 64 or not ACCOUNT_NAME.fullmatch(name):
        raise NameInvalid(f"invalid account name: {name!r}")
    return name


def validate_user_name(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise NameInvalid(f"invalid user or robot name: {name!r}")
    return name


def account_of(repository: str) -> str:
    """The account that owns a repository: its first path component."""
    return repository.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class PrincipalRecord:
    id: int
    account: str
    kind: PrincipalKind
    login: str
    role: Role
    disabled: bool
    token_generation: int
    created_at: datetime
    description: str | None = None
    account_disabled: bool = False
    # an access key's user: the key acts with that user's role
    owner_id: int | None = None

    @property
    def active(self) -> bool:
        return not (self.disabled or self.account_disabled)


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: int
    name: str
    disabled: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RepositoryAccess:
    """What decides who may do what on one repository."""

    repository: str
    visibility: Visibility
    # account name -> actions granted by repository policies
    grants: dict[str, frozenset[str]]


SUPERUSER_ACCOUNT = "admin"


def is_superuser(principal: PrincipalRecord) -> bool:
    """The registry's operators: admins of the `admin` account may act on every repository."""
    return principal.active and principal.account == SUPERUSER_ACCOUNT and principal.role == "admin"


def actions_for(principal: PrincipalRecord | None, access: RepositoryAccess) -> frozenset[str]:
    """The actions `principal` (None: anonymous) may take on the repository."""
    allowed: set[str] = set()
    if access.visibility == "public":
        allowed.add("pull")
    if principal is None or not principal.active:
        return frozenset(allowed)
    if is_superuser(principal):
        return ROLE_ACTIONS["admin"]
    if principal.account == account_of(access.repository):
        allowed |= ROLE_ACTIONS[principal.role]
    granted = access.grants.get(principal.account)
    if granted:
        # a policy grants at most what the grantee's own role allows
        allowed |= granted & ROLE_ACTIONS[principal.role]
    return frozenset(allowed)
