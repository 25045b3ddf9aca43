from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from shipyard.domain import mediatypes as mt
from shipyard.domain.digest import Digest
from shipyard.domain.errors import ManifestInvalid, ManifestTooLarge
from shipyard.domain.manifest import MAX_MANIFEST_BYTES, normalize_content_type, parse_manifest

CONFIG = b'{"architecture":"amd64","os":"linux"}'
LAYER = b"layer bytes"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(content: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(content), "size": len(content), **extra}


def image(media_type: str | None = mt.OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "config": descriptor(CONFIG, CONFIG_TYPE),
        "layers": [descriptor(LAYER, LAYER_TYPE)],
    }
    if media_type is not None:
        document["mediaType"] = media_type
    document.update(extra)
    return document


def index(media_type: str | None = mt.OCI_INDEX, **extra: Any) -> dict[str, Any]:
    child = json.dumps(image()).encode()
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": [
            descriptor(child, mt.OCI_MANIFEST, platform={"architecture": "amd64", "os": "linux"}),
            descriptor(b"other", mt.OCI_MANIFEST),
        ],
    }
    if media_type is not None:
        document["mediaType"] = media_type
    document.update(extra)
    return document


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def parse(document: Any, content_type: str | None = None) -> Any:
    return parse_manifest(body(document), content_type)


def invalid(document: Any, match: str, content_type: str | None = None) -> None:
    with pytest.raises(ManifestInvalid, match=match) as caught:
        parse(document, content_type)
    assert caught.value.code == "MANIFEST_INVALID"


# -- media types ---------------------------------------------------------------------------------


@pytest.mark.parametrize("media_type", sorted(mt.IMAGE_MANIFESTS))
def test_image_manifests(media_type: str) -> None:
    raw = body(image(media_type))
    parsed = parse_manifest(raw, media_type)
    assert parsed.media_type == media_type
    assert not parsed.is_index
    assert parsed.digest == Digest.of(raw)
    assert parsed.size == len(raw)
    assert parsed.config is not None
    assert parsed.config.media_type == CONFIG_TYPE
    assert str(parsed.config.digest) == sha256(CONFIG)
    assert parsed.config.size == len(CONFIG)
    assert [(str(d.digest), d.size, d.media_type) for d in parsed.layers] == [
        (sha256(LAYER), len(LAYER), LAYER_TYPE)
    ]
    assert parsed.layers[0].requires_blob
    assert parsed.children == ()
    assert parsed.subject is None


@pytest.mark.parametrize("media_type", sorted(mt.INDEXES))
def test_indexes(media_type: str) -> None:
    parsed = parse(index(media_type), media_type)
    assert parsed.media_type == media_type
    assert parsed.is_index
    assert parsed.config is None
    assert parsed.layers == ()
    assert len(parsed.children) == 2
    assert parsed.children[0].platform == {"architecture": "amd64", "os": "linux"}
    assert parsed.children[1].platform is None
    assert parsed.effective_artifact_type is None


def test_every_manifest_type_is_covered() -> None:
    assert {
        mt.OCI_MANIFEST,
        mt.OCI_INDEX,
        mt.DOCKER_MANIFEST,
        mt.DOCKER_MANIFEST_LIST,
    } == mt.MANIFEST_TYPES


def test_the_media_type_comes_from_the_content_type_when_the_document_has_none() -> None:
    assert parse(image(None), mt.DOCKER_MANIFEST).media_type == mt.DOCKER_MANIFEST
    assert parse(index(None), mt.DOCKER_MANIFEST_LIST).media_type == mt.DOCKER_MANIFEST_LIST


def test_without_media_type_or_content_type_the_structure_decides() -> None:
    assert parse(image(None)).media_type == mt.OCI_MANIFEST
    assert parse(index(None)).media_type == mt.OCI_INDEX
    invalid({"schemaVersion": 2}, "no mediaType and no Content-Type")


def test_content_type_parameters_and_case_are_ignored() -> None:
    assert parse(image(), mt.OCI_MANIFEST.upper() + "; charset=utf-8").media_type == mt.OCI_MANIFEST
    assert normalize_content_type(" Application/JSON ; q=1") == "application/json"
    assert normalize_content_type("") is None
    assert normalize_content_type(None) is None
    assert normalize_content_type(";") is None


def test_content_type_must_match_the_media_type() -> None:
    invalid(image(mt.OCI_MANIFEST), "does not match", mt.DOCKER_MANIFEST)
    invalid(index(mt.OCI_INDEX), "does not match", mt.OCI_MANIFEST)


@pytest.mark.parametrize("schema1", [mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED])
def test_docker_schema1_is_rejected(schema1: str) -> None:
    document = {"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": [], "history": []}
    invalid({**document, "mediaType": schema1}, "schema 1")
    invalid(document, "schema 1", schema1)


