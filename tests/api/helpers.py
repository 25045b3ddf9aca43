"""Helpers for the protocol tests: unique names, digests, pushing blobs and manifests, and checking
that an error response is the spec's JSON error body."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# The error codes of the distribution-spec's table: the only codes a JSON error body may carry.
SPEC_ERROR_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    }
)


def unique_repo(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def random_digest(algorithm: str = "sha256") -> str:
    """The digest of content nobody has pushed."""
    return digest_of(uuid.uuid4().bytes, algorithm)


def random_bytes(size: int, seed: str | None = None) -> bytes:
    """Deterministic pseudo-random bytes (incompressible enough, and unique per seed)."""
    seed_bytes = (seed or uuid.uuid4().hex).encode()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(seed_bytes + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response has `status` and the spec's JSON error body (with `code` among its errors).
    HEAD responses have no body, so only the status is checked for them."""
    assert response.status_code == status, (response.status_code, response.text)
    if response.request.method == "HEAD":
        assert response.content == b""
        return {}
    body = assert_error_body(response)
    if code is not None:
        codes = [entry["code"] for entry in body["errors"]]
        assert code in codes, (code, body)
    return body


def assert_error_body(response: httpx.Response) -> dict[str, Any]:
    """The body is `{"errors": [{"code": ..., "message": ..., "detail"?: ...}, ...]}` with spec codes."""
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"errors"}, body
    errors = body["errors"]
    assert isinstance(errors, list) and errors, body
    for entry in errors:
        assert isinstance(entry, dict), body
        assert set(entry) <= {"code", "message", "detail"}, body
        assert entry["code"] in SPEC_ERROR_CODES, body
        assert "message" not in entry or isinstance(entry["message"], str), body
    return body


# -- blobs ---------------------------------------------------------------------------------------


def start_upload(client: httpx.Client, repo: str) -> str:
    """POST a new upload session; return its Location."""
    r = client.post(f"/v2/{repo}/blobs/uploads/", headers={"content-length": "0"})
    assert r.status_code == 202, r.text
    return r.headers["location"]


def push_blob(client: httpx.Client, repo: str, data: bytes, algorithm: str = "sha256") -> str:
    """POST then PUT: the most common monolithic upload. Returns the digest."""
    digest = digest_of(data, algorithm)
    location = start_upload(client, repo)
    r = client.put(
        location,
        params={"digest": digest},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    return digest


def push_blob_chunked(
    client: httpx.Client, repo: str, data: bytes, chunks: int = 3, algorithm: str = "sha256"
) -> str:
    digest = digest_of(data, algorithm)
    location = start_upload(client, repo)
    step = max(1, -(-len(data) // chunks))
    for start in range(0, len(data), step):
        chunk = data[start : start + step]
        r = client.patch(
            location,
            content=chunk,
            headers={
                "content-type": "application/octet-stream",
                "content-range": f"{start}-{start + len(chunk) - 1}",
            },
        )
        assert r.status_code == 202, r.text
        assert r.headers["range"] == f"0-{start + len(chunk) - 1}"
        location = r.headers["location"]
    r = client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    return digest


# -- manifests -----------------------------------------------------------------------------------


def descriptor(media_type: str, content: bytes, algorithm: str = "sha256", **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(content, algorithm), "size": len(content), **extra}


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def put_manifest(
    client: httpx.Client,
    repo: str,
    reference: str,
    body: bytes,
    media_type: str | None = OCI_MANIFEST,
    params: Any = None,
) -> httpx.Response:
    headers = {"content-type": media_type} if media_type else {}
    return client.put(f"/v2/{repo}/manifests/{reference}", content=body, headers=headers, params=params)


@dataclass
class Image:
    repo: str
    body: bytes
    digest: str
    media_type: str
    config: bytes
    layers: list[bytes] = field(default_factory=list)


def image_manifest(
    config: bytes,
    layers: list[bytes],
    *,
    media_type: str = OCI_MANIFEST,
    config_type: str = OCI_CONFIG,
    layer_type: str = OCI_LAYER,
    algorithm: str = "sha256",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config, algorithm),
        "layers": [descriptor(layer_type, layer, algorithm) for layer in layers],
        **extra,
    }


def push_image(
    client: httpx.Client,
    repo: str,
    reference: str | None = None,
    *,
    layers: list[bytes] | None = None,
    config: bytes | None = None,
    media_type: str = OCI_MANIFEST,
    config_type: str = OCI_CONFIG,
    layer_type: str = OCI_LAYER,
    algorithm: str = "sha256",
    **extra: Any,
) -> Image:
    """Push the blobs and a manifest for them, by `reference` (a tag), or by digest when None."""
    if layers is None:
        layers = [random_bytes(512)]
    if config is None:
        config = encode({"architecture": "amd64", "os": "linux", "nonce": uuid.uuid4().hex})
    for blob in (config, *layers):
        push_blob(client, repo, blob, algorithm)
    document = image_manifest(
        config,
        layers,
        media_type=media_type,
        config_type=config_type,
        layer_type=layer_type,
        algorithm=algorithm,
        **extra,
    )
    body = encode(document)
    # a push by tag is stored under the canonical (sha256) digest; a push by digest under that digest
    digest = digest_of(body, algorithm if reference is None else "sha256")
    r = put_manifest(client, repo, reference or digest, body, media_type)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    return Image(repo, body, digest, media_type, config, layers)


def index_manifest(
    children: list[tuple[str, bytes]], *, media_type: str = OCI_INDEX, **extra: Any
) -> dict[str, Any]:
    """An index over (media type, manifest bytes) children."""
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            descriptor(child_type, body, platform={"architecture": "amd64", "os": "linux"})
            for child_type, body in children
        ],
        **extra,
    }


def push_artifact(
    client: httpx.Client,
    repo: str,
    *,
    subject: Image | dict[str, Any] | None = None,
    artifact_type: str | None = "application/vnd.example.sbom.v1",
    config_type: str = OCI_EMPTY,
    annotations: dict[str, str] | None = None,
    reference: str | None = None,
    algorithm: str = "sha256",
) -> tuple[bytes, str]:
    """Push an OCI 1.1 artifact manifest (empty JSON config, one blob layer), optionally with a subject.
    Returns (body, digest)."""
    if config_type == OCI_EMPTY:
        config = EMPTY_JSON
    else:
        config = encode({"kind": config_type, "nonce": uuid.uuid4().hex})
    layer = random_bytes(64)
    push_blob(client, repo, config, algorithm)
    push_blob(client, repo, layer, algorithm)
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
    }
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    document["config"] = descriptor(config_type, config, algorithm)
    document["layers"] = [descriptor("application/vnd.example.data", layer, algorithm)]
    if subject is not None:
        if isinstance(subject, Image):
            subject = {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.body)}
        document["subject"] = subject
    if annotations:
        document["annotations"] = annotations
    body = encode(document)
    digest = digest_of(body, algorithm)
    r = put_manifest(client, repo, reference or digest, body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    return body, digest
