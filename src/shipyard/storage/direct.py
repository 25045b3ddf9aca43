"""Appending to a file with direct I/O (O_DIRECT), for large uploads.

Buffered writes copy every byte into the page cache, and on a machine whose free memory has never been
touched that copy costs more CPU than hashing the bytes does (each new page is a first touch). Direct
I/O hands whole aligned blocks from a reused buffer to the device instead, with no copy into the cache
and nothing left for fsync to write. Blocks go to the device on a small pool of I/O threads, so the
thread that hashes is never waiting for the disk; two buffers per writer take turns.

What does not fill a whole buffer (a small upload, the tail of a large one) is written the ordinary
way, and so is everything on a filesystem that refuses O_DIRECT (tmpfs, some network filesystems).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

# Direct I/O wants the file offset, the length and the memory address aligned to the device's logical
# block size: 4096 covers the usual 512 and 4096.
ALIGN = 4096
DIRECT_CHUNK = 2 * 1024 * 1024
_IO_THREADS = 8
# Buffers kept for reuse: a buffer used before is memory the process has already touched.
_POOL_LIMIT = 8

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_pool: dict[int, list[mmap.mmap]] = {}
_pool_lock = threading.Lock()


def _io_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=_IO_THREADS, thread_name_prefix="direct-io")
        return _executor


def _take_buffer(size: int) -> mmap.mmap:
    with _pool_lock:
        free = _pool.get(size)
        if free:
            return free.pop()
    return mmap.mmap(-1, size)  # anonymous mappings are page-aligned


def _give_back(buffer: mmap.mmap) -> None:
    with _pool_lock:
        free = _pool.setdefault(len(buffer), [])
        if len(free) < _POOL_LIMIT:
            free.append(buffer)
            return
    buffer.close()


def open_direct(path: str) -> int | None:
    """A write descriptor with O_DIRECT, or None where the platform or the filesystem has none."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError as error:
        if error.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written


def _write_block(direct_fd: int, fd: int, data: memoryview, offset: int) -> bool:
    """Write one aligned block directly; if the filesystem refuses (EINVAL), write it buffered and
    return False so that the caller stops trying."""
    try:
        _pwrite_all(direct_fd, data, offset)
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
        _pwrite_all(fd, data, offset)
        return False
    return True


class DirectAppender:
    """Appends at `start` of the file open as `fd` (exclusively: the caller holds its lock), through a
    buffer that holds the file's bytes from an aligned `base`; each full buffer goes out as one direct
    write. `flush` puts everything written into the file; only then does the file reflect it."""

    def __init__(self, path: str, fd: int, start: int, chunk: int = DIRECT_CHUNK) -> None:
        if chunk <= 0 or chunk % ALIGN:
            raise ValueError(f"the direct chunk must be a positive multiple of {ALIGN}")
        self._path = path
        self._fd = fd
        self._chunk = chunk
        self._direct_fd: int | None = None
        self._direct_refused = False
        self._base = start - start % ALIGN
        self._buffers: list[mmap.mmap] = [_take_buffer(chunk)]
        self._pending: list[Future[bool]] = []
        self._current = 0
        self._filled = start - self._base
        self._dirty = False
        if self._filled:
            # the aligned block begins before the start: its head is already in the file
            head = os.pread(fd, self._filled, self._base)
            if len(head) != self._filled:
                raise OSError(errno.EIO, f"staged file shorter than its offset {start}")
            self._buffers[0][: self._filled] = head

    @property
    def refused(self) -> bool:
        """Whether direct I/O turned out not to work on this file (the rest went buffered)."""
        return self._direct_refused

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            buffer = self._buffers[self._current]
            room = self._chunk - self._filled
            step = min(room, len(view))
            buffer[self._filled : self._filled + step] = view[:step]
            self._filled += step
            view = view[step:]
            if self._filled == self._chunk:
                self._send_full()
        self._dirty = True

    def _send_full(self) -> None:
        buffer = self._buffers[self._current]
        offset = self._base
        if self._direct_fd is None and not self._direct_refused:
            self._direct_fd = open_direct(self._path)
            self._direct_refused = self._direct_fd is None
        if self._direct_fd is None or self._direct_refused:
            _pwrite_all(self._fd, memoryview(buffer), offset)
        else:
            future = _io_executor().submit(
                _write_block, self._direct_fd, self._fd, memoryview(buffer), offset
            )
            self._pending.append(future)
            self._turn()
        self._base += self._chunk
        self._filled = 0

    def _turn(self) -> None:
        """Move to the other buffer, waiting for its last write; there are at most two."""
        if len(self._buffers) < 2:
            self._buffers.append(_take_buffer(self._chunk))
            self._current = 1
            return
        self._current = 1 - self._current
        if len(self._pending) > 1:
            self._settle(self._pending.pop(0))

    def _settle(self, future: Future[bool]) -> None:
        if not future.result():
            self._direct_refused = True

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        failure: BaseException | None = None
        for future in pending:
            try:
                self._settle(future)
            except BaseException as error:  # wait for every write before reporting the first failure
                failure = failure or error
        if failure is not None:
            raise failure

    def flush(self) -> None:
        """Wait for the direct writes, then write the partial buffer the ordinary way."""
        self._drain()
        if self._dirty and self._filled:
            buffer = self._buffers[self._current]
            _pwrite_all(self._fd, memoryview(buffer)[: self._filled], self._base)
        self._dirty = False

    def close(self, *, wait: bool = True) -> None:
        """Release the buffers and the direct descriptor; with `wait`, write failures are raised."""
        try:
            if wait:
                self._drain()
            else:
                with contextlib.suppress(BaseException):
                    self._drain()
        finally:
            if self._direct_fd is not None:
                os.close(self._direct_fd)
                self._direct_fd = None
            buffers, self._buffers = self._buffers, []
            for buffer in buffers:
                _give_back(buffer)
