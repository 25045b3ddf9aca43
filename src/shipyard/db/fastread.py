"""The hot reads (manifest by tag or digest, blob of a repository, upload state) on SQLite without
the ORM layer.

The stdlib driver on a per-thread read-only connection answers in microseconds (MEASUREMENTS.md:
~100k lookups/s against ~5k through a pooled SQLAlchemy session), fast enough to run on the event loop
itself. Each statement runs in its own implicit transaction, so it sees every committed write (WAL).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

from shipyard.db.sql import MANIFEST_BY_DIGEST, MANIFEST_BY_TAG, Sql, stored_manifest
from shipyard.domain.records import StoredManifest

_UPLOAD = "SELECT repository, size, created_at FROM upload_sessions WHERE id = ?"
_LINKED_BLOB = (
    "SELECT b.size FROM blobs b JOIN repository_blobs rb ON rb.digest = b.digest "
    "JOIN repositories r ON r.id = rb.repository_id WHERE r.name = ? AND b.digest = ?"
)


class SqliteFastReader:
    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()
        self._version_lock = threading.Lock()
        self._version_conn: sqlite3.Connection | None = None
        self._version: int | None = None

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
        """Whether any other connection (this process's writers included) committed since the last
        call (True on the first), calling `forget` first if so: no other thread is told "unchanged"
        before it has run. One connection answers for every thread, as its versions are what the
        answer compares. `PRAGMA data_version` costs a couple of microseconds."""
        with self._version_lock:
            if self._version_conn is None:
                self._version_conn = self._open()
            version = self._version_conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._version:
                return False
            forget()
            self._version = version
            return True

    def _manifest(self, query: Sql, repository: str, key: str) -> StoredManifest | None:
        values = {"repository": repository, "key": key}
        return stored_manifest(self._connection().execute(query.sqlite, values).fetchone())

    def manifest_by_tag(self, repository: str, tag: str) -> StoredManifest | None:
        return self._manifest(MANIFEST_BY_TAG, repository, tag)

    def manifest_by_digest(self, repository: str, digest: str) -> StoredManifest | None:
        return self._manifest(MANIFEST_BY_DIGEST, repository, digest)

    def linked_blob_size(self, repository: str, digest: str) -> int | None:
        row = self._connection().execute(_LINKED_BLOB, (repository, digest)).fetchone()
        return None if row is None else int(row[0])

    def upload(self, upload_id: str) -> tuple[str, int, str] | None:
        """(repository, size, created_at as SQLAlchemy stores it) of an upload, or None."""
        row = self._connection().execute(_UPLOAD, (upload_id,)).fetchone()
        return None if row is None else (row[0], int(row[1]), row[2])
