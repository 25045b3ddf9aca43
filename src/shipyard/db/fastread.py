"""The hot reads (manifest by tag or digest, blob of a repository, upload state) on SQLite without
the ORM layer.

The stdlib driver on a per-thread read-only connection answers in microseconds (MEASUREMENTS.md:
~100k lookups/s against ~5k through a pooled SQLAlchemy session), fast enough to run on the event loop
itself. Each statement runs in its own implicit transaction, so it sees every committed write (WAL).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

from shipyard.db.sql import (
    GET_UPLOAD,
    LINKED_BLOB_SIZE,
    MANIFEST_BY_DIGEST,
    MANIFEST_BY_TAG,
    Sql,
    stored_manifest,
)
from shipyard.domain.records import StoredManifest

# how stale a cache hit may be about a commit made outside this server (see `changed`)
CHANGE_CHECK_SECONDS = 0.01


class SqliteFastReader:
    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()
        self._version_lock = threading.Lock()
        self._version_conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._fresh_until = 0.0  # time.monotonic() until which `changed` answers without asking

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA query_only=1")
        return conn

    def changed(self, forget: Callable[[], object]) -> bool:
        """Whether any other connection committed since the last look (True on the first), calling
        `forget` first if so. The database is asked (`PRAGMA data_version`: two lock system calls, 4 us
        alone and 15 us on average in a busy server) at most once per CHANGE_CHECK_SECONDS; in between, the
        answer is "unchanged". So a commit by a process outside this server is seen within that time;
        the workers of this server do not rely on it (they share a change counter, see metadata.py),
        and this process's own writes forget what they change at once. One connection answers for
        every thread, as its versions are what the answer compares."""
        if time.monotonic() < self._fresh_until:
            return False
        with self._version_lock:
            started = time.monotonic()
            if self._version_conn is None:
                self._version_conn = self._open()
            version = self._version_conn.execute("PRAGMA data_version").fetchone()[0]
            changed: bool = version != self._version
            if changed:
                forget()
                self._version = version
            # only now, `forget` having run: no thread is told "unchanged" about a commit seen here
            self._fresh_until = started + CHANGE_CHECK_SECONDS
            return changed

    def _manifest(self, query: Sql, repository: str, key: str) -> StoredManifest | None:
        values = {"repository": repository, "key": key}
        return stored_manifest(self._connection().execute(query.sqlite, values).fetchone())

    def manifest_by_tag(self, repository: str, tag: str) -> StoredManifest | None:
        return self._manifest(MANIFEST_BY_TAG, repository, tag)

    def manifest_by_digest(self, repository: str, digest: str) -> StoredManifest | None:
        return self._manifest(MANIFEST_BY_DIGEST, repository, digest)

    def linked_blob_size(self, repository: str, digest: str) -> int | None:
        values = {"repository": repository, "digest": digest}
        row = self._connection().execute(LINKED_BLOB_SIZE.sqlite, values).fetchone()
        return None if row is None else int(row[0])

    def upload(self, upload_id: str) -> tuple[str, int, str] | None:
        """(repository, size, created_at as SQLAlchemy stores it) of an upload, or None."""
        row = self._connection().execute(GET_UPLOAD.sqlite, {"id": upload_id}).fetchone()
        return None if row is None else (row[0], int(row[1]), row[2])
