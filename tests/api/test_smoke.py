from __future__ import annotations

import hashlib
import json

from tests.conftest import Registry


def test_push_and_pull_an_image(registry: Registry) -> None:
    c = registry.client
    layer = b"layer-bytes" * 1000
    config = b'{"architecture":"amd64","os":"linux"}'
    digests = {}
    for blob in (layer, config):
        d = "sha256:" + hashlib.sha256(blob).hexdigest()
        r = c.post("/v2/smoke/app/blobs/uploads/")
        assert r.status_code == 202, r.text
        loc = r.headers["location"]
        r = c.patch(loc, content=blob, headers={"content-range": f"0-{len(blob) - 1}"})
        assert r.status_code == 202, r.text
        assert r.headers["range"] == f"0-{len(blob) - 1}"
        r = c.put(loc, params={"digest": d})
        assert r.status_code == 201, r.text
        digests[blob] = d
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digests[config],
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digests[layer],
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    r = c.put(
        "/v2/smoke/app/manifests/v1",
        content=manifest,
        headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 201, r.text
    md = "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert r.headers["docker-content-digest"] == md
    r = c.get("/v2/smoke/app/manifests/v1")
    assert r.status_code == 200 and r.content == manifest
    r = c.get(f"/v2/smoke/app/blobs/{digests[layer]}")
    assert r.status_code == 200 and r.content == layer
    r = c.get(f"/v2/smoke/app/blobs/{digests[layer]}", headers={"range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == layer[10:20]
    r = c.get("/v2/smoke/app/tags/list")
    assert r.json() == {"name": "smoke/app", "tags": ["v1"]}
