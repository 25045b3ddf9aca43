"""MetadataStore behaviour the HTTP tests cannot see easily, on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from shipyard.db import migrate
from shipyard.db.engine import make_engine
from shipyard.db.metadata import MetadataStore
from shipyard.db.models import Manifest, ManifestChild, ManifestLayer, Repository, Tag
from shipyard.domain import mediatypes as mt
from shipyard.domain.errors import ManifestBlobUnknown
from shipyard.domain.manifest import ParsedManifest, parse_manifest
from tests.support.postgres import PostgresServer
from tests.unit.db.databases import icu_database

# byte order: "-" < "." < digits < upper case < "_" < lower case; most natural-language collations differ
TAGS = [
    "A",
    "a",
    "_x",
    "Z9",
    "1.0",
    "latest",
    "b",
    "Ab",
    "a-b",
    "a.b",
    "a_b",
    "_",
    "0",
    "Z",
    "aB",
    "z",
    "-"[1:],
]
TAGS = [t for t in TAGS if t]
REPOSITORIES = ["a", "a-b", "a.b", "a/b", "a_b", "a0", "ab", "b", "a/b-c", "a/b.c", "a/b/c", "a/b_c", "a__b"]


@pytest.fixture
def metadata(engine: Engine) -> MetadataStore:
    migrate.upgrade(engine)
    return MetadataStore(engine)


def blob(data: bytes) -> dict[str, object]:
    return {"mediaType": "application/octet-stream", "digest": digest(data), "size": len(data)}


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image(config: bytes, *layers: bytes, subject: bytes | None = None) -> tuple[ParsedManifest, bytes]:
    document: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {**blob(config), "mediaType": "application/vnd.oci.image.config.v1+json"},
        "layers": [blob(layer) for layer in layers],
    }
    if subject is not None:
        document["subject"] = {**blob(subject), "mediaType": mt.OCI_MANIFEST}
    body = json.dumps(document).encode()
    return parse_manifest(body, None), body


def push(
    metadata: MetadataStore, repository: str, config: bytes, *layers: bytes, tags: list[str] | None = None
) -> ParsedManifest:
    for data in (config, *layers):
        metadata.link_blob(repository, digest(data), len(data))
    manifest, body = image(config, *layers)
    metadata.put_manifest(repository, manifest, body, tags or [])
    return manifest


def utc(value: datetime) -> datetime:
    # SQLite hands back naive UTC; PostgreSQL an aware time in the session's zone
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def count(metadata: MetadataStore, model: type) -> int:
    with metadata.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def assert_no_manifest_rows(metadata: MetadataStore) -> None:
    assert count(metadata, Manifest) == 0
    assert count(metadata, ManifestLayer) == 0
    assert count(metadata, ManifestChild) == 0
    assert count(metadata, Tag) == 0


# -- put_manifest is one transaction -------------------------------------------------------------


def test_a_manifest_with_a_missing_blob_leaves_nothing(metadata: MetadataStore) -> None:
    metadata.link_blob("other", digest(b"config"), 6)  # known, but to another repository
    manifest, body = image(b"config", b"layer")
    with pytest.raises(ManifestBlobUnknown) as caught:
        metadata.put_manifest("app", manifest, body, ["latest"])
    assert caught.value.extra == {"digest": digest(b"config")}
    assert_no_manifest_rows(metadata)
    assert not metadata.repository_exists("app")
    assert metadata.manifest_by_tag("app", "latest") is None


def test_a_manifest_with_one_missing_layer_leaves_nothing(metadata: MetadataStore) -> None:
    metadata.link_blob("app", digest(b"config"), 6)
    metadata.link_blob("app", digest(b"layer 1"), 7)
    manifest, body = image(b"config", b"layer 1", b"layer 2")
    with pytest.raises(ManifestBlobUnknown, match=digest(b"layer 2")):
        metadata.put_manifest("app", manifest, body, ["latest"])
    assert_no_manifest_rows(metadata)


def test_an_index_with_a_missing_child_leaves_nothing(metadata: MetadataStore) -> None:
    child = push(metadata, "app", b"config", b"layer")
    document = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {"mediaType": mt.OCI_MANIFEST, "digest": str(child.digest), "size": child.size},
            {"mediaType": mt.OCI_MANIFEST, "digest": digest(b"not pushed"), "size": 10},
        ],
    }
    body = json.dumps(document).encode()
    with pytest.raises(ManifestBlobUnknown, match="manifest unknown"):
        metadata.put_manifest("app", parse_manifest(body, None), body, ["multi"])
    assert count(metadata, Manifest) == 1
    assert count(metadata, ManifestChild) == 0
    assert metadata.manifest_by_tag("app", "multi") is None


def test_a_failure_after_the_manifest_row_rolls_everything_back(metadata: MetadataStore) -> None:
    for data in (b"config", b"layer"):
        metadata.link_blob("app", digest(data), len(data))
    manifest, body = image(b"config", b"layer")
    # the manifest and layer rows and the first tag are written before the second tag fails (the
    # write path runs on the DBAPI cursor, so the error is the driver's own)
    with pytest.raises((IntegrityError, sqlite3.IntegrityError, psycopg.IntegrityError)):
        metadata.put_manifest("app", manifest, body, ["first", None])  # type: ignore[list-item]
    assert_no_manifest_rows(metadata)
    assert metadata.manifest_by_digest("app", str(manifest.digest)) is None


def test_put_manifest_writes_layers_and_tags(metadata: MetadataStore) -> None:
    manifest = push(metadata, "app", b"config", b"layer 1", b"layer 2", tags=["v1", "latest"])
    stored = metadata.manifest_by_tag("app", "v1")
    assert stored is not None
    assert stored.digest == str(manifest.digest)
    assert stored.media_type == mt.OCI_MANIFEST
    assert stored == metadata.manifest_by_tag("app", "latest")
    assert stored == metadata.manifest_by_digest("app", str(manifest.digest))
    with metadata.engine.connect() as conn:
        layers = conn.execute(
            select(ManifestLayer.position, ManifestLayer.digest).order_by(ManifestLayer.position)
        ).all()
    assert [tuple(row) for row in layers] == [(0, digest(b"layer 1")), (1, digest(b"layer 2"))]
    assert metadata.referenced_blob_digests() == {digest(b"config"), digest(b"layer 1"), digest(b"layer 2")}


def test_pushing_the_same_manifest_again_adds_tags_only(metadata: MetadataStore) -> None:
    push(metadata, "app", b"config", b"layer", tags=["v1"])
    push(metadata, "app", b"config", b"layer", tags=["v2"])
    assert count(metadata, Manifest) == 1
    assert count(metadata, ManifestLayer) == 1
    page = metadata.list_tags("app", 10, None)
    assert page is not None and page.items == ["v1", "v2"]


def test_a_tag_upsert_moves_the_tag(metadata: MetadataStore) -> None:
    first = push(metadata, "app", b"config", b"layer 1", tags=["latest", "v1"])
    second = push(metadata, "app", b"config", b"layer 2", tags=["latest"])
    moved = metadata.manifest_by_tag("app", "latest")
    assert moved is not None and moved.digest == str(second.digest)
    kept = metadata.manifest_by_tag("app", "v1")
    assert kept is not None and kept.digest == str(first.digest)
    assert count(metadata, Tag) == 2
    # the old manifest is still there by digest
    assert metadata.manifest_by_digest("app", str(first.digest)) is not None


def test_tags_are_per_repository(metadata: MetadataStore) -> None:
    one = push(metadata, "one", b"config", b"layer 1", tags=["latest"])
    two = push(metadata, "two", b"config", b"layer 2", tags=["latest"])
    found_one, found_two = (
        metadata.manifest_by_tag("one", "latest"),
        metadata.manifest_by_tag("two", "latest"),
    )
    assert found_one is not None and found_one.digest == str(one.digest)
    assert found_two is not None and found_two.digest == str(two.digest)


# -- listing in byte order -----------------------------------------------------------------------


def test_list_tags_pages_in_byte_order(metadata: MetadataStore) -> None:
    push(metadata, "app", b"config", b"layer", tags=TAGS)
    expected = sorted(TAGS, key=lambda t: t.encode())
    page = metadata.list_tags("app", 1000, None)
    assert page is not None
    assert page.items == expected
    assert not page.has_more
    for size in (1, 2, 3, len(TAGS) - 1, len(TAGS)):
        collected: list[str] = []
        last: str | None = None
        while True:
            page = metadata.list_tags("app", size, last)
            assert page is not None
            collected += page.items
            if not page.has_more:
                break
            assert len(page.items) == size
            last = page.items[-1]
        assert collected == expected, size


@pytest.mark.parametrize("last", ["A", "_", "Z9", "a", "1", "B", "~", " "])
def test_list_tags_after_any_string_is_bytewise(metadata: MetadataStore, last: str) -> None:
    push(metadata, "app", b"config", b"layer", tags=TAGS)
    page = metadata.list_tags("app", 1000, last)
    assert page is not None
    assert page.items == sorted((t for t in TAGS if t.encode() > last.encode()), key=lambda t: t.encode())


def test_list_tags_of_an_unknown_repository(metadata: MetadataStore) -> None:
    assert metadata.list_tags("nothing", 10, None) is None


def test_list_tags_of_a_repository_without_tags(metadata: MetadataStore) -> None:
    push(metadata, "app", b"config", b"layer")
    page = metadata.list_tags("app", 10, None)
    assert page is not None and page.items == [] and not page.has_more


def test_the_catalog_pages_in_byte_order(metadata: MetadataStore) -> None:
    for name in REPOSITORIES:
        metadata.link_blob(name, digest(b"shared"), 6)
    expected = sorted(REPOSITORIES, key=lambda n: n.encode())
    assert metadata.catalog(1000, None).items == expected
    collected: list[str] = []
    last: str | None = None
    while True:
        page = metadata.catalog(4, last)
        collected += page.items
        if not page.has_more:
            break
        last = page.items[-1]
    assert collected == expected
    assert metadata.catalog(1000, "a/b").items == [n for n in expected if n.encode() > b"a/b"]
    assert metadata.repositories_with_blob(digest(b"shared"), limit=3) == expected[:3]


# -- pulls ---------------------------------------------------------------------------------------


def test_record_pulls_writes_last_pulled_at(metadata: MetadataStore) -> None:
    first = push(metadata, "app", b"config", b"layer 1")
    second = push(metadata, "app", b"config", b"layer 2")
    ids = {}
    for manifest in (first, second):
        stored = metadata.manifest_by_digest("app", str(manifest.digest))
        assert stored is not None
        ids[manifest.digest] = stored.id

    def pulled_at() -> dict[int, datetime | None]:
        with metadata.engine.connect() as conn:
            rows = conn.execute(select(Manifest.id, Manifest.last_pulled_at)).all()
        return {
            row.id: None if row.last_pulled_at is None else row.last_pulled_at.replace(tzinfo=UTC)
            for row in rows
        }

    assert set(pulled_at().values()) == {None}
    t1 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    t2 = t1 + timedelta(hours=1)
    metadata.record_pulls({ids[first.digest]: t1, ids[second.digest]: t2, 999_999: t2})
    assert pulled_at() == {ids[first.digest]: t1, ids[second.digest]: t2}
    metadata.record_pulls({ids[first.digest]: t2})
    assert pulled_at()[ids[first.digest]] == t2
    metadata.record_pulls({})


def test_deleting_a_manifest_removes_its_rows_and_tags(metadata: MetadataStore) -> None:
    manifest = push(metadata, "app", b"config", b"layer", tags=["latest"])
    assert metadata.delete_manifest("app", str(manifest.digest))
    assert_no_manifest_rows(metadata)
    assert not metadata.delete_manifest("app", str(manifest.digest))
    assert metadata.repository_exists("app")
    with metadata.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Repository)).scalar_one() == 1


# -- uploads and blob links ----------------------------------------------------------------------


def test_advancing_an_upload_checks_and_moves_in_one_step(metadata: MetadataStore) -> None:
    upload_id = "0" * 32
    created = metadata.create_upload(upload_id, "app")
    assert metadata.advance_upload(upload_id, 0, 10)
    assert not metadata.advance_upload(upload_id, 0, 20)  # a stale offset is refused
    state = metadata.get_upload(upload_id)
    assert state is not None
    assert (state.repository, state.size) == ("app", 10)
    assert abs(state.created_at - created.created_at) < timedelta(seconds=1)
    assert metadata.advance_upload(upload_id, 10, 25)
    assert not metadata.advance_upload("f" * 32, 0, 5)  # an unknown upload
    assert metadata.delete_upload(upload_id)
    assert not metadata.advance_upload(upload_id, 25, 30)
    assert metadata.get_upload(upload_id) is None
    assert not metadata.delete_upload(upload_id)


def test_stale_uploads_compare_with_the_times_the_upload_statements_write(metadata: MetadataStore) -> None:
    metadata.create_upload("1" * 32, "app")
    assert metadata.stale_uploads(datetime.now(UTC) - timedelta(minutes=1)) == []
    assert metadata.stale_uploads(datetime.now(UTC) + timedelta(minutes=1)) == ["1" * 32]


@pytest.mark.parametrize("existing", [False, True], ids=["new-repository", "existing-repository"])
def test_linking_a_finished_upload_ends_it(metadata: MetadataStore, existing: bool) -> None:
    if existing:
        metadata.link_blob("app", digest(b"other"), 5)
    upload_id = "2" * 32
    metadata.create_upload(upload_id, "app")
    metadata.link_blob("app", digest(b"layer"), 5, finished_upload=upload_id)
    assert metadata.get_upload(upload_id) is None
    assert metadata.linked_blob_size("app", digest(b"layer")) == 5
    assert metadata.blob_size(digest(b"layer")) == 5
    metadata.link_blob("app", digest(b"layer"), 5)  # again: nothing changes
    assert metadata.repositories_with_blob(digest(b"layer")) == ["app"]


def test_a_blob_linked_while_another_request_creates_its_repository(postgres: PostgresServer) -> None:
    """PostgreSQL links a blob in one statement that also creates the repository; when another
    transaction creates the repository meanwhile, that statement links nothing and the link is made
    in a transaction of its own."""
    engine = make_engine(icu_database(postgres))
    try:
        migrate.upgrade(engine)
        metadata = MetadataStore(engine)
        metadata.create_upload("3" * 32, "raced")
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url) as other, ThreadPoolExecutor(1) as pool:
            other.execute("INSERT INTO repositories (name, created_at) VALUES ('raced', now())")
            linking = pool.submit(metadata.link_blob, "raced", digest(b"layer"), 5, finished_upload="3" * 32)
            deadline = time.monotonic() + 30
            with psycopg.connect(url, autocommit=True) as watcher:
                while (
                    time.monotonic() < deadline
                    and not watcher.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    ).fetchone()
                ):
                    time.sleep(0.01)
            assert not linking.done()  # it waits for the other transaction's repository row
            other.commit()
            linking.result(timeout=30)
        assert metadata.linked_blob_size("raced", digest(b"layer")) == 5
        assert metadata.get_upload("3" * 32) is None
        assert metadata.repositories_with_blob(digest(b"layer")) == ["raced"]
    finally:
        engine.dispose()


def test_a_failed_manifest_put_creates_no_repository_but_a_later_one_does(metadata: MetadataStore) -> None:
    manifest, body = image(b"config")
    with pytest.raises(ManifestBlobUnknown):
        metadata.put_manifest("new", manifest, body, ["v1"])
    assert not metadata.repository_exists("new")
    metadata.link_blob("new", digest(b"config"), 6)
    metadata.put_manifest("new", manifest, body, ["v1", "v2"])
    page = metadata.list_tags("new", 10, None)
    assert page is not None and page.items == ["v1", "v2"]


def test_a_manifest_change_holds_the_repository_row_lock_on_postgresql(metadata: MetadataStore) -> None:
    if metadata.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's BEGIN IMMEDIATE serializes every write")
    metadata.link_blob("app", digest(b"config"), 6)
    url = metadata.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as other:
        with metadata._manifest_change("app") as (_conn, repository_id):
            assert repository_id is not None
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute("SELECT id FROM repositories WHERE name = 'app' FOR UPDATE NOWAIT")
        other.execute("SELECT id FROM repositories WHERE name = 'app' FOR UPDATE NOWAIT")
