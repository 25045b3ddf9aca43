"""The documents of the management API as typed models: the framework validates request bodies
against them and derives the OpenAPI document from them.

Bodies are validated for shape and type here (strictly: `"yes"` is not a boolean). The grammar of
names and the length of passwords stay the service's to check, because a refused change is audited
there; the schema still documents that grammar, taken from the same domain patterns."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shipyard.domain.accounts import ACCOUNT_NAME, USER_NAME, PrincipalKind, Role, Visibility
from shipyard.domain.names import MAX_NAME_LENGTH, NAME_PATTERN

SECRET_WARNING = "store this secret now: it will not be shown again"
MIN_PASSWORD = 8


def _ecma(pattern: str) -> str:
    """A Python pattern anchored with \\Z as JSON Schema (ECMA-262) writes it."""
    return pattern.removesuffix(r"\Z") + ("" if pattern.endswith("$") else "$")


def _grammar(pattern: str, *, max_length: int | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"pattern": _ecma(pattern)}
    if max_length is not None:
        extra["maxLength"] = max_length
    return extra


ACCOUNT_GRAMMAR = _grammar(ACCOUNT_NAME.pattern, max_length=64)
USER_GRAMMAR = _grammar(USER_NAME.pattern)
REPOSITORY_NAME_GRAMMAR = _grammar(NAME_PATTERN.pattern, max_length=MAX_NAME_LENGTH)
# the part after `<account>/`, leaving room for the longest account name
MAX_REPOSITORY_PART = MAX_NAME_LENGTH - 65
REPOSITORY_GRAMMAR = _grammar(NAME_PATTERN.pattern)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- request bodies ----------------------------------------------------------------------------


class AccountCreate(_Body):
    name: str = Field(json_schema_extra=ACCOUNT_GRAMMAR, description="the new account's name")


class AccountPatch(_Body):
    disabled: bool | None = Field(None, description="true disables every member's logins; absent: no change")


class UserCreate(_Body):
    name: str = Field(json_schema_extra=USER_GRAMMAR, description="the login, unique in the registry")
    role: Role = "reader"
    password: str | None = Field(
        None,
        json_schema_extra={"minLength": MIN_PASSWORD},
        description="absent: a secret is generated and answered once",
    )


class RobotCreate(_Body):
    name: str = Field(json_schema_extra=USER_GRAMMAR, description="the login becomes `<account>+<name>`")
    role: Literal["writer", "reader"] = "reader"
    description: str | None = None


class UserPatch(_Body):
    role: Role | None = None
    disabled: bool | None = None
    reset_secret: bool | None = None


class RobotPatch(UserPatch):
    role: Literal["writer", "reader"] | None = None


class AccessKeyCreate(_Body):
    description: str | None = None


class RepositoryCreate(_Body):
    name: str = Field(
        max_length=MAX_REPOSITORY_PART,
        json_schema_extra=REPOSITORY_GRAMMAR,
        description="the name under the account: `<account>/<name>`",
    )
    visibility: Visibility = "private"


class RepositoryPatch(_Body):
    visibility: Visibility | None = None


class UntaggedRetention(_Body):
    untagged_retention_days: Annotated[int, Field(ge=1, le=36500)] | None = Field(
        description="delete manifests untagged for this many days; null keeps them"
    )


class PolicyPut(_Body):
    actions: list[Literal["pull", "push"]] = Field(
        min_length=1, description="what the account's members may do"
    )


# -- answers -----------------------------------------------------------------------------------


class Account(_Document):
    name: str
    disabled: bool
    created_at: str


class Principal(_Document):
    login: str
    name: str = Field(description="a robot's name without the `<account>+` prefix; else the login")
    account: str
    kind: PrincipalKind
    role: Role
    disabled: bool
    description: str | None
    created_at: str


class Whoami(Principal):
    superuser: bool


class Created(Principal):
    """A principal with its secret: the only answer that carries it."""

    secret: str | None = None
    warning: str | None = Field(None, examples=[SECRET_WARNING])


class Repository(_Document):
    name: str
    visibility: Visibility
    policies: dict[str, list[str]] = Field(description="account -> actions its policy grants")
    actions: list[str] = Field(description="what the caller may do")
    stored_bytes: int = Field(0, description="bytes of the blobs linked to the repository")
    unique_bytes: int = Field(0, description="of those, the bytes of blobs no other repository links")
    shared_bytes: int = Field(0, description="the bytes of blobs other repositories link too")
    blobs: int = Field(0, description="how many blobs the repository links")
    untagged_retention_days: int | None = Field(
        None, description="GC deletes manifests untagged for this many days; null keeps them"
    )


class Usage(_Document):
    account: str
    stored_bytes: int = Field(description="bytes of the blobs the account's repositories link, each once")
    unique_bytes: int = Field(description="of those, the bytes of blobs no other account links")
    shared_bytes: int = Field(description="the bytes of blobs other accounts link too")
    blobs: int


class Policy(_Document):
    account: str
    actions: list[str]


class AuditEvent(_Document):
    id: int
    at: str
    event: str
    principal: str | None
    source: str | None
    action: str | None
    account: str | None
    target: str | None
    outcome: str
    reason: str


class LoginPassword(_Document):
    username: str
    password: str
    expires_at: str


class Accounts(_Document):
    accounts: list[Account]


class Users(_Document):
    users: list[Principal]


class Robots(_Document):
    robots: list[Principal]


class AccessKeys(_Document):
    access_keys: list[Principal]


class Repositories(_Document):
    repositories: list[Repository]


class Policies(_Document):
    policies: list[Policy]


class AuditEvents(_Document):
    events: list[AuditEvent]


class ErrorEntry(_Document):
    code: str
    message: str
    detail: Any = None


class Errors(_Document):
    """The OCI error format, used by every refusal."""

    errors: list[ErrorEntry]
