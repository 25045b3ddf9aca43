"""Domain errors. Each carries its OCI error code; the API maps codes to HTTP statuses in one table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class RegistryError(Exception):
    code = "UNKNOWN"
    message = "unknown error"

    def __init__(self, detail: str | None = None, *, extra: Any = None) -> None:
        super().__init__(detail or self.message)
        self.detail = detail
        self.extra = extra


class BlobUnknown(RegistryError):
    code = "BLOB_UNKNOWN"
    message = "blob unknown to registry"


class BlobUploadInvalid(RegistryError):
    code = "BLOB_UPLOAD_INVALID"
    message = "blob upload invalid"


class BlobUploadUnknown(RegistryError):
    code = "BLOB_UPLOAD_UNKNOWN"
    message = "blob upload unknown to registry"


class RangeInvalid(BlobUploadInvalid):
    """A chunk that does not start where the upload stands (416)."""

    message = "chunk does not start at the end of the upload"


class DigestInvalid(RegistryError):
    code = "DIGEST_INVALID"
    message = "provided digest did not match uploaded content"


class ManifestBlobUnknown(RegistryError):
    code = "MANIFEST_BLOB_UNKNOWN"
    message = "manifest references a manifest or blob unknown to registry"


class ManifestInvalid(RegistryError):
    code = "MANIFEST_INVALID"
    message = "manifest invalid"


class ManifestTooLarge(ManifestInvalid):
    message = "manifest exceeds the size limit"


class ManifestReferenced(RegistryError):
    """A manifest that an index in its repository lists: deleting it would break the index (409)."""

    # the spec's table has no code for a conflict; DENIED is the nearest that clients know
    code = "DENIED"
    message = "the manifest is referenced by an image index"


class ManifestUnknown(RegistryError):
    code = "MANIFEST_UNKNOWN"
    message = "manifest unknown to registry"


class NameInvalid(RegistryError):
    code = "NAME_INVALID"
    message = "invalid repository name"


class NameUnknown(RegistryError):
    code = "NAME_UNKNOWN"
    message = "repository name not known to registry"


class SizeInvalid(RegistryError):
    code = "SIZE_INVALID"
    message = "provided length did not match content length"


class BlobTooLarge(SizeInvalid):
    """An upload that would grow past the registry's size limit (413). SIZE_INVALID rather than
    BLOB_UPLOAD_INVALID: the spec gives BLOB_UPLOAD_INVALID to an upload that "can no longer proceed",
    and this one can, at the offset it had before the refused request."""

    message = "blob exceeds the size limit"


class TagInvalid(RegistryError):
    # The spec has no TAG_INVALID code; an invalid tag is an invalid manifest reference.
    code = "MANIFEST_INVALID"
    message = "invalid tag"


class Unauthorized(RegistryError):
    code = "UNAUTHORIZED"
    message = "authentication required"

    def __init__(
        self, detail: str | None = None, *, extra: Any = None, record: Callable[[], None] | None = None
    ) -> None:
        super().__init__(detail, extra=extra)
        # what must be written down (an audit event) before the answer goes out: blocking work that the
        # caller runs on a worker thread, so that a flood of bad credentials cannot stall the event loop
        self.record = record


class Denied(RegistryError):
    code = "DENIED"
    message = "requested access to the resource is denied"


class Unsupported(RegistryError):
    code = "UNSUPPORTED"
    message = "the operation is unsupported"


class TooManyRequests(RegistryError):
    code = "TOOMANYREQUESTS"
    message = "too many requests"


class TooManyUploads(TooManyRequests):
    """A principal has as many upload sessions open as it may; `retry_after` in seconds."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class RequestInvalid(RegistryError):
    """A malformed request that no code of the spec's table names; answers UNSUPPORTED with a 400."""

    code = "UNSUPPORTED"
    message = "invalid request"


class PaginationInvalid(RequestInvalid):
    # Distribution says PAGINATION_NUMBER_INVALID; clients may only rely on the table's codes.
    message = "invalid number of results requested"
