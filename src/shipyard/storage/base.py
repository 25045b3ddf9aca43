"""The BlobStore contract.

Blobs are addressed by digest, one copy per digest for the whole registry. An upload streams into a
staging area under an upload id and becomes visible under its digest only by `commit_upload`, after the
caller has checked the digest. Drivers never hash and never know about HTTP or the database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol

from shipyard.domain.digest import Digest

UPLOAD_ID = re.compile(r"^[a-f0-9]{32}\Z")


class UploadMissing(Exception):
    """The staging data of an upload does not exist."""


class UploadBusy(Exception):
    """Another writer holds the upload: one writer at a time, so that no two requests interleave bytes."""


class InvalidUploadId(ValueError):
    pass


def check_upload_id(upload_id: str) -> str:
    if not UPLOAD_ID.match(upload_id):
        raise InvalidUploadId(upload_id)
    return upload_id


class BlobWriter(Protocol):
    """Appends to an upload's staging data. Written bytes may wait in the writer until `flush`, which
    puts them into the staging data (upload_size counts them from then on). `commit` flushes and makes
    the appended bytes durable-enough to continue the upload; `abort` rolls back to where the writer
    started."""

    @property
    def offset(self) -> int: ...
    def write(self, data: bytes | bytearray | memoryview) -> None: ...
    def flush(self) -> None: ...
    def commit(self) -> int: ...
    def abort(self) -> None: ...


class BlobStore(Protocol):
    def stat(self, digest: Digest) -> int | None:
        """Size of the blob, or None when it is not stored."""
        ...

    def local_path(self, digest: Digest) -> str | None:
        """A local file holding the blob, for zero-copy serving; None if the driver has none."""
        ...

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Yield the blob's bytes from `offset`, `length` bytes (to the end when None); KeyError when the
        blob is not stored. Past the end there is nothing to yield."""
        ...

    def delete(self, digest: Digest) -> None: ...

    def digests(self) -> Iterator[Digest]:
        """Every stored blob (for garbage collection and consistency checks)."""
        ...

    def put(self, digest: Digest, data: bytes) -> None:
        """Store small content whose digest the caller has verified."""
        ...

    # uploads
    def create_upload(self, upload_id: str) -> None:
        """Stage an empty upload; FileExistsError if the id is taken. Every method taking an upload id
        raises InvalidUploadId for a malformed one before touching storage."""
        ...

    def upload_size(self, upload_id: str) -> int: ...

    def open_upload(self, upload_id: str, offset: int) -> BlobWriter:
        """A writer that appends at `offset`, discarding any staged bytes past it. It holds the upload
        exclusively until commit or abort; raises UploadBusy while another writer holds it."""
        ...

    def read_upload(self, upload_id: str) -> Iterator[bytes]: ...

    def commit_upload(self, upload_id: str, digest: Digest, expected_size: int | None = None) -> None:
        """Make the staged bytes durable and visible under `digest`, atomically; removes the upload.
        Raises UploadBusy while a writer holds the upload, or when it no longer holds `expected_size`
        bytes (the caller hashed a state that has moved on)."""
        ...

    def cancel_upload(self, upload_id: str) -> None: ...

    def uploads(self) -> Iterator[tuple[str, float]]:
        """(upload id, last modification as a Unix time) of every staged upload."""
        ...
