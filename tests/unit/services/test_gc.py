"""The garbage collector and storage accounting on real SQLite and PostgreSQL: what it frees, what it
keeps, dry runs, stopping and resuming, the `shipyard gc` command, and counters against a recount."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from shipyard.app import Shipyard, build
from shipyard.config import Settings
from shipyard.db.accounts import AccountStore
from shipyard.db.gc import GcStore
from shipyard.domain.digest import Digest
from shipyard.domain.errors import BlobUnknown, ManifestUnknown
from shipyard.services.access import SYSTEM
from shipyard.services.gc import GarbageCollector
from tests.conftest import database_url
from tests.unit.services.test_gc_race import OCI_MANIFEST, digest, recount, upload

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shipyard]:
    url = database_url(request.param, request, tmp_path)
    shipyard = build(
        Settings(data_dir=tmp_path, database_url=url, insecure_no_auth=True), run_migrations=True
    )
    yield shipyard
    shipyard.close()


def collector(app: Shipyard, grace: float = 0.0, batch_size: int = 500) -> GarbageCollector:
    return GarbageCollector(
        app.registry.metadata, app.registry.blobs, grace=timedelta(seconds=grace), batch_size=batch_size
    )


def image(app: Shipyard, repository: str, layers: list[bytes], tag: str | None = "latest") -> str:
    config = json.dumps({"layers": len(layers), "repository": repository, "tag": tag}).encode()
    for blob in (config, *layers):
        upload(app.registry, repository, blob)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(b), "size": len(b)}
                for b in layers
            ],
        }
    ).encode()
    app.registry.put_manifest(SYSTEM, repository, tag or digest(body), body, OCI_MANIFEST)
    return digest(body)


def stored(app: Shipyard, data: bytes) -> bool:
    return app.registry.blobs.stat(Digest.parse(digest(data))) is not None


def test_deleting_a_manifest_frees_the_layers_no_other_manifest_uses(app: Shipyard) -> None:
    shared, own = b"shared layer" * 100, b"own layer" * 300
    first = image(app, "acme/app", [shared, own], tag="v1")
    image(app, "acme/app", [shared], tag="v2")
    app.registry.delete_manifest(SYSTEM, "acme/app", first)
    report = collector(app).run()
    # the manifest's own layer and config went; the shared layer stays for v2
    assert report.blobs == 2 and report.links == 2
    config_size = report.by_account["acme"].bytes - len(own)
    assert 0 < config_size < 200 and report.by_account["acme"].blobs == 2
    assert not stored(app, own) and stored(app, shared)
    assert app.registry.get_manifest(SYSTEM, "acme/app", "v2")
    # nothing is done twice
    again = collector(app).run()
    assert (again.blobs, again.links, again.manifests) == (0, 0, 0)
    recount(app)


def test_a_blob_younger_than_the_grace_period_is_kept_until_it_is_older(app: Shipyard) -> None:
    upload(app.registry, "acme/app", b"pushed, no manifest yet")
    assert collector(app, grace=1).run().links == 0
    assert stored(app, b"pushed, no manifest yet")
    time.sleep(1.1)  # the review was put off to the end of the grace period
    report = collector(app, grace=1).run()
    assert (report.links, report.blobs) == (1, 1)
    assert report.by_account["acme"].bytes == len(b"pushed, no manifest yet")
    assert not stored(app, b"pushed, no manifest yet")


def test_a_repository_delete_frees_what_only_it_held(app: Shipyard) -> None:
    image(app, "acme/one", [b"common" * 10, b"only one" * 10])
    image(app, "beta/two", [b"common" * 10])
    assert app.registry.metadata.delete_repository("acme/one")
    report = collector(app).run()
    assert not stored(app, b"only one" * 10) and stored(app, b"common" * 10)
    assert report.blobs == 2  # the layer and acme/one's config
    assert set(report.by_account) == {"acme"}
    recount(app)


def test_a_dry_run_changes_nothing_and_tells_what_the_run_frees(app: Shipyard) -> None:
    image(app, "acme/app", [b"a" * 1000, b"b" * 2000], tag="v1")
    app.registry.delete_manifest(SYSTEM, "acme/app", "v1")  # the tag only: the manifest stays, untagged
    (digest_v1,) = _rows(app, "SELECT digest FROM manifests")[0]
    app.registry.delete_manifest(SYSTEM, "acme/app", str(digest_v1))
    upload(app.registry, "beta/x", b"c" * 500)
    dry = collector(app).run(dry_run=True)
    assert dry.dry_run and dry.links == 4
    assert {k: (v.blobs, v.bytes) for k, v in dry.by_account.items()} == {
        "acme": (3, 3000 + _config_size(app, dry)),
        "beta": (1, 500),
    }
    assert stored(app, b"a" * 1000)
    real = collector(app).run()
    assert {k: (v.blobs, v.bytes) for k, v in real.by_account.items()} == {
        k: (v.blobs, v.bytes) for k, v in dry.by_account.items()
    }
    assert not stored(app, b"a" * 1000) and not stored(app, b"c" * 500)


def _config_size(app: Shipyard, _report: object) -> int:
    # acme/app's config is the one blob of that repository that is not a layer of the test
    sizes = [s for (s,) in _rows(app, "SELECT size FROM blobs WHERE size NOT IN (1000, 2000, 500)")]
    assert len(sizes) == 1
    return int(sizes[0])


def _rows(app: Shipyard, query: str) -> list[tuple[object, ...]]:
    with app.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(query))]


def test_untagged_manifests_go_only_where_the_repository_asks_and_never_an_index_child(app: Shipyard) -> None:
    kept = image(app, "acme/keep", [b"keep layer"], tag="v1")
    app.registry.delete_manifest(SYSTEM, "acme/keep", "v1")
    gone = image(app, "acme/tidy", [b"tidy layer"], tag="v1")
    child = image(app, "acme/tidy", [b"child layer"], tag=None)
    child_size = len(app.registry.get_manifest(SYSTEM, "acme/tidy", child).content)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": child_size}],
        }
    ).encode()
    app.registry.put_manifest(SYSTEM, "acme/tidy", "multi", index, OCI_INDEX)
    app.registry.delete_manifest(SYSTEM, "acme/tidy", "v1")
    AccountStore(app.engine).set_untagged_retention("acme/tidy", 1)
    # untagged for less than a day: kept
    assert collector(app).run().manifests == 0
    with app.engine.begin() as conn:
        conn.execute(text("UPDATE gc_manifest_reviews SET queued_at = :then"), {"then": _days_ago(app, 2)})
    report = collector(app).run()
    assert report.manifests == 1
    with pytest.raises(ManifestUnknown):
        app.registry.get_manifest(SYSTEM, "acme/tidy", gone)
    assert not stored(app, b"tidy layer")
    # the index's child stays while the index lives; the other repository keeps its untagged manifest
    assert app.registry.get_manifest(SYSTEM, "acme/tidy", child) and stored(app, b"child layer")
    assert app.registry.get_manifest(SYSTEM, "acme/keep", kept)
    # once the index is gone, its untagged child follows after its own day
    app.registry.delete_manifest(SYSTEM, "acme/tidy", "multi")
    index_digest = digest(index)
    app.registry.delete_manifest(SYSTEM, "acme/tidy", index_digest)
    with app.engine.begin() as conn:
        conn.execute(text("UPDATE gc_manifest_reviews SET queued_at = :then"), {"then": _days_ago(app, 2)})
    assert collector(app).run().manifests == 1
    assert not stored(app, b"child layer")


def _days_ago(app: Shipyard, days: int) -> object:
    from datetime import UTC, datetime

    when = datetime.now(UTC) - timedelta(days=days)
    return when if app.engine.dialect.name == "postgresql" else when.strftime("%Y-%m-%d %H:%M:%S.%f")


def test_a_stopped_run_continues_where_it_was(app: Shipyard) -> None:
    for n in range(30):
        upload(app.registry, f"acme/r{n % 3}", f"blob {n}".encode())
    calls = 0

    def stop_after_first_batch(phase: str, done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if phase == "blobs":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collector(app, batch_size=7).run(progress=stop_after_first_batch)
    left = sum(stored(app, f"blob {n}".encode()) for n in range(30))
    assert 0 < left < 30
    report = collector(app, batch_size=7).run()
    assert report.blobs == left
    assert not any(stored(app, f"blob {n}".encode()) for n in range(30))
    recount(app)


def test_storage_accounting_equals_a_recount_after_random_pushes_mounts_and_deletes(app: Shipyard) -> None:
    rng = random.Random(16)
    repositories = ["acme/a", "acme/b", "beta/c", "gamma/d"]
    contents = [f"content {n}".encode() * (n + 1) for n in range(15)]
    registry = app.registry
    for _ in range(150):
        repository = rng.choice(repositories)
        choice = rng.random()
        if choice < 0.45:
            upload(registry, repository, rng.choice(contents))
        elif choice < 0.7:
            registry.mount_blob(SYSTEM, repository, digest(rng.choice(contents)), rng.choice(repositories))
        elif choice < 0.85:
            with contextlib.suppress(BlobUnknown):
                registry.delete_blob(SYSTEM, repository, digest(rng.choice(contents)))
        elif choice < 0.95:
            collector(app).run()
        else:
            registry.metadata.delete_repository(repository)
        if rng.random() < 0.1:
            recount(app)
    recount(app)
    store = GcStore(app.engine)
    links = _rows(
        app,
        "SELECT r.name, b.digest, b.size FROM repository_blobs rb JOIN repositories r ON "
        "r.id = rb.repository_id JOIN blobs b ON b.digest = rb.digest",
    )
    holders: dict[str, set[str]] = {}
    for name, blob, _ in links:
        holders.setdefault(str(blob), set()).add(str(name))
    sizes = {str(blob): int(size) for _, blob, size in links}  # type: ignore[call-overload]
    for repository in repositories:
        usage = store.repository_usage(repository)
        mine = {str(blob) for name, blob, _ in links if name == repository}
        if usage is None:
            assert not mine
            continue
        assert usage.stored_bytes == sum(sizes[b] for b in mine)
        assert usage.unique_bytes == sum(sizes[b] for b in mine if holders[b] == {repository})
        assert usage.shared_bytes == usage.stored_bytes - usage.unique_bytes
    for account in ("acme", "beta", "gamma"):
        usage = store.namespace_usage(account)
        mine = {b for b, names in holders.items() if any(n.split("/")[0] == account for n in names)}
        assert usage.stored_bytes == sum(sizes[b] for b in mine)
        assert usage.unique_bytes == sum(
            sizes[b] for b in mine if {n.split("/")[0] for n in holders[b]} == {account}
        )
        assert usage.blobs == len(mine)


def test_the_gc_command_runs_against_the_configured_database_and_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, insecure_no_auth=True)
    app = build(settings, run_migrations=True)
    try:
        image(app, "acme/app", [b"layer" * 100], tag="v1")
        (manifest,) = _rows(app, "SELECT digest FROM manifests")[0]
        app.registry.delete_manifest(SYSTEM, "acme/app", str(manifest))
    finally:
        app.close()
    env = {**os.environ, "SHIPYARD_GC_GRACE_SECONDS": "0"}
    command = [str(Path(sys.executable).parent / "shipyard"), "gc", "--data-dir", str(tmp_path)]
    dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, env=env, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would free 2 blobs (")
    assert "acme" in dry.stdout
    real = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert real.returncode == 0, real.stderr
    assert real.stdout.startswith("freed 2 blobs (") and "2 unused blob links" in real.stdout
    app = build(settings)
    try:
        assert list(app.registry.blobs.digests()) == []
    finally:
        app.close()
