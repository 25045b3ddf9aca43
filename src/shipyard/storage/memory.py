"""In-memory driver: for unit tests and throwaway registries. Same contract as the filesystem driver."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from shipyard.domain.digest import Digest
from shipyard.storage.base import UploadBusy, UploadMissing, check_upload_id

READ_CHUNK = 1024 * 1024


class MemoryBlobWriter:
    def __init__(self, store: MemoryBlobStore, upload_id: str, offset: int) -> None:
        self._store = store
        self._id = upload_id
        self._start = offset
        self._offset = offset
        self._open = True
        self._touched = False

    @property
    def offset(self) -> int:
        return self._offset

    def _touch(self, staged: bytearray) -> None:
        if not self._touched:
            del staged[self._start :]
            self._touched = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        with self._store._lock:
            staged = self._store._uploads.get(self._id)
            if staged is not None:
                self._touch(staged)
                staged += data
        self._offset += len(data)

    def flush(self) -> None:
        """Nothing waits: every write goes straight into the staged bytes."""

    def _release(self) -> None:
        if self._open:
            self._open = False
            self._store._writers.discard(self._id)

    def commit(self) -> int:
        with self._store._lock:
            self._release()
            staged = self._store._uploads.get(self._id)
            if staged is None:
                raise UploadMissing(self._id)
            self._touch(staged)
            self._store._touched[self._id] = time.time()
        return self._offset

    def abort(self) -> None:
        with self._store._lock:
            staged = self._store._uploads.get(self._id)
            if self._open and self._touched and staged is not None:
                del staged[self._start :]
            self._release()
        self._offset = self._start


class MemoryBlobStore:
    def __init__(self) -> None:
        self._blobs: dict[Digest, bytes] = {}
        self._uploads: dict[str, bytearray] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self._writers: set[str] = set()

    def stat(self, digest: Digest) -> int | None:
        data = self._blobs.get(digest)
        return None if data is None else len(data)

    def local_path(self, digest: Digest) -> str | None:
        return None

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        data = self._blobs.get(digest)
        if data is None:
            raise KeyError(str(digest))
        end = len(data) if length is None else min(len(data), offset + length)
        return (data[i : min(i + READ_CHUNK, end)] for i in range(offset, end, READ_CHUNK))

    def delete(self, digest: Digest) -> None:
        self._blobs.pop(digest, None)

    def digests(self) -> Iterator[Digest]:
        return iter(sorted(self._blobs, key=str))

    def put(self, digest: Digest, data: bytes) -> None:
        self._blobs.setdefault(digest, bytes(data))

    def create_upload(self, upload_id: str) -> None:
        check_upload_id(upload_id)
        with self._lock:
            if upload_id in self._uploads:
                raise FileExistsError(upload_id)
            self._uploads[upload_id] = bytearray()
            self._touched[upload_id] = time.time()

    def upload_size(self, upload_id: str) -> int:
        try:
            return len(self._uploads[check_upload_id(upload_id)])
        except KeyError:
            raise UploadMissing(upload_id) from None

    def open_upload(self, upload_id: str, offset: int) -> MemoryBlobWriter:
        with self._lock:
            if check_upload_id(upload_id) not in self._uploads:
                raise UploadMissing(upload_id)
            if upload_id in self._writers:
                raise UploadBusy(upload_id)
            self._writers.add(upload_id)
        return MemoryBlobWriter(self, upload_id, offset)

    def read_upload(self, upload_id: str) -> Iterator[bytes]:
        try:
            data = bytes(self._uploads[check_upload_id(upload_id)])
        except KeyError:
            raise UploadMissing(upload_id) from None
        return (data[i : i + READ_CHUNK] for i in range(0, len(data), READ_CHUNK))

    def commit_upload(self, upload_id: str, digest: Digest, expected_size: int | None = None) -> None:
        with self._lock:
            if check_upload_id(upload_id) in self._writers:
                raise UploadBusy(upload_id)
            staged = self._uploads.get(upload_id)
            if expected_size is not None and staged is not None and len(staged) != expected_size:
                raise UploadBusy(f"{upload_id} changed while it was being completed")
            try:
                data = self._uploads.pop(upload_id)
            except KeyError:
                raise UploadMissing(upload_id) from None
            self._touched.pop(upload_id, None)
            self._blobs.setdefault(digest, bytes(data))

    def cancel_upload(self, upload_id: str) -> None:
        check_upload_id(upload_id)
        with self._lock:
            self._uploads.pop(upload_id, None)
            self._touched.pop(upload_id, None)

    def uploads(self) -> Iterator[tuple[str, float]]:
        with self._lock:
            return iter(list(self._touched.items()))
