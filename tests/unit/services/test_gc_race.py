"""GC racing pushes, mounts and deletes on real SQLite and PostgreSQL, then a check that every manifest
left pulls whole, that nothing unreferenced older than the grace period remains, and that the storage
counters equal a recount from scratch."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from shipyard.app import Shipyard, build
from shipyard.config import Settings
from shipyard.domain.errors import ManifestBlobUnknown, ManifestReferenced, ManifestUnknown
from shipyard.services.access import SYSTEM
from shipyard.services.gc import GarbageCollector
from shipyard.services.registry import RegistryService
from tests.conftest import database_url

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
GRACE = timedelta(seconds=0.3)
ROUNDS = 1000
CLIENTS = 4
REPOSITORIES = [f"acme/r{i}" for i in range(4)] + [f"other/r{i}" for i in range(2)]
SHARED_LAYERS = [f"shared layer {i}".encode() * 50 for i in range(12)]


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shipyard]:
    url = database_url(request.param, request, tmp_path)
    settings = Settings(data_dir=tmp_path, database_url=url, insecure_no_auth=True)
    shipyard = build(settings, run_migrations=True)
    yield shipyard
    shipyard.close()


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def upload(registry: RegistryService, repository: str, data: bytes) -> None:
    state = registry.start_upload(SYSTEM, repository)
    appender = registry.begin_append(SYSTEM, repository, state.id)
    state = appender.finish([data])
    registry.complete_upload(SYSTEM, repository, state.id, digest(data), state)


def push(registry: RegistryService, rng: random.Random, repository: str, n: int) -> None:
    layers = [*rng.sample(SHARED_LAYERS, 2), f"own layer {n} {rng.random()}".encode()]
    config = json.dumps({"n": n, "r": rng.random()}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest(layer),
                "size": len(layer),
            }
            for layer in layers
        ],
    }
    body = json.dumps(manifest).encode()
    for _ in range(5):
        for blob in (config, *layers):
            source = rng.choice(REPOSITORIES)
            if rng.random() < 0.3 and registry.mount_blob(SYSTEM, repository, digest(blob), source):
                continue
            upload(registry, repository, blob)
        reference = f"t{rng.randrange(6)}" if rng.random() < 0.7 else digest(body)
        try:
            registry.put_manifest(SYSTEM, repository, reference, body, OCI_MANIFEST)
            return
        except ManifestBlobUnknown:
            continue  # GC took a link between upload and PUT (grace is tiny here): push again
    raise AssertionError("a push never got through")


def live_manifests(app: Shipyard) -> list[tuple[str, str]]:
    with app.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT r.name, m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id")
        )
        return [(row[0], row[1]) for row in rows]


def client(app: Shipyard, seed: int, rounds: int, errors: list[BaseException]) -> None:
    registry = app.registry
    rng = random.Random(seed)
    try:
        for n in range(rounds):
            repository = rng.choice(REPOSITORIES)
            choice = rng.random()
            if choice < 0.6:
                push(registry, rng, repository, seed * 100_000 + n)
            elif choice < 0.85:
                mine = [d for r, d in live_manifests(app) if r == repository]
                if mine:
                    with contextlib.suppress(ManifestUnknown, ManifestReferenced):
                        registry.delete_manifest(SYSTEM, repository, rng.choice(mine))
            elif choice < 0.97:
                with contextlib.suppress(ManifestUnknown):
                    registry.delete_manifest(SYSTEM, repository, f"t{rng.randrange(6)}")
            else:
                registry.metadata.delete_repository(repository)
    except BaseException as exc:
        errors.append(exc)


def check_pulls_whole(app: Shipyard) -> int:
    registry = app.registry
    pulled = 0
    for repository, manifest_digest in live_manifests(app):
        try:
            stored = registry.get_manifest(SYSTEM, repository, manifest_digest)
        except ManifestUnknown:
            continue
        document = json.loads(stored.content)
        for descriptor in (document["config"], *document["layers"]):
            info = registry.stat_blob(SYSTEM, repository, descriptor["digest"])
            assert info.size == descriptor["size"]
            content = b"".join(registry.read_blob(SYSTEM, repository, descriptor["digest"]))
            assert digest(content) == descriptor["digest"], (
                f"{repository}: layer {descriptor['digest']} is damaged"
            )
        pulled += 1
    return pulled


def recount(app: Shipyard) -> None:
    """The counters the triggers keep, against a count from the links themselves."""
    with app.engine.connect() as conn:
        sizes = dict(conn.execute(text("SELECT digest, size FROM blobs")).all())
        links = conn.execute(
            text(
                "SELECT r.id, r.name, rb.digest FROM repository_blobs rb "
                "JOIN repositories r ON r.id = rb.repository_id"
            )
        ).all()
        repo_bytes: dict[int, int] = {}
        repo_blobs: dict[int, int] = {}
        blob_links: dict[str, int] = {}
        namespace_links: dict[tuple[str, str], int] = {}
        for repository_id, name, blob in links:
            repo_bytes[repository_id] = repo_bytes.get(repository_id, 0) + sizes[blob]
            repo_blobs[repository_id] = repo_blobs.get(repository_id, 0) + 1
            blob_links[blob] = blob_links.get(blob, 0) + 1
            key = (name.split("/", 1)[0], blob)
            namespace_links[key] = namespace_links.get(key, 0) + 1
        for repository_id, stored_bytes, stored_blobs in conn.execute(
            text("SELECT id, stored_bytes, stored_blobs FROM repositories")
        ):
            assert (stored_bytes, stored_blobs) == (
                repo_bytes.get(repository_id, 0),
                repo_blobs.get(repository_id, 0),
            )
        blob_namespaces: dict[str, int] = {}
        for _, blob in namespace_links:
            blob_namespaces[blob] = blob_namespaces.get(blob, 0) + 1
        for blob, count, namespaces in conn.execute(text("SELECT digest, links, namespaces FROM blobs")):
            assert (count, namespaces) == (blob_links.get(blob, 0), blob_namespaces.get(blob, 0)), blob
        stored = {
            (ns, d): n
            for ns, d, n in conn.execute(text("SELECT namespace, digest, links FROM namespace_blobs"))
        }
        assert stored == namespace_links


def test_gc_racing_pushes_and_deletes_loses_nothing_and_leaves_no_garbage(app: Shipyard) -> None:
    collector = GarbageCollector(app.registry.metadata, app.registry.blobs, grace=GRACE, batch_size=50)
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=client, args=(app, seed, ROUNDS // CLIENTS, errors))
        for seed in range(CLIENTS)
    ]
    stop = threading.Event()
    runs = 0

    def collect() -> None:
        nonlocal runs
        try:
            while not stop.is_set():
                collector.run()
                runs += 1
        except BaseException as exc:
            errors.append(exc)

    gc_thread = threading.Thread(target=collect)
    started = time.monotonic()
    gc_thread.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    gc_thread.join()
    assert not errors, errors
    elapsed = time.monotonic() - started
    assert runs > 5, f"GC ran only {runs} times in {elapsed:.1f} s"

    assert check_pulls_whole(app) > 0
    recount(app)
    # once the grace period has passed, one more run leaves no garbage at all
    time.sleep(GRACE.total_seconds() + 0.1)
    collector.run()
    with app.engine.connect() as conn:
        unused = conn.execute(
            text(
                "SELECT count(*) FROM repository_blobs rb WHERE NOT EXISTS (SELECT 1 FROM manifest_layers ml "
                "JOIN manifests m ON m.id = ml.manifest_id WHERE m.repository_id = rb.repository_id "
                "AND ml.digest = rb.digest) AND NOT EXISTS (SELECT 1 FROM manifests m "
                "WHERE m.repository_id = rb.repository_id AND m.config_digest = rb.digest)"
            )
        ).scalar()
        assert unused == 0
        assert conn.execute(text("SELECT count(*) FROM blobs WHERE links = 0")).scalar() == 0
        rows = {row[0] for row in conn.execute(text("SELECT digest FROM blobs"))}
    assert {str(d) for d in app.registry.blobs.digests()} == rows
    assert check_pulls_whole(app) > 0
    recount(app)
