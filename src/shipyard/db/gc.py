"""Garbage collection and storage accounting in SQL.

What may be garbage is written down in the same transactions that may make it so (review queues, as
GitLab's registry keeps them), so that GC follows the garbage and never scans the store:

- `gc_link_reviews`: a blob link of a repository that may have no manifest using it: every new link
  (upload, mount), and the layers and config of a deleted manifest.
- `gc_blob_reviews`: a blob that lost a link (GC of links, blob DELETE, repository delete).
- `gc_manifest_reviews`: a manifest that lost a tag or was pushed without one; collected only where
  the repository's `untagged_retention_days` asks for it.

The `note_*` helpers below are what the write paths of metadata.py call inside their transactions.

Races, and why none loses a layer
---------------------------------
Invariant: a blob linked to any repository has its object in the store. GC deletes an object only
while it holds the blob row locked and has seen no link, no upload pinning the digest, and a row older
than the grace period; it deletes the object first and the row after, in that transaction. A crash in
between leaves an unlinked row without an object, which nothing can reach (mounts and manifests need a
link) and the next run deletes again: nothing done twice is harmful.

- Upload commit. The uploader pins the digest on its upload session before the store commit writes
  the object, and the link that ends the session removes the pin. On SQLite the pin is a write
  transaction, so it comes wholly before or after a GC transaction. On PostgreSQL the pin also takes
  FOR SHARE on the blob row: if GC holds the row, the pin waits until GC has deleted object and row and
  committed, and only then does the uploader write the object (and insert a fresh row with its link).
  If the pin committed first, GC's next statement sees it and keeps the blob.
- Mount. The mount locks the repository and then the blob row (both KEY SHARE, which GC's FOR UPDATE
  conflicts with and a concurrent upload's link of the same blob does not) and links only if the row
  is still there; GC either skips the held row or has deleted it, and then the mount falls back to an
  upload. Locks are always taken repository first, then blob.
- Manifest PUT referencing a layer linked long ago. The PUT checks the links under the repository's
  row lock; GC deletes links of a repository only under the same lock (SQLite: the write lock), and
  only links that no manifest of the repository uses and that are older than the grace period. A link
  GC removed is simply unknown to the PUT (MANIFEST_BLOB_UNKNOWN: the client uploads the blob again).
  Linking an existing link again (a re-upload) renews its time.
- An index and its children: the children of a live index are never collected as untagged, and a
  child manifest cannot be deleted while an index lists it (ManifestReferenced).

On PostgreSQL, GC takes its locks with SKIP LOCKED: a row someone is using is left for the next run,
so GC never waits in a lock cycle with a request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from shipyard.db import sql
from shipyard.db.engine import read_transaction, write_transaction
from shipyard.db.sql import Sql
from shipyard.domain.records import Usage


def _now() -> datetime:
    return datetime.now(UTC)


def _cursor(conn: Any) -> Any:
    return conn.connection.driver_connection.cursor()


def namespace_of(repository: str) -> str:
    return repository.split("/", 1)[0]


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite's text
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _in_list(column: str, postgres: bool, name: str) -> str:
    return (
        f"{column} = ANY(%({name})s)" if postgres else f"{column} IN (SELECT value FROM json_each(:{name}))"
    )


def _list(values: Sequence[Any], postgres: bool) -> Any:
    return list(values) if postgres else json.dumps(list(values))


def _time(value: datetime, postgres: bool) -> object:
    return value if postgres else sql.sqlite_time(value)


# -- what the write paths call, inside their transactions -------------------------------------------

QUEUE_LINK_REVIEW = Sql(
    "INSERT INTO gc_link_reviews (repository_id, digest, review_after) VALUES (:repository_id, :digest, :now)"
)
_MANIFEST_LINKS = Sql(
    "INSERT INTO gc_link_reviews (repository_id, digest, review_after) "
    "SELECT m.repository_id, ml.digest, :now FROM manifest_layers ml "
    "JOIN manifests m ON m.id = ml.manifest_id "
    "WHERE m.id = :id "
    "UNION SELECT repository_id, config_digest, :now FROM manifests "
    "WHERE id = :id AND config_digest IS NOT NULL"
)
_FORGET_MANIFEST = Sql("DELETE FROM gc_manifest_reviews WHERE manifest_id = :id")
_UNTAGGED_PUT = Sql(
    "INSERT INTO gc_manifest_reviews (manifest_id, repository_id, queued_at) "
    "SELECT id, repository_id, :now FROM manifests WHERE repository_id = :repository_id AND digest = :digest "
    "ON CONFLICT DO NOTHING"
)
_BLOB_REVIEW = Sql(
    "INSERT INTO gc_blob_reviews (digest, review_after, namespace) VALUES (:digest, :now, :namespace)"
)
_REPOSITORY_BLOB_REVIEWS = Sql(
    "INSERT INTO gc_blob_reviews (digest, review_after, namespace) "
    "SELECT digest, :now, :namespace FROM repository_blobs WHERE repository_id = :repository_id"
)
_FORGET_REPOSITORY = (
    Sql("DELETE FROM gc_link_reviews WHERE repository_id = :repository_id"),
    Sql("DELETE FROM gc_manifest_reviews WHERE repository_id = :repository_id"),
)
PIN_UPLOAD = Sql("UPDATE upload_sessions SET digest = :digest WHERE id = :id")
# the pin waits for a GC transaction that holds the blob row (see the module docstring)
PG_PIN_UPLOAD = (
    "WITH pin AS (UPDATE upload_sessions SET digest = %(digest)s WHERE id = %(id)s) "
    "SELECT 1 FROM blobs WHERE digest = %(digest)s FOR SHARE"
)


def _postgres(conn: Any) -> bool:
    return bool(conn.dialect.name == "postgresql")


def note_manifest_deleted(conn: Any, manifest_id: int) -> None:
    """Before the manifest's rows go: its layers and config may now be unused in its repository."""
    postgres = _postgres(conn)
    values = {"id": manifest_id, "now": _time(_now(), postgres)}
    cursor = _cursor(conn)
    cursor.execute(_MANIFEST_LINKS.text(postgres), values)
    cursor.execute(_FORGET_MANIFEST.text(postgres), values)


