"""Hand-written SQL of the write hot paths (uploads, blob links, manifest PUT), run on the DBAPI cursor.

Going through SQLAlchemy costs tens of microseconds a statement, which under contention is time a
lock is held (SQLite's write lock, a PostgreSQL row lock); a PostgreSQL transaction costs a round trip
for BEGIN and one for COMMIT. So these statements are few and as large as they need to be: on
PostgreSQL a manifest PUT is one statement after the lock, a blob link one statement in all.

Statements are written with SQLite's `:name` parameters; `Sql.postgresql` is psycopg's `%(name)s`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shipyard.domain.records import StoredManifest

_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")


class Sql:
    __slots__ = ("postgresql", "sqlite")

    def __init__(self, sqlite: str) -> None:
        self.sqlite = sqlite
        self.postgresql = _PARAMETER.sub(r"%(\1)s", sqlite)

    def text(self, postgres: bool) -> str:
        return self.postgresql if postgres else self.sqlite


def sqlite_time(value: datetime) -> str:
    """A time as SQLAlchemy stores a DateTime column on SQLite (UTC, no offset), so that the rows
    written here compare with the ones written through SQLAlchemy."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


# -- uploads --------------------------------------------------------------------------------------

CREATE_UPLOAD = Sql(
    "INSERT INTO upload_sessions (id, repository, size, created_at, updated_at) "
    "VALUES (:id, :repository, 0, :now, :now)"
)
# the count and the insert are one statement: the cap holds exactly on SQLite (one writer at a time);
# on PostgreSQL concurrent starts by one principal can pass it by at most their number. The casts give
# the parameter one type in both places, which PostgreSQL requires
CREATE_UPLOAD_CAPPED = Sql(
    "INSERT INTO upload_sessions (id, repository, principal, size, created_at, updated_at) "
    "SELECT :id, :repository, CAST(:principal AS VARCHAR(255)), 0, :now, :now "
    "WHERE (SELECT count(*) FROM upload_sessions WHERE principal = CAST(:principal AS VARCHAR(255))) < :cap"
)
GET_UPLOAD = Sql("SELECT repository, size, created_at FROM upload_sessions WHERE id = :id")
# check and advance in one statement: it refuses an upload that moved on since `expected` was read
ADVANCE_UPLOAD = Sql(
    "UPDATE upload_sessions SET size = :size, updated_at = :now WHERE id = :id AND size = :expected"
)
DELETE_UPLOAD = Sql("DELETE FROM upload_sessions WHERE id = :id")

# -- blobs ----------------------------------------------------------------------------------------

REPOSITORY_ID = Sql("SELECT id FROM repositories WHERE name = :name")
CREATE_REPOSITORY = Sql("INSERT INTO repositories (name, created_at) VALUES (:name, :now)")
INSERT_BLOB = Sql(
    "INSERT INTO blobs (digest, size, media_type, created_at) VALUES (:digest, :size, :media_type, :now) "
    "ON CONFLICT DO NOTHING"
)
# linking again renews the link's time: GC keeps a link younger than its grace period
LINKED = Sql("SELECT 1 FROM repository_blobs WHERE repository_id = :repository_id AND digest = :digest")
LINK_BLOB = Sql(
    "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES (:repository_id, :digest, :now) "
    "ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = excluded.created_at"
)
# PostgreSQL: the repository (created if need be), the blob row, its link and the end of the upload
# it came from, in one round trip. The statement sees the tables as they were when it began, so a
# repository another request creates meanwhile is in neither `existing` nor `created` (the insert
# waits for it, then does nothing): then no row comes back, nothing is linked, and the caller links
# in a transaction of its own.
LINK_BLOB_POSTGRES = """
WITH existing AS (SELECT id FROM repositories WHERE name = %(repository)s),
created AS (
    INSERT INTO repositories (name, created_at)
    SELECT %(repository)s, %(now)s WHERE NOT EXISTS (SELECT FROM existing)
    ON CONFLICT (name) DO NOTHING
    RETURNING id
),
repository AS (SELECT id FROM existing UNION ALL SELECT id FROM created),
blob AS (
    INSERT INTO blobs (digest, size, media_type, created_at)
    SELECT %(digest)s, %(size)s, %(media_type)s, %(now)s FROM repository
    ON CONFLICT DO NOTHING
),
link AS (
    INSERT INTO repository_blobs (repository_id, digest, created_at)
    SELECT id, %(digest)s, %(now)s FROM repository
    ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = EXCLUDED.created_at
),
review AS (
    INSERT INTO gc_link_reviews (repository_id, digest, review_after)
    SELECT id, %(digest)s, %(now)s FROM repository
),
finished AS (DELETE FROM upload_sessions WHERE id = %(upload)s AND EXISTS (SELECT FROM repository))
-- the outbox: the repository's creation is an event in the same statement
, created_event AS (
    INSERT INTO events (at, type, account, repository)
    SELECT %(now)s, 'repository.created', split_part(%(repository)s, '/', 1), %(repository)s FROM created
)
SELECT id FROM repository
"""