@pytest.mark.parametrize("media_type", ["application/json", CONFIG_TYPE, "text/plain"])
def test_other_media_types_are_rejected(media_type: str) -> None:
    invalid(image(media_type), "unsupported manifest media type")
    invalid(image(None), "unsupported manifest media type", media_type)


def test_media_type_must_be_a_string() -> None:
    invalid(image(7), "mediaType must be a string")  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [None, 1, 3, "2", True])
def test_schema_version_must_be_2(version: Any) -> None:
    document = image()
    if version is None:
        del document["schemaVersion"]
    else:
        document["schemaVersion"] = version
    invalid(document, "schemaVersion must be 2")


# -- the document --------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe{}", b'{"a": NaN'])
def test_not_json(raw: bytes) -> None:
    with pytest.raises(ManifestInvalid, match="not valid JSON"):
        parse_manifest(raw, mt.OCI_MANIFEST)


@pytest.mark.parametrize("document", [[], "manifest", 2, None])
def test_not_an_object(document: Any) -> None:
    invalid(document, "must be a JSON object")


def test_an_image_manifest_needs_a_config() -> None:
    document = image()
    del document["config"]
    invalid(document, "must have a config", mt.OCI_MANIFEST)


def test_layers_must_be_an_array() -> None:
    invalid(image(layers={}), "layers must be an array")


def test_an_image_manifest_without_layers_has_none() -> None:
    document = image()
    del document["layers"]
    assert parse(document).layers == ()


def test_an_index_needs_a_manifests_array() -> None:
    invalid({"schemaVersion": 2, "mediaType": mt.OCI_INDEX}, "manifests array")
    invalid(index(manifests={}), "manifests array")


def test_annotations_must_map_strings_to_strings() -> None:
    assert parse(image(annotations={"a": "b"})).annotations == {"a": "b"}
    invalid(image(annotations={"a": 1}), "^annotations must map strings to strings")
    invalid(image(annotations=["a"]), "^annotations must map strings to strings")


def test_an_explicit_digest_is_kept() -> None:
    raw = body(image())
    digest = Digest.of(raw, "sha512")
    assert parse_manifest(raw, None, digest).digest == digest


# -- descriptors ---------------------------------------------------------------------------------


def with_layer(**changes: Any) -> dict[str, Any]:
    layer = descriptor(LAYER, LAYER_TYPE)
    for key, value in changes.items():
        if value is ...:
            del layer[key]
        else:
            layer[key] = value
    return image(layers=[descriptor(LAYER, LAYER_TYPE), layer])


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"mediaType": ...}, r"layers\[1\]\.mediaType is missing"),
        ({"mediaType": 3}, r"layers\[1\]\.mediaType"),
        ({"mediaType": "tar"}, r"layers\[1\]\.mediaType"),
        ({"mediaType": "application/json\n"}, r"layers\[1\]\.mediaType"),
        ({"mediaType": "application/ json"}, r"layers\[1\]\.mediaType"),
        ({"digest": ...}, r"layers\[1\]\.digest is missing"),
        ({"digest": 5}, r"layers\[1\]\.digest is missing"),
        ({"digest": "sha256:abc"}, r"layers\[1\]\.digest is invalid"),
        ({"digest": "md5:" + hashlib.md5(LAYER).hexdigest()}, r"layers\[1\]\.digest is invalid"),
        ({"digest": sha256(LAYER).upper()}, r"layers\[1\]\.digest is invalid"),
        ({"size": ...}, r"layers\[1\]\.size"),
        ({"size": -1}, r"layers\[1\]\.size"),
        ({"size": 1.5}, r"layers\[1\]\.size"),
        ({"size": "11"}, r"layers\[1\]\.size"),
        ({"size": True}, r"layers\[1\]\.size"),
        ({"urls": "http://x"}, r"layers\[1\]\.urls"),
        ({"urls": [1]}, r"layers\[1\]\.urls"),
        ({"annotations": {"a": None}}, r"layers\[1\]\.annotations"),
        ({"artifactType": 1}, r"layers\[1\]\.artifactType"),
        ({"platform": "linux/amd64"}, r"layers\[1\]\.platform"),
    ],
)
def test_bad_descriptors(changes: dict[str, Any], match: str) -> None:
    invalid(with_layer(**changes), match)


@pytest.mark.parametrize("value", [None, "x", [], 1])
def test_a_descriptor_must_be_an_object(value: Any) -> None:
    invalid(image(config=value), "config must be a descriptor object")
    invalid(index(manifests=[value]), r"manifests\[0\] must be a descriptor object")


def test_descriptor_fields() -> None:
    parsed = parse(
        with_layer(
            urls=["https://example.com/layer"],
            annotations={"org.opencontainers.image.title": "layer.tar"},
            artifactType="application/x-thing",
        )
    )
    layer = parsed.layers[1]
    assert layer.urls == ("https://example.com/layer",)
    assert layer.annotations == {"org.opencontainers.image.title": "layer.tar"}
    assert layer.artifact_type == "application/x-thing"
    assert layer.size == len(LAYER)