def note_tags_moving(conn: Any, repository_id: int, tags: Sequence[str], keep_digest: str | None) -> None:
    """Before `tags` are deleted or pointed at `keep_digest`: the manifests they point at now may be left
    untagged; the time counts from now."""
    if not tags:
        return
    postgres = _postgres(conn)
    query = (
        "INSERT INTO gc_manifest_reviews (manifest_id, repository_id, queued_at) "
        "SELECT DISTINCT manifest_id, repository_id, :now FROM tags "
        f"WHERE repository_id = :repository_id AND {_in_list('name', postgres, 'tags')} "
        "AND manifest_id NOT IN (SELECT id FROM manifests WHERE repository_id = :repository_id "
        "AND digest = :digest) "
        "ON CONFLICT (manifest_id) DO UPDATE SET queued_at = excluded.queued_at"
    )
    values = {
        "repository_id": repository_id,
        "tags": _list(tags, postgres),
        "digest": keep_digest or "",
        "now": _time(_now(), postgres),
    }
    _cursor(conn).execute(Sql(query).text(postgres), values)


def note_manifest_put(conn: Any, repository_id: int, digest: str, tagged: bool) -> None:
    """After a manifest PUT: one pushed without a tag is untagged from now on."""
    if tagged:
        return
    postgres = _postgres(conn)
    values = {"repository_id": repository_id, "digest": digest, "now": _time(_now(), postgres)}
    _cursor(conn).execute(_UNTAGGED_PUT.text(postgres), values)


def note_blob_unlinked(conn: Any, digest: str, repository: str) -> None:
    postgres = _postgres(conn)
    values = {"digest": digest, "now": _time(_now(), postgres), "namespace": namespace_of(repository)}
    _cursor(conn).execute(_BLOB_REVIEW.text(postgres), values)


