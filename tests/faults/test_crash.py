"""SIGKILL the server while 20 uploads are in flight, restart it on the same data dir and database.

Before the crash a few complete images are pushed; while it happens, 20 large uploads (half monolithic
POSTs, half chunked sessions whose second chunk is being streamed) trickle their bodies, and two churn
threads keep pushing small images, so the kill also lands between the steps of completing an upload or
writing a manifest. Afterwards the store must be consistent, everything acknowledged before the crash
pullable byte for byte, every interrupted upload restartable, and `purge-uploads` must clean up the rest.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from shipyard.app import build
from shipyard.config import Settings
from tests.faults.conftest import (
    DATABASES,
    FaultRegistry,
    MiB,
    RawRequest,
    assert_blob,
    assert_no_blob,
    finish,
    patch_chunk,
    path_of,
    payload,
    push_blob,
    range_header,
    sha256,
    staged_size,
    start_session,
    wait_for,
)
from tests.support.asgi import SyncASGITransport
from tests.support.consistency import blob_path, check_store, staged_uploads, upload_sessions

IN_FLIGHT = 20
UPLOAD_SIZE = 4 * MiB
FIRST_CHUNK = 1 * MiB  # chunked sessions have this much acknowledged before the crash
QUICK_START = 1 * MiB  # sent at once; the rest of each body trickles
TRICKLE = 64 * 1024
TRICKLE_PAUSE = 0.05
CHURN_THREADS = 2
CONTINUED_SESSIONS = 5  # of the 10 chunked sessions, continued after the restart; the rest are purged

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Image:
    name: str
    tag: str
    manifest: bytes
    blobs: list[bytes]


@dataclass
class InFlight:
    index: int
    name: str
    data: bytes
    chunked: bool
    location: str | None = None  # chunked: the session, with FIRST_CHUNK acknowledged
    outcome: str = "pending"
    started: threading.Event = field(default_factory=threading.Event)

    @property
    def digest(self) -> str:
        return sha256(self.data)


def image_manifest(config: bytes, layers: list[bytes]) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)} for layer in layers],
    }
    return json.dumps(document, indent=2).encode()


def put_manifest(client: httpx.Client, name: str, tag: str, manifest: bytes) -> None:
    response = client.put(
        f"/v2/{name}/manifests/{tag}", content=manifest, headers={"content-type": OCI_MANIFEST}
    )
    assert response.status_code == 201, f"{response.status_code} {response.text}"
    assert response.headers["docker-content-digest"] == sha256(manifest)


def push_chunked(client: httpx.Client, name: str, data: bytes, chunk: int = MiB) -> str:
    location = start_session(client, name)
    for start in range(0, len(data), chunk):
        location = patch_chunk(client, location, start, data[start : start + chunk])
    response = finish(client, location, sha256(data))
    assert response.status_code == 201, f"{response.status_code} {response.text}"
    return sha256(data)


def push_images(client: httpx.Client) -> list[Image]:
    images = []
    shared = payload("crash/shared-layer", 700 * 1024)
    for i in range(3):
        name = f"crash/image-{i}"
        config = json.dumps({"architecture": "amd64", "os": "linux", "index": i}).encode()
        big = payload(f"{name}/big", 3 * MiB // 2 + i)
        small = payload(f"{name}/small", 300 * 1024 + i)
        push_blob(client, name, config)
        push_chunked(client, name, big)
        push_blob(client, name, small)
        if i == 0:
            push_blob(client, name, shared)
        else:  # a cross-repository mount, acknowledged before the crash like any push
            response = client.post(
                f"/v2/{name}/blobs/uploads/", params={"mount": sha256(shared), "from": "crash/image-0"}
            )
            assert response.status_code == 201, f"{response.status_code} {response.text}"
        layers = [big, small, shared]
        manifest = image_manifest(config, layers)
        put_manifest(client, name, "v1", manifest)
        images.append(Image(name, "v1", manifest, [config, *layers]))
    return images


def assert_image(client: httpx.Client, image: Image) -> None:
    response = client.get(f"/v2/{image.name}/manifests/{image.tag}", headers={"accept": OCI_MANIFEST})
    assert response.status_code == 200, f"{image.name}:{image.tag}: {response.status_code} {response.text}"
    assert response.content == image.manifest
    assert response.headers["docker-content-digest"] == sha256(image.manifest)
    for blob in image.blobs:
        assert_blob(client, image.name, blob)


def stream_in_flight(registry: FaultRegistry, upload: InFlight, crashed: threading.Event) -> None:
    """Start the upload, send its body slowly, never its last piece before the crash."""
    with httpx.Client(base_url=registry.http.base_url, timeout=60) as client:
        if upload.chunked:
            location = start_session(client, upload.name)
            upload.location = patch_chunk(client, location, 0, upload.data[:FIRST_CHUNK])
            body = upload.data[FIRST_CHUNK:]
            method, target = "PATCH", upload.location
            headers = {"content-range": f"{FIRST_CHUNK}-{len(upload.data) - 1}"}
        else:
            body = upload.data
            method, target = "POST", f"/v2/{upload.name}/blobs/uploads/?digest={upload.digest}"
            headers = {}
    headers |= {"content-type": "application/octet-stream", "content-length": str(len(body))}
    try:
        with RawRequest(registry.address, method, target, headers) as raw:
            raw.send(body[:QUICK_START])
            upload.started.set()
            sent = QUICK_START
            while sent < len(body) - TRICKLE and not crashed.is_set():
                raw.send(body[sent : sent + TRICKLE])
                sent += TRICKLE
                time.sleep(TRICKLE_PAUSE)
            crashed.wait(60)
            raw.send(body[sent:])
            status, _, text = raw.response()
            upload.outcome = f"answered {status}: {text[:200]!r}"
    except OSError as exc:
        upload.outcome = f"interrupted ({type(exc).__name__})"


def churn(registry: FaultRegistry, worker: int, killing: threading.Event, acknowledged: list[Image]) -> None:
    """Push small images back to back until the crash; keep those the registry acknowledged."""
    with httpx.Client(base_url=registry.http.base_url, timeout=30) as client:
        for n in range(10_000):
            if killing.is_set():
                return
            name = f"crash/churn-{worker}"
            config = json.dumps({"architecture": "arm64", "os": "linux", "n": n}).encode()
            layer = payload(f"{name}/{n}", 64 * 1024 + n)
            try:
                push_blob(client, name, config)
                if n % 2:
                    push_chunked(client, name, layer, chunk=16 * 1024)
                else:
                    push_blob(client, name, layer)
                manifest = image_manifest(config, [layer])
                put_manifest(client, name, f"n{n}", manifest)
            except (httpx.TransportError, AssertionError):
                if killing.is_set():
                    return  # the crash cut this push short: nothing of it was acknowledged
                raise
            acknowledged.append(Image(name, f"n{n}", manifest, [config, layer]))


def restart_from_scratch(client: httpx.Client, upload: InFlight) -> None:
    """Upload the same content again, fresh, the other way round (monolithic <-> chunked)."""
    if upload.chunked:
        digest = push_blob(client, upload.name, upload.data)
    else:
        digest = push_chunked(client, upload.name, upload.data, chunk=3 * MiB // 2)
    assert digest == upload.digest


def continue_old_session(client: httpx.Client, upload: InFlight) -> str:
    """An interrupted session either continues from what it had acknowledged, or is unknown."""
    assert upload.location is not None
    response = client.get(upload.location)
    if response.status_code == 404:
        assert response.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN", response.text
        return "unknown"
    assert response.status_code == 204, f"{response.status_code} {response.text}"
    assert response.headers["range"] == range_header(FIRST_CHUNK), "the unacknowledged chunk counts"
    location = patch_chunk(
        client, path_of(response.headers["location"]), FIRST_CHUNK, upload.data[FIRST_CHUNK:]
    )
    response = finish(client, location, upload.digest)
    assert response.status_code == 201, f"{response.status_code} {response.text}"
    assert response.headers["docker-content-digest"] == upload.digest
    return "continued"


def assert_session_gone(client: httpx.Client, upload: InFlight) -> None:
    assert upload.location is not None
    response = client.get(upload.location)
    assert response.status_code == 404, f"{response.status_code} {response.text}"
    assert response.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN", response.text


@pytest.mark.slow
@pytest.mark.parametrize("database", DATABASES)
def test_sigkill_with_uploads_in_flight(new_registry: Callable[[str], FaultRegistry], database: str) -> None:
    registry = new_registry(database)
    registry.start()
    images = push_images(registry.http)

    uploads = [
        InFlight(i, f"crash/in-flight-{i % 4}", payload(f"in-flight-{i}", UPLOAD_SIZE + 4096 * i), i % 2 == 1)
        for i in range(IN_FLIGHT)
    ]
    killing, crashed = threading.Event(), threading.Event()
    acknowledged: list[Image] = []
    with ThreadPoolExecutor(IN_FLIGHT + CHURN_THREADS) as pool:
        futures: list[Future[None]] = [pool.submit(stream_in_flight, registry, u, crashed) for u in uploads]
        futures += [pool.submit(churn, registry, w, killing, acknowledged) for w in range(CHURN_THREADS)]

        def all_streaming() -> bool:
            failed = [f for f in futures if f.done() and f.exception() is not None]
            if failed:
                raise AssertionError("a client thread failed before the crash") from failed[0].exception()
            return all(u.started.is_set() for u in uploads)

        def unacknowledged_bytes_on_disk() -> bool:
            # sessions whose staged file holds more than they acknowledged: bodies mid-way to the disk
            sessions = upload_sessions(registry.database_url)
            sizes = {upload_id: staged_size(registry, upload_id) for upload_id in sessions}
            return sum(sizes[i] >= sessions[i] + QUICK_START // 2 for i in sessions) >= IN_FLIGHT

        try:
            wait_for(all_streaming, timeout=30, what="all 20 uploads to be streaming")
            wait_for(unacknowledged_bytes_on_disk, timeout=20, what="the server to be writing all 20 bodies")
            wait_for(lambda: len(acknowledged) >= 2 * CHURN_THREADS, timeout=20, what="churn under load")
        finally:  # the crash, and on any failure above the same, so that no client thread is left waiting
            killing.set()
            registry.kill()
            crashed.set()
        for future in futures:
            future.result(timeout=60)

    # every one of the 20 was cut short by the crash
    for upload in uploads:
        assert upload.outcome.startswith("interrupted"), f"upload {upload.index}: {upload.outcome}"

    # the crashed store, as the kill left it, and again once a new server has started on it
    assert check_store(registry.data_dir, registry.database_url) == [], "inconsistent right after the crash"
    registry.start()
    client = registry.http
    assert check_store(registry.data_dir, registry.database_url) == [], "inconsistent after the restart"
    for upload in uploads:
        assert_no_blob(client, upload.name, upload.digest)

    # everything acknowledged before the crash is there, byte for byte
    for image in images + acknowledged:
        assert_image(client, image)

    # interrupted sessions continue correctly or are unknown; every upload restarts from scratch
    chunked = [u for u in uploads if u.chunked]
    outcomes = [continue_old_session(client, u) for u in chunked[:CONTINUED_SESSIONS]]
    for upload in uploads:
        restart_from_scratch(client, upload)
    for upload in uploads:
        assert_blob(client, upload.name, upload.data)
    assert check_store(registry.data_dir, registry.database_url) == []

    # purge-uploads removes what the crashed uploads staged, and their sessions
    assert staged_uploads(registry.data_dir), "the crash left no staged uploads to purge"
    result = registry.purge_uploads(older_than=0)
    assert result.returncode == 0, result.stdout + result.stderr
    assert staged_uploads(registry.data_dir) == [], result.stdout + result.stderr
    assert upload_sessions(registry.database_url) == {}, result.stdout + result.stderr
    for upload in chunked[CONTINUED_SESSIONS:]:
        assert_session_gone(client, upload)

    assert check_store(registry.data_dir, registry.database_url) == []
    for image in images:
        assert_image(client, image)
    log = registry.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-4000:]
    print(f"{database}: old sessions after the restart: {outcomes}; {len(acknowledged)} churn images")


def test_the_consistency_checker_sees_damage(tmp_path: Path) -> None:
    """The crash test is only as good as its checker: damage each invariant by hand and see it reported."""
    data_dir = tmp_path / "data"
    database_url = f"sqlite:///{data_dir / 'shipyard.db'}"
    app = build(
        Settings(data_dir=data_dir, database_url=database_url, insecure_no_auth=True), run_migrations=True
    )
    client = httpx.Client(transport=SyncASGITransport(app.asgi), base_url="http://registry.test")
    try:
        config, layer, spare = b'{"os":"linux"}', payload("checker/layer", 100_000), b"spare"
        for blob in (config, layer, spare):
            push_blob(client, "checker/app", blob)
        put_manifest(client, "checker/app", "v1", image_manifest(config, [layer]))
    finally:
        client.close()
        app.close()
    assert check_store(data_dir, database_url) == []

    layer_file = blob_path(data_dir, sha256(layer))
    layer_file.write_bytes(layer[:5000])  # a partially written blob
    blob_path(data_dir, sha256(spare)).unlink()  # a blob row without its file
    stray = blob_path(data_dir, sha256(b"stray"))
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"not stray")  # a visible file that does not hash to its name
    upload_id = "a" * 32
    with sqlite3.connect(data_dir / "shipyard.db") as conn:
        conn.execute("DELETE FROM repository_blobs WHERE digest = ?", (sha256(config),))
        conn.execute("DELETE FROM blobs WHERE digest = ?", (sha256(config),))
        conn.execute("UPDATE tags SET manifest_id = 999")
        conn.execute(
            "INSERT INTO upload_sessions (id, repository, size, created_at, updated_at)"
            " VALUES (?, 'checker/app', 10, '2026-01-01', '2026-01-01')",
            (upload_id,),
        )
    conn.close()
    (data_dir / "uploads" / upload_id).write_bytes(b"short")  # fewer bytes than the session acknowledged

    problems = "\n".join(check_store(data_dir, database_url))
    for expected in [
        f"{sha256(layer).split(':')[1]}: partially written or corrupt",
        f"blob row {sha256(spare)} (size 5): no blob file",
        f"{sha256(b'stray').split(':')[1]}: partially written or corrupt",
        f"config {sha256(config)} is not linked to the repository",
        f"config {sha256(config)} has no blob row",
        f"layer 0 {sha256(layer)}: the blob file is corrupt",
        "tag checker/app:v1 points to manifest id 999, which does not exist",
        f"upload session {upload_id}: claims 10 bytes, only 5 are staged",
    ]:
        assert expected in problems, f"{expected!r} not in:\n{problems}"
    assert len(problems.splitlines()) == 8, problems
