"""The in-process manifest cache: what it holds, and that no process serves a manifest or a tag that
another process (another MetadataStore on the same database) changed or deleted."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from shipyard.db import fastread, migrate
from shipyard.db.engine import make_engine
from shipyard.db.manifest_cache import ManifestCache, SharedChangeCounter
from shipyard.db.metadata import MetadataStore
from shipyard.domain.records import StoredManifest
from tests.unit.db.test_metadata import push

# -- the cache itself ------------------------------------------------------------------------------


def record(n: int, size: int = 10) -> StoredManifest:
    return StoredManifest(
        n, f"sha256:{n:064x}", "application/vnd.oci.image.manifest.v1+json", size, b"x" * size
    )


def test_put_then_get_by_repository_and_reference() -> None:
    cache = ManifestCache()
    cache.put("app", "latest", record(1), cache.generation)
    cache.put("app", record(1).digest, record(1), cache.generation)
    assert cache.get("app", "latest") == record(1)
    assert cache.get("app", record(1).digest) == record(1)
    assert cache.get("other", "latest") is None
    assert cache.get("app", "v2") is None


def test_a_row_read_before_an_invalidation_is_not_stored_after_it() -> None:
    cache = ManifestCache()
    before = cache.generation  # a reader takes this, then reads the database...
    cache.forget_repository("unrelated")  # ...while a change commits somewhere
    cache.put("app", "latest", record(1), before)
    assert cache.get("app", "latest") is None
    cache.put("app", "latest", record(2), cache.generation)
    assert cache.get("app", "latest") == record(2)


def test_forget_repository_drops_only_that_repository() -> None:
    cache = ManifestCache()
    for repository in ("app", "app/sub", "other"):
        cache.put(repository, "latest", record(1), cache.generation)
        cache.put(repository, record(1).digest, record(1), cache.generation)
    cache.forget_repository("app")
    assert cache.get("app", "latest") is None
    assert cache.get("app", record(1).digest) is None
    assert cache.get("app/sub", "latest") == record(1)
    assert cache.get("other", record(1).digest) == record(1)
    assert len(cache) == 4


def test_the_oldest_entries_go_when_the_byte_budget_is_full() -> None:
    cache = ManifestCache(max_bytes=3 * (1000 + 256))
    for n in range(5):
        cache.put("app", f"t{n}", record(n, size=1000), cache.generation)
    assert [cache.get("app", f"t{n}") is not None for n in range(5)] == [False, False, True, True, True]
    assert len(cache) == 3
    cache.put("app", "huge", record(9, size=10_000), cache.generation)  # larger than the whole budget
    assert cache.get("app", "huge") is None
    assert len(cache) == 3


def test_replacing_an_entry_does_not_count_it_twice() -> None:
    cache = ManifestCache(max_bytes=2 * (1000 + 256))
    for n in range(10):
        cache.put("app", "latest", record(n, size=1000), cache.generation)
    cache.put("app", "stable", record(1, size=1000), cache.generation)
    assert cache.get("app", "latest") == record(9, size=1000)
    assert cache.get("app", "stable") == record(1, size=1000)


def test_a_disabled_cache_holds_nothing_until_enabled() -> None:
    cache = ManifestCache()
    cache.put("app", "latest", record(1), cache.generation)
    cache.disable()
    assert cache.get("app", "latest") is None
    cache.put("app", "latest", record(1), cache.generation)
    assert cache.get("app", "latest") is None
    cache.enable()
    cache.put("app", "latest", record(2), cache.generation)
    assert cache.get("app", "latest") == record(2)


# -- two processes on one database -----------------------------------------------------------------


@pytest.fixture
def stores(engine: Engine) -> Iterator[tuple[MetadataStore, MetadataStore]]:
    """Two metadata stores with their own engines on one database: two server processes. On
    PostgreSQL each listens for the other's changes, as `shipyard serve` does at start-up."""
    migrate.upgrade(engine)
    other_engine = make_engine(engine.url.render_as_string(hide_password=False))
    first, second = MetadataStore(engine), MetadataStore(other_engine)
    for store in (first, second):
        store.watch_changes(retry_seconds=0.1)
        listener = store.change_listener
        if listener is not None:
            assert listener.wait_connected(10)
    yield first, second
    for store in (first, second):
        store.stop_watching()
    other_engine.dispose()


