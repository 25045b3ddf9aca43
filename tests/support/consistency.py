"""An independent check that a registry's store is consistent: the blob files, the metadata rows and
what the manifests reference agree with each other.

It reads the data directory and the database directly (plain SQL over SQLAlchemy Core, no Shipyard code
beyond the list of non-distributable media types), so it can judge a store after a crash, with or without
a server running. `check_store` returns a list of problems; an empty list means consistent.

Orphans are not problems: a blob file no row mentions, or a staged upload no session mentions, is what a
crash between two steps leaves behind, for garbage collection or `purge-uploads`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

from shipyard.domain.mediatypes import NON_DISTRIBUTABLE_LAYERS

ALGORITHMS = {"sha256": 64, "sha512": 128}
# FilesystemBlobStore.put writes a `.<encoded>.<random>.tmp` beside the target and renames it into place;
# a crash before the rename leaves it behind, hidden by its dot (the store never lists or reads dot files)
_TEMP_NAME = re.compile(r"^\.[a-f0-9]+\..*\.tmp$")
_UPLOAD_ID = re.compile(r"^[a-f0-9]{32}$")
HASH_CHUNK = 1024 * 1024


@contextmanager
def connect(database_url: str) -> Iterator[Connection]:
    """A read-only view of the registry database (psycopg 3 for PostgreSQL)."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    elif url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite+pysqlite")
    engine = create_engine(url)
    try:
        with engine.connect() as conn, conn.begin():
            yield conn
    finally:
        engine.dispose()


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    hasher = hashlib.new(algorithm)
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            hasher.update(chunk)
    return f"{algorithm}:{hasher.hexdigest()}"


