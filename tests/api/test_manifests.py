"""end-3, end-7, end-9: pushing, pulling and deleting manifests and tags."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.api.helpers import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Image,
    assert_error,
    descriptor,
    digest_of,
    encode,
    image_manifest,
    index_manifest,
    push_blob,
    push_image,
    put_manifest,
    random_bytes,
    random_digest,
    unique_repo,
)
from tests.conftest import Registry

MAX_MANIFEST = 4 * 1024 * 1024


def assert_manifest(registry: Registry, repo: str, reference: str, body: bytes, media_type: str) -> None:
    """GET and HEAD by `reference` return exactly `body` with the right headers."""
    digest = digest_of(body, "sha512" if reference.startswith("sha512:") else "sha256")
    r = registry.client.get(f"/v2/{repo}/manifests/{reference}", headers={"accept": media_type})
    assert r.status_code == 200, r.text
    assert r.content == body
    assert r.headers["content-type"] == media_type
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["content-length"] == str(len(body))
    r = registry.client.head(f"/v2/{repo}/manifests/{reference}", headers={"accept": media_type})
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-type"] == media_type
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["content-length"] == str(len(body))


def blobs_for(registry: Registry, repo: str, *blobs: bytes, algorithm: str = "sha256") -> None:
    for blob in blobs:
        push_blob(registry.client, repo, blob, algorithm)


def new_config() -> bytes:
    return encode({"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})


# -- pushing and pulling -------------------------------------------------------------------------


def test_put_by_tag_is_201_with_location_and_digest(registry: Registry) -> None:
    repo = unique_repo("man")
    config, layer = new_config(), random_bytes(100)
    blobs_for(registry, repo, config, layer)
    body = encode(image_manifest(config, [layer]))
    r = put_manifest(registry.client, repo, "v1", body)
    assert r.status_code == 201, r.text
    digest = digest_of(body)
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["location"].endswith(f"/v2/{repo}/manifests/{digest}")
    assert "oci-subject" not in r.headers
    assert registry.client.get(r.headers["location"]).content == body
    assert_manifest(registry, repo, "v1", body, OCI_MANIFEST)
    assert_manifest(registry, repo, digest, body, OCI_MANIFEST)


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_put_by_digest_is_201(registry: Registry, algorithm: str) -> None:
    repo = unique_repo("man")
    config, layer = new_config(), random_bytes(100)
    blobs_for(registry, repo, config, layer, algorithm=algorithm)
    body = encode(image_manifest(config, [layer], algorithm=algorithm))
    digest = digest_of(body, algorithm)
    r = put_manifest(registry.client, repo, digest, body)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["location"].endswith(f"/v2/{repo}/manifests/{digest}")
    assert_manifest(registry, repo, digest, body, OCI_MANIFEST)
    # pushed by digest only: no tag
    assert registry.client.get(f"/v2/{repo}/tags/list").json()["tags"] == []


def test_put_by_sha512_digest_of_sha256_described_content(registry: Registry) -> None:
    repo = unique_repo("man")
    config = new_config()
    blobs_for(registry, repo, config)
    body = encode(image_manifest(config, []))
    digest = digest_of(body, "sha512")
    r = put_manifest(registry.client, repo, digest, body)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    assert_manifest(registry, repo, digest, body, OCI_MANIFEST)


def test_put_by_digest_that_does_not_match_is_400_digest_invalid(registry: Registry) -> None:
    repo = unique_repo("man")
    config = new_config()
    blobs_for(registry, repo, config)
    body = encode(image_manifest(config, []))
    for wrong in (random_digest(), random_digest("sha512"), digest_of(body + b" ")):
        assert_error(put_manifest(registry.client, repo, wrong, body), 400, "DIGEST_INVALID")
        assert_error(registry.client.get(f"/v2/{repo}/manifests/{wrong}"), 404, "MANIFEST_UNKNOWN")
    assert_error(registry.client.get(f"/v2/{repo}/manifests/{digest_of(body)}"), 404, "MANIFEST_UNKNOWN")


def test_exact_bytes_survive(registry: Registry) -> None:
    repo = unique_repo("man")
    config, layer = new_config(), random_bytes(100)
    blobs_for(registry, repo, config, layer)
    c, lyr = descriptor(OCI_CONFIG, config), descriptor(OCI_LAYER, layer)
    body = (
        '{\n\t"zzz-custom" :  [1, 2.50, {"nested": null}],\r\n'
        f'  "layers": [ {{"size": {lyr["size"]}, "digest": "{lyr["digest"]}", "mediaType": "{OCI_LAYER}",'
        ' "x-extra": true}],\n'
        f'  "config":{{"mediaType":"{OCI_CONFIG}","size":{c["size"]},"digest":"{c["digest"]}"}},'
        f'  "mediaType": "{OCI_MANIFEST}",'
        '  "annotations": {"unicode": "caf\\u00e9 \u2603", "empty": ""},'
        '  "schemaVersion": 2   }\n\n'
    ).encode()
    json.loads(body)
    r = put_manifest(registry.client, repo, "exact", body)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest_of(body)
    assert_manifest(registry, repo, "exact", body, OCI_MANIFEST)
    assert_manifest(registry, repo, digest_of(body), body, OCI_MANIFEST)


def test_oci_index(registry: Registry) -> None:
    repo = unique_repo("man")
    amd = push_image(registry.client, repo)
    arm = push_image(registry.client, repo)
    body = encode(
        index_manifest([(OCI_MANIFEST, amd.body), (OCI_MANIFEST, arm.body)], annotations={"a": "b"})
    )
    r = put_manifest(registry.client, repo, "multi", body, OCI_INDEX)
    assert r.status_code == 201, r.text
    assert_manifest(registry, repo, "multi", body, OCI_INDEX)


def test_nested_index(registry: Registry) -> None:
    repo = unique_repo("man")
    image = push_image(registry.client, repo)
    inner = encode(index_manifest([(OCI_MANIFEST, image.body)]))
    assert put_manifest(registry.client, repo, digest_of(inner), inner, OCI_INDEX).status_code == 201
    outer = encode(index_manifest([(OCI_INDEX, inner), (OCI_MANIFEST, image.body)]))
    r = put_manifest(registry.client, repo, "nested", outer, OCI_INDEX)
    assert r.status_code == 201, r.text
    assert_manifest(registry, repo, "nested", outer, OCI_INDEX)


def test_empty_index(registry: Registry) -> None:
    repo = unique_repo("man")
    body = encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    assert put_manifest(registry.client, repo, "empty", body, OCI_INDEX).status_code == 201
    assert_manifest(registry, repo, "empty", body, OCI_INDEX)


def test_sha512_index_of_sha512_manifests(registry: Registry) -> None:
    repo = unique_repo("man")
    image = push_image(registry.client, repo, algorithm="sha512")
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(OCI_MANIFEST, image.body, "sha512")],
        }
    )
    digest = digest_of(body, "sha512")
    r = put_manifest(registry.client, repo, digest, body, OCI_INDEX, params={"tag": "s512"})
    assert r.status_code == 201, r.text
    assert_manifest(registry, repo, digest, body, OCI_INDEX)
    assert registry.client.get(f"/v2/{repo}/manifests/s512").content == body


def test_docker_schema2_manifest_and_manifest_list(registry: Registry) -> None:
    repo = unique_repo("man")
    children = []
    for _ in range(2):
        image = push_image(
            registry.client,
            repo,
            media_type=DOCKER_MANIFEST,
            config_type=DOCKER_CONFIG,
            layer_type=DOCKER_LAYER,
        )
        assert_manifest(registry, repo, image.digest, image.body, DOCKER_MANIFEST)
        children.append((DOCKER_MANIFEST, image.body))
    body = encode(index_manifest(children, media_type=DOCKER_MANIFEST_LIST))
    r = put_manifest(registry.client, repo, "list", body, DOCKER_MANIFEST_LIST)
    assert r.status_code == 201, r.text
    assert_manifest(registry, repo, "list", body, DOCKER_MANIFEST_LIST)


def test_image_with_no_layers(registry: Registry) -> None:
    repo = unique_repo("man")
    image = push_image(registry.client, repo, "nolayers", layers=[])
    assert json.loads(image.body)["layers"] == []
    assert_manifest(registry, repo, "nolayers", image.body, OCI_MANIFEST)


def test_artifact_with_artifact_type_and_empty_config(registry: Registry) -> None:
    repo = unique_repo("man")
    layer = random_bytes(50)
    blobs_for(registry, repo, EMPTY_JSON, layer)
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.thing.v1",
            "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2},
            "layers": [descriptor("application/vnd.example.thing.layer.v1+tar", layer)],
        }
    )
    r = put_manifest(registry.client, repo, "artifact", body)
    assert r.status_code == 201, r.text
    assert_manifest(registry, repo, "artifact", body, OCI_MANIFEST)


def test_artifact_whose_layers_are_the_empty_json_descriptor(registry: Registry) -> None:
    repo = unique_repo("man")
    blobs_for(registry, repo, EMPTY_JSON)
    empty = {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2}
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.marker",
            "config": empty,
            "layers": [empty],
        }
    )
    assert put_manifest(registry.client, repo, "marker", body).status_code == 201
    assert_manifest(registry, repo, "marker", body, OCI_MANIFEST)


def test_artifact_with_an_artifact_config_media_type(registry: Registry) -> None:
    repo = unique_repo("man")
    config, layer = b'{"signature":"abc"}', random_bytes(40)
    blobs_for(registry, repo, config, layer)
    body = encode(image_manifest(config, [layer], config_type="application/vnd.example.sig.config.v1+json"))
    assert put_manifest(registry.client, repo, "sig", body).status_code == 201
    assert_manifest(registry, repo, "sig", body, OCI_MANIFEST)


def test_descriptor_with_valid_data_is_accepted_without_its_blob(registry: Registry) -> None:
    repo = unique_repo("man")
    layer = b"embedded layer content"
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.embedded",
            "config": {
                "mediaType": OCI_EMPTY,
                "digest": EMPTY_JSON_DIGEST,
                "size": 2,
                "data": base64.b64encode(EMPTY_JSON).decode(),
            },
            "layers": [descriptor(OCI_LAYER, layer, data=base64.b64encode(layer).decode())],
        }
    )
    r = put_manifest(registry.client, repo, "embedded", body)
    assert r.status_code == 201, r.text
    assert_manifest(registry, repo, "embedded", body, OCI_MANIFEST)


@pytest.mark.parametrize(
    "data",
    [
        base64.b64encode(b"not the content").decode(),  # wrong bytes
        base64.b64encode(b"embedded layer content!").decode(),  # right prefix, wrong size
        "!!! not base64 !!!",
        12345,
    ],
)
def test_descriptor_with_data_that_does_not_match_is_400(registry: Registry, data: Any) -> None:
    repo = unique_repo("man")
    layer = b"embedded layer content"
    blobs_for(registry, repo, EMPTY_JSON, layer)
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2},
            "layers": [descriptor(OCI_LAYER, layer, data=data)],
        }
    )
    assert_error(put_manifest(registry.client, repo, "bad-data", body), 400, "MANIFEST_INVALID")
    assert_error(registry.client.get(f"/v2/{repo}/manifests/bad-data"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(
    "layer_type",
    [
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ],
)
def test_non_distributable_layers_are_accepted_without_their_blob(
    registry: Registry, layer_type: str
) -> None:
    repo = unique_repo("man")
    config, local = new_config(), random_bytes(64)
    blobs_for(registry, repo, config, local)
    foreign = descriptor(layer_type, random_bytes(1000), urls=["https://mcr.example.com/blobs/foreign"])
    docker = layer_type.startswith("application/vnd.docker")
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
            "layers": [foreign, descriptor(DOCKER_LAYER if docker else OCI_LAYER_GZIP, local)],
        }
    )
    r = put_manifest(registry.client, repo, "foreign", body, media_type)
    assert r.status_code == 201, r.text
    assert_manifest(registry, repo, "foreign", body, media_type)


def test_manifest_without_media_type_field_takes_the_content_type(registry: Registry) -> None:
    repo = unique_repo("man")
    config = new_config()
    blobs_for(registry, repo, config)
    document = image_manifest(config, [])
    del document["mediaType"]
    body = encode(document)
    r = put_manifest(registry.client, repo, "nomediatype", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    assert_manifest(registry, repo, "nomediatype", body, OCI_MANIFEST)


def test_content_type_parameters_are_ignored(registry: Registry) -> None:
    repo = unique_repo("man")
    config = new_config()
    blobs_for(registry, repo, config)
    body = encode(image_manifest(config, []))
    r = put_manifest(registry.client, repo, "params", body, f"{OCI_MANIFEST}; charset=utf-8")
    assert r.status_code == 201, r.text
    r = registry.client.get(f"/v2/{repo}/manifests/params")
    assert r.headers["content-type"] == OCI_MANIFEST


def test_pushing_the_same_manifest_again_and_retagging(registry: Registry) -> None:
    repo = unique_repo("man")
    first = push_image(registry.client, repo, "latest")
    again = put_manifest(registry.client, repo, "latest", first.body)
    assert again.status_code == 201
    assert again.headers["docker-content-digest"] == first.digest
    second = push_image(registry.client, repo, "latest")
    assert registry.client.get(f"/v2/{repo}/manifests/latest").content == second.body
    # the first manifest is still there by digest
    assert registry.client.get(f"/v2/{repo}/manifests/{first.digest}").content == first.body


def test_manifest_of_another_repository_is_unknown_here(registry: Registry) -> None:
    repo, other = unique_repo("man"), unique_repo("man")
    image = push_image(registry.client, repo, "v1")
    push_image(registry.client, other, "v2")
    assert_error(registry.client.get(f"/v2/{other}/manifests/{image.digest}"), 404, "MANIFEST_UNKNOWN")
    assert_error(registry.client.get(f"/v2/{other}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("reference", ["latest", "sha256:" + "a" * 64, "sha512:" + "b" * 128])
def test_unknown_manifest_is_404(registry: Registry, reference: str) -> None:
    repo = unique_repo("man")
    push_image(registry.client, repo, "other")
    for name in (repo, unique_repo("nowhere")):
        assert_error(registry.client.get(f"/v2/{name}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
        r = registry.client.head(f"/v2/{name}/manifests/{reference}")
        assert_error(r, 404)


# -- references and tags -------------------------------------------------------------------------


def test_push_by_digest_with_several_tags(registry: Registry) -> None:
    repo = unique_repo("man")
    config = new_config()
    blobs_for(registry, repo, config)
    body = encode(image_manifest(config, []))
    digest = digest_of(body)
    r = put_manifest(registry.client, repo, digest, body, params=[("tag", "a"), ("tag", "b")])
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    for tag in ("a", "b"):
        assert_manifest(registry, repo, tag, body, OCI_MANIFEST)
    assert registry.client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["a", "b"]


def test_push_by_tag_with_more_tags(registry: Registry) -> None:
    repo = unique_repo("man")
    config = new_config()
    blobs_for(registry, repo, config)
    body = encode(image_manifest(config, []))
    r = put_manifest(registry.client, repo, "main", body, params=[("tag", "extra")])
    assert r.status_code == 201, r.text
    assert registry.client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["extra", "main"]


@pytest.mark.parametrize("tag", ["-bad", ".bad", "bad!", "a" * 129, "bad tag", "ta/g", "t\u00e9", "%2Fetc"])
def test_invalid_tag_is_400(registry: Registry, tag: str) -> None:
    repo = unique_repo("man")
    config = new_config()
    blobs_for(registry, repo, config)
    body = encode(image_manifest(config, []))
    r = registry.client.put(
        f"/v2/{repo}/manifests/{tag}", content=body, headers={"content-type": OCI_MANIFEST}
    )
    assert r.status_code in (400, 404, 405), r.text  # a slash makes it another (unknown) endpoint
    assert_error(r, r.status_code)
    if "/" not in tag and "%2F" not in tag:
        assert r.status_code == 400
    # as a ?tag= of a push by digest: refused whole
    r = put_manifest(registry.client, repo, digest_of(body), body, params=[("tag", "ok"), ("tag", tag)])
    assert_error(r, 400)
    assert_error(registry.client.get(f"/v2/{repo}/manifests/ok"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("tag", ["a" * 128, "_underscore", "UPPER.case-1_2", "0", "v1.2.3-rc.1"])
def test_valid_unusual_tags(registry: Registry, tag: str) -> None:
    repo = unique_repo("man")
    image = push_image(registry.client, repo, tag)
    assert_manifest(registry, repo, tag, image.body, OCI_MANIFEST)


# -- invalid manifests ---------------------------------------------------------------------------


def test_missing_config_blob_is_manifest_blob_unknown(registry: Registry) -> None:
    repo = unique_repo("man")
    config, layer = new_config(), random_bytes(10)
    blobs_for(registry, repo, layer)
    body = encode(image_manifest(config, [layer]))
    body_json = assert_error(put_manifest(registry.client, repo, "x", body), 400, "MANIFEST_BLOB_UNKNOWN")
    assert digest_of(config) in json.dumps(body_json)
    assert_error(registry.client.get(f"/v2/{repo}/manifests/x"), 404, "MANIFEST_UNKNOWN")


def test_missing_layer_blob_is_manifest_blob_unknown(registry: Registry) -> None:
    repo = unique_repo("man")
    config, layer = new_config(), random_bytes(10)
    blobs_for(registry, repo, config)
    body = encode(image_manifest(config, [layer]))
    assert_error(put_manifest(registry.client, repo, "x", body), 400, "MANIFEST_BLOB_UNKNOWN")


def test_blob_only_in_another_repository_is_manifest_blob_unknown(registry: Registry) -> None:
    repo, other = unique_repo("man"), unique_repo("man")
    config, layer = new_config(), random_bytes(10)
    blobs_for(registry, other, config, layer)
    blobs_for(registry, repo, config)
    body = encode(image_manifest(config, [layer]))
    assert_error(put_manifest(registry.client, repo, "x", body), 400, "MANIFEST_BLOB_UNKNOWN")


def test_deleted_layer_blob_is_manifest_blob_unknown(registry: Registry) -> None:
    repo = unique_repo("man")
    config, layer = new_config(), random_bytes(10)
    blobs_for(registry, repo, config, layer)
    assert registry.client.delete(f"/v2/{repo}/blobs/{digest_of(layer)}").status_code == 202
    body = encode(image_manifest(config, [layer]))
    assert_error(put_manifest(registry.client, repo, "x", body), 400, "MANIFEST_BLOB_UNKNOWN")


def test_index_child_not_in_the_repository_is_manifest_blob_unknown(registry: Registry) -> None:
    repo, other = unique_repo("man"), unique_repo("man")
    elsewhere = push_image(registry.client, other)
    here = push_image(registry.client, repo)
    body = encode(index_manifest([(OCI_MANIFEST, here.body), (OCI_MANIFEST, elsewhere.body)]))
    assert_error(put_manifest(registry.client, repo, "idx", body, OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN")
    missing = {"mediaType": OCI_MANIFEST, "digest": random_digest(), "size": 100}
    body = encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [missing]})
    assert_error(put_manifest(registry.client, repo, "idx", body, OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN")


def _valid_document(registry: Registry, repo: str) -> dict[str, Any]:
    config = new_config()
    blobs_for(registry, repo, config)
    return image_manifest(config, [])


INVALID_DOCUMENTS: dict[str, Any] = {
    "schema 1": lambda d: {**d, "schemaVersion": 1},
    "schema string": lambda d: {**d, "schemaVersion": "2"},
    "schema 3": lambda d: {**d, "schemaVersion": 3},
    "no schema": lambda d: {k: v for k, v in d.items() if k != "schemaVersion"},
    "no config": lambda d: {k: v for k, v in d.items() if k != "config"},
    "config not an object": lambda d: {**d, "config": "sha256:abc"},
    "config without digest": lambda d: {**d, "config": {"mediaType": OCI_CONFIG, "size": 1}},
    "config bad digest": lambda d: {**d, "config": {**d["config"], "digest": "sha256:xyz"}},
    "config negative size": lambda d: {**d, "config": {**d["config"], "size": -1}},
    "config size string": lambda d: {**d, "config": {**d["config"], "size": "12"}},
    "config bad media type": lambda d: {**d, "config": {**d["config"], "mediaType": "not a type"}},
    "layers not a list": lambda d: {**d, "layers": {}},
    "layer not an object": lambda d: {**d, "layers": [42]},
    "annotations not strings": lambda d: {**d, "annotations": {"a": 1}},
    "mediaType not a string": lambda d: {**d, "mediaType": 7},
    "artifactType not a type": lambda d: {**d, "artifactType": "nope"},
    "subject not a descriptor": lambda d: {**d, "subject": "sha256:abc"},
    "urls not strings": lambda d: {**d, "config": {**d["config"], "urls": [1]}},
}


@pytest.mark.parametrize("case", list(INVALID_DOCUMENTS))
def test_invalid_manifest_is_400_manifest_invalid(registry: Registry, case: str) -> None:
    repo = unique_repo("man")
    body = encode(INVALID_DOCUMENTS[case](_valid_document(registry, repo)))
    assert_error(put_manifest(registry.client, repo, "bad", body), 400, "MANIFEST_INVALID")
    assert_error(registry.client.get(f"/v2/{repo}/manifests/bad"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{", b"[]", b'"string"', b"null", b"2", b'{"schemaVersion": 2}', b"\xff\xfe{}"],
)
def test_unparseable_manifest_is_400_manifest_invalid(registry: Registry, body: bytes) -> None:
    repo = unique_repo("man")
    assert_error(put_manifest(registry.client, repo, "bad", body), 400, "MANIFEST_INVALID")


def test_content_type_that_disagrees_with_media_type_is_400(registry: Registry) -> None:
    repo = unique_repo("man")
    body = encode(_valid_document(registry, repo))
    for content_type in (OCI_INDEX, DOCKER_MANIFEST, "application/json"):
        r = put_manifest(registry.client, repo, "bad", body, content_type)
        assert_error(r, 400, "MANIFEST_INVALID")


def test_index_without_manifests_is_400(registry: Registry) -> None:
    repo = unique_repo("man")
    body = encode({"schemaVersion": 2, "mediaType": OCI_INDEX})
    assert_error(put_manifest(registry.client, repo, "bad", body, OCI_INDEX), 400, "MANIFEST_INVALID")


def test_docker_schema1_is_refused(registry: Registry) -> None:
    repo = unique_repo("man")
    media_type = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    body = encode({"schemaVersion": 1, "name": repo, "tag": "old", "fsLayers": [], "mediaType": media_type})
    assert_error(put_manifest(registry.client, repo, "old", body, media_type), 400, "MANIFEST_INVALID")


def _padded(registry: Registry, repo: str, size: int) -> bytes:
    document = _valid_document(registry, repo)
    document["annotations"] = {"pad": ""}
    base = len(encode(document))
    document["annotations"]["pad"] = "x" * (size - base)
    body = encode(document)
    assert len(body) == size
    return body


def test_manifest_of_4_mib_is_accepted(registry: Registry) -> None:
    repo = unique_repo("man")
    body = _padded(registry, repo, MAX_MANIFEST)
    r = put_manifest(registry.client, repo, "big", body)
    assert r.status_code == 201, r.text
    assert registry.client.get(f"/v2/{repo}/manifests/big").content == body


def test_manifest_over_4_mib_is_413(registry: Registry) -> None:
    repo = unique_repo("man")
    body = _padded(registry, repo, MAX_MANIFEST + 1)
    r = put_manifest(registry.client, repo, "huge", body)
    assert r.status_code == 413
    assert_error(registry.client.get(f"/v2/{repo}/manifests/huge"), 404, "MANIFEST_UNKNOWN")
    body = _padded(registry, repo, 2 * MAX_MANIFEST)
    r = put_manifest(registry.client, repo, digest_of(body), body)
    assert r.status_code == 413
    # the registry still answers on the same client
    assert registry.client.get("/v2/").status_code == 200


# -- subject -------------------------------------------------------------------------------------


def _with_subject(registry: Registry, repo: str, subject: dict[str, Any]) -> bytes:
    document = _valid_document(registry, repo)
    document["subject"] = subject
    return encode(document)


def test_manifest_with_an_unknown_subject_is_accepted_with_oci_subject(registry: Registry) -> None:
    repo = unique_repo("man")
    subject = {"mediaType": OCI_MANIFEST, "digest": random_digest(), "size": 1234}
    body = _with_subject(registry, repo, subject)
    r = put_manifest(registry.client, repo, digest_of(body), body)
    assert r.status_code == 201, r.text
    assert r.headers["oci-subject"] == subject["digest"]
    assert_manifest(registry, repo, digest_of(body), body, OCI_MANIFEST)


def test_manifest_with_a_known_subject_has_oci_subject(registry: Registry) -> None:
    repo = unique_repo("man")
    image = push_image(registry.client, repo, "v1")
    subject = {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.body)}
    body = _with_subject(registry, repo, subject)
    r = put_manifest(registry.client, repo, "sig", body)
    assert r.status_code == 201
    assert r.headers["oci-subject"] == image.digest


def test_sha512_subject(registry: Registry) -> None:
    repo = unique_repo("man")
    subject = {"mediaType": OCI_MANIFEST, "digest": random_digest("sha512"), "size": 10}
    body = _with_subject(registry, repo, subject)
    r = put_manifest(registry.client, repo, digest_of(body, "sha512"), body)
    assert r.status_code == 201, r.text
    assert r.headers["oci-subject"] == subject["digest"]


def test_index_with_a_subject_has_oci_subject(registry: Registry) -> None:
    repo = unique_repo("man")
    image = push_image(registry.client, repo)
    subject = {"mediaType": OCI_MANIFEST, "digest": random_digest(), "size": 99}
    body = encode(index_manifest([(OCI_MANIFEST, image.body)], subject=subject))
    r = put_manifest(registry.client, repo, digest_of(body), body, OCI_INDEX)
    assert r.status_code == 201, r.text
    assert r.headers["oci-subject"] == subject["digest"]


# -- deleting ------------------------------------------------------------------------------------


def _tagged(registry: Registry, repo: str, *tags: str) -> Image:
    image = push_image(registry.client, repo, tags[0])
    for tag in tags[1:]:
        assert put_manifest(registry.client, repo, tag, image.body).status_code == 201
    return image


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_delete_by_digest_removes_the_manifest_and_its_tags(registry: Registry, algorithm: str) -> None:
    repo = unique_repo("man")
    image = push_image(registry.client, repo, algorithm=algorithm)
    r = put_manifest(registry.client, repo, image.digest, image.body, params=[("tag", "one"), ("tag", "two")])
    assert r.status_code == 201
    keep = push_image(registry.client, repo, "keep")
    r = registry.client.delete(f"/v2/{repo}/manifests/{image.digest}")
    assert r.status_code == 202, r.text
    for reference in (image.digest, "one", "two"):
        assert_error(registry.client.get(f"/v2/{repo}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
        assert_error(registry.client.head(f"/v2/{repo}/manifests/{reference}"), 404)
    assert registry.client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["keep"]
    assert registry.client.get(f"/v2/{repo}/manifests/keep").content == keep.body
    assert_error(registry.client.delete(f"/v2/{repo}/manifests/{image.digest}"), 404, "MANIFEST_UNKNOWN")
    # its blobs are still there (deleting a manifest is not deleting blobs)
    assert registry.client.head(f"/v2/{repo}/blobs/{digest_of(image.config, algorithm)}").status_code == 200


def test_delete_by_tag_removes_only_the_tag(registry: Registry) -> None:
    repo = unique_repo("man")
    image = _tagged(registry, repo, "one", "two")
    r = registry.client.delete(f"/v2/{repo}/manifests/one")
    assert r.status_code == 202, r.text
    assert_error(registry.client.get(f"/v2/{repo}/manifests/one"), 404, "MANIFEST_UNKNOWN")
    assert registry.client.get(f"/v2/{repo}/manifests/two").content == image.body
    assert registry.client.get(f"/v2/{repo}/manifests/{image.digest}").content == image.body
    assert registry.client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["two"]
    assert_error(registry.client.delete(f"/v2/{repo}/manifests/one"), 404, "MANIFEST_UNKNOWN")


def test_manifest_can_be_pushed_again_after_delete(registry: Registry) -> None:
    repo = unique_repo("man")
    image = push_image(registry.client, repo, "v1")
    assert registry.client.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    assert put_manifest(registry.client, repo, "v1", image.body).status_code == 201
    assert_manifest(registry, repo, "v1", image.body, OCI_MANIFEST)


def test_delete_unknown_is_404(registry: Registry) -> None:
    repo = unique_repo("man")
    push_image(registry.client, repo, "v1")
    for name in (repo, unique_repo("nowhere")):
        for reference in ("nope", random_digest(), random_digest("sha512")):
            r = registry.client.delete(f"/v2/{name}/manifests/{reference}")
            assert_error(r, 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(("mode", "database"), [("app", "sqlite"), ("server", "postgresql")])
def test_deletes_disabled_is_405_unsupported(make_registry: Any, mode: str, database: str) -> None:
    registry: Registry = make_registry(mode=mode, database=database, env={"SHIPYARD_DELETE_ENABLED": "false"})
    repo = unique_repo("man")
    image = push_image(registry.client, repo, "v1")
    layer = digest_of(image.layers[0])
    r = registry.client.delete(f"/v2/{repo}/manifests/{image.digest}")
    assert_error(r, 405, "UNSUPPORTED")
    assert r.headers["allow"] == "GET, HEAD, PUT"
    assert_error(registry.client.delete(f"/v2/{repo}/manifests/v1"), 405, "UNSUPPORTED")
    r = registry.client.delete(f"/v2/{repo}/blobs/{layer}")
    assert_error(r, 405, "UNSUPPORTED")
    assert r.headers["allow"] == "GET, HEAD"
    # nothing was deleted
    assert registry.client.get(f"/v2/{repo}/manifests/v1").content == image.body
    assert registry.client.get(f"/v2/{repo}/blobs/{layer}").content == image.layers[0]
    # uploads can still be cancelled: that is not deleting content
    r = registry.client.post(f"/v2/{repo}/blobs/uploads/")
    assert registry.client.delete(r.headers["location"]).status_code == 204


# -- malformed references and methods ------------------------------------------------------------


@pytest.mark.parametrize(
    "reference", ["sha256:abc", "sha256:" + "G" * 64, "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:"]
)
def test_malformed_digest_reference_is_400(registry: Registry, reference: str) -> None:
    repo = unique_repo("man")
    push_image(registry.client, repo, "v1")
    assert_error(registry.client.get(f"/v2/{repo}/manifests/{reference}"), 400, "DIGEST_INVALID")
    assert_error(registry.client.head(f"/v2/{repo}/manifests/{reference}"), 400)
    assert_error(registry.client.delete(f"/v2/{repo}/manifests/{reference}"), 400, "DIGEST_INVALID")
    r = put_manifest(registry.client, repo, reference, b"{}")
    assert_error(r, 400)


def test_invalid_name_is_400_name_invalid(registry: Registry) -> None:
    for name in ("Upper", "a..b", "a/-b"):
        assert_error(registry.client.get(f"/v2/{name}/manifests/latest"), 400, "NAME_INVALID")
        assert_error(put_manifest(registry.client, name, "latest", b"{}"), 400, "NAME_INVALID")
        assert_error(registry.client.delete(f"/v2/{name}/manifests/latest"), 400, "NAME_INVALID")


def test_manifests_endpoint_rejects_other_methods(registry: Registry) -> None:
    repo = unique_repo("man")
    push_image(registry.client, repo, "v1")
    for method in ("POST", "PATCH"):
        r = registry.client.request(method, f"/v2/{repo}/manifests/v1")
        assert_error(r, 405, "UNSUPPORTED")
        assert r.headers["allow"] == "GET, HEAD, PUT, DELETE"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/v2/", "GET, HEAD"),
        ("DELETE", "/v2/_catalog", "GET"),
        ("PUT", "/v2/{repo}/blobs/{digest}", "GET, HEAD, DELETE"),
        ("PUT", "/v2/{repo}/blobs/uploads/", "POST"),
        ("POST", "/v2/{repo}/blobs/uploads/some-id", "GET, PATCH, PUT, DELETE"),
        ("DELETE", "/v2/{repo}/tags/list", "GET"),
        ("PUT", "/v2/{repo}/referrers/{digest}", "GET"),
        ("OPTIONS", "/v2/{repo}/manifests/v1", "GET, HEAD, PUT, DELETE"),
    ],
)
def test_405_names_the_allowed_methods(registry: Registry, method: str, path: str, allow: str) -> None:
    repo = unique_repo("man")
    push_image(registry.client, repo, "v1")
    r = registry.client.request(method, path.format(repo=repo, digest=random_digest()))
    assert_error(r, 405, "UNSUPPORTED")
    assert r.headers["allow"] == allow


@pytest.mark.parametrize("reference", [".INVALID_MANIFEST_NAME", "-bad", "a" * 129])
def test_reference_that_is_no_tag_is_404_manifest_unknown(registry: Registry, reference: str) -> None:
    """As the conformance suite (v1.1.1) and Distribution answer: no manifest is known by that name."""
    repo = unique_repo("man")
    push_image(registry.client, repo, "v1")
    assert_error(registry.client.get(f"/v2/{repo}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
    r = registry.client.head(f"/v2/{repo}/manifests/{reference}")
    assert r.status_code == 404
    assert r.content == b""


def test_deleting_a_manifest_that_an_index_lists_is_refused(registry: Registry) -> None:
    repo = unique_repo("man")
    amd = push_image(registry.client, repo, "amd")
    arm = push_image(registry.client, repo, "arm")
    index = encode(index_manifest([(OCI_MANIFEST, amd.body), (OCI_MANIFEST, arm.body)]))
    assert put_manifest(registry.client, repo, "multi", index, OCI_INDEX).status_code == 201
    r = registry.client.delete(f"/v2/{repo}/manifests/{amd.digest}")
    body = assert_error(r, 409, "DENIED")
    assert digest_of(index) in json.dumps(body)
    # nothing changed: the index and the child are both still served
    assert_manifest(registry, repo, "multi", index, OCI_INDEX)
    assert_manifest(registry, repo, amd.digest, amd.body, OCI_MANIFEST)
    # a tag of the child is only a name: removing it breaks nothing
    assert registry.client.delete(f"/v2/{repo}/manifests/amd").status_code == 202
    # once the index is gone, so may the child go
    assert registry.client.delete(f"/v2/{repo}/manifests/{digest_of(index)}").status_code == 202
    assert registry.client.delete(f"/v2/{repo}/manifests/{amd.digest}").status_code == 202
    assert_error(registry.client.get(f"/v2/{repo}/manifests/{amd.digest}"), 404, "MANIFEST_UNKNOWN")


def test_an_index_in_another_repository_does_not_hold_a_manifest(registry: Registry) -> None:
    repo, other = unique_repo("man"), unique_repo("man")
    image = push_image(registry.client, repo, "v1")
    same = push_image(registry.client, other, "v1", layers=image.layers, config=image.config)
    assert same.digest == image.digest
    index = encode(index_manifest([(OCI_MANIFEST, image.body)]))
    assert put_manifest(registry.client, other, "multi", index, OCI_INDEX).status_code == 201
    assert_error(registry.client.delete(f"/v2/{other}/manifests/{image.digest}"), 409, "DENIED")
    assert registry.client.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202


def test_concurrent_puts_of_one_new_manifest_all_succeed(registry: Registry) -> None:
    """Eight clients push the same new manifest under eight tags at once: every PUT is a 201."""
    from concurrent.futures import ThreadPoolExecutor

    name = unique_repo("race")
    config = push_blob(registry.client, name, b'{"os":"linux"}')
    layer = push_blob(registry.client, name, b"race layer")
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 14},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 10}],
        }
    ).encode()

    def put(i: int) -> int:
        response = registry.client.put(
            f"/v2/{name}/manifests/t{i}", content=body, headers={"content-type": OCI_MANIFEST}
        )
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(put, range(8)))
    assert statuses == [201] * 8
    tags = registry.client.get(f"/v2/{name}/tags/list").json()["tags"]
    assert tags == [f"t{i}" for i in range(8)]
