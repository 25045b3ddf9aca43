"""The one table from error codes to HTTP statuses, and the OCI JSON error body."""

from __future__ import annotations

import json

from shipyard.domain.errors import (
    BlobTooLarge,
    ManifestReferenced,
    ManifestTooLarge,
    RangeInvalid,
    RegistryError,
    RequestInvalid,
)

STATUS_BY_CODE: dict[str, int] = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    "UNKNOWN": 500,
    # the management API's codes (not the distribution spec's)
    "NOT_FOUND": 404,
    "CONFLICT": 409,
}

# Errors whose status is more specific than their code's.
STATUS_BY_ERROR: dict[type[RegistryError], int] = {
    RangeInvalid: 416,
    ManifestTooLarge: 413,
    ManifestReferenced: 409,
    BlobTooLarge: 413,
    RequestInvalid: 400,
}


def status_for(error: RegistryError) -> int:
    for kind, status in STATUS_BY_ERROR.items():
        if isinstance(error, kind):
            return status
    return STATUS_BY_CODE.get(error.code, 500)


def error_body(code: str, message: str, detail: object = None) -> bytes:
    entry: dict[str, object] = {"code": code, "message": message}
    if detail is not None:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}).encode()


# The spec's table has no code for a path that names no endpoint; UNSUPPORTED is the nearest.
NO_SUCH_ENDPOINT = error_body("UNSUPPORTED", "no such endpoint")


def body_for(error: RegistryError) -> bytes:
    detail = error.extra if error.extra is not None else error.detail
    return error_body(error.code, error.message, detail)
