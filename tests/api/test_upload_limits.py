"""Upload limits against a real `shipyard serve`.

max_blob_bytes: refused on the declared length before any byte is read, and while streaming when no
length is declared; 413 SIZE_INVALID; nothing half-written stays; a chunked upload stays usable at the
offset it had before the refused request. max_uploads_per_principal: 429 TOOMANYREQUESTS with
Retry-After past it; completing, cancelling and the purge free slots."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from shipyard.app import build
from shipyard.config import Settings
from shipyard.domain.errors import TooManyUploads
from shipyard.services.access import SYSTEM, Actor
from tests.api.helpers import assert_error, digest_of, random_bytes, start_upload, unique_repo
from tests.conftest import database_url
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


# -- upload sessions per principal --------------------------------------------------------------------

CAP = 3
ADMIN = ("admin", "upload-limits-admin-pw")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def auth_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp(f"sessions-{request.param}") / "data"
    env = {
        "SHIPYARD_ADMIN_PASSWORD": ADMIN[1],
        "SHIPYARD_MAX_UPLOADS_PER_PRINCIPAL": str(CAP),
        "SHIPYARD_DATABASE_URL": database_url(request.param, request, data_dir.parent),
    }
    process = start_server(data_dir, auth=True, extra_env=env)
    yield process
    process.stop()


def _pusher(server: ServerProcess, creds: tuple[str, str], repo: str) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=30) as api:
        r = api.get(
            "/token",
            params={"service": "shipyard", "scope": f"repository:{repo}:pull,push,delete"},
            auth=creds,
        )
        assert r.status_code == 200, r.text
        token = r.json()["token"]
    return httpx.Client(base_url=server.url, timeout=30, headers={"authorization": f"Bearer {token}"})


def _writer(server: ServerProcess) -> tuple[str, str]:
    """A writer of a fresh account: a principal with no sessions yet."""
    account = f"a{uuid.uuid4().hex[:10]}"
    with httpx.Client(base_url=server.url, timeout=30, auth=ADMIN) as api:
        assert api.post("/api/v1/accounts", json={"name": account}).status_code == 201
        r = api.post(f"/api/v1/accounts/{account}/users", json={"name": f"{account}-dev", "role": "writer"})
        assert r.status_code == 201, r.text
        return f"{account}-dev", r.json()["secret"]


def _refused_start(r: httpx.Response) -> None:
    body = assert_error(r, 429, "TOOMANYREQUESTS")
    assert r.headers["retry-after"] == "60"
    assert f"{CAP} upload sessions" in body["errors"][0]["detail"]


def test_a_principal_past_its_cap_gets_429_and_others_do_not(auth_server: ServerProcess) -> None:
    dev = _writer(auth_server)
    account = dev[0].removesuffix("-dev")
    repo = f"{account}/app"
    with _pusher(auth_server, dev, repo) as client:
        for _ in range(CAP):
            start_upload(client, repo)
        staged = _staged(auth_server)
        _refused_start(client.post(f"/v2/{repo}/blobs/uploads/", headers={"content-length": "0"}))
        data = b"monolithic"
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(data)}, content=data)
        _refused_start(r)
        assert _staged(auth_server) == staged  # a refused start stages nothing
    # the cap is per principal: the admin still starts one in the same repository
    with _pusher(auth_server, ADMIN, repo) as admin:
        admin.delete(start_upload(admin, repo))


def test_completing_or_cancelling_frees_a_slot(auth_server: ServerProcess) -> None:
    dev = _writer(auth_server)
    repo = f"{dev[0].removesuffix('-dev')}/app"
    with _pusher(auth_server, dev, repo) as client:
        locations = [start_upload(client, repo) for _ in range(CAP)]
        _refused_start(client.post(f"/v2/{repo}/blobs/uploads/", headers={"content-length": "0"}))
        assert client.delete(locations[0]).status_code == 204
        locations[0] = start_upload(client, repo)
        _refused_start(client.post(f"/v2/{repo}/blobs/uploads/", headers={"content-length": "0"}))
        data = b"a finished blob"
        r = client.put(locations[1], params={"digest": digest_of(data)}, content=data, headers=OCTETS)
        assert r.status_code == 201, r.text
        start_upload(client, repo)
        _refused_start(client.post(f"/v2/{repo}/blobs/uploads/", headers={"content-length": "0"}))
        # a monolithic upload takes a slot only while its body arrives
        for _ in range(2):
            assert client.delete(locations[2]).status_code in (204, 404)
            blob = uuid.uuid4().bytes
            r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, content=blob)
            assert r.status_code == 201, r.text


def test_the_purge_frees_the_slots_of_abandoned_sessions(tmp_path: Path) -> None:
    dev = Actor.granted("dev", [("repository", "acme/app", ["push"])])
    app = build(Settings(data_dir=tmp_path, max_uploads_per_principal=2), run_migrations=True)
    try:
        registry = app.registry
        for _ in range(2):
            registry.start_upload(dev, "acme/app", "dev")
        with pytest.raises(TooManyUploads):
            registry.start_upload(dev, "acme/app", "dev")
        assert registry.start_upload(dev, "acme/app", None).size == 0  # authentication off: no cap
        time.sleep(0.01)
        assert registry.purge_uploads(SYSTEM, timedelta(0)) == 3
        registry.start_upload(dev, "acme/app", "dev")
    finally:
        app.close()
