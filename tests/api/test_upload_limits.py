"""max_blob_bytes against a real `shipyard serve`: refused on the declared length before any byte is read,
and while streaming when no length is declared; 413 SIZE_INVALID; nothing half-written stays; a chunked
upload stays usable at the offset it had before the refused request."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import assert_error, digest_of, random_bytes, start_upload, unique_repo
from tests.support.server import ServerProcess, start_server

LIMIT = 1024 * 1024
OCTETS = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("limits") / "data"
    process = start_server(data_dir, extra_env={"SHIPYARD_MAX_BLOB_BYTES": str(LIMIT)})
    yield process
    process.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _staged(server: ServerProcess) -> list[Path]:
    return sorted((server.data_dir / "uploads").iterdir())


def _stream(data: bytes, piece: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


def _refused(r: httpx.Response) -> None:
    body = assert_error(r, 413, "SIZE_INVALID")
    assert str(LIMIT) in body["errors"][0]["detail"], body
    assert r.headers.get("connection") == "close", r.headers


def _assert_absent(client: httpx.Client, repo: str, data: bytes) -> None:
    assert client.head(f"/v2/{repo}/blobs/{digest_of(data)}").status_code == 404


def test_a_blob_of_exactly_the_limit_is_accepted(client: httpx.Client) -> None:
    repo, data = unique_repo(), random_bytes(LIMIT)
    r = client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(data)}, content=data, headers=OCTETS
    )
    assert r.status_code == 201, r.text
    assert client.head(f"/v2/{repo}/blobs/{digest_of(data)}").headers["content-length"] == str(LIMIT)


def test_monolithic_post_over_the_limit_is_413_and_leaves_no_session(
    server: ServerProcess, client: httpx.Client
) -> None:
    repo, data = unique_repo(), random_bytes(LIMIT + 1)
    before = _staged(server)
    r = client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(data)}, content=data, headers=OCTETS
    )
    _refused(r)
    _assert_absent(client, repo, data)
    assert _staged(server) == before


def test_streamed_monolithic_post_over_the_limit_is_413_and_leaves_no_session(
    server: ServerProcess, client: httpx.Client
) -> None:
    repo, data = unique_repo(), random_bytes(3 * LIMIT)
    before = _staged(server)
    r = client.post(
        f"/v2/{repo}/blobs/uploads/",
        params={"digest": digest_of(data)},
        content=_stream(data),
        headers=OCTETS,
    )
    _refused(r)
    _assert_absent(client, repo, data)
    assert _staged(server) == before


def test_patch_declaring_more_than_the_room_left_is_413_and_the_upload_stays_usable(
    client: httpx.Client,
) -> None:
    repo, data = unique_repo(), random_bytes(LIMIT)
    location = start_upload(client, repo)
    half = LIMIT // 2
    r = client.patch(location, content=data[:half], headers={**OCTETS, "content-range": f"0-{half - 1}"})
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    too_much = random_bytes(half + 1)
    r = client.patch(location, content=too_much, headers={**OCTETS, "content-range": f"{half}-{LIMIT}"})
    _refused(r)
    status = client.get(location)
    assert status.status_code == 204 and status.headers["range"] == f"0-{half - 1}"
    r = client.put(location, params={"digest": digest_of(data)}, content=data[half:], headers=OCTETS)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_a_streamed_chunk_that_grows_past_the_limit_is_413_and_rolled_back(
    client: httpx.Client, method: str
) -> None:
    repo, data = unique_repo(), random_bytes(LIMIT)
    location = start_upload(client, repo)
    r = client.patch(location, content=data[:1000], headers=OCTETS)
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    too_much = random_bytes(2 * LIMIT)
    params = {"digest": digest_of(data[:1000] + too_much)} if method == "PUT" else None
    r = client.request(method, location, params=params, content=_stream(too_much), headers=OCTETS)
    _refused(r)
    _assert_absent(client, repo, data[:1000] + too_much)
    status = client.get(location)
    assert status.status_code == 204 and status.headers["range"] == "0-999"
    r = client.put(location, params={"digest": digest_of(data)}, content=_stream(data[1000:]), headers=OCTETS)
    assert r.status_code == 201, r.text


def test_a_huge_declared_length_is_refused_before_any_body_arrives(server: ServerProcess) -> None:
    """A PUT declaring 10 GiB and sending nothing is answered at once, and the connection closes."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        location = start_upload(client, unique_repo())
    head = (
        f"PUT {location}?digest={digest_of(b'x')} HTTP/1.1\r\nHost: {server.address}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {10 * 1024**3}\r\n\r\n"
    ).encode()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        elapsed = time.monotonic() - started
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), received
    assert b"SIZE_INVALID" in rest
    assert elapsed < 5, elapsed  # the server closed the connection (after a short linger), it did not wait
