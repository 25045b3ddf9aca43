"""Parsing and validating manifests and indexes. The pushed bytes are kept as they are; this only reads."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from shipyard.domain import mediatypes as mt
from shipyard.domain.digest import Digest, new_hasher
from shipyard.domain.errors import ManifestInvalid, ManifestTooLarge

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\Z")


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()
    has_data: bool = False
    platform: dict[str, Any] | None = None

    @property
    def requires_blob(self) -> bool:
        """Whether the registry must hold this content for a manifest to reference it."""
        return not self.has_data and self.media_type not in mt.NON_DISTRIBUTABLE_LAYERS


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    digest: Digest
    size: int
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    children: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = field(default=None)

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES

    @property
    def effective_artifact_type(self) -> str | None:
        """artifactType, falling back to the config media type, as the referrers API reports it."""
        if self.artifact_type:
            return self.artifact_type
        if self.config is not None:
            return self.config.media_type
        return None


def normalize_content_type(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(";", 1)[0].strip().lower() or None


def parse_manifest(body: bytes, content_type: str | None, digest: Digest | None = None) -> ParsedManifest:
    """Validate a pushed manifest. `digest` is what the manifest will be stored under (computed if None)."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise ManifestTooLarge(f"manifest is {len(body)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    if digest is None:
        digest = Digest.of(body)
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # RecursionError: nesting deeper than the decoder goes is no manifest either
        raise ManifestInvalid(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ManifestInvalid("manifest must be a JSON object")

    declared = document.get("mediaType")
    header = normalize_content_type(content_type)
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("mediaType must be a string")
    if declared and header and header != declared:
        raise ManifestInvalid(f"Content-Type {header!r} does not match the manifest's mediaType {declared!r}")
    media_type = declared or header
    if media_type is None:
        media_type = _guess_media_type(document)
    if media_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED):
        raise ManifestInvalid("Docker schema 1 manifests are not supported")
    if media_type not in mt.MANIFEST_TYPES:
        raise ManifestInvalid(f"unsupported manifest media type: {media_type!r}")
    if document.get("schemaVersion") != 2:
        raise ManifestInvalid("schemaVersion must be 2")

    subject = _descriptor(document["subject"], "subject") if "subject" in document else None
    artifact_type = document.get("artifactType")
    if artifact_type is not None and not (
        isinstance(artifact_type, str) and _MEDIA_TYPE.match(artifact_type)
    ):
        raise ManifestInvalid("artifactType must be a media type")
    annotations = _annotations(document.get("annotations"), "annotations")
    if media_type in mt.INDEXES:
        children_doc = document.get("manifests")
        if not isinstance(children_doc, list):
            raise ManifestInvalid("an index must have a manifests array")
        children = tuple(_descriptor(item, f"manifests[{i}]") for i, item in enumerate(children_doc))
        return ParsedManifest(
            media_type,
            digest,
            len(body),
            children=children,
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )
    if "config" not in document:
        raise ManifestInvalid("an image manifest must have a config descriptor")
    config = _descriptor(document["config"], "config")
    layers_doc = document.get("layers", [])
    if not isinstance(layers_doc, list):
        raise ManifestInvalid("layers must be an array")
    layers = tuple(_descriptor(item, f"layers[{i}]") for i, item in enumerate(layers_doc))
    return ParsedManifest(
        media_type,
        digest,
        len(body),
        config=config,
        layers=layers,
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )


def _guess_media_type(document: dict[str, Any]) -> str:
    # OCI manifests may omit mediaType; the structure tells which kind it is.
    if "manifests" in document:
        return mt.OCI_INDEX
    if "config" in document:
        return mt.OCI_MANIFEST
    raise ManifestInvalid("manifest has no mediaType and no Content-Type")


def _annotations(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestInvalid(f"{where} must map strings to strings")
    return value


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not _MEDIA_TYPE.match(media_type):
        raise ManifestInvalid(f"{where}.mediaType is missing or not a media type")
    raw_digest = value.get("digest")
    if not isinstance(raw_digest, str):
        raise ManifestInvalid(f"{where}.digest is missing")
    try:
        digest = Digest.parse(raw_digest)
    except Exception:
        raise ManifestInvalid(f"{where}.digest is invalid: {raw_digest!r}") from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"{where}.size must be a non-negative integer")
    urls = value.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestInvalid(f"{where}.urls must be an array of strings")
    data = value.get("data")
    if data is not None:
        _check_embedded_data(data, digest, size, where)
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid(f"{where}.artifactType must be a string")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise ManifestInvalid(f"{where}.platform must be an object")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        artifact_type=artifact_type,
        annotations=_annotations(value.get("annotations"), f"{where}.annotations"),
        urls=tuple(urls),
        has_data=data is not None,
        platform=platform,
    )


def _check_embedded_data(data: Any, digest: Digest, size: int, where: str) -> None:
    if not isinstance(data, str):
        raise ManifestInvalid(f"{where}.data must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ManifestInvalid(f"{where}.data is not valid base64") from None
    if len(raw) != size:
        raise ManifestInvalid(f"{where}.data is {len(raw)} bytes but size says {size}")
    hasher = new_hasher(digest.algorithm)
    hasher.update(raw)
    if hasher.hexdigest() != digest.encoded:
        raise ManifestInvalid(f"{where}.data does not match its digest")