LINKED_BLOB_SIZE = Sql(
    "SELECT b.size FROM blobs b JOIN repository_blobs rb ON rb.digest = b.digest "
    "JOIN repositories r ON r.id = rb.repository_id WHERE r.name = :repository AND b.digest = :digest"
)

# -- manifests ------------------------------------------------------------------------------------

# a manifest by tag or by digest, the manifest cache's misses (SQLite's on the fast reader); a row of
# them is a StoredManifest by `stored_manifest`
MANIFEST_BY_TAG = Sql(
    "SELECT m.id, m.digest, m.media_type, m.size, m.content FROM tags t "
    "JOIN repositories r ON r.id = t.repository_id JOIN manifests m ON m.id = t.manifest_id "
    "WHERE r.name = :repository AND t.name = :key"
)
MANIFEST_BY_DIGEST = Sql(
    "SELECT m.id, m.digest, m.media_type, m.size, m.content FROM manifests m "
    "JOIN repositories r ON r.id = m.repository_id WHERE r.name = :repository AND m.digest = :key"
)


# a page of a repository's tags in byte order (`:last` "" for the first); the tag names are a "C"
# collation column on PostgreSQL, so the index gives the order
TAG_PAGE = Sql(
    "SELECT name FROM tags WHERE repository_id = (SELECT id FROM repositories WHERE name = :repository) "
    "AND name > :last ORDER BY name LIMIT :limit"
)


def stored_manifest(row: Sequence[Any] | None) -> StoredManifest | None:
    if row is None:
        return None
    return StoredManifest(int(row[0]), row[1], row[2], int(row[3]), bytes(row[4]))


# PostgreSQL: take the repository's row lock (pushes of one repository take turns: two concurrent PUTs
# of one new manifest would both insert it) and announce the change in the same round trip
PG_LOCK_REPOSITORY = (
    "SELECT (SELECT id FROM repositories WHERE name = %(name)s FOR UPDATE), "
    "pg_notify(%(channel)s, %(payload)s)"
)
PG_LOCK_ONLY = "SELECT id FROM repositories WHERE name = %(name)s FOR UPDATE"
PG_CREATE_REPOSITORY = (
    "INSERT INTO repositories (name, created_at) VALUES (%(name)s, %(now)s) ON CONFLICT (name) DO NOTHING"
)

