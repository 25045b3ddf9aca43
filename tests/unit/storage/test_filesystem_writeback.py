"""The filesystem driver's buffered write path: staged bytes go to the disk while an upload streams, and a
writer truncates the staged file only when there is something past its start to drop."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from shipyard.domain.digest import Digest
from shipyard.storage import filesystem
from shipyard.storage.filesystem import FilesystemBlobStore

MiB = 1024 * 1024


@pytest.fixture
def fs(tmp_path: Path) -> FilesystemBlobStore:
    """Buffered writes only: large uploads otherwise go around the page cache (test_filesystem_direct)."""
    return FilesystemBlobStore(tmp_path / "store", direct_chunk=None)


def _new_upload(fs: FilesystemBlobStore) -> str:
    upload_id = uuid.uuid4().hex
    fs.create_upload(upload_id)
    return upload_id


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this platform")
def test_writeback_starts_while_the_upload_streams(
    fs: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    hints: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        hints.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    upload_id = _new_upload(fs)
    first = os.urandom(3 * MiB)
    writer = fs.open_upload(upload_id, 0)
    writer.write(first)
    assert writer.commit() == len(first)

    piece = os.urandom(MiB)
    writer = fs.open_upload(upload_id, len(first))
    for _ in range(20):
        writer.write(piece)
    streamed = hints[:]
    size = writer.commit()
    assert size == len(first) + 20 * MiB

    # ranges handed to the disk during the writes: in order, back to back from where the writer began,
    # each at least WRITEBACK_EVERY bytes, never past what was written
    assert streamed, "nothing went to the disk before the commit"
    assert {advice for _, _, advice in streamed} == {os.POSIX_FADV_DONTNEED}
    position = len(first)
    for offset, length, _ in streamed:
        assert offset == position and length >= filesystem.WRITEBACK_EVERY
        position += length
    assert position <= size and size - position < filesystem.WRITEBACK_EVERY

    data = first + piece * 20
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    fs.commit_upload(upload_id, digest, size)
    assert b"".join(fs.read(digest)) == data


def test_a_writer_at_the_end_does_not_truncate(
    fs: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On ext4, truncating a file to size 0 makes its close flush the file synchronously: a fresh upload
    (or a chunk appended at the end) must not pay that."""
    truncations: list[int] = []
    real = os.ftruncate

    def record(fd: int, length: int) -> None:
        truncations.append(length)
        real(fd, length)

    monkeypatch.setattr(os, "ftruncate", record)
    upload_id = _new_upload(fs)
    writer = fs.open_upload(upload_id, 0)
    writer.write(b"a" * 1000)
    writer.commit()
    writer = fs.open_upload(upload_id, 1000)
    writer.write(b"b" * 500)
    writer.commit()
    assert truncations == []
    assert b"".join(fs.read_upload(upload_id)) == b"a" * 1000 + b"b" * 500

    # a writer that starts before the end still drops what is past its start
    writer = fs.open_upload(upload_id, 200)
    writer.write(b"c" * 10)
    writer.commit()
    assert truncations == [200]
    assert b"".join(fs.read_upload(upload_id)) == b"a" * 200 + b"c" * 10