def lookup(store: MetadataStore, repository: str, reference: str) -> StoredManifest | None:
    """What a GET does: the cache, else the database (which fills the cache)."""
    found = store.cached_manifest(repository, reference)
    if found is not None:
        return found
    if ":" in reference:
        return store.manifest_by_digest(repository, reference)
    return store.manifest_by_tag(repository, reference)


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """PostgreSQL's notifications reach the other process asynchronously, within milliseconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def heard(store: MetadataStore) -> int:
    listener = store.change_listener
    return 0 if listener is None else listener.heard


def settle(store: MetadataStore, before: int, changes: int) -> None:
    """Wait until `store` has heard of `changes` more changes by other processes (PostgreSQL delivers
    them asynchronously, within milliseconds; SQLite asks the database at most once per
    CHANGE_CHECK_SECONDS, so that is how long a change by another server may go unseen)."""
    if store.change_listener is not None:
        eventually(lambda: heard(store) >= before + changes)
    else:
        time.sleep(2 * fastread.CHANGE_CHECK_SECONDS)


@pytest.fixture
def data_version_unasked(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's data version asked once and then not for an hour: what a test then sees of another
    store's writes, the shared change counter alone explains."""
    monkeypatch.setattr(fastread, "CHANGE_CHECK_SECONDS", 3600.0)


def test_lookups_are_served_from_the_cache(stores: tuple[MetadataStore, MetadataStore]) -> None:
    reader, _ = stores
    manifest = push(reader, "app", b"config", b"layer", tags=["latest"])
    digest = str(manifest.digest)
    assert reader.cached_manifest("app", "latest") is None
    first = lookup(reader, "app", "latest")
    assert first is not None and first.digest == digest
    assert reader.cached_manifest("app", "latest") is first
    assert lookup(reader, "app", digest) is not None
    assert reader.cached_manifest("app", digest) is not None
    assert reader.cached_manifest("app", "missing") is None
    assert reader.cached_manifest("other", "latest") is None


def test_a_tag_moved_by_another_process_is_seen(stores: tuple[MetadataStore, MetadataStore]) -> None:
    reader, writer = stores
    before = heard(reader)
    old = push(writer, "app", b"config 1", b"layer", tags=["latest"])
    settle(reader, before, 1)
    found = lookup(reader, "app", "latest")
    assert found is not None and found.digest == str(old.digest)
    assert reader.cached_manifest("app", "latest") is not None

    new = push(writer, "app", b"config 2", b"layer", tags=["latest"])
    settle(reader, before, 2)
    assert reader.cached_manifest("app", "latest") is None
    found = lookup(reader, "app", "latest")
    assert found is not None and found.digest == str(new.digest)
    # the old manifest is still there by digest
    by_digest = lookup(reader, "app", str(old.digest))
    assert by_digest is not None and by_digest.digest == str(old.digest)


def test_a_manifest_deleted_by_another_process_is_gone(stores: tuple[MetadataStore, MetadataStore]) -> None:
    reader, writer = stores
    before = heard(reader)
    manifest = push(writer, "app", b"config", b"layer", tags=["latest", "stable"])
    digest = str(manifest.digest)
    settle(reader, before, 1)
    for reference in ("latest", "stable", digest):
        assert lookup(reader, "app", reference) is not None
        assert reader.cached_manifest("app", reference) is not None

    assert writer.delete_manifest("app", digest)
    settle(reader, before, 2)
    for reference in ("latest", "stable", digest):
        assert reader.cached_manifest("app", reference) is None
        assert lookup(reader, "app", reference) is None


def test_a_tag_deleted_by_another_process_is_gone(stores: tuple[MetadataStore, MetadataStore]) -> None:
    reader, writer = stores
    before = heard(reader)
    manifest = push(writer, "app", b"config", b"layer", tags=["latest"])
    settle(reader, before, 1)
    assert lookup(reader, "app", "latest") is not None
    assert reader.cached_manifest("app", "latest") is not None
    assert writer.delete_tag("app", "latest")
    settle(reader, before, 2)
    assert reader.cached_manifest("app", "latest") is None
    assert lookup(reader, "app", "latest") is None
    assert lookup(reader, "app", str(manifest.digest)) is not None