def note_repository_deleted(conn: Any, repository_id: int, repository: str) -> None:
    """Before the repository's links go: each of its blobs may now be unlinked everywhere."""
    postgres = _postgres(conn)
    values = {
        "repository_id": repository_id,
        "now": _time(_now(), postgres),
        "namespace": namespace_of(repository),
    }
    cursor = _cursor(conn)
    cursor.execute(_REPOSITORY_BLOB_REVIEWS.text(postgres), values)
    for statement in _FORGET_REPOSITORY:
        cursor.execute(statement.text(postgres), values)


def queue_untagged_manifests(conn: Any, repository: str) -> None:
    """When a repository starts collecting untagged manifests: the ones untagged now, from now."""
    postgres = _postgres(conn)
    _cursor(conn).execute(
        Sql(
            "INSERT INTO gc_manifest_reviews (manifest_id, repository_id, queued_at) "
            "SELECT m.id, m.repository_id, :now FROM manifests m "
            "JOIN repositories r ON r.id = m.repository_id "
            "WHERE r.name = :name AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id) "
            "ON CONFLICT DO NOTHING"
        ).text(postgres),
        {"name": repository, "now": _time(_now(), postgres)},
    )


# -- the collector's queries -------------------------------------------------------------------------


@dataclass
class Freed:
    blobs: int = 0
    bytes: int = 0


@dataclass
class Sweep:
    """What one batch did: manifests and links deleted, blobs freed by namespace, reviews handled."""

    reviewed: int = 0
    manifests: int = 0
    links: int = 0
    freed: dict[str, Freed] = field(default_factory=dict)

    def add_blob(self, namespace: str | None, size: int) -> None:
        entry = self.freed.setdefault(namespace or "", Freed())
        entry.blobs += 1
        entry.bytes += size


