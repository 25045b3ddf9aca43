"""Filesystem driver: blobs/<algorithm>/<2 hex>/<encoded>, uploads/<id> staged beside them.

Visibility is an atomic rename of an fsynced file, followed by an fsync of the directory, so a crash at
any moment leaves either no blob or a complete one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from shipyard.domain.digest import SUPPORTED_ALGORITHMS, Digest
from shipyard.storage.base import UPLOAD_ID, UploadBusy, UploadMissing, check_upload_id
from shipyard.storage.direct import DIRECT_CHUNK, DirectAppender

READ_CHUNK = 1024 * 1024
# Staged bytes are handed to the disk every this many bytes while an upload streams, so that the
# fsync before the rename finds little left to write instead of the whole blob.
WRITEBACK_EVERY = 8 * 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range of dirty pages to disk without waiting for it. Linux's DONTNEED does that
    (asynchronous writeback), and drops only pages that are already clean, which freshly written ones
    are not: the range stays cached. Elsewhere this is only a hint, and fsync still does the work."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _make_dirs(path: Path) -> None:
    """mkdir -p, fsyncing the parent of each directory it creates: a new directory entry is not durable
    until its parent is synced, and a blob inside a directory that vanishes in a crash is lost."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        _fsync_dir(directory.parent)


class FileBlobWriter:
    """Holds the staged file locked (flock) from open to commit or abort. Staged bytes past `offset`
    are dropped at the first write, so a writer opened on a stale offset can be aborted harmlessly."""

    def __init__(self, path: Path, offset: int, direct_chunk: int | None = DIRECT_CHUNK) -> None:
        self._path = path
        self._start = offset
        self._direct_chunk = direct_chunk
        self._direct: DirectAppender | None = None
        self._fd = os.open(path, os.O_RDWR)  # read too: a direct write rewrites the aligned head
        try:
            # the lock lives as long as the descriptor; the kernel drops it if the process dies
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise UploadBusy(path.name) from None
        self._offset = offset
        self._written_back = offset
        self._touched = False

    @property
    def offset(self) -> int:
        return self._offset

    def _touch(self) -> None:
        if not self._touched:
            # Truncate only when there is something past the start: on ext4 a truncation to size 0,
            # even of an empty file, makes close() start writing out the whole file before it returns
            # (the auto_da_alloc heuristic), which put that on every upload's critical path.
            if os.fstat(self._fd).st_size != self._start:
                os.ftruncate(self._fd, self._start)
            os.lseek(self._fd, self._start, os.SEEK_SET)
            self._touched = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._touch()
        if self._direct_chunk:
            if self._direct is None:  # at the first write: a writer that writes nothing needs no buffer
                self._direct = DirectAppender(str(self._path), self._fd, self._start, self._direct_chunk)
            self._direct.write(data)
            self._offset += len(data)
            return
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            self._offset += written
        if self._offset - self._written_back >= WRITEBACK_EVERY:
            _start_writeback(self._fd, self._written_back, self._offset - self._written_back)
            self._written_back = self._offset

    def flush(self) -> None:
        self._touch()
        if self._direct is not None:
            self._direct.flush()

    def commit(self) -> int:
        self.flush()
        try:
            if self._direct is not None:
                self._direct.close()
        finally:
            self._direct = None
            os.close(self._fd)
            self._fd = -1
        return self._offset

    def abort(self) -> None:
        if self._direct is not None:
            self._direct.close(wait=False)  # no direct write may land after the truncation
            self._direct = None
        if self._fd >= 0:
            if self._touched:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._start)
            os.close(self._fd)
            self._fd = -1
        self._offset = self._start


