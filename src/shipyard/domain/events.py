"""Events: the changes a user cares about, as the outbox records them and webhooks deliver them."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

REPOSITORY_CREATED = "repository.created"
REPOSITORY_DELETED = "repository.deleted"
MANIFEST_PUSHED = "manifest.pushed"
MANIFEST_DELETED = "manifest.deleted"
TAG_CREATED = "tag.created"
TAG_MOVED = "tag.moved"
TAG_DELETED = "tag.deleted"
BLOB_MOUNTED = "blob.mounted"

EVENT_TYPES: tuple[str, ...] = (
    REPOSITORY_CREATED,
    REPOSITORY_DELETED,
    MANIFEST_PUSHED,
    MANIFEST_DELETED,
    TAG_CREATED,
    TAG_MOVED,
    TAG_DELETED,
    BLOB_MOUNTED,
)

# delivery states
PENDING = "pending"
SUCCEEDED = "succeeded"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    at: datetime
    type: str
    account: str
    repository: str | None
    digest: str | None
    tag: str | None
    media_type: str | None
    size: int | None
    detail: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    id: int
    account: str
    url: str
    # empty: every type, every repository
    event_types: tuple[str, ...]
    repositories: tuple[str, ...]
    description: str | None
    created_at: datetime

    def matches(self, event: EventRecord) -> bool:
        """Whether the webhook wants the event: one of its types (or any), and a repository matching
        one of its patterns (or any). A pattern names repositories within the account (`web/*` is
        `<account>/web/*`) or, starting with the account, whole names; `*` stays within one path
        component, `**` does not."""
        if event.account != self.account:
            return False
        if self.event_types and event.type not in self.event_types:
            return False
        if not self.repositories:
            return True
        name = event.repository or ""
        within = name.removeprefix(f"{self.account}/")
        return any(
            _glob(pattern).fullmatch(within) or _glob(pattern).fullmatch(name)
            for pattern in self.repositories
        )


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    at: datetime
    status: int | None
    error: str | None
    duration_ms: int
    response: str | None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: int
    webhook_id: int
    event_id: int
    event_type: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    created_at: datetime
    log: tuple[AttemptRecord, ...] = ()


def _glob(pattern: str) -> re.Pattern[str]:
    """`*` any characters but `/`, `**` any characters, `?` one character but `/`."""
    return _compiled(pattern)


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))
