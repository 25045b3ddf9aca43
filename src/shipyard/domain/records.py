"""Plain records that the service layer returns: never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class UploadState:
    id: str
    repository: str
    size: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredManifest:
    id: int
    digest: str
    media_type: str
    size: int
    content: bytes


@dataclass(frozen=True, slots=True)
class PutManifestResult:
    digest: str
    subject: str | None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    has_more: bool


@dataclass(frozen=True, slots=True)
class Referrer:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None

    def descriptor(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass(frozen=True, slots=True)
class Usage:
    """Bytes stored: in all, unique (no other repository, or account, links the blob) and shared."""

    stored_bytes: int
    unique_bytes: int
    blobs: int

    @property
    def shared_bytes(self) -> int:
        return self.stored_bytes - self.unique_bytes