def test_a_repository_deleted_by_another_process_is_gone(stores: tuple[MetadataStore, MetadataStore]) -> None:
    reader, writer = stores
    before = heard(reader)
    manifest = push(writer, "app", b"config", b"layer", tags=["latest"])
    kept = push(writer, "kept", b"config", b"layer", tags=["latest"])
    digest = str(manifest.digest)
    settle(reader, before, 2)
    for repository, reference in (("app", "latest"), ("app", digest), ("kept", "latest")):
        assert lookup(reader, repository, reference) is not None
        assert reader.cached_manifest(repository, reference) is not None

    assert writer.delete_repository("app")
    settle(reader, before, 3)
    assert reader.cached_manifest("app", "latest") is None
    assert reader.cached_manifest("app", digest) is None
    if reader.change_listener is not None:  # (SQLite forgets everything on any commit)
        assert reader.cached_manifest("kept", "latest") is not None  # other repositories' entries stay
    assert lookup(reader, "app", "latest") is None
    assert lookup(reader, "app", digest) is None
    found = lookup(reader, "kept", "latest")
    assert found is not None and found.digest == str(kept.digest)
    # pushed again, the repository's manifest is found again (nothing remembers that it was missing)
    again = push(writer, "app", b"config", b"layer", tags=["latest"])
    settle(reader, before, 4)
    found = lookup(reader, "app", "latest")
    assert found is not None and found.digest == str(again.digest)


def test_this_process_sees_its_own_writes_at_once(
    stores: tuple[MetadataStore, MetadataStore], data_version_unasked: None
) -> None:
    store, _ = stores
    old = push(store, "app", b"config 1", b"layer", tags=["latest"])
    assert lookup(store, "app", "latest") is not None
    new = push(store, "app", b"config 2", b"layer", tags=["latest"])
    # no waiting: the write dropped the entry before returning
    found = lookup(store, "app", "latest")
    assert found is not None and found.digest == str(new.digest)
    assert lookup(store, "app", str(old.digest)) is not None
    assert store.delete_manifest("app", str(old.digest))
    assert lookup(store, "app", str(old.digest)) is None
    assert store.delete_tag("app", "latest")
    assert lookup(store, "app", "latest") is None
    assert store.delete_repository("app")
    assert lookup(store, "app", str(new.digest)) is None


def test_sqlite_notices_a_commit_from_any_connection(tmp_path: Path) -> None:
    """On SQLite even a change made outside Shipyard (a third connection, say the sqlite3 shell) is seen."""
    path = f"{tmp_path}/shipyard.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    store = MetadataStore(engine)
    try:
        old = push(store, "app", b"config 1", b"layer", tags=["latest"])
        new = push(store, "app", b"config 2", b"layer", tags=["latest"])
        assert store.delete_tag("app", "latest")
        with sqlite3.connect(path) as conn:
            ids = dict(conn.execute("SELECT digest, id FROM manifests").fetchall())
            repository_id = conn.execute("SELECT id FROM repositories WHERE name = 'app'").fetchone()[0]
            conn.execute(
                "INSERT INTO tags (repository_id, name, manifest_id, updated_at) VALUES (?, 'latest', ?, ?)",
                (repository_id, ids[str(old.digest)], "2026-01-01 00:00:00"),
            )
        found = lookup(store, "app", "latest")
        assert found is not None and found.digest == str(old.digest)
        assert store.cached_manifest("app", "latest") is not None
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE tags SET manifest_id = ? WHERE name = 'latest'", (ids[str(new.digest)],))
        time.sleep(2 * fastread.CHANGE_CHECK_SECONDS)  # how long such a commit may go unseen
        assert store.cached_manifest("app", "latest") is None
        found = lookup(store, "app", "latest")
        assert found is not None and found.digest == str(new.digest)
    finally:
        engine.dispose()


# -- PostgreSQL: the listener ----------------------------------------------------------------------


