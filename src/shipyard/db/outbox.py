"""The outbox's writes: each runs on the DBAPI cursor of the transaction that makes the change, so the
event commits with the change or not at all. A change costs one statement here (SQLite: one per event,
microseconds each under its write lock); nothing is JSON-encoded on the push path but a moved tag's
previous digest."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from shipyard.db.sql import Sql, sqlite_time
from shipyard.domain.accounts import account_of
from shipyard.domain.events import (
    BLOB_MOUNTED,
    MANIFEST_DELETED,
    MANIFEST_PUSHED,
    REPOSITORY_CREATED,
    REPOSITORY_DELETED,
    TAG_CREATED,
    TAG_MOVED,
)

INSERT_EVENT = Sql(
    "INSERT INTO events (at, type, account, repository, digest, tag, media_type, size, detail) "
    "VALUES (:at, :type, :account, :repository, :digest, :tag, :media_type, :size, :detail)"
)

# PostgreSQL, before the manifest's own statement and in its transaction (which a missing reference
# rolls back): the push's events from the state before it. The tag names are compared in the "C"
# collation of the column, so that the lookup is one probe of the tags' unique index (in the default
# collation it scanned the repository's tags). A digest needs no escaping in JSON.
PG_MANIFEST_PUSH_EVENTS = """
WITH pushed AS (
    SELECT 1 WHERE NOT EXISTS (
        SELECT FROM manifests WHERE repository_id = %(repository_id)s AND digest = %(digest)s
    )
),
wanted AS (SELECT name COLLATE "C" AS name FROM unnest(CAST(%(tags)s AS text[])) AS tag(name)),
previous AS (
    SELECT wanted.name, m.digest FROM wanted
    JOIN tags t ON t.repository_id = %(repository_id)s AND t.name = wanted.name
    JOIN manifests m ON m.id = t.manifest_id
)
INSERT INTO events (at, type, account, repository, digest, tag, media_type, size, detail)
SELECT %(now)s, 'manifest.pushed', %(account)s, %(repository)s, %(digest)s, CAST(NULL AS text),
       %(media_type)s, CAST(%(size)s AS bigint), CAST(NULL AS text) FROM pushed
UNION ALL
SELECT %(now)s, 'tag.created', %(account)s, %(repository)s, %(digest)s, wanted.name,
       %(media_type)s, CAST(%(size)s AS bigint), CAST(NULL AS text)
FROM wanted WHERE NOT EXISTS (SELECT FROM previous WHERE previous.name = wanted.name)
UNION ALL
SELECT %(now)s, 'tag.moved', %(account)s, %(repository)s, %(digest)s, previous.name,
       %(media_type)s, CAST(%(size)s AS bigint), '{"previous":"' || previous.digest || '"}'
FROM previous WHERE previous.digest <> %(digest)s
"""
SQLITE_MANIFEST_ID = "SELECT id FROM manifests WHERE repository_id = ? AND digest = ?"
SQLITE_TAG_DIGEST = (
    "SELECT m.digest FROM tags t JOIN manifests m ON m.id = t.manifest_id "
    "WHERE t.repository_id = ? AND t.name = ?"
)
SQLITE_INSERT_EVENT = (
    "INSERT INTO events (at, type, account, repository, digest, tag, media_type, size, detail) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# a tag's deletion, with the digest it pointed at; nothing when there is no such tag
TAG_DELETED_EVENT = Sql(
    "INSERT INTO events (at, type, account, repository, digest, tag) "
    "SELECT :at, 'tag.deleted', :account, :repository, m.digest, t.name "
    "FROM tags t JOIN manifests m ON m.id = t.manifest_id "
    "WHERE t.repository_id = :repository_id AND t.name = :tag"
)
# the tags that go with a deleted manifest
TAGS_OF_MANIFEST_DELETED = Sql(
    "INSERT INTO events (at, type, account, repository, digest, tag) "
    "SELECT :at, 'tag.deleted', :account, :repository, :digest, name FROM tags "
    "WHERE manifest_id = :manifest_id"
)


def _time(postgres: bool, now: datetime) -> object:
    return now if postgres else sqlite_time(now)


def record(
    cursor: Any,
    postgres: bool,
    type: str,
    repository: str,
    now: datetime,
    *,
    digest: str | None = None,
    tag: str | None = None,
    media_type: str | None = None,
    size: int | None = None,
    detail: str | None = None,
) -> None:
    """One event of `repository`'s account; `detail` is JSON text."""
    cursor.execute(
        INSERT_EVENT.text(postgres),
        {
            "at": _time(postgres, now),
            "type": type,
            "account": account_of(repository),
            "repository": repository,
            "digest": digest,
            "tag": tag,
            "media_type": media_type,
            "size": size,
            "detail": detail,
        },
    )


