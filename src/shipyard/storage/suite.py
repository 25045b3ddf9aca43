"""The one test suite every BlobStore driver runs, so that the drivers keep one contract.

A driver's test file is three lines (plus imports):

    class TestFilesystemBlobStore(BlobStoreSuite):
        def make_store(self, scratch: Path) -> BlobStore:
            return FilesystemBlobStore(scratch)

`scratch` is an empty directory that belongs to the test. A driver that needs pytest fixtures (an S3
endpoint, credentials) defines a `store` fixture returning the store instead of `make_store`.

After every test the suite fails if the store still holds a blob or an upload, or if a file is left
anywhere under `scratch`: every test removes what it made, so a stray staged or temporary file shows.

pytest is imported only when a driver's test class is defined: the package does not depend on it.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.domain.digest import Digest
from shipyard.storage.base import BlobStore, InvalidUploadId, UploadBusy, UploadMissing

if TYPE_CHECKING:
    import pytest

CHUNK = 1024 * 1024  # drivers read in chunks of about this size; tests cross their boundaries
BAD_UPLOAD_IDS = [
    "",
    "../x",
    "../" + "a" * 29,  # the right length
    "a" * 16 + "/" + "a" * 15,
    "A" * 32,
    "0123456789ABCDEF0123456789abcdef",
    "a" * 31,
    "a" * 33,
    "g" * 32,
    "a" * 32 + "\n",
    "\n" + "a" * 32,
    "a" * 32 + "/..",
]


def _new_id() -> str:
    return uuid.uuid4().hex


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run `target(i)` on `count` threads started together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]


def _expect_raises(error: type[BaseException], call: Callable[..., object], *args: object) -> None:
    try:
        result = call(*args)
        if isinstance(result, Iterator):
            list(result)
    except error:
        return
    raise AssertionError(f"{getattr(call, '__name__', call)}{args!r} did not raise {error.__name__}")


def _blob_store_fixture(
    self: BlobStoreSuite, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[None]:
    scratch = tmp_path / "blob-store"
    scratch.mkdir()
    self.scratch = scratch
    if type(self).make_store is BlobStoreSuite.make_store:
        self.store = request.getfixturevalue("store")
    else:
        self.store = self.make_store(scratch)
    yield
    self.assert_nothing_left()


class BlobStoreSuite:
    """Subclass as `TestXxx(BlobStoreSuite)` and provide `make_store` or a `store` fixture."""

    store: BlobStore
    scratch: Path

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        import pytest

        # an autouse fixture on every driver's class: builds the store, then checks nothing is left
        setattr(cls, "_blob_store_setup", pytest.fixture(autouse=True)(_blob_store_fixture))  # noqa: B010

    def make_store(self, scratch: Path) -> BlobStore:
        raise NotImplementedError("a driver's test class defines make_store or a `store` fixture")

    # -- helpers -----------------------------------------------------------------------------

    def assert_nothing_left(self) -> None:
        uploads = [upload_id for upload_id, _ in self.store.uploads()]
        assert uploads == [], f"the test left uploads behind: {uploads}"
        digests = [str(d) for d in self.store.digests()]
        assert digests == [], f"the test left blobs behind: {digests}"
        files = sorted(str(p.relative_to(self.scratch)) for p in self.scratch.rglob("*") if not p.is_dir())
        assert files == [], f"the test left files behind: {files}"

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> bytes:
        chunks = list(self.store.read(digest, offset, length))
        assert all(isinstance(chunk, bytes) for chunk in chunks)
        return b"".join(chunks)

    def read_upload(self, upload_id: str) -> bytes:
        return b"".join(self.store.read_upload(upload_id))

    def stage(self, data: bytes, pieces: int = 1) -> str:
        """A new upload holding `data`, written by `pieces` writers one after another."""
        upload_id = _new_id()
        self.store.create_upload(upload_id)
        step = max(1, -(-len(data) // pieces))
        for start in range(0, len(data), step) or [0]:
            writer = self.store.open_upload(upload_id, start)
            writer.write(data[start : start + step])
            assert writer.commit() == min(start + step, len(data))
        assert self.store.upload_size(upload_id) == len(data)
        return upload_id

    def put(self, data: bytes, algorithm: str = "sha256") -> Digest:
        digest = Digest.of(data, algorithm)
        self.store.put(digest, data)
        return digest

    def upload_ids(self) -> set[str]:
        return {upload_id for upload_id, _ in self.store.uploads()}

    # -- blobs -------------------------------------------------------------------------------

    def test_stat_of_a_missing_blob_is_none(self) -> None:
        digest = Digest.of(b"never stored")
        assert self.store.stat(digest) is None
        assert self.store.local_path(digest) is None

    def test_read_of_a_missing_blob_raises_key_error(self) -> None:
        _expect_raises(KeyError, self.store.read, Digest.of(b"never stored"))

    def test_put_stat_read_delete(self) -> None:
        data = b"hello, registry"
        digest = self.put(data)
        assert self.store.stat(digest) == len(data)
        assert self.read(digest) == data
        assert list(self.store.digests()) == [digest]
        self.store.delete(digest)
        assert self.store.stat(digest) is None
        assert list(self.store.digests()) == []

    def test_put_of_an_empty_blob(self) -> None:
        digest = self.put(b"")
        assert self.store.stat(digest) == 0
        assert self.read(digest) == b""
        self.store.delete(digest)

    def test_put_twice_keeps_one_copy(self) -> None:
        digest = self.put(b"twice")
        self.store.put(digest, b"twice")
        assert list(self.store.digests()) == [digest]
        assert self.read(digest) == b"twice"
        self.store.delete(digest)

    def test_read_with_offset_and_length(self) -> None:
        data = _data(2 * CHUNK + 12345)
        size = len(data)
        digest = self.put(data)
        cases: list[tuple[int, int | None]] = [
            (0, None),
            (1, None),
            (10, 100),
            (0, 0),
            (CHUNK - 1, 2),
            (CHUNK - 5, CHUNK + 10),
            (size - 1, None),
            (size - 5, 100),  # a length past the end stops at the end
            (size, None),
            (size, 10),
            (size + 10, None),  # past the end: nothing
            (size + 10, 10),
        ]
        for offset, length in cases:
            end = size if length is None else offset + length
            assert self.read(digest, offset, length) == data[offset:end], (offset, length)
        self.store.delete(digest)

    def test_local_path_is_none_or_the_blob_itself(self) -> None:
        digest = self.put(b"local")
        path = self.store.local_path(digest)
        if path is not None:
            assert Path(path).read_bytes() == b"local"
        self.store.delete(digest)
        assert self.store.local_path(digest) is None

    def test_delete_of_a_missing_blob_is_a_no_op(self) -> None:
        self.store.delete(Digest.of(b"never stored"))
        digest = self.put(b"once")
        self.store.delete(digest)
        self.store.delete(digest)
        assert self.store.stat(digest) is None

    def test_digests_lists_every_blob_of_every_algorithm(self) -> None:
        stored = {self.put(f"blob {i}".encode()) for i in range(5)}
        stored |= {self.put(f"blob {i}".encode(), "sha512") for i in range(3)}
        listed = list(self.store.digests())
        assert len(listed) == len(stored)
        assert set(listed) == stored
        for digest in stored:
            self.store.delete(digest)
        assert list(self.store.digests()) == []

    def test_one_content_under_two_algorithms(self) -> None:
        sha256 = self.put(b"same bytes")
        sha512 = self.put(b"same bytes", "sha512")
        self.store.delete(sha256)
        assert self.store.stat(sha256) is None
        assert self.read(sha512) == b"same bytes"
        self.store.delete(sha512)

    # -- uploads -----------------------------------------------------------------------------

    def test_a_new_upload_is_empty_and_listed(self) -> None:
        upload_id = _new_id()
        before = time.time()
        self.store.create_upload(upload_id)
        after = time.time()
        assert self.store.upload_size(upload_id) == 0
        assert self.read_upload(upload_id) == b""
        listed = dict(self.store.uploads())
        assert list(listed) == [upload_id]
        assert isinstance(listed[upload_id], float)
        # file systems round modification times; allow a little
        assert before - 2 <= listed[upload_id] <= after + 2
        self.store.cancel_upload(upload_id)

    def test_creating_an_upload_twice_fails(self) -> None:
        upload_id = _new_id()
        self.store.create_upload(upload_id)
        _expect_raises(FileExistsError, self.store.create_upload, upload_id)
        self.store.cancel_upload(upload_id)

    def test_write_and_commit(self) -> None:
        upload_id = _new_id()
        self.store.create_upload(upload_id)
        writer = self.store.open_upload(upload_id, 0)
        assert writer.offset == 0
        writer.write(b"abc")
        writer.write(bytearray(b"def"))
        writer.write(memoryview(b"--ghi--")[2:5])
        writer.write(b"")
        assert writer.offset == 9
        assert writer.commit() == 9
        assert self.store.upload_size(upload_id) == 9
        assert self.read_upload(upload_id) == b"abcdefghi"
        self.store.cancel_upload(upload_id)

    def test_several_writers_append_in_turn(self) -> None:
        data = _data(3 * CHUNK + 7)
        upload_id = self.stage(data, pieces=4)
        assert self.read_upload(upload_id) == data
        self.store.cancel_upload(upload_id)

    def test_flush_puts_the_written_bytes_into_the_upload(self) -> None:
        upload_id = self.stage(b"head")
        data = _data(2 * CHUNK + 5, seed=3)
        writer = self.store.open_upload(upload_id, 4)
        for start in range(0, len(data), 100_000):
            writer.write(data[start : start + 100_000])
        writer.flush()
        assert self.store.upload_size(upload_id) == 4 + len(data)
        writer.flush()  # again: nothing changes
        assert writer.commit() == 4 + len(data)
        assert self.read_upload(upload_id) == b"head" + data
        self.store.cancel_upload(upload_id)

    def test_abort_rolls_back_to_where_the_writer_started(self) -> None:
        upload_id = self.stage(b"kept")
        writer = self.store.open_upload(upload_id, 4)
        writer.write(b"dropped" * 1000)
        writer.abort()
        assert writer.offset == 4
        assert self.store.upload_size(upload_id) == 4
        assert self.read_upload(upload_id) == b"kept"
        # the upload goes on from there
        writer = self.store.open_upload(upload_id, 4)
        writer.write(b" going")
        assert writer.commit() == 10
        assert self.read_upload(upload_id) == b"kept going"
        self.store.cancel_upload(upload_id)

    def test_abort_of_the_first_writer_leaves_an_empty_upload(self) -> None:
        upload_id = _new_id()
        self.store.create_upload(upload_id)
        writer = self.store.open_upload(upload_id, 0)
        writer.write(b"dropped")
        writer.abort()
        assert self.store.upload_size(upload_id) == 0
        assert self.read_upload(upload_id) == b""
        self.store.cancel_upload(upload_id)

    def test_open_at_an_offset_discards_staged_bytes_past_it(self) -> None:
        # a request wrote bytes the database never counted (it failed after the writer committed)
        upload_id = self.stage(b"0123456789")
        writer = self.store.open_upload(upload_id, 4)
        assert writer.offset == 4
        writer.write(b"xy")
        assert writer.commit() == 6
        assert self.store.upload_size(upload_id) == 6
        assert self.read_upload(upload_id) == b"0123xy"
        # a writer that aborts before writing changes nothing: it may have been opened on a stale
        # offset, and must not cut bytes that another request has since counted
        writer = self.store.open_upload(upload_id, 2)
        writer.abort()
        assert self.read_upload(upload_id) == b"0123xy"
        # committing with nothing written still drops the bytes past the offset
        writer = self.store.open_upload(upload_id, 2)
        assert writer.commit() == 2
        assert self.read_upload(upload_id) == b"01"
        self.store.cancel_upload(upload_id)

    def test_one_writer_at_a_time(self) -> None:
        upload_id = self.stage(b"abc")
        writer = self.store.open_upload(upload_id, 3)
        try:
            self.store.open_upload(upload_id, 3)
        except UploadBusy:
            pass
        else:
            raise AssertionError("a second writer was let in")
        try:
            self.store.commit_upload(upload_id, Digest.of(b"abc"))
        except UploadBusy:
            pass
        else:
            raise AssertionError("an upload was committed under its writer")
        writer.write(b"d")
        writer.commit()
        try:
            self.store.commit_upload(upload_id, Digest.of(b"abcd"), expected_size=3)
        except UploadBusy:
            pass
        else:
            raise AssertionError("an upload was committed though its size had moved on")
        self.store.commit_upload(upload_id, Digest.of(b"abcd"), expected_size=4)
        assert b"".join(self.store.read(Digest.of(b"abcd"))) == b"abcd"
        self.store.delete(Digest.of(b"abcd"))

    def test_read_upload_of_a_large_upload(self) -> None:
        data = _data(2 * CHUNK + 1, seed=1)
        upload_id = self.stage(data, pieces=3)
        chunks = list(self.store.read_upload(upload_id))
        assert all(isinstance(chunk, bytes) for chunk in chunks)
        assert b"".join(chunks) == data
        self.store.cancel_upload(upload_id)

    def test_commit_upload_makes_the_blob_visible_and_removes_the_upload(self) -> None:
        data = _data(CHUNK + 3, seed=2)
        digest = Digest.of(data)
        upload_id = self.stage(data, pieces=2)
        assert self.store.stat(digest) is None
        self.store.commit_upload(upload_id, digest)
        assert self.store.stat(digest) == len(data)
        assert self.read(digest) == data
        assert list(self.store.digests()) == [digest]
        assert upload_id not in self.upload_ids()
        _expect_raises(UploadMissing, self.store.upload_size, upload_id)
        _expect_raises(UploadMissing, self.store.read_upload, upload_id)
        self.store.delete(digest)

    def test_commit_of_an_empty_upload(self) -> None:
        digest = Digest.of(b"")
        upload_id = self.stage(b"")
        self.store.commit_upload(upload_id, digest)
        assert self.store.stat(digest) == 0
        assert self.read(digest) == b""
        self.store.delete(digest)

    def test_commit_of_a_digest_already_stored(self) -> None:
        digest = self.put(b"already here")
        upload_id = self.stage(b"already here")
        self.store.commit_upload(upload_id, digest)
        assert list(self.store.digests()) == [digest]
        assert self.read(digest) == b"already here"
        assert self.upload_ids() == set()
        # and a second upload of the same content, committed after the first
        again = self.stage(b"already here")
        self.store.commit_upload(again, digest)
        assert self.upload_ids() == set()
        self.store.delete(digest)

    def test_commit_under_sha512(self) -> None:
        digest = Digest.of(b"five twelve", "sha512")
        self.store.commit_upload(self.stage(b"five twelve"), digest)
        assert self.read(digest) == b"five twelve"
        self.store.delete(digest)

    def test_cancel_upload(self) -> None:
        upload_id = self.stage(b"to be cancelled")
        self.store.cancel_upload(upload_id)
        assert self.upload_ids() == set()
        _expect_raises(UploadMissing, self.store.upload_size, upload_id)
        # cancelling twice, or an upload never made, is a no-op
        self.store.cancel_upload(upload_id)
        self.store.cancel_upload(_new_id())

    def test_uploads_lists_every_upload_with_its_modification_time(self) -> None:
        first, second = _new_id(), _new_id()
        self.store.create_upload(first)
        self.store.create_upload(second)
        listed = dict(self.store.uploads())
        assert set(listed) == {first, second}
        time.sleep(0.05)
        writer = self.store.open_upload(first, 0)
        writer.write(b"more")
        writer.commit()
        relisted = dict(self.store.uploads())
        assert relisted[first] >= listed[first]
        assert time.time() - 5 < relisted[first] <= time.time() + 2
        self.store.cancel_upload(first)
        assert self.upload_ids() == {second}
        self.store.cancel_upload(second)

    def test_unknown_uploads_raise_upload_missing(self) -> None:
        upload_id = _new_id()
        _expect_raises(UploadMissing, self.store.upload_size, upload_id)
        _expect_raises(UploadMissing, self.store.open_upload, upload_id, 0)
        _expect_raises(UploadMissing, self.store.read_upload, upload_id)
        _expect_raises(UploadMissing, self.store.commit_upload, upload_id, Digest.of(b""))
        assert self.store.stat(Digest.of(b"")) is None

    def test_invalid_upload_ids_are_rejected_before_touching_storage(self) -> None:
        # a file beside the store that "../victim" would reach if ids were used as paths unchecked
        victim = self.scratch / "victim"
        victim.write_bytes(b"precious")
        digest = Digest.of(b"")
        for bad in [*BAD_UPLOAD_IDS, "../victim", "../" + "victim".ljust(29, "a")]:
            _expect_raises(InvalidUploadId, self.store.create_upload, bad)
            _expect_raises(InvalidUploadId, self.store.upload_size, bad)
            _expect_raises(InvalidUploadId, self.store.open_upload, bad, 0)
            _expect_raises(InvalidUploadId, self.store.read_upload, bad)
            _expect_raises(InvalidUploadId, self.store.commit_upload, bad, digest)
            _expect_raises(InvalidUploadId, self.store.cancel_upload, bad)
        assert victim.read_bytes() == b"precious"
        victim.unlink()
        assert self.upload_ids() == set()
        assert self.store.stat(digest) is None

    # -- concurrency -------------------------------------------------------------------------

    def test_concurrent_uploads(self) -> None:
        count, pieces = 8, 5
        contents = [_data(200_000 + i, seed=100 + i) for i in range(count)]
        digests = [Digest.of(data) for data in contents]

        def upload(i: int) -> None:
            upload_id = self.stage(contents[i], pieces=pieces)
            assert self.read_upload(upload_id) == contents[i]
            self.store.commit_upload(upload_id, digests[i])

        _run_threads(count, upload)
        assert set(self.store.digests()) == set(digests)
        for data, digest in zip(contents, digests, strict=True):
            assert self.read(digest) == data
            self.store.delete(digest)

    def test_concurrent_puts_of_one_content(self) -> None:
        data = _data(512 * 1024, seed=3)
        digest = Digest.of(data)
        seen: list[bytes] = []

        def put_or_look(i: int) -> None:
            if i % 2:
                self.store.put(digest, data)
                return
            # whoever sees the blob sees all of it
            for _ in range(20):
                if self.store.stat(digest) is not None:
                    seen.append(self.read(digest))
                    return

        for _ in range(5):
            seen.clear()
            _run_threads(8, put_or_look)
            assert all(s == data for s in seen)
            assert self.read(digest) == data
            assert list(self.store.digests()) == [digest]
            self.store.delete(digest)

    def test_concurrent_commits_of_one_content(self) -> None:
        data = _data(300_000, seed=4)
        digest = Digest.of(data)
        upload_ids = [self.stage(data, pieces=2) for _ in range(6)]

        def commit(i: int) -> None:
            self.store.commit_upload(upload_ids[i], digest)

        _run_threads(len(upload_ids), commit)
        assert self.upload_ids() == set()
        assert self.read(digest) == data
        assert list(self.store.digests()) == [digest]
        self.store.delete(digest)