class FilesystemBlobStore:
    """`direct_chunk`: uploads go to disk in direct writes of this many bytes (None: buffered only)."""

    def __init__(self, root: Path, *, direct_chunk: int | None = DIRECT_CHUNK) -> None:
        self.root = root
        self._direct_chunk = direct_chunk
        self._blobs = root / "blobs"
        self._uploads = root / "uploads"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._uploads.mkdir(parents=True, exist_ok=True)

    def _blob_path(self, digest: Digest) -> Path:
        # Digest is validated by construction: algorithm and lower-case hex only, no path separators.
        return self._blobs / digest.algorithm / digest.encoded[:2] / digest.encoded

    def _upload_path(self, upload_id: str) -> Path:
        return self._uploads / check_upload_id(upload_id)

    def stat(self, digest: Digest) -> int | None:
        try:
            return self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def local_path(self, digest: Digest) -> str | None:
        path = self._blob_path(digest)
        return str(path) if path.exists() else None

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        try:
            fd = os.open(self._blob_path(digest), os.O_RDONLY)
        except FileNotFoundError:
            raise KeyError(str(digest)) from None
        return self._read_fd(fd, offset, length)

    @staticmethod
    def _read_fd(fd: int, offset: int, length: int | None) -> Iterator[bytes]:
        try:
            remaining = length if length is not None else os.fstat(fd).st_size - offset
            while remaining > 0:
                chunk = os.pread(fd, min(READ_CHUNK, remaining), offset)
                if not chunk:
                    break
                offset += len(chunk)
                remaining -= len(chunk)
                yield chunk
        finally:
            os.close(fd)

    def delete(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._blob_path(digest).unlink()

    def digests(self) -> Iterator[Digest]:
        for algorithm in SUPPORTED_ALGORITHMS:
            base = self._blobs / algorithm
            if not base.is_dir():
                continue
            for prefix in sorted(base.iterdir()):
                for path in sorted(prefix.iterdir()):
                    if not path.name.startswith("."):
                        yield Digest(algorithm, path.name)

    def put(self, digest: Digest, data: bytes) -> None:
        target = self._blob_path(digest)
        if target.exists():
            return
        _make_dirs(target.parent)
        # a unique temporary name: two threads storing the same content must not write one file
        fd, temp = tempfile.mkstemp(prefix=f".{digest.encoded}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_dir(target.parent)

    def create_upload(self, upload_id: str) -> None:
        self._upload_path(upload_id).touch(exist_ok=False)

    def upload_size(self, upload_id: str) -> int:
        try:
            return self._upload_path(upload_id).stat().st_size
        except FileNotFoundError:
            raise UploadMissing(upload_id) from None

    def open_upload(self, upload_id: str, offset: int) -> FileBlobWriter:
        try:
            return FileBlobWriter(self._upload_path(upload_id), offset, self._direct_chunk)
        except FileNotFoundError:
            raise UploadMissing(upload_id) from None

    def read_upload(self, upload_id: str) -> Iterator[bytes]:
        try:
            fd = os.open(self._upload_path(upload_id), os.O_RDONLY)
        except FileNotFoundError:
            raise UploadMissing(upload_id) from None
        return self._read_fd(fd, 0, None)

    def commit_upload(self, upload_id: str, digest: Digest, expected_size: int | None = None) -> None:
        source = self._upload_path(upload_id)
        target = self._blob_path(digest)
        try:
            fd = os.open(source, os.O_RDONLY)
        except FileNotFoundError:
            raise UploadMissing(upload_id) from None
        try:
            # hold the upload through the rename: no writer may still be appending to what becomes a blob
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UploadBusy(upload_id) from None
            if expected_size is not None and os.fstat(fd).st_size != expected_size:
                raise UploadBusy(f"{upload_id} changed while it was being completed")
            os.fsync(fd)
            if target.exists():
                source.unlink()
                return
            _make_dirs(target.parent)
            os.replace(source, target)
            _fsync_dir(target.parent)
        finally:
            os.close(fd)

    def cancel_upload(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._upload_path(upload_id).unlink()

    def uploads(self) -> Iterator[tuple[str, float]]:
        for path in self._uploads.iterdir():
            if not UPLOAD_ID.match(path.name):
                continue  # not ours (an editor's or NFS's stray file): callers would choke on the name
            try:
                yield path.name, path.stat().st_mtime
            except FileNotFoundError:
                continue