def test_non_distributable_layers_need_no_blob() -> None:
    for media_type in mt.NON_DISTRIBUTABLE_LAYERS:
        layer = parse(with_layer(mediaType=media_type, urls=["https://example.com/x"])).layers[1]
        assert not layer.requires_blob


def test_size_zero_is_allowed() -> None:
    assert parse(with_layer(size=0, digest=sha256(b""))).layers[1].size == 0


# -- embedded data -------------------------------------------------------------------------------


def test_embedded_data_that_matches() -> None:
    parsed = parse(image(config=descriptor(CONFIG, CONFIG_TYPE, data=base64.b64encode(CONFIG).decode())))
    assert parsed.config is not None
    assert parsed.config.has_data
    assert not parsed.config.requires_blob


def test_embedded_data_under_sha512() -> None:
    config = {
        "mediaType": CONFIG_TYPE,
        "digest": "sha512:" + hashlib.sha512(CONFIG).hexdigest(),
        "size": len(CONFIG),
        "data": base64.b64encode(CONFIG).decode(),
    }
    assert parse(image(config=config)).config.has_data  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (7, "must be a base64 string"),
        ("not base64!", "not valid base64"),
        (base64.b64encode(CONFIG).decode()[:-2], "not valid base64"),
        (base64.b64encode(CONFIG + b"x").decode(), "size says"),
        (base64.b64encode(CONFIG[:-1] + b"X").decode(), "does not match its digest"),
    ],
)
def test_embedded_data_that_does_not_match(data: Any, match: str) -> None:
    invalid(image(config=descriptor(CONFIG, CONFIG_TYPE, data=data)), r"config\.data .*" + match)


def test_children_with_embedded_data() -> None:
    child = body(image())
    document = index(manifests=[descriptor(child, mt.OCI_MANIFEST, data=base64.b64encode(child).decode())])
    assert parse(document).children[0].has_data


# -- subject and artifactType --------------------------------------------------------------------


def test_subject() -> None:
    subject = descriptor(body(image()), mt.OCI_MANIFEST)
    parsed = parse(image(subject=subject))
    assert parsed.subject is not None
    assert str(parsed.subject.digest) == subject["digest"]
    assert parsed.subject.media_type == mt.OCI_MANIFEST
    assert parse(index(subject=subject)).subject is not None


@pytest.mark.parametrize("subject", [None, "sha256:" + "0" * 64, {"digest": "sha256:" + "0" * 64}])
def test_a_bad_subject(subject: Any) -> None:
    invalid(image(subject=subject), "^subject")


def test_artifact_type() -> None:
    parsed = parse(image(artifactType="application/vnd.example.sbom+json"))
    assert parsed.artifact_type == "application/vnd.example.sbom+json"
    assert parsed.effective_artifact_type == "application/vnd.example.sbom+json"


@pytest.mark.parametrize("value", [1, "", "sbom", "application/", "/json", "application/json\n", "a/b c"])
def test_a_bad_artifact_type(value: Any) -> None:
    invalid(image(artifactType=value), "artifactType must be a media type")


def test_the_effective_artifact_type_falls_back_to_the_config_media_type() -> None:
    assert parse(image()).effective_artifact_type == CONFIG_TYPE
    empty = {"mediaType": mt.OCI_EMPTY_JSON, "digest": sha256(b"{}"), "size": 2}
    assert parse(image(config=empty)).effective_artifact_type == mt.OCI_EMPTY_JSON
    assert parse(image(config=empty, artifactType="application/x-a")).effective_artifact_type == (
        "application/x-a"
    )


def test_an_index_has_an_artifact_type_only_when_it_says_so() -> None:
    assert parse(index()).effective_artifact_type is None
    assert parse(index(artifactType="application/x-a")).effective_artifact_type == "application/x-a"


# -- size limit ----------------------------------------------------------------------------------


def padded(total: int) -> bytes:
    raw = body(image(annotations={"pad": ""}))
    pad = total - len(raw)
    return body(image(annotations={"pad": "x" * pad}))


def test_a_manifest_at_the_size_limit_is_accepted() -> None:
    raw = padded(MAX_MANIFEST_BYTES)
    assert len(raw) == MAX_MANIFEST_BYTES
    assert parse_manifest(raw, mt.OCI_MANIFEST).size == MAX_MANIFEST_BYTES


def test_a_manifest_over_the_size_limit_is_rejected() -> None:
    raw = padded(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ManifestTooLarge, match="limit") as caught:
        parse_manifest(raw, mt.OCI_MANIFEST)
    assert isinstance(caught.value, ManifestInvalid)
    # the limit applies before parsing: garbage over it is "too large", not "not JSON"
    with pytest.raises(ManifestTooLarge):
        parse_manifest(b"x" * (MAX_MANIFEST_BYTES + 1), None)
