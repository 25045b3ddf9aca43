"""RegistryService upload logic: the in-process hash cache, completion, purging."""

from __future__ import annotations

import hashlib
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from shipyard.db.metadata import MetadataStore
from shipyard.db.models import UploadSession
from shipyard.domain.errors import BlobUploadUnknown, DigestInvalid, RangeInvalid, SizeInvalid
from shipyard.services.access import SYSTEM, Actor
from shipyard.services.registry import RegistryService
from shipyard.storage import memory
from shipyard.storage.memory import MemoryBlobStore

REPO = "team/app"
# the caller of these tests, as a token granting every action on their repositories carries it
ACTOR = Actor.granted("tester", [("repository", name, ["*"]) for name in (REPO, "team/other")])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


class ReadCounter:
    """Counts how often the service re-reads staged bytes to hash them."""

    def __init__(self, store: MemoryBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        real = store.read_upload

        def read_upload(upload_id: str) -> Iterator[bytes]:
            self.reads += 1
            return real(upload_id)

        monkeypatch.setattr(store, "read_upload", read_upload)


def append(service: RegistryService, upload_id: str, data: bytes) -> int:
    appender = service.begin_append(ACTOR, REPO, upload_id, length=len(data))
    for i in range(0, len(data), 1000):
        appender.write(data[i : i + 1000])
    return appender.finish().size


def assert_gone(service: RegistryService, upload_id: str) -> None:
    with pytest.raises(BlobUploadUnknown):
        service.upload_status(ACTOR, REPO, upload_id)
    assert list(service.blobs.uploads()) == []


# -- the hash cache ------------------------------------------------------------------------------


def test_the_process_that_received_the_bytes_does_not_read_them_again(
    service: RegistryService, store: MemoryBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = ReadCounter(store, monkeypatch)
    data = b"a" * 2500 + b"b" * 2500
    upload = service.start_upload(ACTOR, REPO)
    assert append(service, upload.id, data[:2500]) == 2500
    assert append(service, upload.id, data[2500:]) == 5000
    info = service.complete_upload(ACTOR, REPO, upload.id, sha256(data))
    assert (info.digest, info.size) == (sha256(data), 5000)
    assert counter.reads == 0
    assert service.stat_blob(ACTOR, REPO, sha256(data)).size == 5000
    assert b"".join(service.read_blob(ACTOR, REPO, sha256(data))) == data
    assert_gone(service, upload.id)


def test_another_process_continuing_an_upload_hashes_the_staged_bytes(
    service: RegistryService, metadata: MetadataStore, store: MemoryBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = RegistryService(metadata, store)  # a second worker process: same database and store
    counter = ReadCounter(store, monkeypatch)
    upload = service.start_upload(ACTOR, REPO)
    append(service, upload.id, b"first chunk ")
    append(other, upload.id, b"second chunk")
    info = other.complete_upload(ACTOR, REPO, upload.id, sha256(b"first chunk second chunk"))
    assert info.size == 24
    assert counter.reads == 1
    assert (
        b"".join(service.read_blob(ACTOR, REPO, sha256(b"first chunk second chunk")))
        == b"first chunk second chunk"
    )
    assert_gone(service, upload.id)


def test_a_process_whose_cached_hash_fell_behind_does_not_trust_it(
    service: RegistryService, metadata: MetadataStore, store: MemoryBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = RegistryService(metadata, store)
    counter = ReadCounter(store, monkeypatch)
    upload = service.start_upload(ACTOR, REPO)
    append(service, upload.id, b"one,")  # `service` caches the hash of 4 bytes
    append(other, upload.id, b"two,")
    append(service, upload.id, b"three")  # its cache is stale: it must not hash only "one,three"
    data = b"one,two,three"
    assert service.complete_upload(ACTOR, REPO, upload.id, sha256(data)).size == len(data)
    assert counter.reads == 1
    assert b"".join(service.read_blob(ACTOR, REPO, sha256(data))) == data


def test_completing_in_another_process_after_all_the_bytes(
    service: RegistryService, metadata: MetadataStore, store: MemoryBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = ReadCounter(store, monkeypatch)
    upload = service.start_upload(ACTOR, REPO)
    append(service, upload.id, b"all of it")
    RegistryService(metadata, store).complete_upload(ACTOR, REPO, upload.id, sha256(b"all of it"))
    assert counter.reads == 1
    assert service.stat_blob(ACTOR, REPO, sha256(b"all of it")).size == 9


def test_an_aborted_append_does_not_poison_the_cache(service: RegistryService) -> None:
    upload = service.start_upload(ACTOR, REPO)
    append(service, upload.id, b"kept ")
    appender = service.begin_append(ACTOR, REPO, upload.id)
    appender.write(b"dropped")
    appender.abort()
    assert service.upload_status(ACTOR, REPO, upload.id).size == 5
    append(service, upload.id, b"and more")
    assert service.complete_upload(ACTOR, REPO, upload.id, sha256(b"kept and more")).size == 13


def test_a_chunk_longer_than_declared_changes_nothing(service: RegistryService) -> None:
    upload = service.start_upload(ACTOR, REPO)
    appender = service.begin_append(ACTOR, REPO, upload.id, length=3)
    with pytest.raises(SizeInvalid):
        appender.write(b"four")
    appender.abort()
    appender = service.begin_append(ACTOR, REPO, upload.id, length=5)
    appender.write(b"four")
    with pytest.raises(SizeInvalid):
        appender.finish()
    assert service.upload_status(ACTOR, REPO, upload.id).size == 0
    assert b"".join(service.blobs.read_upload(upload.id)) == b""
    service.cancel_upload(ACTOR, REPO, upload.id)


def test_a_chunk_that_does_not_start_at_the_end_is_refused(service: RegistryService) -> None:
    upload = service.start_upload(ACTOR, REPO)
    append(service, upload.id, b"12345")
    with pytest.raises(RangeInvalid):
        service.begin_append(ACTOR, REPO, upload.id, start=3)
    appender = service.begin_append(ACTOR, REPO, upload.id, start=5)
    appender.write(b"6")
    appender.finish()
    service.cancel_upload(ACTOR, REPO, upload.id)
    assert_gone(service, upload.id)


# -- completion ----------------------------------------------------------------------------------


def test_completing_under_sha512(service: RegistryService, store: MemoryBlobStore) -> None:
    data = b"hashed with sha512" * 100
    upload = service.start_upload(ACTOR, REPO)
    append(service, upload.id, data)
    info = service.complete_upload(ACTOR, REPO, upload.id, sha512(data))
    assert info.digest == sha512(data)
    assert service.stat_blob(ACTOR, REPO, sha512(data)).size == len(data)
    assert b"".join(service.read_blob(ACTOR, REPO, sha512(data))) == data
    assert [str(d) for d in store.digests()] == [sha512(data)]
    assert_gone(service, upload.id)


def test_completing_an_empty_upload(service: RegistryService) -> None:
    upload = service.start_upload(ACTOR, REPO)
    assert service.complete_upload(ACTOR, REPO, upload.id, sha256(b"")).size == 0
    assert service.stat_blob(ACTOR, REPO, sha256(b"")).size == 0


@pytest.mark.parametrize("same_process", [True, False])
def test_a_digest_mismatch_leaves_nothing_visible(
    same_process: bool, service: RegistryService, metadata: MetadataStore, store: MemoryBlobStore
) -> None:
    upload = service.start_upload(ACTOR, REPO)
    append(service, upload.id, b"actual content")
    completer = service if same_process else RegistryService(metadata, store)
    claimed = sha256(b"claimed content")
    with pytest.raises(DigestInvalid):
        completer.complete_upload(ACTOR, REPO, upload.id, claimed)
    assert list(store.digests()) == []
    for digest in (claimed, sha256(b"actual content")):
        assert metadata.blob_size(digest) is None
        assert metadata.linked_blob_size(REPO, digest) is None
    assert_gone(service, upload.id)
    assert metadata.upload_ids() == set()
    assert not metadata.repository_exists(REPO)


def test_an_upload_belongs_to_its_repository(service: RegistryService) -> None:
    upload = service.start_upload(ACTOR, REPO)
    with pytest.raises(BlobUploadUnknown):
        service.upload_status(ACTOR, "team/other", upload.id)
    with pytest.raises(BlobUploadUnknown):
        service.complete_upload(ACTOR, "team/other", upload.id, sha256(b""))
    with pytest.raises(BlobUploadUnknown):
        service.upload_status(ACTOR, REPO, "../" + upload.id[3:])
    service.cancel_upload(ACTOR, REPO, upload.id)
    assert_gone(service, upload.id)


def test_two_uploads_of_one_content_keep_one_blob(service: RegistryService, store: MemoryBlobStore) -> None:
    for repository in (REPO, "team/other"):
        upload = service.start_upload(ACTOR, repository)
        appender = service.begin_append(ACTOR, repository, upload.id)
        appender.write(b"shared layer")
        appender.finish()
        service.complete_upload(ACTOR, repository, upload.id, sha256(b"shared layer"))
    assert len(list(store.digests())) == 1
    assert service.stat_blob(ACTOR, "team/other", sha256(b"shared layer")).size == 12


def test_overlapping_appends_cannot_store_a_blob_under_a_wrong_digest(
    service: RegistryService, store: MemoryBlobStore
) -> None:
    upload = service.start_upload(ACTOR, REPO)
    winner = service.begin_append(ACTOR, REPO, upload.id)
    with pytest.raises(RangeInvalid):  # e.g. a client's retry while the first is in flight
        service.begin_append(ACTOR, REPO, upload.id)
    winner.write(b"AAAA")
    with pytest.raises(RangeInvalid):  # nor may the upload be completed under a writer
        service.complete_upload(ACTOR, REPO, upload.id, sha256(b"AAAA"))
    winner.finish()
    service.complete_upload(ACTOR, REPO, upload.id, sha256(b"AAAA"))
    assert b"".join(service.read_blob(ACTOR, REPO, sha256(b"AAAA"))) == b"AAAA"


# -- purging -------------------------------------------------------------------------------------


def backdate(metadata: MetadataStore, upload_id: str, age: timedelta) -> None:
    with metadata.engine.begin() as conn:
        conn.execute(
            update(UploadSession)
            .where(UploadSession.id == upload_id)
            .values(updated_at=datetime.now(UTC) - age)
        )


def test_purge_removes_stale_uploads_only(
    service: RegistryService, metadata: MetadataStore, store: MemoryBlobStore
) -> None:
    stale, fresh = service.start_upload(ACTOR, REPO), service.start_upload(ACTOR, REPO)
    append(service, stale.id, b"abandoned")
    append(service, fresh.id, b"in progress")
    backdate(metadata, stale.id, timedelta(hours=2))
    assert service.purge_uploads(SYSTEM, timedelta(hours=1)) == 1
    assert metadata.upload_ids() == {fresh.id}
    assert [upload_id for upload_id, _ in store.uploads()] == [fresh.id]
    with pytest.raises(BlobUploadUnknown):
        service.begin_append(ACTOR, REPO, stale.id)
    assert service.purge_uploads(SYSTEM, timedelta(hours=1)) == 0
    # the fresh one carries on
    append(service, fresh.id, b"!")
    service.complete_upload(ACTOR, REPO, fresh.id, sha256(b"in progress!"))


def test_purge_removes_old_orphan_staged_data(
    service: RegistryService, metadata: MetadataStore, store: MemoryBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # staged data with no database row: a crash between the store and the database, for example
    old_orphan, new_orphan = "a" * 32, "b" * 32
    with monkeypatch.context() as patched:
        patched.setattr(memory, "time", types.SimpleNamespace(time=lambda: 1_000_000.0))
        store.create_upload(old_orphan)
    store.create_upload(new_orphan)  # perhaps an upload whose row is being written right now
    upload = service.start_upload(ACTOR, REPO)
    assert service.purge_uploads(SYSTEM, timedelta(hours=1)) == 1
    assert {upload_id for upload_id, _ in store.uploads()} == {new_orphan, upload.id}
    assert metadata.upload_ids() == {upload.id}
    store.cancel_upload(new_orphan)


def test_purge_with_no_uploads(service: RegistryService) -> None:
    assert service.purge_uploads(SYSTEM, timedelta(0)) == 0


# -- one writer at a time ------------------------------------------------------------------------


def test_a_request_that_read_a_stale_offset_is_refused_after_taking_the_upload(
    service: RegistryService, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = service.start_upload(ACTOR, REPO)
    stale = service.upload_status(ACTOR, REPO, upload.id)
    append(service, upload.id, b"first chunk")  # another request, between the read and the lock
    monkeypatch.setattr(service, "_upload_state", lambda repository, upload_id: stale)
    monkeypatch.setattr(service, "_remembered_state", lambda repository, upload_id: None)
    with pytest.raises(RangeInvalid):
        service.begin_append(ACTOR, REPO, upload.id)
    monkeypatch.undo()
    # the refused request destroyed nothing, and let go of the upload
    assert b"".join(service.blobs.read_upload(upload.id)) == b"first chunk"
    append(service, upload.id, b", second")
    assert service.complete_upload(ACTOR, REPO, upload.id, sha256(b"first chunk, second")).size == 19


def test_bytes_a_dead_request_left_past_the_offset_do_not_block_the_upload(
    service: RegistryService, store: MemoryBlobStore
) -> None:
    upload = service.start_upload(ACTOR, REPO)
    append(service, upload.id, b"kept")
    leftover = store.open_upload(upload.id, 4)  # wrote, then died before the database moved
    leftover.write(b" garbage")
    leftover.commit()
    append(service, upload.id, b" and more")
    assert b"".join(service.blobs.read_upload(upload.id)) == b"kept and more"
    assert service.complete_upload(ACTOR, REPO, upload.id, sha256(b"kept and more")).size == 13


def test_an_append_refused_by_the_database_leaves_no_bytes(
    service: RegistryService, metadata: MetadataStore
) -> None:
    upload = service.start_upload(ACTOR, REPO)
    appender = service.begin_append(ACTOR, REPO, upload.id)
    appender.write(b"lost")
    assert metadata.advance_upload(upload.id, 0, 0)  # as if the database had moved under us
    metadata.advance_upload(upload.id, 0, 7)
    with pytest.raises(RangeInvalid):
        appender.finish()
    assert b"".join(service.blobs.read_upload(upload.id)) == b""


def test_completing_with_the_state_of_the_own_append_reads_nothing_again(
    service: RegistryService, metadata: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = service.start_upload(ACTOR, REPO)
    appender = service.begin_append(ACTOR, REPO, upload.id)
    appender.write(b"whole blob")
    state = appender.finish()
    monkeypatch.setattr(metadata, "get_upload", lambda upload_id: pytest.fail("read again"))
    assert service.complete_upload(ACTOR, REPO, upload.id, sha256(b"whole blob"), state).size == 10
    monkeypatch.undo()
    assert_gone(service, upload.id)
    assert service.stat_blob(ACTOR, REPO, sha256(b"whole blob")).size == 10


# -- where this process left an upload -----------------------------------------------------------


def test_the_process_that_left_an_upload_does_not_ask_the_database_where_it_stands(
    service: RegistryService, metadata: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = service.start_upload(ACTOR, REPO)
    monkeypatch.setattr(metadata, "get_upload", lambda upload_id: pytest.fail("asked the database"))
    append(service, upload.id, b"first, ")
    appender = service.begin_append(ACTOR, REPO, upload.id, start=7)
    appender.write(b"second")
    appender.finish()
    assert service.complete_upload(ACTOR, REPO, upload.id, sha256(b"first, second")).size == 13
    monkeypatch.undo()
    assert_gone(service, upload.id)


def test_an_upload_another_process_moved_is_looked_up_again(
    service: RegistryService, metadata: MetadataStore, store: MemoryBlobStore
) -> None:
    other = RegistryService(metadata, store)
    upload = service.start_upload(ACTOR, REPO)
    append(service, upload.id, b"one,")  # `service` left it at 4 bytes
    append(other, upload.id, b"two,")
    with pytest.raises(RangeInvalid):  # the database says 8: a chunk from 4 is not where it stands
        service.begin_append(ACTOR, REPO, upload.id, start=4)
    appender = service.begin_append(ACTOR, REPO, upload.id, start=8)
    appender.write(b"three")
    assert appender.finish().size == 13
    append(other, upload.id, b"!")  # and `service` completes where `other` left it
    data = b"one,two,three!"
    assert service.complete_upload(ACTOR, REPO, upload.id, sha256(data)).size == len(data)
    assert b"".join(service.read_blob(ACTOR, REPO, sha256(data))) == data


def test_a_remembered_upload_belongs_to_its_repository(service: RegistryService) -> None:
    upload = service.start_upload(ACTOR, REPO)
    append(service, upload.id, b"data")
    with pytest.raises(BlobUploadUnknown):
        service.begin_append(ACTOR, "team/other", upload.id)
    with pytest.raises(BlobUploadUnknown):
        service.complete_upload(ACTOR, "team/other", upload.id, sha256(b"data"))
    assert service.complete_upload(ACTOR, REPO, upload.id, sha256(b"data")).size == 4


def test_a_cancelled_upload_is_forgotten(service: RegistryService) -> None:
    upload = service.start_upload(ACTOR, REPO)
    append(service, upload.id, b"data")
    service.cancel_upload(ACTOR, REPO, upload.id)
    with pytest.raises(BlobUploadUnknown):
        service.begin_append(ACTOR, REPO, upload.id)
    assert_gone(service, upload.id)
