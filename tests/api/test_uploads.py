"""end-4a/4b, end-5, end-6, end-11, end-13: starting, mounting, chunking, finishing, inspecting and
cancelling blob uploads."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.api.helpers import (
    EMPTY_DIGEST,
    assert_error,
    digest_of,
    push_blob,
    push_blob_chunked,
    random_bytes,
    random_digest,
    start_upload,
    unique_repo,
)
from tests.conftest import Registry

OCTETS = {"content-type": "application/octet-stream"}


def upload_path(location: str) -> str:
    """The path of an upload Location, absolute or relative."""
    return httpx.URL(location).path


def assert_upload_headers(r: httpx.Response, repo: str, size: int) -> None:
    """What every response about an upload in progress carries."""
    location = r.headers["location"]
    assert upload_path(location).startswith(f"/v2/{repo}/blobs/uploads/")
    session = r.headers["docker-upload-uuid"]
    assert session and session in location
    assert r.headers["range"] == f"0-{max(size - 1, 0)}"


def chunk(client: httpx.Client, location: str, data: bytes, start: int) -> httpx.Response:
    return client.patch(
        location,
        content=data,
        headers={**OCTETS, "content-range": f"{start}-{start + len(data) - 1}"},
    )


def assert_blob(client: httpx.Client, repo: str, digest: str, data: bytes) -> None:
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, r.text
    assert r.content == data
    assert r.headers["docker-content-digest"] == digest


# -- starting ------------------------------------------------------------------------------------


def test_post_starts_an_upload_session(registry: Registry) -> None:
    repo = unique_repo("up")
    r = registry.client.post(f"/v2/{repo}/blobs/uploads/", headers={"content-length": "0"})
    assert r.status_code == 202, r.text
    assert_upload_headers(r, repo, 0)
    assert r.headers["content-length"] == "0"
    # the session id is unique
    other = registry.client.post(f"/v2/{repo}/blobs/uploads/")
    assert other.headers["docker-upload-uuid"] != r.headers["docker-upload-uuid"]


def test_post_to_an_invalid_name_is_400(registry: Registry) -> None:
    assert_error(registry.client.post("/v2/Bad/Name/blobs/uploads/"), 400, "NAME_INVALID")


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_monolithic_post_with_digest_is_201(registry: Registry, algorithm: str) -> None:
    repo = unique_repo("up")
    data = random_bytes(5000)
    digest = digest_of(data, algorithm)
    r = registry.client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data, headers=OCTETS
    )
    assert r.status_code == 201, r.text
    assert r.headers["location"].endswith(f"/v2/{repo}/blobs/{digest}")
    assert r.headers["docker-content-digest"] == digest
    assert_blob(registry.client, repo, digest, data)
    # the Location is a pullable blob URL
    assert registry.client.get(r.headers["location"]).content == data


def test_monolithic_post_with_a_wrong_digest_is_400_and_stores_nothing(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(100)
    wrong = random_digest()
    r = registry.client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": wrong}, content=data, headers=OCTETS
    )
    assert_error(r, 400, "DIGEST_INVALID")
    assert_error(registry.client.head(f"/v2/{repo}/blobs/{wrong}"), 404)
    assert_error(registry.client.head(f"/v2/{repo}/blobs/{digest_of(data)}"), 404)


def test_monolithic_post_with_a_malformed_digest_is_400(registry: Registry) -> None:
    repo = unique_repo("up")
    r = registry.client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": "sha256:nope"}, content=b"x")
    assert_error(r, 400, "DIGEST_INVALID")


def test_post_then_put_monolithic(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(4096)
    digest = digest_of(data)
    location = start_upload(registry.client, repo)
    r = registry.client.put(location, params={"digest": digest}, content=data, headers=OCTETS)
    assert r.status_code == 201, r.text
    assert r.headers["location"].endswith(f"/v2/{repo}/blobs/{digest}")
    assert r.headers["docker-content-digest"] == digest
    assert_blob(registry.client, repo, digest, data)


def test_uploading_a_blob_again_is_fine(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(100)
    assert push_blob(registry.client, repo, data) == push_blob(registry.client, repo, data)
    assert_blob(registry.client, repo, digest_of(data), data)


# -- mounting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_mount_from_another_repository_is_201(registry: Registry, algorithm: str) -> None:
    source, target = unique_repo("src"), unique_repo("dst")
    data = random_bytes(700)
    digest = push_blob(registry.client, source, data, algorithm)
    assert_error(registry.client.head(f"/v2/{target}/blobs/{digest}"), 404)
    r = registry.client.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    assert r.status_code == 201, r.text
    assert r.headers["location"].endswith(f"/v2/{target}/blobs/{digest}")
    assert r.headers["docker-content-digest"] == digest
    assert_blob(registry.client, target, digest, data)
    r = registry.client.head(f"/v2/{target}/blobs/{digest}")
    assert r.status_code == 200 and r.headers["content-length"] == "700"


def test_mount_into_a_repository_that_has_it_is_201(registry: Registry) -> None:
    repo = unique_repo("up")
    digest = push_blob(registry.client, repo, random_bytes(10))
    r = registry.client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": repo})
    assert r.status_code == 201


def test_mount_without_from_of_a_blob_held_elsewhere_is_201(registry: Registry) -> None:
    source, target = unique_repo("src"), unique_repo("dst")
    data = random_bytes(300)
    digest = push_blob(registry.client, source, data)
    r = registry.client.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest})
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    assert_blob(registry.client, target, digest, data)


def _assert_fell_back_to_an_upload(registry: Registry, r: httpx.Response, repo: str) -> None:
    assert r.status_code == 202, r.text
    assert_upload_headers(r, repo, 0)
    # the session works like any other
    data = random_bytes(50)
    done = registry.client.put(r.headers["location"], params={"digest": digest_of(data)}, content=data)
    assert done.status_code == 201, done.text


def test_mount_from_a_repository_that_lacks_the_blob_falls_back_to_an_upload(registry: Registry) -> None:
    holder, empty, target = unique_repo("src"), unique_repo("src"), unique_repo("dst")
    digest = push_blob(registry.client, holder, random_bytes(10))
    push_blob(registry.client, empty, random_bytes(10))
    r = registry.client.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": empty})
    _assert_fell_back_to_an_upload(registry, r, target)
    assert_error(registry.client.head(f"/v2/{target}/blobs/{digest}"), 404)


def test_mount_from_an_unknown_repository_falls_back(registry: Registry) -> None:
    holder, target = unique_repo("src"), unique_repo("dst")
    digest = push_blob(registry.client, holder, random_bytes(10))
    r = registry.client.post(
        f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": unique_repo("nowhere")}
    )
    _assert_fell_back_to_an_upload(registry, r, target)


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_mount_of_an_unknown_digest_falls_back(registry: Registry, algorithm: str) -> None:
    source, target = unique_repo("src"), unique_repo("dst")
    push_blob(registry.client, source, random_bytes(10))
    r = registry.client.post(
        f"/v2/{target}/blobs/uploads/", params={"mount": random_digest(algorithm), "from": source}
    )
    _assert_fell_back_to_an_upload(registry, r, target)
    r = registry.client.post(f"/v2/{target}/blobs/uploads/", params={"mount": random_digest(algorithm)})
    _assert_fell_back_to_an_upload(registry, r, target)


@pytest.mark.parametrize("source", ["Bad/Name", "a..b", "", "-x", "a" * 300])
def test_mount_from_a_bad_name_falls_back(registry: Registry, source: str) -> None:
    holder, target = unique_repo("src"), unique_repo("dst")
    digest = push_blob(registry.client, holder, random_bytes(10))
    r = registry.client.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    _assert_fell_back_to_an_upload(registry, r, target)


@pytest.mark.parametrize("mount", ["sha256:nope", "", "latest", "md5:d41d8cd98f00b204e9800998ecf8427e"])
def test_mount_of_a_malformed_digest_falls_back(registry: Registry, mount: str) -> None:
    source, target = unique_repo("src"), unique_repo("dst")
    push_blob(registry.client, source, random_bytes(10))
    r = registry.client.post(f"/v2/{target}/blobs/uploads/", params={"mount": mount, "from": source})
    _assert_fell_back_to_an_upload(registry, r, target)


def test_mount_of_a_deleted_blob_falls_back(registry: Registry) -> None:
    source, target = unique_repo("src"), unique_repo("dst")
    digest = push_blob(registry.client, source, random_bytes(10))
    assert registry.client.delete(f"/v2/{source}/blobs/{digest}").status_code == 202
    r = registry.client.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    _assert_fell_back_to_an_upload(registry, r, target)


# -- chunks --------------------------------------------------------------------------------------


def test_chunked_upload_reports_range_and_location_after_each_chunk(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(3000)
    location = start_upload(registry.client, repo)
    offset = 0
    for size in (1000, 1, 999, 1000):
        r = chunk(registry.client, location, data[offset : offset + size], offset)
        assert r.status_code == 202, r.text
        offset += size
        assert_upload_headers(r, repo, offset)
        assert r.headers["content-length"] == "0"
        location = r.headers["location"]
        status = registry.client.get(location)
        assert status.status_code == 204
        assert_upload_headers(status, repo, offset)
    r = registry.client.put(location, params={"digest": digest_of(data)})
    assert r.status_code == 201, r.text
    assert r.headers["location"].endswith(f"/v2/{repo}/blobs/{digest_of(data)}")
    assert_blob(registry.client, repo, digest_of(data), data)


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_chunked_upload_with_the_final_chunk_in_the_put(registry: Registry, algorithm: str) -> None:
    repo = unique_repo("up")
    data = random_bytes(2500)
    digest = digest_of(data, algorithm)
    location = start_upload(registry.client, repo)
    r = chunk(registry.client, location, data[:2000], 0)
    assert r.status_code == 202
    r = registry.client.put(
        r.headers["location"],
        params={"digest": digest},
        content=data[2000:],
        headers={**OCTETS, "content-range": "2000-2499"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    assert_blob(registry.client, repo, digest, data)


def test_final_chunk_in_the_put_without_content_range(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(2500)
    location = start_upload(registry.client, repo)
    r = chunk(registry.client, location, data[:1000], 0)
    r = registry.client.put(r.headers["location"], params={"digest": digest_of(data)}, content=data[1000:])
    assert r.status_code == 201, r.text
    assert_blob(registry.client, repo, digest_of(data), data)


def test_patch_without_content_range_appends(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(3000)
    location = start_upload(registry.client, repo)
    for start in (0, 1000, 2000):
        r = registry.client.patch(location, content=data[start : start + 1000], headers=OCTETS)
        assert r.status_code == 202, r.text
        assert_upload_headers(r, repo, start + 1000)
        location = r.headers["location"]
    r = registry.client.put(location, params={"digest": digest_of(data)})
    assert r.status_code == 201, r.text
    assert_blob(registry.client, repo, digest_of(data), data)


def _stream(data: bytes, piece: int = 700) -> Iterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


def test_streamed_patch_without_length_or_range_is_accepted(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(100_000)
    location = start_upload(registry.client, repo)
    request = registry.client.build_request("PATCH", location, content=_stream(data), headers=OCTETS)
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    r = registry.client.send(request)
    assert r.status_code == 202, r.text
    assert_upload_headers(r, repo, len(data))
    # a second stream continues where the first ended
    more = random_bytes(5000)
    r = registry.client.patch(r.headers["location"], content=_stream(more), headers=OCTETS)
    assert r.status_code == 202, r.text
    assert_upload_headers(r, repo, len(data) + len(more))
    digest = digest_of(data + more)
    r = registry.client.put(r.headers["location"], params={"digest": digest})
    assert r.status_code == 201, r.text
    assert_blob(registry.client, repo, digest, data + more)


def test_streamed_put_finishes_an_upload(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(20_000)
    location = start_upload(registry.client, repo)
    r = registry.client.put(location, params={"digest": digest_of(data)}, content=_stream(data))
    assert r.status_code == 201, r.text
    assert_blob(registry.client, repo, digest_of(data), data)


@pytest.mark.parametrize("start", [1, 999, 1001, 5000])
def test_out_of_order_chunk_is_416_and_the_upload_survives(registry: Registry, start: int) -> None:
    repo = unique_repo("up")
    data = random_bytes(2000)
    location = start_upload(registry.client, repo)
    r = chunk(registry.client, location, data[:1000], 0)
    assert r.status_code == 202
    location = r.headers["location"]
    r = chunk(registry.client, location, data[start : start + 100] or b"x" * 100, start)
    assert r.status_code == 416, r.text
    # the upload stands where it stood, and says so
    status = registry.client.get(location)
    assert status.status_code == 204
    assert status.headers["range"] == "0-999"
    r = chunk(registry.client, location, data[1000:], 1000)
    assert r.status_code == 202, r.text
    r = registry.client.put(r.headers["location"], params={"digest": digest_of(data)})
    assert r.status_code == 201, r.text
    assert_blob(registry.client, repo, digest_of(data), data)


def test_first_chunk_must_start_at_zero(registry: Registry) -> None:
    repo = unique_repo("up")
    location = start_upload(registry.client, repo)
    r = chunk(registry.client, location, b"abc", 10)
    assert r.status_code == 416


def test_416_tells_where_the_upload_stands(registry: Registry) -> None:
    repo = unique_repo("up")
    location = start_upload(registry.client, repo)
    r = chunk(registry.client, location, b"x" * 10, 0)
    r = chunk(registry.client, r.headers["location"], b"y" * 10, 20)
    assert r.status_code == 416
    assert_upload_headers(r, repo, 10)


@pytest.mark.parametrize("value", ["garbage", "10", "-5", "5-", "a-b", "5-3", "bytes 0-", "0-9/x"])
def test_malformed_content_range_is_rejected(registry: Registry, value: str) -> None:
    repo = unique_repo("up")
    location = start_upload(registry.client, repo)
    r = registry.client.patch(location, content=b"0123456789", headers={**OCTETS, "content-range": value})
    assert r.status_code in (400, 416), r.text
    if r.status_code == 400:
        assert_error(r, 400)
    assert registry.client.get(location).headers["range"] == "0-0"


def test_content_range_that_disagrees_with_the_body_is_rejected(registry: Registry) -> None:
    repo = unique_repo("up")
    location = start_upload(registry.client, repo)
    r = registry.client.patch(location, content=b"0123456789", headers={**OCTETS, "content-range": "0-19"})
    assert r.status_code in (400, 416), r.text
    if r.status_code == 400:
        assert_error(r, 400, "SIZE_INVALID")
    status = registry.client.get(location)
    assert status.status_code == 204 and status.headers["range"] == "0-0"
    # nothing of the refused chunk remains
    data = random_bytes(30)
    r = chunk(registry.client, location, data, 0)
    assert r.status_code == 202
    r = registry.client.put(r.headers["location"], params={"digest": digest_of(data)})
    assert r.status_code == 201, r.text


def test_put_with_a_final_chunk_out_of_order_is_416(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(200)
    location = start_upload(registry.client, repo)
    r = chunk(registry.client, location, data[:100], 0)
    r = registry.client.put(
        r.headers["location"],
        params={"digest": digest_of(data)},
        content=data[100:],
        headers={**OCTETS, "content-range": "150-249"},
    )
    assert r.status_code == 416, r.text
    assert_error(registry.client.head(f"/v2/{repo}/blobs/{digest_of(data)}"), 404)


# -- finishing -----------------------------------------------------------------------------------


def test_put_with_a_wrong_digest_is_400_and_the_blob_is_not_visible(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(1000)
    location = start_upload(registry.client, repo)
    r = chunk(registry.client, location, data, 0)
    wrong = digest_of(data + b"!")
    r = registry.client.put(r.headers["location"], params={"digest": wrong})
    assert_error(r, 400, "DIGEST_INVALID")
    for digest in (wrong, digest_of(data)):
        assert_error(registry.client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_put_with_a_wrong_digest_of_the_other_algorithm(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(100)
    location = start_upload(registry.client, repo)
    wrong = "sha512:" + hashlib.sha512(b"other").hexdigest()
    r = registry.client.put(location, params={"digest": wrong}, content=data)
    assert_error(r, 400, "DIGEST_INVALID")
    assert_error(registry.client.head(f"/v2/{repo}/blobs/{wrong}"), 404)


def test_put_without_digest_is_400(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(100)
    location = start_upload(registry.client, repo)
    r = registry.client.put(location, content=data)
    assert_error(r, 400)
    assert_error(registry.client.head(f"/v2/{repo}/blobs/{digest_of(data)}"), 404)


@pytest.mark.parametrize("digest", ["sha256:abc", "nope", "", "sha256:" + "A" * 64])
def test_put_with_a_malformed_digest_is_400_digest_invalid(registry: Registry, digest: str) -> None:
    repo = unique_repo("up")
    location = start_upload(registry.client, repo)
    r = registry.client.put(location, params={"digest": digest}, content=b"abc")
    assert_error(r, 400, "DIGEST_INVALID")


def test_completed_upload_is_gone(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(10)
    location = start_upload(registry.client, repo)
    assert registry.client.put(location, params={"digest": digest_of(data)}, content=data).status_code == 201
    assert_error(registry.client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(chunk(registry.client, location, b"more", 10), 404, "BLOB_UPLOAD_UNKNOWN")
    r = registry.client.put(location, params={"digest": digest_of(data)}, content=data)
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


# -- status and cancel ---------------------------------------------------------------------------


def test_get_upload_status_is_204_with_range(registry: Registry) -> None:
    repo = unique_repo("up")
    location = start_upload(registry.client, repo)
    r = registry.client.get(location)
    assert r.status_code == 204
    assert_upload_headers(r, repo, 0)
    assert r.content == b""
    chunk(registry.client, location, b"x" * 123, 0)
    r = registry.client.get(location)
    assert r.status_code == 204
    assert_upload_headers(r, repo, 123)


def test_delete_cancels_an_upload(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(100)
    location = start_upload(registry.client, repo)
    chunk(registry.client, location, data, 0)
    r = registry.client.delete(location)
    assert r.status_code == 204, r.text
    assert_error(registry.client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(chunk(registry.client, location, data, 100), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(
        registry.client.put(location, params={"digest": digest_of(data)}), 404, "BLOB_UPLOAD_UNKNOWN"
    )
    assert_error(registry.client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(registry.client.head(f"/v2/{repo}/blobs/{digest_of(data)}"), 404)


@pytest.mark.parametrize(
    "upload_id",
    [
        uuid.uuid4().hex,
        str(uuid.uuid4()),
        "garbage",
        "0" * 32,
        "A" * 32,
        "a" * 1000,
        "%2e%2e",
        "x;y",
        "%00",
    ],
)
def test_unknown_upload_is_404_blob_upload_unknown(registry: Registry, upload_id: str) -> None:
    repo = unique_repo("up")
    path = f"/v2/{repo}/blobs/uploads/{upload_id}"
    digest = digest_of(b"abc")
    assert_error(registry.client.get(path), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(registry.client.patch(path, content=b"abc", headers={"content-range": "0-2"}), 404)
    assert_error(registry.client.patch(path, content=b"abc"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(
        registry.client.put(path, params={"digest": digest}, content=b"abc"), 404, "BLOB_UPLOAD_UNKNOWN"
    )
    assert_error(registry.client.delete(path), 404, "BLOB_UPLOAD_UNKNOWN")


def test_an_upload_belongs_to_its_repository(registry: Registry) -> None:
    repo, other = unique_repo("up"), unique_repo("up")
    data = random_bytes(100)
    location = start_upload(registry.client, repo)
    session = upload_path(location).rsplit("/", 1)[1]
    foreign = f"/v2/{other}/blobs/uploads/{session}"
    assert_error(registry.client.get(foreign), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(chunk(registry.client, foreign, data, 0), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(registry.client.put(foreign, params={"digest": digest_of(data)}, content=data), 404)
    assert_error(registry.client.delete(foreign), 404, "BLOB_UPLOAD_UNKNOWN")
    # untouched under its own name
    r = registry.client.get(location)
    assert r.status_code == 204 and r.headers["range"] == "0-0"
    assert registry.client.put(location, params={"digest": digest_of(data)}, content=data).status_code == 201
    assert_error(registry.client.head(f"/v2/{other}/blobs/{digest_of(data)}"), 404)


def test_uploads_collection_rejects_other_methods(registry: Registry) -> None:
    repo = unique_repo("up")
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        assert_error(registry.client.request(method, f"/v2/{repo}/blobs/uploads/"), 405, "UNSUPPORTED")
    location = start_upload(registry.client, repo)
    assert_error(registry.client.post(location), 405, "UNSUPPORTED")


# -- sizes ---------------------------------------------------------------------------------------


def test_empty_blob_in_every_way(registry: Registry) -> None:
    repo = unique_repo("up")
    # POST then PUT with no body
    location = start_upload(registry.client, repo)
    r = registry.client.put(location, params={"digest": EMPTY_DIGEST})
    assert r.status_code == 201, r.text
    assert_blob(registry.client, repo, EMPTY_DIGEST, b"")
    # single POST
    other = unique_repo("up")
    r = registry.client.post(f"/v2/{other}/blobs/uploads/", params={"digest": EMPTY_DIGEST}, content=b"")
    assert r.status_code == 201, r.text
    assert_blob(registry.client, other, EMPTY_DIGEST, b"")
    # sha512 of nothing
    digest = push_blob(registry.client, unique_repo("up"), b"", "sha512")
    assert digest == "sha512:" + hashlib.sha512(b"").hexdigest()


def test_wrong_digest_for_the_empty_upload(registry: Registry) -> None:
    repo = unique_repo("up")
    location = start_upload(registry.client, repo)
    r = registry.client.put(location, params={"digest": digest_of(b"x")})
    assert_error(r, 400, "DIGEST_INVALID")


def test_large_blob_in_three_chunks_round_trips(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(20 * 1024 * 1024 + 7)
    digest = push_blob_chunked(registry.client, repo, data, chunks=3)
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(data))
    assert hashlib.sha256(r.content).hexdigest() == digest.split(":", 1)[1]
    assert r.content == data
    r = registry.client.get(f"/v2/{repo}/blobs/{digest}", headers={"range": "bytes=10485000-10486000"})
    assert r.status_code == 206 and r.content == data[10485000:10486001]


def test_large_sha512_blob_in_chunks(registry: Registry) -> None:
    repo = unique_repo("up")
    data = random_bytes(3 * 1024 * 1024 + 1)
    digest = push_blob_chunked(registry.client, repo, data, chunks=4, algorithm="sha512")
    assert_blob(registry.client, repo, digest, data)


def test_location_is_a_relative_or_absolute_url(registry: Registry) -> None:
    repo = unique_repo("up")
    location = start_upload(registry.client, repo)
    assert re.match(r"^(https?://[^/]+)?/v2/", location), location