def terminate(store: MetadataStore, admin_url: str) -> None:
    listener = store.change_listener
    assert listener is not None and listener.backend_pid is not None
    with psycopg.connect(admin_url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (listener.backend_pid,)).fetchone() == (True,)


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_a_lost_listener_turns_the_cache_off_until_it_is_back(
    stores: tuple[MetadataStore, MetadataStore], engine: Engine
) -> None:
    reader, writer = stores
    reader.stop_watching()
    reader.watch_changes(retry_seconds=3)  # slow to reconnect, so that the outage can be looked at
    listener = reader.change_listener
    assert listener is not None and listener.wait_connected(10)
    old = push(writer, "app", b"config 1", b"layer", tags=["latest"])
    settle(reader, 0, 1)
    assert lookup(reader, "app", "latest") is not None
    assert reader.cached_manifest("app", "latest") is not None

    terminate(reader, engine.url.set(drivername="postgresql").render_as_string(hide_password=False))
    eventually(lambda: not listener.connected, timeout=5)
    assert reader.cached_manifest("app", "latest") is None
    # a change made while nobody listens: its notification is lost, and nothing stale is served
    new = push(writer, "app", b"config 2", b"layer", tags=["latest"])
    found = lookup(reader, "app", "latest")
    assert found is not None and found.digest == str(new.digest)
    assert reader.cached_manifest("app", "latest") is None  # not kept while the cache is off

    assert listener.wait_connected(10)  # the listener reconnects by itself
    found = lookup(reader, "app", "latest")
    assert found is not None and found.digest == str(new.digest)
    assert reader.cached_manifest("app", "latest") is not None  # and the cache is on again
    # and it hears changes again
    before = heard(reader)
    assert writer.delete_tag("app", "latest")
    settle(reader, before, 1)
    assert reader.cached_manifest("app", "latest") is None
    assert lookup(reader, "app", "latest") is None
    assert lookup(reader, "app", str(old.digest)) is not None


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_the_postgresql_cache_is_off_without_a_listener(engine: Engine) -> None:
    migrate.upgrade(engine)
    store = MetadataStore(engine)
    push(store, "app", b"config", b"layer", tags=["latest"])
    assert lookup(store, "app", "latest") is not None
    assert store.cached_manifest("app", "latest") is None
    store.watch_changes()
    listener = store.change_listener
    assert listener is not None and listener.wait_connected(10)
    assert lookup(store, "app", "latest") is not None
    assert store.cached_manifest("app", "latest") is not None
    store.stop_watching()
    assert store.cached_manifest("app", "latest") is None


def test_a_store_built_without_the_cache_never_caches(engine: Engine) -> None:
    migrate.upgrade(engine)
    store = MetadataStore(engine, cache_manifests=False)
    store.watch_changes()
    assert store.change_listener is None
    push(store, "app", b"config", b"layer", tags=["latest"])
    assert lookup(store, "app", "latest") is not None
    assert store.cached_manifest("app", "latest") is None


# -- workers of one server: a shared change counter, no waiting for the NOTIFY -----------------------


def test_a_shared_change_counter_is_seen_by_every_process_mapping_it(tmp_path: Path) -> None:
    path = tmp_path / "run" / "manifest-changes"
    first, second = SharedChangeCounter(path), SharedChangeCounter(path)
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        assert first.value() == second.value() == 0
        assert first.bump() == (0, 1)
        assert second.value() == 1
        assert second.bump() == (1, 2)
        assert first.value() == 2
        third = SharedChangeCounter(path)  # a worker started later keeps the count
        assert third.value() == 2
        third.close()
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"], indirect=True)
def test_workers_sharing_a_change_file_never_serve_what_another_changed(
    engine: Engine, tmp_path: Path, data_version_unasked: None
) -> None:
    """No listener here and SQLite's data version unasked, so neither a NOTIFY nor the database can
    help: only the shared counter keeps the reader right."""
    migrate.upgrade(engine)
    change_file = tmp_path / "manifest-changes"
    other_engine = make_engine(engine.url.render_as_string(hide_password=False))
    reader = MetadataStore(engine, change_file=change_file)
    writer = MetadataStore(other_engine, change_file=change_file)
    try:
        for store in (reader, writer):
            assert store._cache is not None
            store._cache.enable()  # as a connected listener would; it never hears anything here
        old = push(writer, "app", b"config 1", b"layer", tags=["latest"])
        push(writer, "other", b"config 3", b"layer", tags=["stable"])
        found = lookup(reader, "app", "latest")
        assert found is not None and found.digest == str(old.digest)
        assert reader.cached_manifest("app", "latest") is not None
        assert lookup(writer, "other", "stable") is not None

        new = push(writer, "app", b"config 2", b"layer", tags=["latest"])
        # at once, without waiting for anything: the reader's next hit finds the counter moved
        assert reader.cached_manifest("app", "latest") is None
        found = lookup(reader, "app", "latest")
        assert found is not None and found.digest == str(new.digest)
        assert reader.cached_manifest("app", "latest") is not None
        # the writer's own change forgot only the repository it changed
        assert writer.cached_manifest("other", "stable") is not None

        writer.delete_tag("app", "latest")
        assert reader.cached_manifest("app", "latest") is None
        assert lookup(reader, "app", "latest") is None
        # closed, a store no longer touches the counter, and its writes still commit
        writer.close()
        push(writer, "app", b"config 4", b"layer", tags=["latest"])
        assert lookup(reader, "app", "latest") is not None
    finally:
        reader.close()
        writer.close()
        other_engine.dispose()
