"""The access seam: every API request asks it before touching a repository.

Authentication and per-account authorization plug in here; until then the registry runs with
`AnonymousAccess`, which lets every request through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

Action = Literal["pull", "push", "delete"]


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
    def authenticate(self, authorization: str | None, source: str | None = None) -> Identity:
        """The caller behind an Authorization header (raise Unauthorized for a bad credential)."""
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

    def allowed(self, identity: Identity, repository: str, action: Action) -> bool: ...


class AnonymousAccess:
    """No authentication: every request is allowed. A development mode, until accounts exist."""

    def authenticate(self, authorization: str | None, source: str | None = None) -> Identity:
        return ANONYMOUS

    def require_authenticated(self, identity: Identity) -> None:
        return None

    def catalog_filter(self, identity: Identity) -> CatalogFilter | None:
        return None

    def authorize(self, identity: Identity, repository: str | None, action: Action) -> None:
        return None

    def allowed(self, identity: Identity, repository: str, action: Action) -> bool:
        return True
