"""The access seam: every API request asks it before touching a repository.

Authentication and per-account authorization plug in here; until then the registry runs with
`AnonymousAccess`, which lets every request through.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from shipyard.domain.errors import Denied

Action = Literal["pull", "push", "delete"]
ACTIONS: frozenset[str] = frozenset({"pull", "push", "delete"})


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts on the registry, and what they may do: the actions granted per repository, as the
    caller's token carries them. Every service call that reads or changes a repository takes one and
    checks it, so that a caller inside the process (a builder, a worker) cannot skip authorization.

    The edge builds it once per token, so a check costs a dict lookup. An unrestricted actor is never
    a default: internal callers name SYSTEM, and only a registry without authentication hands one to
    its callers."""

    name: str
    repositories: Mapping[str, frozenset[str]] = field(default_factory=dict)
    catalog: bool = False
    unrestricted: bool = False

    @classmethod
    def granted(cls, name: str, grants: Iterable[tuple[str, str, Iterable[str]]]) -> Actor:
        """From (type, name, actions) grants as tokens carry them; `*` stands for every action."""
        repositories: dict[str, frozenset[str]] = {}
        catalog = False
        for kind, resource, actions in grants:
            wanted = frozenset(actions)
            if kind == "repository":
                wanted = ACTIONS if "*" in wanted else wanted & ACTIONS
                repositories[resource] = repositories.get(resource, frozenset()) | wanted
            elif kind == "registry" and resource == "catalog" and "*" in wanted:
                catalog = True
        return cls(name, repositories, catalog)

    @classmethod
    def everything(cls, name: str) -> Actor:
        return cls(name, {}, catalog=True, unrestricted=True)

    def may(self, repository: str, action: Action) -> bool:
        if self.unrestricted:
            return True
        actions = self.repositories.get(repository)
        return actions is not None and action in actions

    def require(self, repository: str, action: Action) -> None:
        if not self.unrestricted:
            actions = self.repositories.get(repository)
            if actions is None or action not in actions:
                raise Denied(f"{self.name or 'anonymous'} may not {action} {repository}")

    def require_any(self, repository: str, actions: tuple[Action, ...]) -> None:
        if not any(self.may(repository, action) for action in actions):
            raise Denied(f"{self.name or 'anonymous'} may not {' or '.join(actions)} {repository}")

    def require_catalog(self) -> None:
        if not self.catalog:
            raise Denied(f"{self.name or 'anonymous'} may not list the catalog")

    def require_system(self) -> None:
        """Registry-wide housekeeping (purging abandoned uploads): internal callers only."""
        if self is not SYSTEM:
            raise Denied(f"{self.name or 'anonymous'} may not do registry-wide housekeeping")


# The registry itself, for internal callers (the periodic jobs, the CLI's maintenance commands).
SYSTEM = Actor.everything("system")
# A caller whose request carried no grants.
NOBODY = Actor("anonymous")


@dataclass(frozen=True)
class Identity:
    subject: str
    anonymous: bool = False


@dataclass(frozen=True)
class CatalogFilter:
    """The repositories a caller may see in the catalog: whole namespaces, plus single repositories."""

    namespaces: tuple[str, ...] = ()
    repositories: frozenset[str] = field(default_factory=frozenset)


ANONYMOUS = Identity("anonymous", anonymous=True)


class AccessPolicy(Protocol):
    """`authenticate`, `catalog_filter` and `authorize` may ask the database: callers on an event loop
    run them in a worker thread, unless `known_caller` or `authorizes_instantly` says it need not."""

    def authenticate(self, authorization: str | None, source: str | None = None) -> Identity:
        """The caller behind an Authorization header (raise Unauthorized for a bad credential)."""
        ...

    def known_caller(self, authorization: str | None, source: str | None = None) -> Identity | None:
        """What `authenticate` would answer, when that needs no I/O (a credential seen before); else None."""
        ...

    def authorizes_instantly(self, identity: Identity, repository: str | None, action: Action) -> bool:
        """Whether `authorize` answers without I/O for these arguments."""
        ...

    def require_authenticated(self, identity: Identity) -> None:
        """Raise Unauthorized (a challenge) unless the request carried a valid token: `GET /v2/`."""
        ...

    def catalog_filter(self, identity: Identity) -> CatalogFilter | None:
        """What the catalog may show to `identity`; None for everything."""
        ...

    def authorize(self, identity: Identity, repository: str | None, action: Action) -> None:
        """Raise Unauthorized/Denied unless `identity` may do `action` on `repository`
        (`repository` None means the registry-wide catalog)."""
        ...

    def actor(self, identity: Identity) -> Actor:
        """What `identity` may do, for the services to check (built when the identity was)."""
        ...


class AnonymousAccess:
    """No authentication: every request is allowed. A development mode, until accounts exist."""

    def authenticate(self, authorization: str | None, source: str | None = None) -> Identity:
        return ANONYMOUS

    def known_caller(self, authorization: str | None, source: str | None = None) -> Identity | None:
        return ANONYMOUS

    def authorizes_instantly(self, identity: Identity, repository: str | None, action: Action) -> bool:
        return True

    def require_authenticated(self, identity: Identity) -> None:
        return None

    def catalog_filter(self, identity: Identity) -> CatalogFilter | None:
        return None

    def authorize(self, identity: Identity, repository: str | None, action: Action) -> None:
        return None

    def actor(self, identity: Identity) -> Actor:
        return _ANYONE


# Without authentication every caller may do everything; said here, at the edge, not by a default.
_ANYONE = Actor.everything("anonymous")