# SQLite: under its write lock, statements are microseconds each
SQLITE_PRESENT_BLOBS = (
    "SELECT digest FROM repository_blobs "
    "WHERE repository_id = ? AND digest IN (SELECT value FROM json_each(?))"
)
SQLITE_PRESENT_MANIFESTS = (
    "SELECT digest FROM manifests WHERE repository_id = ? AND digest IN (SELECT value FROM json_each(?))"
)
SQLITE_MANIFEST_ID = "SELECT id FROM manifests WHERE repository_id = ? AND digest = ?"
SQLITE_INSERT_MANIFEST = (
    "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, size, config_digest, "
    "subject_digest, annotations, content, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SQLITE_INSERT_LAYER = (
    "INSERT INTO manifest_layers (manifest_id, position, digest, size, media_type) VALUES (?, ?, ?, ?, ?)"
)
SQLITE_INSERT_CHILD = (
    "INSERT INTO manifest_children (manifest_id, position, digest, size, media_type, platform) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
SQLITE_PUT_TAG = (
    "INSERT INTO tags (repository_id, name, manifest_id, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (repository_id, name) DO UPDATE SET manifest_id = excluded.manifest_id, "
    "updated_at = excluded.updated_at"
)

# PostgreSQL, with the repository locked: check the references, find or insert the manifest with its
# layer and child rows, and point the tags at it, in one statement (one snapshot, taken after the lock,
# so it sees whatever the PUT that held the lock before committed). When a reference is missing it
# writes nothing and names the missing digests.
PG_PUT_MANIFEST = """
WITH missing_blobs AS (
    SELECT wanted.digest FROM unnest(CAST(%(blobs)s AS text[])) AS wanted(digest)
    WHERE NOT EXISTS (
        SELECT FROM repository_blobs rb
        WHERE rb.repository_id = %(repository_id)s AND rb.digest = wanted.digest
    )
),
missing_manifests AS (
    SELECT wanted.digest FROM unnest(CAST(%(children)s AS text[])) AS wanted(digest)
    WHERE NOT EXISTS (
        SELECT FROM manifests m WHERE m.repository_id = %(repository_id)s AND m.digest = wanted.digest
    )
),
complete AS (
    SELECT NOT EXISTS (SELECT FROM missing_blobs) AND NOT EXISTS (SELECT FROM missing_manifests) AS ok
),
existing AS (
    SELECT id FROM manifests WHERE repository_id = %(repository_id)s AND digest = %(digest)s
),
inserted AS (
    INSERT INTO manifests (repository_id, digest, media_type, artifact_type, size, config_digest,
                           subject_digest, annotations, content, created_at)
    SELECT %(repository_id)s, %(digest)s, %(media_type)s, %(artifact_type)s, %(size)s, %(config_digest)s,
           %(subject_digest)s, %(annotations)s, %(content)s, %(now)s
    FROM complete WHERE complete.ok AND NOT EXISTS (SELECT FROM existing)
    RETURNING id
),
layers AS (
    INSERT INTO manifest_layers (manifest_id, position, digest, size, media_type)
    SELECT inserted.id, layer.position - 1, layer.digest, layer.size, layer.media_type
    FROM inserted,
         unnest(CAST(%(layer_digests)s AS text[]), CAST(%(layer_sizes)s AS bigint[]),
                CAST(%(layer_media_types)s AS text[]))
         WITH ORDINALITY AS layer(digest, size, media_type, position)
),
children AS (
    INSERT INTO manifest_children (manifest_id, position, digest, size, media_type, platform)
    SELECT inserted.id, child.position - 1, child.digest, child.size, child.media_type, child.platform
    FROM inserted,
         unnest(CAST(%(child_digests)s AS text[]), CAST(%(child_sizes)s AS bigint[]),
                CAST(%(child_media_types)s AS text[]), CAST(%(child_platforms)s AS text[]))
         WITH ORDINALITY AS child(digest, size, media_type, platform, position)
),
target AS (SELECT id FROM existing UNION ALL SELECT id FROM inserted),
tagged AS (
    INSERT INTO tags (repository_id, name, manifest_id, updated_at)
    SELECT %(repository_id)s, tag.name, target.id, %(now)s
    FROM complete, target, unnest(CAST(%(tags)s AS text[])) AS tag(name)
    WHERE complete.ok
    ON CONFLICT (repository_id, name)
    DO UPDATE SET manifest_id = EXCLUDED.manifest_id, updated_at = EXCLUDED.updated_at
)
SELECT (SELECT array_agg(digest) FROM missing_blobs), (SELECT array_agg(digest) FROM missing_manifests)
"""
