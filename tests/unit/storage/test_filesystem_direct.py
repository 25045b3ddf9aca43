"""The filesystem driver's direct write path: whole aligned blocks go to the device around the page
cache, the rest is written the ordinary way, and a filesystem that refuses O_DIRECT still gets every
byte."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import uuid
from pathlib import Path

import pytest

from shipyard.domain.digest import Digest
from shipyard.storage import direct
from shipyard.storage.direct import ALIGN, DirectAppender
from shipyard.storage.filesystem import FilesystemBlobStore

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")

CHUNK = 4 * ALIGN


def _new_upload(fs: FilesystemBlobStore) -> str:
    upload_id = uuid.uuid4().hex
    fs.create_upload(upload_id)
    return upload_id


def _read(fs: FilesystemBlobStore, upload_id: str) -> bytes:
    return b"".join(fs.read_upload(upload_id))


def _direct_supported(directory: Path) -> bool:
    probe = directory / "probe"
    probe.touch()
    try:
        fd = direct.open_direct(str(probe))
        if fd is None:
            return False
        os.close(fd)
        return True
    finally:
        probe.unlink()


@pytest.fixture
def fs(tmp_path: Path) -> FilesystemBlobStore:
    return FilesystemBlobStore(tmp_path / "store", direct_chunk=CHUNK)


@pytest.fixture
def direct_io(tmp_path: Path) -> None:
    """For tests of the direct path itself: the filesystem under tmp_path must take O_DIRECT."""
    if not _direct_supported(tmp_path):
        pytest.skip(f"the filesystem under {tmp_path} refuses O_DIRECT")


@pytest.fixture
def direct_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(offset, length) of every block written through an O_DIRECT descriptor."""
    written: list[tuple[int, int]] = []
    real = direct._write_block

    def record(direct_fd: int, fd: int, data: memoryview, offset: int) -> bool:
        used = real(direct_fd, fd, data, offset)
        if used:
            written.append((offset, len(data)))
        return used

    monkeypatch.setattr(direct, "_write_block", record)
    return written


@pytest.mark.usefixtures("direct_io")
def test_whole_blocks_go_direct_and_the_tail_buffered(
    fs: FilesystemBlobStore, tmp_path: Path, direct_writes: list[tuple[int, int]]
) -> None:
    upload_id = _new_upload(fs)
    data = random.Random(1).randbytes(5 * CHUNK + 1234)
    writer = fs.open_upload(upload_id, 0)
    for start in range(0, len(data), 7000):
        writer.write(data[start : start + 7000])
    assert writer.commit() == len(data)
    assert sorted(direct_writes) == [(n * CHUNK, CHUNK) for n in range(5)]  # two may be in flight
    assert _read(fs, upload_id) == data
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    fs.commit_upload(upload_id, digest, len(data))
    assert b"".join(fs.read(digest)) == data


@pytest.mark.usefixtures("direct_io")
def test_a_writer_at_an_unaligned_offset_keeps_the_bytes_before_it(
    fs: FilesystemBlobStore, tmp_path: Path, direct_writes: list[tuple[int, int]]
) -> None:
    upload_id = _new_upload(fs)
    rng = random.Random(2)
    expected = b""
    for size in (ALIGN + 3, 2 * CHUNK - 5, 1, CHUNK, 3 * CHUNK + 17):
        piece = rng.randbytes(size)
        writer = fs.open_upload(upload_id, len(expected))
        writer.write(piece)
        assert writer.commit() == len(expected) + size
        expected += piece
        assert _read(fs, upload_id) == expected
    # every direct write began on a block boundary, and together they covered whole blocks only
    assert direct_writes
    assert all(offset % ALIGN == 0 and length == CHUNK for offset, length in direct_writes)
    fs.cancel_upload(upload_id)


@pytest.mark.usefixtures("direct_io")
def test_abort_after_direct_writes_restores_the_start(
    fs: FilesystemBlobStore, tmp_path: Path, direct_writes: list[tuple[int, int]]
) -> None:
    upload_id = _new_upload(fs)
    kept = os.urandom(CHUNK + 100)  # the next writer's first block holds 100 kept bytes
    writer = fs.open_upload(upload_id, 0)
    writer.write(kept)
    writer.commit()
    writer = fs.open_upload(upload_id, len(kept))
    writer.write(os.urandom(6 * CHUNK))
    assert direct_writes, "no block went direct before the abort"
    writer.abort()
    assert fs.upload_size(upload_id) == len(kept)
    assert _read(fs, upload_id) == kept
    fs.cancel_upload(upload_id)


