"""end-12a/12b: the referrers API, and pushing manifests with a `subject`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    assert_error,
    descriptor,
    digest_of,
    encode,
    push_artifact,
    push_image,
    put_manifest,
    random_digest,
    unique_repo,
)
from tests.conftest import Registry

SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"
SIG_CONFIG = "application/vnd.example.signature.config.v1+json"
BUNDLE = "application/vnd.example.bundle.v1"


def referrers(registry: Registry, repo: str, digest: str, **params: str) -> httpx.Response:
    return registry.client.get(f"/v2/{repo}/referrers/{digest}", params=params)


def assert_index(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == OCI_INDEX
    body = r.json()
    assert body["schemaVersion"] == 2
    assert body["mediaType"] == OCI_INDEX
    assert isinstance(body["manifests"], list)
    return list(body["manifests"])


def push_index_referrer(
    registry: Registry, repo: str, subject: Image, artifact_type: str | None, annotations: dict[str, str]
) -> tuple[bytes, str]:
    child = push_image(registry.client, repo)
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX}
    if artifact_type:
        document["artifactType"] = artifact_type
    document["manifests"] = [descriptor(OCI_MANIFEST, child.body)]
    document["subject"] = {
        "mediaType": subject.media_type,
        "digest": subject.digest,
        "size": len(subject.body),
    }
    document["annotations"] = annotations
    body = encode(document)
    r = put_manifest(registry.client, repo, digest_of(body), body, OCI_INDEX)
    assert r.status_code == 201, r.text
    assert r.headers["oci-subject"] == subject.digest
    return body, digest_of(body)


class Scene:
    def __init__(self, registry: Registry) -> None:
        self.repo = unique_repo("ref")
        client = registry.client
        self.image = push_image(client, self.repo, "v1")
        self.sbom = push_artifact(
            client, self.repo, subject=self.image, artifact_type=SBOM, annotations={"kind": "sbom"}
        )
        # no artifactType: the config media type stands in for it
        self.signature = push_artifact(
            client,
            self.repo,
            subject=self.image,
            artifact_type=None,
            config_type=SIG_CONFIG,
            annotations={"kind": "sig", "org.example.fingerprint": "abcd"},
        )
        self.bundle = push_index_referrer(registry, self.repo, self.image, BUNDLE, {"kind": "bundle"})
        self.plain_index = push_index_referrer(registry, self.repo, self.image, None, {"kind": "plain"})
        # an unrelated artifact in the same repository, and a referrer of the same digest elsewhere
        push_artifact(client, self.repo, subject=None, artifact_type=SBOM)
        self.other_repo = unique_repo("ref")
        push_artifact(client, self.other_repo, subject=self.image, artifact_type=SBOM)


@pytest.fixture(scope="module")
def scene(registry: Registry) -> Scene:
    return Scene(registry)


def by_digest(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["digest"]: m for m in manifests}


def test_referrers_lists_the_manifests_whose_subject_is_the_digest(registry: Registry, scene: Scene) -> None:
    found = by_digest(assert_index(referrers(registry, scene.repo, scene.image.digest)))
    sbom_body, sbom_digest = scene.sbom
    sig_body, sig_digest = scene.signature
    bundle_body, bundle_digest = scene.bundle
    plain_body, plain_digest = scene.plain_index
    assert set(found) == {sbom_digest, sig_digest, bundle_digest, plain_digest}
    assert found[sbom_digest] == {
        "mediaType": OCI_MANIFEST,
        "digest": sbom_digest,
        "size": len(sbom_body),
        "artifactType": SBOM,
        "annotations": {"kind": "sbom"},
    }
    assert found[sig_digest] == {
        "mediaType": OCI_MANIFEST,
        "digest": sig_digest,
        "size": len(sig_body),
        "artifactType": SIG_CONFIG,
        "annotations": {"kind": "sig", "org.example.fingerprint": "abcd"},
    }
    assert found[bundle_digest] == {
        "mediaType": OCI_INDEX,
        "digest": bundle_digest,
        "size": len(bundle_body),
        "artifactType": BUNDLE,
        "annotations": {"kind": "bundle"},
    }
    # an index without artifactType: the field is omitted
    assert found[plain_digest] == {
        "mediaType": OCI_INDEX,
        "digest": plain_digest,
        "size": len(plain_body),
        "annotations": {"kind": "plain"},
    }


def test_no_filter_no_filters_applied_header(registry: Registry, scene: Scene) -> None:
    r = referrers(registry, scene.repo, scene.image.digest)
    assert "oci-filters-applied" not in r.headers


@pytest.mark.parametrize(
    ("artifact_type", "which"), [(SBOM, "sbom"), (SIG_CONFIG, "signature"), (BUNDLE, "bundle")]
)
def test_artifact_type_filter(registry: Registry, scene: Scene, artifact_type: str, which: str) -> None:
    r = referrers(registry, scene.repo, scene.image.digest, artifactType=artifact_type)
    found = assert_index(r)
    assert r.headers["oci-filters-applied"] == "artifactType"
    _, digest = getattr(scene, which)
    assert [m["digest"] for m in found] == [digest]
    assert found[0]["artifactType"] == artifact_type


def test_artifact_type_filter_without_matches(registry: Registry, scene: Scene) -> None:
    r = referrers(registry, scene.repo, scene.image.digest, artifactType="application/vnd.nothing")
    assert assert_index(r) == []
    assert r.headers["oci-filters-applied"] == "artifactType"


def test_referrers_are_per_repository(registry: Registry, scene: Scene) -> None:
    found = assert_index(referrers(registry, scene.other_repo, scene.image.digest))
    assert len(found) == 1 and found[0]["artifactType"] == SBOM


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_unknown_subject_is_an_empty_index(registry: Registry, scene: Scene, algorithm: str) -> None:
    assert assert_index(referrers(registry, scene.repo, random_digest(algorithm))) == []


def test_unknown_repository_is_an_empty_index_not_404(registry: Registry) -> None:
    assert assert_index(referrers(registry, unique_repo("nowhere"), random_digest())) == []


def test_referrer_pushed_before_its_subject(registry: Registry) -> None:
    repo = unique_repo("ref")
    future = {"mediaType": OCI_MANIFEST, "digest": random_digest(), "size": 321}
    body, digest = push_artifact(registry.client, repo, subject=future, annotations={"early": "yes"})
    found = assert_index(referrers(registry, repo, future["digest"]))
    assert found == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": len(body),
            "artifactType": SBOM,
            "annotations": {"early": "yes"},
        }
    ]


def test_sha512_subject_and_referrer(registry: Registry) -> None:
    repo = unique_repo("ref")
    subject = push_image(registry.client, repo, algorithm="sha512")
    assert subject.digest.startswith("sha512:")
    body, digest = push_artifact(registry.client, repo, subject=subject, algorithm="sha512")
    assert digest.startswith("sha512:")
    found = assert_index(referrers(registry, repo, subject.digest))
    assert [(m["digest"], m["size"]) for m in found] == [(digest, len(body))]
    r = referrers(registry, repo, subject.digest, artifactType=SBOM)
    assert [m["digest"] for m in assert_index(r)] == [digest]


def test_referrer_pushed_by_tag(registry: Registry) -> None:
    repo = unique_repo("ref")
    image = push_image(registry.client, repo, "v1")
    _, digest = push_artifact(registry.client, repo, subject=image, reference="sbom-tag")
    assert [m["digest"] for m in assert_index(referrers(registry, repo, image.digest))] == [digest]


def test_deleted_referrer_leaves_the_list(registry: Registry) -> None:
    repo = unique_repo("ref")
    image = push_image(registry.client, repo, "v1")
    _, first = push_artifact(registry.client, repo, subject=image)
    _, second = push_artifact(registry.client, repo, subject=image, artifact_type=SIGNATURE)
    assert {m["digest"] for m in assert_index(referrers(registry, repo, image.digest))} == {first, second}
    assert registry.client.delete(f"/v2/{repo}/manifests/{first}").status_code == 202
    assert [m["digest"] for m in assert_index(referrers(registry, repo, image.digest))] == [second]


def test_referrers_survive_the_subject_being_deleted(registry: Registry) -> None:
    repo = unique_repo("ref")
    image = push_image(registry.client, repo, "v1")
    _, digest = push_artifact(registry.client, repo, subject=image)
    assert registry.client.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    # the referrer itself was not deleted, so it is still a referrer of that digest
    assert [m["digest"] for m in assert_index(referrers(registry, repo, image.digest))] == [digest]


@pytest.mark.parametrize(
    "digest", ["sha256:abc", "latest", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:"]
)
def test_malformed_digest_is_400(registry: Registry, digest: str) -> None:
    assert_error(referrers(registry, unique_repo("ref"), digest), 400, "DIGEST_INVALID")


def test_invalid_name_is_400(registry: Registry) -> None:
    assert_error(referrers(registry, "Bad", random_digest()), 400, "NAME_INVALID")


def test_referrers_rejects_other_methods(registry: Registry, scene: Scene) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        r = registry.client.request(method, f"/v2/{scene.repo}/referrers/{scene.image.digest}")
        assert_error(r, 405, "UNSUPPORTED")
