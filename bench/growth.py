"""Growth: manifest GET and tags/list page latency as the database grows to a million tags.

Only Shipyard has a database to grow. The rows go straight in through SQL (see
src/shipyard/db/models.py): one repository holds every tag, each tag its own manifest, next to one image
pushed through the API whose tag and digest are the ones measured. SQLite gets executemany in big
batches; PostgreSQL gets COPY, which is several times quicker than executemany for a million rows.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from bench.client import OCI_MANIFEST

GROWTH_REPO = "growth/probe"
PROBE_TAG = "probe"
BATCH = 50_000


def growth_tag(i: int) -> str:
    return f"g{i:08d}"


def _manifest(i: int) -> bytes:
    config = hashlib.sha256(f"config {i}".encode()).hexdigest()
    layer = hashlib.sha256(f"layer {i}".encode()).hexdigest()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{config}",
                "size": 512,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": f"sha256:{layer}",
                    "size": 1_000_000 + i,
                }
            ],
        },
        separators=(",", ":"),
    ).encode()


def _rows(start: int, stop: int) -> Iterator[tuple[int, str, bytes]]:
    for i in range(start, stop):
        content = _manifest(i)
        yield i, "sha256:" + hashlib.sha256(content).hexdigest(), content


def settle_database(url: str, tables: tuple[str, ...] = ()) -> None:
    """Bring a database to the steady state of a server that has run for a while, after a bulk load:
    statistics up to date and, on PostgreSQL, vacuumed (a bulk load triggers autovacuum, which would
    otherwise run during the measurement, and index-only scans skip the heap once the visibility map
    is set) and checkpointed. `tables`: only these (default: every table)."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60) as conn:
            conn.execute("ANALYZE")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for table in tables or ("",):
            conn.execute(f"VACUUM ANALYZE {table}".strip())
        conn.execute("CHECKPOINT")


class SqlFiller:
    """Adds synthetic tags (each with its own manifest) to GROWTH_REPO, `BATCH` rows per statement."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.count = 0  # synthetic tags so far

    def fill_to(self, total: int) -> float:
        """Grow to `total` synthetic tags; returns the seconds it took."""
        started = time.perf_counter()
        while self.count < total:
            stop = min(total, self.count + BATCH)
            if self.url.startswith("sqlite"):
                self._sqlite(self.count, stop)
            else:
                self._postgres(self.count, stop)
            self.count = stop
        settle_database(self.url, ("manifests", "tags"))
        return time.perf_counter() - started

    # Synthetic ids start far above anything the API creates, so the two never collide.
    ID_BASE = 10_000_000

    def _sqlite(self, start: int, stop: int) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=60)
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            (repository_id,) = conn.execute(
                "SELECT id FROM repositories WHERE name = ?", (GROWTH_REPO,)
            ).fetchone()
            rows = list(_rows(start, stop))
            with conn:
                conn.executemany(
                    "INSERT INTO manifests (id, repository_id, digest, media_type, size, content, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (self.ID_BASE + i, repository_id, digest, OCI_MANIFEST, len(content), content, now)
                        for i, digest, content in rows
                    ],
                )
                conn.executemany(
                    "INSERT INTO tags (id, repository_id, name, manifest_id, updated_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [
                        (self.ID_BASE + i, repository_id, growth_tag(i), self.ID_BASE + i, now)
                        for i, _, _ in rows
                    ],
                )
        finally:
            conn.close()

    def _postgres(self, start: int, stop: int) -> None:
        import psycopg

        now = datetime.now(UTC)
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT id FROM repositories WHERE name = %s", (GROWTH_REPO,)).fetchone()
            assert row is not None
            repository_id = row[0]
            rows = list(_rows(start, stop))
            with conn.cursor() as cur:
                with cur.copy(
                    "COPY manifests (id, repository_id, digest, media_type, size, content, created_at)"
                    " FROM STDIN"
                ) as copy:
                    for i, digest, content in rows:
                        copy.write_row(
                            (
                                self.ID_BASE + i,
                                repository_id,
                                digest,
                                OCI_MANIFEST,
                                len(content),
                                content,
                                now,
                            )
                        )
                with cur.copy(
                    "COPY tags (id, repository_id, name, manifest_id, updated_at) FROM STDIN"
                ) as copy:
                    for i, _, _ in rows:
                        copy.write_row(
                            (self.ID_BASE + i, repository_id, growth_tag(i), self.ID_BASE + i, now)
                        )
            conn.commit()