def test_a_filesystem_that_refuses_o_direct_at_open_gets_buffered_writes(
    fs: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch, direct_writes: list[tuple[int, int]]
) -> None:
    monkeypatch.setattr(direct, "open_direct", lambda path: None)
    upload_id = _new_upload(fs)
    data = os.urandom(3 * CHUNK + 10)
    writer = fs.open_upload(upload_id, 0)
    writer.write(data)
    assert writer.commit() == len(data)
    assert direct_writes == []
    assert _read(fs, upload_id) == data
    fs.cancel_upload(upload_id)


def test_a_direct_write_refused_with_einval_is_written_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some filesystems accept O_DIRECT at open and refuse the write: the block is written again the
    ordinary way, and the appender stops trying."""
    path = tmp_path / "staged"
    path.touch()
    fd = os.open(path, os.O_RDWR)
    direct_fds: list[int] = []
    real_open = direct.open_direct
    real_pwrite_all = direct._pwrite_all

    def opened(name: str) -> int | None:
        result = real_open(name)
        if result is None:  # a filesystem without O_DIRECT: stand in a plain descriptor to refuse
            result = os.open(name, os.O_WRONLY)
        direct_fds.append(result)
        return result

    def refuse(target: int, data: memoryview, offset: int) -> None:
        if target in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        real_pwrite_all(target, data, offset)

    monkeypatch.setattr(direct, "open_direct", opened)
    monkeypatch.setattr(direct, "_pwrite_all", refuse)
    try:
        appender = DirectAppender(str(path), fd, 0, CHUNK)
        data = os.urandom(4 * CHUNK + 99)
        appender.write(data)
        appender.flush()
        assert appender.refused
        assert len(direct_fds) == 1
        appender.close()
        assert path.read_bytes() == data
    finally:
        os.close(fd)


@pytest.mark.usefixtures("direct_io")
def test_a_failed_direct_write_is_raised_and_the_abort_rolls_back(
    fs: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:

    def full(direct_fd: int, fd: int, data: memoryview, offset: int) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct, "_write_block", full)
    upload_id = _new_upload(fs)
    writer = fs.open_upload(upload_id, 0)
    with pytest.raises(OSError) as raised:
        writer.write(os.urandom(4 * CHUNK))
        writer.commit()
    assert raised.value.errno == errno.ENOSPC
    writer.abort()
    assert fs.upload_size(upload_id) == 0
    fs.cancel_upload(upload_id)


def test_tmpfs_takes_large_uploads(tmp_path: Path) -> None:
    """Whatever tmpfs says to O_DIRECT (older kernels refuse it), an upload there keeps every byte."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm on this machine")
    root = shm / f"shipyard-test-{uuid.uuid4().hex}"
    fs = FilesystemBlobStore(root, direct_chunk=CHUNK)
    try:
        upload_id = _new_upload(fs)
        data = os.urandom(3 * CHUNK + 5)
        writer = fs.open_upload(upload_id, 0)
        writer.write(data)
        assert writer.commit() == len(data)
        assert _read(fs, upload_id) == data
    finally:
        for path in sorted(root.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        root.rmdir()


def test_the_chunk_must_be_aligned(tmp_path: Path) -> None:
    path = tmp_path / "staged"
    path.touch()
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(ValueError, match="multiple of"):
            DirectAppender(str(path), fd, 0, ALIGN + 1)
    finally:
        os.close(fd)


@pytest.mark.parametrize(("setting", "direct_opens"), [("true", 1), ("false", 0)])
def test_the_setting_turns_direct_writes_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, direct_opens: int
) -> None:
    from shipyard.app import BLOB_STORES
    from shipyard.config import Settings

    opened: list[str] = []
    real = direct.open_direct

    def spy(path: str) -> int | None:
        opened.append(path)
        return real(path)

    monkeypatch.setattr(direct, "open_direct", spy)
    monkeypatch.setenv("SHIPYARD_STORAGE_DIRECT_IO", setting)
    settings = Settings(data_dir=tmp_path / "data")
    store = BLOB_STORES["filesystem"](settings)
    assert isinstance(store, FilesystemBlobStore)
    upload_id = _new_upload(store)
    data = os.urandom(2 * direct.DIRECT_CHUNK + 1)
    writer = store.open_upload(upload_id, 0)
    writer.write(data)
    assert writer.commit() == len(data)
    assert len(opened) == direct_opens
    assert _read(store, upload_id) == data
    store.cancel_upload(upload_id)