def repository_created(cursor: Any, postgres: bool, repository: str, now: datetime) -> None:
    record(cursor, postgres, REPOSITORY_CREATED, repository, now)


def repository_deleted(cursor: Any, postgres: bool, repository: str, now: datetime) -> None:
    record(cursor, postgres, REPOSITORY_DELETED, repository, now)


def blob_mounted(
    cursor: Any, postgres: bool, repository: str, digest: str, size: int, source: str, now: datetime
) -> None:
    # a repository name is [a-z0-9._/-]: it needs no escaping in JSON
    record(
        cursor,
        postgres,
        BLOB_MOUNTED,
        repository,
        now,
        digest=digest,
        size=size,
        detail=f'{{"from":"{source}"}}',
    )


def manifest_pushed(
    cursor: Any,
    postgres: bool,
    repository: str,
    repository_id: int,
    digest: str,
    media_type: str,
    size: int,
    tags: Iterable[str],
    now: datetime,
) -> None:
    """The events of a manifest PUT, from the state before it: manifest.pushed when the manifest is new
    to the repository, tag.created or tag.moved for each tag that changes. Run it before the writes."""
    account = account_of(repository)
    if postgres:
        cursor.execute(
            PG_MANIFEST_PUSH_EVENTS,
            {
                "repository_id": repository_id,
                "digest": digest,
                "tags": list(tags),
                "now": now,
                "account": account,
                "repository": repository,
                "media_type": media_type,
                "size": size,
            },
        )
        return
    at = sqlite_time(now)
    rows: list[tuple[object, ...]] = []
    if cursor.execute(SQLITE_MANIFEST_ID, (repository_id, digest)).fetchone() is None:
        rows.append((at, MANIFEST_PUSHED, account, repository, digest, None, media_type, size, None))
    for tag in tags:
        found = cursor.execute(SQLITE_TAG_DIGEST, (repository_id, tag)).fetchone()
        if found is None:
            rows.append((at, TAG_CREATED, account, repository, digest, tag, media_type, size, None))
        elif found[0] != digest:
            # a digest is [a-z0-9:+._=-]: it needs no escaping in JSON
            detail = f'{{"previous":"{found[0]}"}}'
            rows.append((at, TAG_MOVED, account, repository, digest, tag, media_type, size, detail))
    if rows:
        cursor.executemany(SQLITE_INSERT_EVENT, rows)


def manifest_deleted(
    cursor: Any, postgres: bool, repository: str, manifest_id: int, digest: str, now: datetime
) -> None:
    """manifest.deleted, and tag.deleted for each tag that goes with it. Run it before the deletes."""
    values = {
        "at": _time(postgres, now),
        "account": account_of(repository),
        "repository": repository,
        "digest": digest,
        "manifest_id": manifest_id,
    }
    cursor.execute(TAGS_OF_MANIFEST_DELETED.text(postgres), values)
    record(cursor, postgres, MANIFEST_DELETED, repository, now, digest=digest)


def tag_deleted(
    cursor: Any, postgres: bool, repository: str, repository_id: int, tag: str, now: datetime
) -> None:
    """tag.deleted if the tag exists. Run it before the delete."""
    values = {
        "at": _time(postgres, now),
        "account": account_of(repository),
        "repository": repository,
        "repository_id": repository_id,
        "tag": tag,
    }
    cursor.execute(TAG_DELETED_EVENT.text(postgres), values)
