"""Records of the management API: pages of listings and audit events."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

T = TypeVar("T")

Outcome = Literal["allowed", "denied", "failed"]

DEFAULT_PAGE = 100
MAX_PAGE = 1000


class Listing(list[T]):
    """One page of a listing in key order, and `next`: the key to continue after it (the `last` of
    the next request), None on the last page. A list, so that callers who want the items iterate."""

    def __init__(self, items: Iterable[T] = (), next: str | None = None) -> None:
        super().__init__(items)
        self.next = next


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Who did what, to what, from where, and how it ended. `account` is the account acted on (it
    decides whose admins may read the event); `reason` says why it was denied or failed, or, when
    allowed, what changed. Never a secret."""

    id: int
    at: datetime
    event: str
    principal: str | None
    source: str | None
    action: str | None
    account: str | None
    target: str | None
    outcome: str
    reason: str
