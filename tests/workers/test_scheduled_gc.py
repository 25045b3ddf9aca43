"""The cluster's schedule runs GC: a deleted image's blobs leave the store of a live `shipyard serve`
with no command, while the blobs of an image still tagged stay."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx

from tests.api.helpers import push_image
from tests.support.server import start_server


def stored(data_dir: Path, blob: bytes) -> bool:
    encoded = hashlib.sha256(blob).hexdigest()
    return (data_dir / "blobs" / "sha256" / encoded[:2] / encoded).exists()


def test_the_scheduled_gc_frees_a_deleted_images_blobs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"SHIPYARD_GC_INTERVAL_SECONDS": "1", "SHIPYARD_GC_GRACE_SECONDS": "0"}
    server = start_server(data_dir, extra_env=env)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            gone = push_image(client, "gc/gone", "1.0")
            kept = push_image(client, "gc/kept", "1.0")
            for blob in (gone.config, *gone.layers, kept.config, *kept.layers):
                assert stored(data_dir, blob)
            r = client.delete(f"/v2/gc/gone/manifests/{gone.digest}")
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 30
            while any(stored(data_dir, b) for b in (gone.config, *gone.layers)):
                assert time.monotonic() < deadline, "the scheduled GC did not free the deleted image's blobs"
                time.sleep(0.2)
            for blob in (kept.config, *kept.layers):
                assert stored(data_dir, blob)
            assert client.get(f"/v2/gc/kept/manifests/{kept.digest}").status_code == 200
            assert (
                client.get(f"/v2/gc/gone/blobs/sha256:{hashlib.sha256(gone.config).hexdigest()}").status_code
                == 404
            )
    finally:
        server.stop()
