"""The access seam: every API request asks it before touching a repository.

Authentication and per-account authorization plug in here; until then the registry runs with
`AnonymousAccess`, which lets every request through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Action = Literal["pull", "push", "delete"]


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    anonymous: bool = False


ANONYMOUS = Identity("anonymous", anonymous=True)


class AccessPolicy(Protocol):
    def authenticate(self, authorization: str | None) -> Identity:
        """The caller behind an Authorization header (raise Unauthorized when it is required)."""
        ...

    def authorize(self, identity: Identity, repository: str | None, action: Action) -> None:
        """Raise Unauthorized/Denied unless `identity` may do `action` on `repository`
        (`repository` None means the registry-wide catalog)."""
        ...

    def allowed(self, identity: Identity, repository: str, action: Action) -> bool: ...


class AnonymousAccess:
    """No authentication: every request is allowed. A development mode, until accounts exist."""

    def authenticate(self, authorization: str | None) -> Identity:
        return ANONYMOUS

    def authorize(self, identity: Identity, repository: str | None, action: Action) -> None:
        return None

    def allowed(self, identity: Identity, repository: str, action: Action) -> bool:
        return True
