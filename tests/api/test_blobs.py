"""end-2 and end-10: GET, HEAD and DELETE of blobs, with Range reads; errors for unknown and malformed
digests and names."""

from __future__ import annotations

import pytest

from tests.api.helpers import (
    EMPTY_DIGEST,
    assert_error,
    digest_of,
    push_blob,
    random_bytes,
    random_digest,
    unique_repo,
)
from tests.conftest import Registry

SIZE = 1000


@pytest.fixture(scope="module")
def blob(registry: Registry) -> tuple[str, bytes, str]:
    """(repository, content, digest) of one blob, shared by the read-only tests of this module."""
    repo = unique_repo("blobs")
    data = random_bytes(SIZE)
    return repo, data, push_blob(registry.client, repo, data)


# -- GET and HEAD --------------------------------------------------------------------------------


def test_get_blob_returns_its_bytes_and_headers(registry: Registry, blob: tuple[str, bytes, str]) -> None:
    repo, data, digest = blob
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["docker-content-digest"] == digest
    assert digest_of(r.content) == r.headers["docker-content-digest"]
    assert r.headers["content-length"] == str(SIZE)
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["etag"] == f'"{digest}"'
    assert r.headers["accept-ranges"] == "bytes"


def test_head_blob_has_the_headers_and_no_body(registry: Registry, blob: tuple[str, bytes, str]) -> None:
    repo, _, digest = blob
    r = registry.client.head(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["content-length"] == str(SIZE)
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["etag"] == f'"{digest}"'


def test_blob_of_another_repository_is_unknown_here(registry: Registry, blob: tuple[str, bytes, str]) -> None:
    _, _, digest = blob
    other = unique_repo("blobs")
    assert_error(registry.client.get(f"/v2/{other}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert_error(registry.client.head(f"/v2/{other}/blobs/{digest}"), 404)


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_unknown_blob_is_404_blob_unknown(
    registry: Registry, blob: tuple[str, bytes, str], algorithm: str
) -> None:
    repo, _, _ = blob
    digest = random_digest(algorithm)
    assert_error(registry.client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    r = registry.client.head(f"/v2/{repo}/blobs/{digest}")
    assert_error(r, 404)
    assert r.content == b""


def test_sha512_blob_get_and_head(registry: Registry) -> None:
    repo = unique_repo("blobs")
    data = random_bytes(3000)
    digest = push_blob(registry.client, repo, data, "sha512")
    assert digest.startswith("sha512:") and len(digest) == 7 + 128
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200 and r.content == data
    assert r.headers["docker-content-digest"] == digest
    r = registry.client.head(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200 and r.headers["content-length"] == "3000"
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}", headers={"range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    # the same bytes under sha256 were never pushed
    assert_error(registry.client.get(f"/v2/{repo}/blobs/{digest_of(data)}"), 404, "BLOB_UNKNOWN")


def test_empty_blob(registry: Registry) -> None:
    repo = unique_repo("blobs")
    digest = push_blob(registry.client, repo, b"")
    assert digest == EMPTY_DIGEST
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == "0"
    r = registry.client.head(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200 and r.headers["content-length"] == "0"


# -- Range ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        ("bytes=0-999", 0, 999),
        ("bytes=500-", 500, 999),
        ("bytes=999-", 999, 999),
        ("bytes=-1", 999, 999),
        ("bytes=-100", 900, 999),
        ("bytes=-5000", 0, 999),  # a suffix longer than the blob is the whole blob
        ("bytes=990-5000", 990, 999),  # a last position past the end is the end
    ],
)
def test_range_read_is_206_with_content_range(
    registry: Registry, blob: tuple[str, bytes, str], header: str, first: int, last: int
) -> None:
    repo, data, digest = blob
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}", headers={"range": header})
    assert r.status_code == 206, r.text
    assert r.content == data[first : last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.headers["docker-content-digest"] == digest


def test_head_with_range(registry: Registry, blob: tuple[str, bytes, str]) -> None:
    repo, _, digest = blob
    r = registry.client.head(f"/v2/{repo}/blobs/{digest}", headers={"range": "bytes=100-199"})
    assert r.status_code in (200, 206)
    assert r.content == b""
    if r.status_code == 206:
        assert r.headers["content-range"] == f"bytes 100-199/{SIZE}"
        assert r.headers["content-length"] == "100"


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-1000", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_range_is_416(registry: Registry, blob: tuple[str, bytes, str], header: str) -> None:
    repo, _, digest = blob
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}", headers={"range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize("header", ["bytes=0-", "bytes=0-0", "bytes=-0"])
def test_a_position_range_of_the_empty_blob_is_unsatisfiable(registry: Registry, header: str) -> None:
    repo = unique_repo("blobs")
    digest = push_blob(registry.client, repo, b"")
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}", headers={"range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */0"


def test_a_suffix_range_of_the_empty_blob_is_the_empty_blob(registry: Registry) -> None:
    # RFC 9110 calls a non-zero suffix satisfiable, but no Content-Range can describe zero bytes of
    # zero: the whole (empty) representation is the only sound answer
    repo = unique_repo("blobs")
    digest = push_blob(registry.client, repo, b"")
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}", headers={"range": "bytes=-5"})
    assert r.status_code == 200
    assert r.content == b"" and "content-range" not in r.headers


