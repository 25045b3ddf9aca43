import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard.domain.digest import Digest
from shipyard.storage.base import BlobStore
from shipyard.storage.direct import ALIGN
from shipyard.storage.filesystem import FilesystemBlobStore
from shipyard.storage.suite import BlobStoreSuite


class TestFilesystemBlobStore(BlobStoreSuite):
    def make_store(self, scratch: Path) -> BlobStore:
        return FilesystemBlobStore(scratch)


class TestFilesystemBlobStoreSmallDirectWrites(BlobStoreSuite):
    """The contract again with direct writes of one aligned block: every test crosses many blocks, and
    writers start at offsets that are not aligned."""

    def make_store(self, scratch: Path) -> BlobStore:
        return FilesystemBlobStore(scratch, direct_chunk=ALIGN)


class TestFilesystemBlobStoreBuffered(BlobStoreSuite):
    def make_store(self, scratch: Path) -> BlobStore:
        return FilesystemBlobStore(scratch, direct_chunk=None)


# -- what only the filesystem driver promises: atomic visibility and durability -----------------------


@pytest.fixture
def fs(tmp_path: Path) -> FilesystemBlobStore:
    return FilesystemBlobStore(tmp_path / "store")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


class Recorder:
    """Records os.fsync (by path) and os.replace calls in order, checking the state at each."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, check: Callable[[str, str], None] | None = None
    ) -> None:
        self.events: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            self.events.append(("fsync", path))
            if check:
                check("fsync", path)
            real_fsync(fd)

        def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
            self.events.append(("replace", f"{os.fspath(src)} -> {os.fspath(dst)}"))
            if check:
                check("replace", os.fspath(src))
            real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def fsynced(self) -> list[str]:
        return [path for kind, path in self.events if kind == "fsync"]


def test_an_upload_is_staged_outside_blobs_and_renamed_into_place(
    fs: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = Digest.of(data)
    blob = fs.root / "blobs" / "sha256" / digest.encoded[:2] / digest.encoded
    upload_id = uuid.uuid4().hex
    fs.create_upload(upload_id)
    for start in range(0, len(data), 1024 * 1024):
        writer = fs.open_upload(upload_id, start)
        writer.write(data[start : start + 1024 * 1024])
        # nothing partial ever shows under blobs/
        assert _files(fs.root / "blobs") == []
        assert fs.stat(digest) is None
        writer.commit()
    assert _files(fs.root) == [fs.root / "uploads" / upload_id]

    def at_rename(kind: str, path: str) -> None:
        if kind == "replace":
            # the staged file is complete when it is renamed, and the blob appears only by the rename
            assert path == str(fs.root / "uploads" / upload_id)
            assert Path(path).stat().st_size == len(data)
            assert not blob.exists()

    recorder = Recorder(monkeypatch, at_rename)
    fs.commit_upload(upload_id, digest)
    assert [e for e in recorder.events if e[0] == "replace"] == [
        ("replace", f"{fs.root / 'uploads' / upload_id} -> {blob}")
    ]
    assert _files(fs.root) == [blob]
    assert blob.read_bytes() == data
    fs.delete(digest)


def test_commit_upload_fsyncs_the_file_before_the_rename_and_the_directories_after(
    fs: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload_id = uuid.uuid4().hex
    fs.create_upload(upload_id)
    writer = fs.open_upload(upload_id, 0)
    writer.write(b"durable")
    writer.commit()
    digest = Digest.of(b"durable")
    prefix = fs.root / "blobs" / "sha256" / digest.encoded[:2]
    recorder = Recorder(monkeypatch)
    fs.commit_upload(upload_id, digest)
    kinds = [kind for kind, _ in recorder.events]
    staged = str(fs.root / "uploads" / upload_id)
    assert recorder.events[0] == ("fsync", staged)
    rename = kinds.index("replace")
    after = [path for kind, path in recorder.events[rename:] if kind == "fsync"]
    assert str(prefix) in after  # the new directory entry of the blob
    # the prefix and algorithm directories were new: their entries are synced in their parents
    assert str(prefix.parent) in recorder.fsynced()
    assert str(prefix.parent.parent) in recorder.fsynced()
    fs.delete(digest)


def test_put_writes_a_hidden_temporary_file_fsyncs_it_and_renames_it(
    fs: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"small content" * 100
    digest = Digest.of(data)
    blob = fs.root / "blobs" / "sha256" / digest.encoded[:2] / digest.encoded

    def invisible_until_renamed(kind: str, path: str) -> None:
        if Path(path).name.startswith("."):
            assert fs.stat(digest) is None
            assert fs.local_path(digest) is None
            assert list(fs.digests()) == []

    recorder = Recorder(monkeypatch, invisible_until_renamed)
    fs.put(digest, data)
    replaces = [path for kind, path in recorder.events if kind == "replace"]
    assert len(replaces) == 1
    temp, target = replaces[0].split(" -> ")
    assert target == str(blob)
    assert Path(temp).parent == blob.parent and Path(temp).name.startswith(".")
    assert ("fsync", temp) in recorder.events
    assert recorder.events.index(("fsync", temp)) < recorder.events.index(("replace", replaces[0]))
    assert recorder.fsynced()[-1] == str(blob.parent)
    assert _files(fs.root) == [blob]
    fs.delete(digest)


def test_a_failed_put_leaves_no_temporary_file(
    fs: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        fs.put(Digest.of(b"x"), b"x")
    assert _files(fs.root) == []


def test_hidden_and_foreign_files_are_not_listed(fs: FilesystemBlobStore) -> None:
    digest = Digest.of(b"listed")
    fs.put(digest, b"listed")
    (fs.root / "blobs" / "sha256" / digest.encoded[:2] / ".partial.tmp").write_bytes(b"half")
    (fs.root / "uploads" / ".nfs0000123").write_bytes(b"")
    (fs.root / "uploads" / "README").write_bytes(b"")
    assert list(fs.digests()) == [digest]
    assert list(fs.uploads()) == []


def test_a_store_reopened_on_the_same_root_sees_everything(fs: FilesystemBlobStore) -> None:
    digest = Digest.of(b"persisted")
    fs.put(digest, b"persisted")
    upload_id = uuid.uuid4().hex
    fs.create_upload(upload_id)
    writer = fs.open_upload(upload_id, 0)
    writer.write(b"half")
    writer.commit()
    reopened = FilesystemBlobStore(fs.root)
    assert reopened.stat(digest) == len(b"persisted")
    assert reopened.upload_size(upload_id) == 4
    assert [u for u, _ in reopened.uploads()] == [upload_id]