def blob_path(storage: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return storage / "blobs" / algorithm / encoded[:2] / encoded


def scan_blob_files(storage: Path) -> tuple[dict[str, int], list[str]]:
    """{digest: size} of every well-formed blob file that hashes to its name, and the problems found."""
    problems: list[str] = []
    found: dict[str, int] = {}
    root = storage / "blobs"
    if not root.is_dir():
        return found, problems
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_dir():
            depth = len(relative.parts)
            if depth == 1 and relative.parts[0] not in ALGORITHMS:
                problems.append(f"blobs/{relative}: unknown digest algorithm directory")
            elif depth == 2 and not re.fullmatch(r"[a-f0-9]{2}", relative.parts[1]):
                problems.append(f"blobs/{relative}: not a two-hex-digit prefix directory")
            elif depth > 2:
                problems.append(f"blobs/{relative}: unexpected directory")
            continue
        if len(relative.parts) != 3:
            problems.append(f"blobs/{relative}: file outside the blobs/<alg>/<2 hex>/<hex> layout")
            continue
        algorithm, prefix, name = relative.parts
        if _TEMP_NAME.match(name):
            # a put() interrupted before its rename: invisible (digests() and reads skip dot files)
            continue
        length = ALGORITHMS.get(algorithm)
        if length is None or not re.fullmatch(rf"[a-f0-9]{{{length}}}", name) or name[:2] != prefix:
            problems.append(f"blobs/{relative}: visible file whose name is not a digest in its place")
            continue
        digest = f"{algorithm}:{name}"
        actual = file_digest(path, algorithm)
        if actual != digest:
            size = path.stat().st_size
            problems.append(f"blobs/{relative}: partially written or corrupt ({size} bytes hash to {actual})")
            continue
        found[digest] = path.stat().st_size
    return found, problems


def _required_descriptors(content: bytes) -> tuple[dict[str, Any] | None, list[dict[str, Any]]] | None:
    """(config, layers) descriptors of an image manifest's JSON, or None when it is not one."""
    try:
        document = json.loads(content)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    config = document.get("config")
    layers = document.get("layers")
    return (
        config if isinstance(config, dict) else None,
        [layer for layer in layers if isinstance(layer, dict)] if isinstance(layers, list) else [],
    )


def _requires_blob(descriptor: dict[str, Any] | None) -> bool:
    """The registry's rule: content embedded as `data`, and non-distributable layers, need no blob."""
    if descriptor is None:
        return True
    return descriptor.get("data") is None and descriptor.get("mediaType") not in NON_DISTRIBUTABLE_LAYERS


def check_store(data_dir: Path, database_url: str, storage_path: Path | None = None) -> list[str]:
    """Every problem found in the store at `data_dir` (blobs under `storage_path`, default `data_dir`)."""
    storage = storage_path or data_dir
    files, problems = scan_blob_files(storage)
    with connect(database_url) as conn:
        problems += _check_blob_rows(conn, storage, files)
        problems += _check_manifests(conn, storage, files)
        problems += _check_tags(conn)
        problems += _check_uploads(conn, storage)
    return problems


def _check_blob_rows(conn: Connection, storage: Path, files: dict[str, int]) -> list[str]:
    problems: list[str] = []
    for digest, size in conn.execute(text("SELECT digest, size FROM blobs ORDER BY digest")):
        if digest in files:
            if files[digest] != size:
                problems.append(f"blob row {digest}: size {size}, but the file holds {files[digest]} bytes")
        elif blob_path(storage, digest).exists():
            pass  # the file exists but is corrupt or misplaced: already reported by the scan
        else:
            problems.append(f"blob row {digest} (size {size}): no blob file")
    orphan_links = conn.execute(
        text(
            "SELECT r.name, rb.digest FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id"
            " LEFT JOIN blobs b ON b.digest = rb.digest WHERE b.digest IS NULL ORDER BY r.name, rb.digest"
        )
    )
    for name, digest in orphan_links:
        problems.append(f"repository {name}: linked to {digest}, which has no blob row")
    return problems


def _check_manifests(conn: Connection, storage: Path, files: dict[str, int]) -> list[str]:
    problems: list[str] = []
    linked: dict[int, set[str]] = {}
    for repository_id, digest in conn.execute(text("SELECT repository_id, digest FROM repository_blobs")):
        linked.setdefault(repository_id, set()).add(digest)
    rows: dict[str, int] = dict(((d, s) for d, s in conn.execute(text("SELECT digest, size FROM blobs"))))
    layers: dict[int, list[tuple[int, str, int]]] = {}
    for manifest_id, position, digest, size in conn.execute(
        text("SELECT manifest_id, position, digest, size FROM manifest_layers ORDER BY manifest_id, position")
    ):
        layers.setdefault(manifest_id, []).append((position, digest, size))
    manifests = conn.execute(
        text(
            "SELECT m.id, r.name, m.repository_id, m.digest, m.media_type, m.config_digest, m.content"
            " FROM manifests m JOIN repositories r ON r.id = m.repository_id ORDER BY m.id"
        )
    )
    for manifest_id, name, repository_id, digest, media_type, config_digest, content in manifests:
        where = f"manifest {name}@{digest}"
        content = bytes(content)
        algorithm = digest.partition(":")[0]
        if algorithm in ALGORITHMS:
            actual = f"{algorithm}:{hashlib.new(algorithm, content).hexdigest()}"
            if actual != digest:
                problems.append(f"{where}: stored content hashes to {actual}")
        parsed = _required_descriptors(content)
        descriptors = parsed[1] if parsed else []
        references: list[tuple[str, str, bool]] = []
        if config_digest is not None:
            config = parsed[0] if parsed else None
            references.append(("config", config_digest, _requires_blob(config)))
        for position, layer_digest, _size in layers.get(manifest_id, []):
            descriptor = descriptors[position] if position < len(descriptors) else None
            if descriptor is not None and descriptor.get("digest") != layer_digest:
                problems.append(
                    f"{where}: layer row {position} is {layer_digest}, the manifest says otherwise"
                )
            references.append((f"layer {position}", layer_digest, _requires_blob(descriptor)))
        if parsed is None and (config_digest is not None or layers.get(manifest_id)):
            problems.append(f"{where} ({media_type}): has config or layer rows but its content is not JSON")
        for role, blob_digest, required in references:
            if not required:
                continue
            if blob_digest not in linked.get(repository_id, set()):
                problems.append(f"{where}: {role} {blob_digest} is not linked to the repository")
            if blob_digest not in rows:
                problems.append(f"{where}: {role} {blob_digest} has no blob row")
            elif blob_digest not in files:
                state = "is corrupt" if blob_path(storage, blob_digest).exists() else "is missing"
                problems.append(f"{where}: {role} {blob_digest}: the blob file {state}")
    return problems


def _check_tags(conn: Connection) -> list[str]:
    problems: list[str] = []
    tags = conn.execute(
        text(
            "SELECT r.name, t.name, t.manifest_id, m.id, m.repository_id, t.repository_id FROM tags t"
            " JOIN repositories r ON r.id = t.repository_id"
            " LEFT JOIN manifests m ON m.id = t.manifest_id ORDER BY r.name, t.name"
        )
    )
    for repository, tag, manifest_id, found, manifest_repository, tag_repository in tags:
        if found is None:
            problems.append(
                f"tag {repository}:{tag} points to manifest id {manifest_id}, which does not exist"
            )
        elif manifest_repository != tag_repository:
            problems.append(f"tag {repository}:{tag} points to a manifest of another repository")
    return problems


def _check_uploads(conn: Connection, storage: Path) -> list[str]:
    """A session must not claim more bytes than are staged (the bytes it acknowledged are lost)."""
    problems: list[str] = []
    uploads = storage / "uploads"
    for upload_id, size in conn.execute(text("SELECT id, size FROM upload_sessions ORDER BY id")):
        if not _UPLOAD_ID.match(upload_id):
            problems.append(f"upload session {upload_id!r}: malformed id")
            continue
        path = uploads / upload_id
        # a session whose staged file is gone answers BLOB_UPLOAD_UNKNOWN: not an inconsistency
        if path.exists() and path.stat().st_size < size:
            staged = path.stat().st_size
            problems.append(f"upload session {upload_id}: claims {size} bytes, only {staged} are staged")
    return problems


def staged_uploads(data_dir: Path) -> list[str]:
    """Names of the staged upload files."""
    uploads = data_dir / "uploads"
    return sorted(p.name for p in uploads.iterdir()) if uploads.is_dir() else []


def upload_sessions(database_url: str) -> dict[str, int]:
    """{id: size} of the upload sessions in the database."""
    with connect(database_url) as conn:
        return dict(((i, s) for i, s in conn.execute(text("SELECT id, size FROM upload_sessions"))))
