"""A client that goes away in the middle of a request body: nothing of that body may stay behind.

Each test opens a raw socket, declares a large Content-Length, sends part of the body (waiting until the
server has demonstrably written some of it to the staging file), then closes the connection, with a FIN or
with an RST. Afterwards the blob is not visible, an upload reports the Range it had before the broken
request, it can be continued and completed with the right digest, and the store is consistent.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from shipyard.services.ingest import WRITE_BATCH
from shipyard.storage.direct import DIRECT_CHUNK
from tests.faults.conftest import (
    FaultRegistry,
    MiB,
    RawRequest,
    assert_blob,
    assert_no_blob,
    finish,
    patch_chunk,
    path_of,
    payload,
    push_blob,
    range_header,
    sha256,
    staged_size,
    start_session,
    upload_range,
    wait_for,
)
from tests.support.consistency import check_store, staged_uploads, upload_sessions

FIRST_CHUNK = 1 * MiB
# more than the server can hold before bytes reach the staged file (a batch on its way to the writer
# thread and one direct-write buffer), and less than declared
SENT_OF_BROKEN = WRITE_BATCH + DIRECT_CHUNK + 512 * 1024
BROKEN_CHUNK = SENT_OF_BROKEN + 2 * MiB
MONOLITHIC = SENT_OF_BROKEN + 4 * MiB

CLOSES = ["fin", "rst"]
_names = itertools.count()


def repository(kind: str) -> str:
    return f"faults/disconnect/{kind}-{next(_names)}"


def assert_clean(registry: FaultRegistry) -> None:
    assert check_store(registry.data_dir, registry.database_url) == []
    log = registry.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-4000:]


@pytest.mark.parametrize("close", CLOSES)
def test_monolithic_post_cut_short(running_registry: FaultRegistry, close: str) -> None:
    """POST ?digest= with the whole blob as the body, cut short after SENT_OF_BROKEN bytes."""
    registry, client = running_registry, running_registry.http
    name = repository("monolithic")
    data = payload(name, MONOLITHIC)
    digest = sha256(data)
    before = set(staged_uploads(registry.data_dir))
    sessions_before = set(upload_sessions(registry.database_url))

    with RawRequest(
        registry.address,
        "POST",
        f"/v2/{name}/blobs/uploads/?digest={digest}",
        {"content-type": "application/octet-stream", "content-length": str(len(data))},
    ) as raw:
        raw.send(data[:SENT_OF_BROKEN])

        def writing() -> bool:
            new = set(staged_uploads(registry.data_dir)) - before
            return any(staged_size(registry, upload_id) >= MiB for upload_id in new)

        wait_for(writing, what="the server to stage the first MiB of the body")
        raw.close(reset=close == "rst")
    registry.wait_went_away("POST", f"/v2/{name}/blobs/uploads/")

    # the broken upload is discarded entirely: no staged file, no session, no blob
    wait_for(
        lambda: set(staged_uploads(registry.data_dir)) <= before,
        what="the server to discard the staged bytes of the broken POST",
    )
    assert set(upload_sessions(registry.database_url)) <= sessions_before
    assert_no_blob(client, name, digest)
    assert_clean(registry)

    # and the same push, whole, works afterwards
    response = client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, response.text
    assert_blob(client, name, data)
    assert_clean(registry)


@pytest.mark.parametrize("close", CLOSES)
@pytest.mark.parametrize(
    ("method", "with_range"),
    [("PATCH", True), ("PATCH", False), ("PUT", True)],
    ids=["patch-content-range", "patch-streamed", "put-final-chunk"],
)
def test_chunk_cut_short_is_rolled_back(
    running_registry: FaultRegistry, method: str, with_range: bool, close: str
) -> None:
    """A second chunk (PATCH, or the finishing PUT with a body) cut short after SENT_OF_BROKEN bytes."""
    registry, client = running_registry, running_registry.http
    name = repository(f"{method.lower()}-{'range' if with_range else 'stream'}")
    data = payload(name, FIRST_CHUNK + BROKEN_CHUNK)
    digest = sha256(data)

    location = start_session(client, name)
    upload_id = location.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    location = patch_chunk(client, location, 0, data[:FIRST_CHUNK])
    assert upload_range(client, location) == range_header(FIRST_CHUNK)

    headers = {"content-type": "application/octet-stream", "content-length": str(BROKEN_CHUNK)}
    if with_range:
        headers["content-range"] = f"{FIRST_CHUNK}-{FIRST_CHUNK + BROKEN_CHUNK - 1}"
    target = location if method == "PATCH" else f"{location}{'&' if '?' in location else '?'}digest={digest}"
    with RawRequest(registry.address, method, target, headers) as raw:
        raw.send(data[FIRST_CHUNK : FIRST_CHUNK + SENT_OF_BROKEN])
        wait_for(
            lambda: staged_size(registry, upload_id) > FIRST_CHUNK,
            what="the server to stage part of the broken chunk",
        )
        raw.close(reset=close == "rst")
    registry.wait_went_away(method, target)

    # the partial chunk is rolled back: the staged file shrinks back to the first chunk
    assert staged_size(registry, upload_id) == FIRST_CHUNK
    assert upload_range(client, location) == range_header(FIRST_CHUNK)
    assert upload_sessions(registry.database_url)[upload_id] == FIRST_CHUNK
    assert_no_blob(client, name, digest)
    assert_clean(registry)

    # the upload continues where it stood and completes with the right digest
    location = patch_chunk(client, location, FIRST_CHUNK, data[FIRST_CHUNK:])
    assert upload_range(client, location) == range_header(len(data))
    response = finish(client, location, digest)
    assert response.status_code == 201, response.text
    assert response.headers["docker-content-digest"] == digest
    assert_blob(client, name, data)
    assert upload_id not in staged_uploads(registry.data_dir)
    assert upload_id not in upload_sessions(registry.database_url)
    assert_clean(registry)


@pytest.mark.parametrize("close", CLOSES)
def test_cut_before_any_body_byte(running_registry: FaultRegistry, close: str) -> None:
    """Headers of a 4 MiB PATCH, then nothing: the upload stands where it was."""
    registry, client = running_registry, running_registry.http
    name = repository("no-body")
    data = payload(name, FIRST_CHUNK + BROKEN_CHUNK)
    location = start_session(client, name)
    location = patch_chunk(client, location, 0, data[:FIRST_CHUNK])
    headers = {
        "content-type": "application/octet-stream",
        "content-length": str(BROKEN_CHUNK),
        "content-range": f"{FIRST_CHUNK}-{FIRST_CHUNK + BROKEN_CHUNK - 1}",
    }
    with RawRequest(registry.address, "PATCH", location, headers) as raw:
        raw.close(reset=close == "rst")
    registry.wait_went_away("PATCH", location)
    assert upload_range(client, location) == range_header(FIRST_CHUNK)
    location = patch_chunk(client, location, FIRST_CHUNK, data[FIRST_CHUNK:])
    response = finish(client, location, sha256(data))
    assert response.status_code == 201, response.text
    assert_blob(client, name, data)
    assert_clean(registry)


# -- a request abandoned while the client goes on with the same upload on another connection ---------------
#
# A client whose request stalls (a dead network path, a proxy holding the connection) times out and retries
# the chunk on a new connection, while the server still holds the first request open. These tests run on
# one SQLite server of their own: the store they leave behind, when the registry is wrong, is corrupt, and
# the behaviour under test is the filesystem store's, whatever the database.


@pytest.fixture(scope="module")
def solo_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultRegistry]:
    data_dir = tmp_path_factory.mktemp("faults-solo") / "data"
    data_dir.mkdir()
    registry = FaultRegistry(data_dir, f"sqlite:///{data_dir / 'shipyard.db'}")
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.mark.parametrize(
    ("acknowledged", "complete_before_close"),
    [(0, True), (FIRST_CHUNK, False)],
    ids=["first-chunk-completed-then-closed", "second-chunk-closed-then-completed"],
)
def test_abandoned_request_leaves_the_retry_alone(
    solo_registry: FaultRegistry, acknowledged: int, complete_before_close: bool
) -> None:
    """The retry may be accepted at once, or refused (4xx) while the stalled request holds the upload;
    either way, once the stalled connection is gone, what was acknowledged is whole."""
    registry, client = solo_registry, solo_registry.http
    name = repository("abandoned")
    data = payload(name, acknowledged + BROKEN_CHUNK)
    digest = sha256(data)
    location = start_session(client, name)
    upload_id = location.rsplit("/", 1)[-1]
    if acknowledged:
        location = patch_chunk(client, location, 0, data[:acknowledged])
    headers = {
        "content-type": "application/octet-stream",
        "content-length": str(BROKEN_CHUNK),
        "content-range": f"{acknowledged}-{len(data) - 1}",
    }
    completed = False
    with RawRequest(registry.address, "PATCH", location, headers) as stalled:
        stalled.send(data[acknowledged : acknowledged + SENT_OF_BROKEN])
        wait_for(lambda: staged_size(registry, upload_id) >= acknowledged + MiB, what="the stalled chunk")
        # the client gives up on the stalled request and sends the chunk again, on a new connection
        retry = client.patch(
            location, content=data[acknowledged:], headers={"content-range": headers["content-range"]}
        )
        accepted = retry.status_code == 202
        if accepted:
            location = path_of(retry.headers["location"])
            assert upload_range(client, location) == range_header(len(data))
            if complete_before_close:
                response = finish(client, location, digest)
                assert response.status_code == 201, response.text
                assert_blob(client, name, data)
                completed = True
        else:
            assert 400 <= retry.status_code < 500 and retry.status_code != 404, retry.text
        stalled.close()
    registry.wait_went_away("PATCH", location)
    if not accepted:  # refused while the stalled request held the upload: retry now
        location = patch_chunk(client, location, acknowledged, data[acknowledged:])
    if not completed:
        assert upload_range(client, location) == range_header(len(data))
        assert check_store(registry.data_dir, registry.database_url) == []
        response = finish(client, location, digest)
        assert response.status_code == 201, response.text
    # what was acknowledged stays: the blob is whole
    assert_blob(client, name, data)
    assert check_store(registry.data_dir, registry.database_url) == []


def test_overlapping_chunk_cannot_corrupt_a_blob(solo_registry: FaultRegistry) -> None:
    """Two requests send different bytes for the same range of one upload. Whichever the registry
    acknowledges is what the upload holds, and a blob is only ever stored under the digest of its content."""
    registry, client = solo_registry, solo_registry.http
    name = repository("overlap")
    ours, theirs = payload(f"{name}/ours", BROKEN_CHUNK), payload(f"{name}/theirs", BROKEN_CHUNK)
    location = start_session(client, name)
    upload_id = location.rsplit("/", 1)[-1]
    content_range = f"0-{BROKEN_CHUNK - 1}"
    headers = {
        "content-type": "application/octet-stream",
        "content-length": str(BROKEN_CHUNK),
        "content-range": content_range,
    }
    with RawRequest(registry.address, "PATCH", location, headers) as slow:
        slow.send(theirs[:SENT_OF_BROKEN])
        wait_for(lambda: staged_size(registry, upload_id) >= MiB, what="the slow chunk to be staged")
        fast = client.patch(location, content=ours, headers={"content-range": content_range})
        slow.send(theirs[SENT_OF_BROKEN:])
        slow_status, _, _ = slow.response()
    statuses = (fast.status_code, slow_status)
    assert sorted(statuses)[0] == 202 and sorted(statuses)[1] != 202, f"exactly one may win: {statuses}"
    winner = ours if fast.status_code == 202 else theirs
    response = finish(client, location, sha256(winner))
    if response.status_code == 201:
        assert_blob(client, name, winner)
    else:  # refusing the upload is acceptable; storing the wrong bytes is not
        assert_no_blob(client, name, sha256(winner))
    assert check_store(registry.data_dir, registry.database_url) == []
    # someone else pushing the same content honestly must get it back, deduplicated or not
    victim = repository("victim")
    for content in (ours, theirs):
        assert push_blob(client, victim, content) == sha256(content)
        assert_blob(client, victim, content)