class GcStore:
    """The collector's transactions. Each batch method is one transaction; whatever a batch leaves
    undone stays in its review queue, so a run stopped at any moment continues where it was."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    def _t(self, value: datetime) -> object:
        return _time(value, self.postgres)

    def _sql(self, query: str) -> str:
        return Sql(query).text(self.postgres)

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with write_transaction(self.engine) as conn:
            yield _cursor(conn)

    def pending(self, now: datetime) -> dict[str, int]:
        """How many reviews are due in each queue."""
        with read_transaction(self.engine) as conn:
            cursor = _cursor(conn)
            counts = {}
            for queue, column in (
                ("gc_manifest_reviews", "queued_at"),
                ("gc_link_reviews", "review_after"),
                ("gc_blob_reviews", "review_after"),
            ):
                cursor.execute(
                    self._sql(f"SELECT count(*) FROM {queue} WHERE {column} <= :now"), {"now": self._t(now)}
                )
                counts[queue] = int(cursor.fetchone()[0])
            return counts

    # -- untagged manifests

    def untagged_candidates(self, now: datetime, after: int, limit: int) -> list[tuple[int, str, int]]:
        """Manifest reviews as (manifest id, repository name, retention days or -1 for none), in id order
        from `after`."""
        with read_transaction(self.engine) as conn:
            cursor = _cursor(conn)
            cursor.execute(
                self._sql(
                    "SELECT mr.manifest_id, r.name, coalesce(s.untagged_retention_days, -1), mr.queued_at "
                    "FROM gc_manifest_reviews mr JOIN repositories r ON r.id = mr.repository_id "
                    "LEFT JOIN repository_settings s ON s.repository = r.name "
                    "WHERE mr.queued_at <= :now AND mr.manifest_id > :after "
                    "ORDER BY mr.manifest_id LIMIT :limit"
                ),
                {"now": self._t(now), "after": after, "limit": limit},
            )
            return [(int(row[0]), row[1], int(row[2])) for row in cursor.fetchall()]

    def drop_manifest_reviews(self, manifest_ids: Iterable[int]) -> None:
        ids = list(manifest_ids)
        if not ids:
            return
        with self._write() as cursor:
            cursor.execute(
                self._sql(
                    f"DELETE FROM gc_manifest_reviews WHERE {_in_list('manifest_id', self.postgres, 'ids')}"
                ),
                {"ids": _list(ids, self.postgres)},
            )

    def collectable_untagged(
        self, conn: Any, repository_id: int, manifest_id: int, cutoff: datetime
    ) -> str | None:
        """Inside the repository's manifest transaction: the manifest's digest if it has no tag, no
        index of the repository lists it, and its review is older than `cutoff`."""
        cursor = _cursor(conn)
        cursor.execute(
            self._sql(
                "SELECT m.digest FROM manifests m JOIN gc_manifest_reviews mr ON mr.manifest_id = m.id "
                "WHERE m.id = :id AND m.repository_id = :repository_id AND mr.queued_at <= :cutoff "
                "AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id) "
                "AND NOT EXISTS (SELECT 1 FROM manifest_children c JOIN manifests p ON p.id = c.manifest_id "
                "WHERE p.repository_id = m.repository_id AND c.digest = m.digest)"
            ),
            {"id": manifest_id, "repository_id": repository_id, "cutoff": self._t(cutoff)},
        )
        row = cursor.fetchone()
        return None if row is None else str(row[0])

    # -- links

    def due_links(self, now: datetime, after: tuple[int, str], limit: int) -> list[tuple[int, str]]:
        """Due link reviews in key order from `after`: a batch is mostly one repository's (one lock)."""
        with read_transaction(self.engine) as conn:
            cursor = _cursor(conn)
            cursor.execute(
                self._sql(
                    "SELECT DISTINCT repository_id, digest FROM gc_link_reviews WHERE review_after <= :now "
                    "AND (repository_id > :repository_id "
                    "OR (repository_id = :repository_id AND digest > :digest)) "
                    "ORDER BY repository_id, digest LIMIT :limit"
                ),
                {"now": self._t(now), "repository_id": after[0], "digest": after[1], "limit": limit},
            )
            return [(int(row[0]), str(row[1])) for row in cursor.fetchall()]

    def sweep_links(
        self, groups: dict[int, list[str]], cutoff: datetime, grace: timedelta, dry_run: bool
    ) -> Sweep:
        """Delete the links among each repository's `digests` that no manifest of it uses and that are
        older than `cutoff`; their blobs go to review. On SQLite one transaction for the batch (a
        commit costs more than the statements); a repository a request holds (PostgreSQL) keeps its
        reviews for the next run."""
        total = Sweep()
        if self.postgres:
            # a transaction per repository: one holding the links (and so the blob rows) of several
            # repositories takes blob rows out of digest order, and deadlocked with repository deletes
            for repository_id, digests in groups.items():
                with self._write() as cursor:
                    sweep = self._sweep_repository_links(
                        cursor, repository_id, digests, cutoff, grace, dry_run
                    )
                if sweep is not None:
                    total.links += sweep.links
                    total.reviewed += sweep.reviewed
            return total
        with self._write() as cursor:
            for repository_id, digests in groups.items():
                sweep = self._sweep_repository_links(cursor, repository_id, digests, cutoff, grace, dry_run)
                if sweep is not None:
                    total.links += sweep.links
                    total.reviewed += sweep.reviewed
        return total

    def _sweep_repository_links(
        self,
        cursor: Any,
        repository_id: int,
        digests: Sequence[str],
        cutoff: datetime,
        grace: timedelta,
        dry_run: bool,
    ) -> Sweep | None:
        sweep = Sweep()
        now = _now()
        if self.postgres:
            cursor.execute(
                "SELECT name FROM repositories WHERE id = %(id)s FOR UPDATE SKIP LOCKED",
                {"id": repository_id},
            )
        else:
            cursor.execute("SELECT name FROM repositories WHERE id = :id", {"id": repository_id})
        row = cursor.fetchone()
        if row is None:
            if self.postgres:
                cursor.execute("SELECT 1 FROM repositories WHERE id = %(id)s", {"id": repository_id})
                if cursor.fetchone() is not None:
                    return None  # locked by a request: next run
            self._forget_link_reviews(cursor, repository_id, digests)
            sweep.reviewed = len(digests)
            return sweep
        namespace = namespace_of(str(row[0]))
        cursor.execute(
            self._sql(
                "SELECT rb.digest, rb.created_at, b.size, "
                "EXISTS (SELECT 1 FROM manifest_layers ml JOIN manifests m ON m.id = ml.manifest_id "
                "        WHERE m.repository_id = rb.repository_id AND ml.digest = rb.digest) "
                "OR EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = rb.repository_id "
                "        AND m.config_digest = rb.digest) "
                "FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest "
                f"WHERE rb.repository_id = :id AND {_in_list('rb.digest', self.postgres, 'digests')}"
            ),
            {"id": repository_id, "digests": _list(digests, self.postgres)},
        )
        doomed: list[str] = []
        later: list[tuple[str, datetime]] = []
        for digest, created, _size, used in cursor.fetchall():
            if used:
                continue
            created = _aware(created)
            if created > cutoff:
                later.append((digest, created + grace))
            else:
                doomed.append(digest)
        sweep.links = len(doomed)
        sweep.reviewed = len(digests) - len(later)
        if dry_run:
            return sweep
        if doomed:
            doomed.sort()  # blob rows in digest order, as a repository delete takes them
            values = {"id": repository_id, "digests": _list(doomed, self.postgres)}
            cursor.execute(
                "INSERT INTO gc_blob_reviews (digest, review_after, namespace) "
                "SELECT unnest(%(digests)s::text[]), %(now)s, %(namespace)s"
                if self.postgres
                else "INSERT INTO gc_blob_reviews (digest, review_after, namespace) "
                "SELECT value, :now, :namespace FROM json_each(:digests)",
                {**values, "now": self._t(now), "namespace": namespace},
            )
            cursor.execute(
                "DELETE FROM repository_blobs WHERE repository_id = %(id)s AND digest = ANY(%(digests)s)"
                if self.postgres
                else "DELETE FROM repository_blobs WHERE repository_id = :id "
                "AND digest IN (SELECT value FROM json_each(:digests))",
                values,
            )
        later_digests = {digest for digest, _ in later}
        self._forget_link_reviews(cursor, repository_id, [d for d in digests if d not in later_digests])
        for digest, when in later:
            cursor.execute(
                self._sql(
                    "UPDATE gc_link_reviews SET review_after = :when "
                    "WHERE repository_id = :id AND digest = :digest"
                ),
                {"id": repository_id, "digest": digest, "when": self._t(when)},
            )
        return sweep

    def _forget_link_reviews(self, cursor: Any, repository_id: int, digests: Sequence[str]) -> None:
        if not digests:
            return
        cursor.execute(
            "DELETE FROM gc_link_reviews WHERE repository_id = %(id)s AND digest = ANY(%(digests)s)"
            if self.postgres
            else "DELETE FROM gc_link_reviews WHERE repository_id = :id "
            "AND digest IN (SELECT value FROM json_each(:digests))",
            {"id": repository_id, "digests": _list(digests, self.postgres)},
        )

    # -- blobs

    def due_blobs(self, now: datetime, after: str, limit: int) -> list[str]:
        with read_transaction(self.engine) as conn:
            cursor = _cursor(conn)
            cursor.execute(
                self._sql(
                    "SELECT DISTINCT digest FROM gc_blob_reviews "
                    "WHERE review_after <= :now AND digest > :after "
                    "ORDER BY digest LIMIT :limit"
                ),
                {"now": self._t(now), "after": after, "limit": limit},
            )
            return [str(row[0]) for row in cursor.fetchall()]

    def sweep_blobs(
        self,
        digests: Sequence[str],
        cutoff: datetime,
        grace: timedelta,
        delete_object: Callable[[str], None],
        dry_run: bool,
    ) -> Sweep:
        """Delete the blobs among `digests` that have no link, no upload pinning them and a row older than
        `cutoff`: the object first, then the row, with the rows locked (see the module docstring)."""
        sweep = Sweep()
        ordered = sorted(set(digests))
        with self._write() as cursor:
            values = {"digests": _list(ordered, self.postgres)}
            if self.postgres:
                # every path takes a review row before the blob row; a row someone holds (a link, an
                # unlink or a pin in flight) is left for the next run
                cursor.execute(
                    "SELECT DISTINCT digest FROM (SELECT digest FROM gc_blob_reviews "
                    "WHERE digest = ANY(%(digests)s) ORDER BY digest FOR UPDATE SKIP LOCKED) AS held",
                    values,
                )
                reviews = sorted(row[0] for row in cursor.fetchall())
                cursor.execute(
                    "SELECT digest FROM blobs WHERE digest = ANY(%(digests)s) ORDER BY digest "
                    "FOR UPDATE SKIP LOCKED",
                    {"digests": reviews},
                )
                locked = {row[0] for row in cursor.fetchall()}
                cursor.execute(
                    "SELECT digest FROM blobs WHERE digest = ANY(%(digests)s)", {"digests": reviews}
                )
                existing = {row[0] for row in cursor.fetchall()}
                locked |= set(reviews) - existing
                cursor.execute(
                    "SELECT b.digest, b.size, b.created_at, b.links, "
                    "EXISTS (SELECT 1 FROM upload_sessions u WHERE u.digest = b.digest), "
                    "(SELECT max(r.namespace) FROM gc_blob_reviews r WHERE r.digest = b.digest) "
                    "FROM blobs b "
                    "WHERE b.digest = ANY(%(digests)s)",
                    {"digests": sorted(locked)},
                )
            else:
                locked = set(ordered)
                cursor.execute(
                    "SELECT b.digest, b.size, b.created_at, b.links, "
                    "EXISTS (SELECT 1 FROM upload_sessions u WHERE u.digest = b.digest), "
                    "(SELECT max(r.namespace) FROM gc_blob_reviews r WHERE r.digest = b.digest) "
                    "FROM blobs b "
                    "WHERE b.digest IN (SELECT value FROM json_each(:digests))",
                    values,
                )
            rows = cursor.fetchall()
            present = {row[0] for row in rows}
            doomed: list[str] = []
            later: list[tuple[str, datetime]] = []
            done = [d for d in ordered if d in locked and d not in present]  # the row is gone already
            for digest, size, created, links, pinned, namespace in rows:
                created = _aware(created)
                if links:
                    done.append(digest)  # linked again: a new review comes when it loses its links
                elif pinned or created > cutoff:
                    later.append(
                        (digest, max(created + grace, _now() + grace) if pinned else created + grace)
                    )
                else:
                    doomed.append(digest)
                    sweep.add_blob(namespace, int(size))
            sweep.reviewed = len(done) + len(doomed)
            if dry_run:
                return sweep
            for digest in doomed:
                delete_object(digest)
            if doomed:
                cursor.execute(
                    "DELETE FROM blobs WHERE digest = ANY(%(digests)s)"
                    if self.postgres
                    else "DELETE FROM blobs WHERE digest IN (SELECT value FROM json_each(:digests))",
                    {"digests": _list(doomed, self.postgres)},
                )
            gone = done + doomed
            if gone:
                cursor.execute(
                    "DELETE FROM gc_blob_reviews WHERE digest = ANY(%(digests)s)"
                    if self.postgres
                    else "DELETE FROM gc_blob_reviews "
                    "WHERE digest IN (SELECT value FROM json_each(:digests))",
                    {"digests": _list(gone, self.postgres)},
                )
            for digest, when in later:
                cursor.execute(
                    self._sql("UPDATE gc_blob_reviews SET review_after = :when WHERE digest = :digest"),
                    {"digest": digest, "when": self._t(when)},
                )
        return sweep

    # -- dry run: what a run now would free, without changing anything

    def dry_run(self, now: datetime, cutoff: datetime) -> tuple[int, int, dict[str, Freed]]:
        """(untagged manifests, links, blobs freed by namespace) that a run now would delete. Blobs
        count those unlinked already and those whose every link is collectable now; the blobs that
        collecting the untagged manifests would free in turn are not counted."""
        freed: dict[str, Freed] = {}
        with read_transaction(self.engine) as conn:
            cursor = _cursor(conn)
            t = {"now": self._t(now), "cutoff": self._t(cutoff)}
            cursor.execute(
                self._sql(
                    "SELECT count(*) FROM gc_manifest_reviews mr JOIN manifests m ON m.id = mr.manifest_id "
                    "JOIN repositories r ON r.id = m.repository_id "
                    "JOIN repository_settings s ON s.repository = r.name "
                    "WHERE s.untagged_retention_days IS NOT NULL "
                    "AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id) "
                    "AND NOT EXISTS (SELECT 1 FROM manifest_children c "
                    "JOIN manifests p ON p.id = c.manifest_id "
                    "WHERE p.repository_id = m.repository_id AND c.digest = m.digest)"
                ),
                t,
            )
            candidates_manifests = int(cursor.fetchone()[0])
            # links that a run would delete now
            collectable_links = (
                "SELECT lr.repository_id, lr.digest FROM (SELECT DISTINCT repository_id, digest "
                "FROM gc_link_reviews "
                "WHERE review_after <= :now) AS lr "
                "JOIN repository_blobs rb ON rb.repository_id = lr.repository_id AND rb.digest = lr.digest "
                "WHERE rb.created_at <= :cutoff "
                "AND NOT EXISTS (SELECT 1 FROM manifest_layers ml JOIN manifests m ON m.id = ml.manifest_id "
                "WHERE m.repository_id = rb.repository_id AND ml.digest = rb.digest) "
                "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = rb.repository_id "
                "AND m.config_digest = rb.digest)"
            )
            cursor.execute(self._sql(f"SELECT count(*) FROM ({collectable_links}) AS l"), t)
            links = int(cursor.fetchone()[0])
            namespace = (
                "split_part(r.name, '/', 1)"
                if self.postgres
                else "CASE WHEN instr(r.name, '/') > 0 THEN substr(r.name, 1, instr(r.name, '/') - 1) "
                "ELSE r.name END"
            )
            cursor.execute(
                self._sql(
                    "SELECT coalesce(br.namespace, ''), count(*), coalesce(sum(b.size), 0) "
                    "FROM (SELECT digest, max(namespace) AS namespace, min(review_after) AS review_after "
                    "FROM gc_blob_reviews GROUP BY digest) AS br "
                    "JOIN blobs b ON b.digest = br.digest WHERE br.review_after <= :now AND b.links = 0 "
                    "AND b.created_at <= :cutoff "
                    "AND NOT EXISTS (SELECT 1 FROM upload_sessions u WHERE u.digest = b.digest) "
                    "GROUP BY coalesce(br.namespace, '') "
                    "UNION ALL "
                    f"SELECT ns, count(*), coalesce(sum(size), 0) FROM ("
                    f"SELECT min({namespace}) AS ns, b.digest, b.size FROM ({collectable_links}) AS l "
                    "JOIN repositories r ON r.id = l.repository_id JOIN blobs b ON b.digest = l.digest "
                    "WHERE b.created_at <= :cutoff "
                    "GROUP BY b.digest, b.size, b.links HAVING count(*) = b.links) AS whole GROUP BY ns"
                ),
                t,
            )
            for ns, count, size in cursor.fetchall():
                entry = freed.setdefault(ns, Freed())
                entry.blobs += int(count)
                entry.bytes += int(size)
        return candidates_manifests, links, freed

    # -- accounting

    def repository_usage(self, repository: str) -> Usage | None:
        with read_transaction(self.engine) as conn:
            cursor = _cursor(conn)
            cursor.execute(
                self._sql(
                    "SELECT r.stored_bytes, r.stored_blobs, (SELECT coalesce(sum(b.size), 0) "
                    "FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest "
                    "WHERE rb.repository_id = r.id AND b.links = 1) FROM repositories r WHERE r.name = :name"
                ),
                {"name": repository},
            )
            row = cursor.fetchone()
        return None if row is None else Usage(int(row[0]), int(row[2]), int(row[1]))

    def namespace_usage(self, namespace: str) -> Usage:
        with read_transaction(self.engine) as conn:
            cursor = _cursor(conn)
            cursor.execute(
                self._sql(
                    "SELECT coalesce(sum(b.size), 0), count(*), "
                    "coalesce(sum(CASE WHEN b.namespaces = 1 THEN b.size ELSE 0 END), 0) "
                    "FROM namespace_blobs nb JOIN blobs b ON b.digest = nb.digest "
                    "WHERE nb.namespace = :namespace"
                ),
                {"namespace": namespace},
            )
            row = cursor.fetchone()
        return Usage(int(row[0]), int(row[2]), int(row[1]))