@pytest.mark.parametrize(
    "header",
    [
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=abc",
        "bytes=a-b",
        "bytes=5-2",
        "bytes=1-2-3",
        "bytes=0x10-0x20",
        "items=0-10",
        "0-10",
        "bytes=--5",
        "bytes = 0 - 5 junk",
        "bytes=99999999999999999999999999-",
    ],
)
def test_malformed_range_is_ignored(registry: Registry, blob: tuple[str, bytes, str], header: str) -> None:
    repo, data, digest = blob
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}", headers={"range": header})
    assert r.status_code in (200, 416), (header, r.status_code)
    if r.status_code == 200:
        assert r.content == data
        assert "content-range" not in r.headers


def test_multiple_ranges_are_served_whole_or_refused(
    registry: Registry, blob: tuple[str, bytes, str]
) -> None:
    repo, data, digest = blob
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}", headers={"range": "bytes=0-1,5-6"})
    assert r.status_code in (200, 416)
    if r.status_code == 200:
        assert r.content == data


# -- DELETE --------------------------------------------------------------------------------------


def test_delete_blob_then_it_is_unknown(registry: Registry) -> None:
    repo = unique_repo("blobs")
    data = random_bytes(100)
    digest = push_blob(registry.client, repo, data)
    r = registry.client.delete(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 202
    assert_error(registry.client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert_error(registry.client.head(f"/v2/{repo}/blobs/{digest}"), 404)
    assert_error(registry.client.delete(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_delete_blob_in_one_repository_leaves_it_in_another(registry: Registry) -> None:
    data = random_bytes(100)
    first, second = unique_repo("blobs"), unique_repo("blobs")
    digest = push_blob(registry.client, first, data)
    push_blob(registry.client, second, data)
    assert registry.client.delete(f"/v2/{first}/blobs/{digest}").status_code == 202
    r = registry.client.get(f"/v2/{second}/blobs/{digest}")
    assert r.status_code == 200 and r.content == data


def test_delete_sha512_blob(registry: Registry) -> None:
    repo = unique_repo("blobs")
    digest = push_blob(registry.client, repo, random_bytes(100), "sha512")
    assert registry.client.delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
    assert_error(registry.client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_delete_unknown_blob_is_404(registry: Registry) -> None:
    repo = unique_repo("blobs")
    assert_error(registry.client.delete(f"/v2/{repo}/blobs/{random_digest()}"), 404, "BLOB_UNKNOWN")


def test_blobs_endpoint_rejects_other_methods(registry: Registry, blob: tuple[str, bytes, str]) -> None:
    repo, _, digest = blob
    for method in ("POST", "PUT", "PATCH"):
        assert_error(registry.client.request(method, f"/v2/{repo}/blobs/{digest}"), 405, "UNSUPPORTED")


# -- malformed digests and names -----------------------------------------------------------------

MALFORMED_DIGESTS = [
    "sha256:abc",
    "sha256:" + "A" * 64,
    "sha256:" + "g" * 64,
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "a" * 128,
    "sha512:" + "a" * 64,
    "sha256:",
    "sha256",
    "latest",
    ":" + "a" * 64,
    "md5:d41d8cd98f00b204e9800998ecf8427e",
    "sha384:" + "a" * 96,
    "SHA256:" + "a" * 64,
    "sha256::" + "a" * 64,
    "sha256:" + "a" * 64 + ":",
    "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
    "sha256:" + "a" * 10000,
]


@pytest.mark.parametrize("digest", MALFORMED_DIGESTS)
def test_malformed_digest_is_400_digest_invalid(registry: Registry, digest: str) -> None:
    repo = unique_repo("blobs")
    assert_error(registry.client.get(f"/v2/{repo}/blobs/{digest}"), 400, "DIGEST_INVALID")
    assert_error(registry.client.head(f"/v2/{repo}/blobs/{digest}"), 400)
    assert_error(registry.client.delete(f"/v2/{repo}/blobs/{digest}"), 400, "DIGEST_INVALID")


INVALID_NAMES = [
    "Upper/case",
    "upper/Case",
    "ALLCAPS",
    "a..b",
    "-leading",
    "trailing-",
    "trailing_",
    "a___b",
    "a/.b",
    "a/_b",
    "a:b",
    "a%20b",
    "a" * 256,
    "/".join(["abcdefghij"] * 24),
]


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_repository_name_is_400_name_invalid(registry: Registry, name: str) -> None:
    digest = random_digest()
    assert_error(registry.client.get(f"/v2/{name}/blobs/{digest}"), 400, "NAME_INVALID")
    assert_error(registry.client.head(f"/v2/{name}/blobs/{digest}"), 400)
    assert_error(registry.client.delete(f"/v2/{name}/blobs/{digest}"), 400, "NAME_INVALID")


@pytest.mark.parametrize("name", ["a", "a/b/c/d", "a-b", "a--b", "a__b", "a.b", "0", "a_b-c.d/e0"])
def test_valid_unusual_names_work(registry: Registry, name: str) -> None:
    data = random_bytes(32)
    repo = f"{name}/{unique_repo('n')}"
    digest = push_blob(registry.client, repo, data)
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200 and r.content == data


def test_repository_names_that_look_like_endpoints(registry: Registry) -> None:
    base = unique_repo("blobs")
    for repo in (f"{base}/blobs", f"{base}/blobs/uploads", f"{base}/manifests", f"{base}/tags/list"):
        data = random_bytes(32)
        digest = push_blob(registry.client, repo, data)
        r = registry.client.get(f"/v2/{repo}/blobs/{digest}")
        assert r.status_code == 200 and r.content == data
        assert_error(registry.client.get(f"/v2/{base}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
