"""Blob ingest: stream bytes into an upload while hashing them, verify the digest, commit.

The /v2 upload endpoints are HTTP adapters over this; the builder and other in-process callers ingest
layers through it with no HTTP in between. `BlobStore.put` stays for small content only.

Receiving overlaps hashing and writing: batches go to a worker thread while the next ones fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from concurrent.futures import Executor, Future

from shipyard.domain.digest import Digest
from shipyard.domain.records import BlobInfo, UploadState
from shipyard.services.access import Actor
from shipyard.services.registry import RegistryService, UploadAppender

# Bytes go to the writer thread in batches of about this size, so that hops to it are few; the loop
# receives the next batch while the thread hashes and writes this one. (2 MiB measured no faster.)
WRITE_BATCH = 1024 * 1024
# Bytes handed to the writer thread and not yet written, at most (beyond it the loop waits); with the
# server's own buffer, what one upload holds in memory.
QUEUED_LIMIT = 4 * 1024 * 1024
# The first batch of a request is smaller, so that the thread starts early: every chunk of a chunked
# upload is a request of its own.
FIRST_BATCH = 256 * 1024
# Received pieces smaller than this are copied together before they are written: hashlib holds the GIL
# for tiny buffers, and every piece costs a write(2).
SMALL_PIECE = 64 * 1024


class Batch:
    """Received pieces waiting for the writer thread, kept as they came (no join) except tiny ones."""

    __slots__ = ("_small", "pieces", "size")

    def __init__(self) -> None:
        self.pieces: list[bytes | bytearray] = []
        self.size = 0
        self._small: bytearray | None = None

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if len(piece) >= SMALL_PIECE:
            self._small = None
            self.pieces.append(piece)
            return
        if self._small is None:
            self._small = bytearray()
            self.pieces.append(self._small)
        self._small += piece
        if len(self._small) >= SMALL_PIECE:
            self._small = None


class Feeder:
    """Hands batches to the writer thread in order, without making it wait for the loop.

    The thread drains a queue and goes on to the next batch as soon as it is done with one; it calls
    back into the loop only when the loop waits for room (more than QUEUED_LIMIT bytes queued). The
    writer is not thread-safe: at most one drain runs at a time, and it takes batches in order."""

    def __init__(self, executor: Executor, appender: UploadAppender) -> None:
        self._executor = executor
        self._appender = appender
        self._lock = threading.Lock()
        # under the lock:
        self._queue: deque[Batch] = deque()
        self._queued = 0
        self._running = False
        self._failure: BaseException | None = None
        self._room: asyncio.Future[None] | None = None
        self._drain: Future[None] | None = None  # the drain that runs, or the last one
        self._loop = asyncio.get_running_loop()

    async def feed(self, batch: Batch) -> None:
        with self._lock:
            if self._failure is not None:
                raise self._failure  # a failed write: stop receiving
            self._queue.append(batch)
            self._queued += batch.size
            start = not self._running
            self._running = True
            room = self._room = self._loop.create_future() if self._queued > QUEUED_LIMIT else None
        if start:
            self._drain = self._executor.submit(self._run)
        if room is not None:
            await room
            with self._lock:
                if self._failure is not None:
                    raise self._failure

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        self._running = False
                        return
                    batch = self._queue.popleft()
                self._appender.write_all(batch.pieces)
                with self._lock:
                    self._queued -= batch.size
                    if self._queued <= QUEUED_LIMIT:
                        self._wake()
        except BaseException as error:
            with self._lock:
                self._failure = error
                self._running = False
                self._wake()  # the loop must not go on waiting for room
            raise

    def _wake(self) -> None:
        """Resolve the loop's wait for room, if any (under the lock)."""
        room, self._room = self._room, None
        if room is not None:
            self._loop.call_soon_threadsafe(_resolve, room)

    async def settle(self) -> None:
        """Wait until every fed batch is written; raise what failed."""
        drain = self._drain
        if drain is not None:
            await asyncio.wrap_future(drain)

    def stop(self) -> None:
        """From a worker thread, after a failure: drop what is queued, wait for the batch in the writer."""
        with self._lock:
            self._queue.clear()
        drain = self._drain
        if drain is not None and not drain.cancel():  # a drain that has not started never will
            with contextlib.suppress(BaseException):
                drain.result()


def _resolve(room: asyncio.Future[None]) -> None:
    if not room.done():
        room.set_result(None)


def _abort_after(feeder: Feeder, appender: UploadAppender) -> None:
    """Roll back once the writer thread is done with the batch it may still hold: a cancelled await
    does not stop the thread, and the writer must not be aborted under it."""
    feeder.stop()
    appender.abort()


async def _receive(body: AsyncIterator[bytes], batch: Batch, limit: int) -> bool:
    """Add pieces of the body to `batch` until it holds `limit` bytes; whether the body ended first."""
    while batch.size < limit:
        try:
            piece = await anext(body)
        except StopAsyncIteration:
            return True
        batch.add(piece)
    return False


async def pump(
    executor: Executor, body: AsyncIterator[bytes], appender: UploadAppender, batch: Batch
) -> UploadState:
    """Stream the rest of the body into the upload after `batch`, what was received of it so far; on any
    failure nothing of this chunk remains."""
    feeder = Feeder(executor, appender)
    limit = FIRST_BATCH
    loop = asyncio.get_running_loop()
    try:
        if batch.size >= limit:
            await feeder.feed(batch)
            batch = Batch()
            limit = WRITE_BATCH
        async for piece in body:
            batch.add(piece)
            if batch.size >= limit:
                await feeder.feed(batch)
                batch = Batch()
                limit = WRITE_BATCH
        await feeder.settle()
        return await loop.run_in_executor(executor, appender.finish, batch.pieces)
    except BaseException:
        await loop.run_in_executor(executor, _abort_after, feeder, appender)
        raise


def _append_whole(
    registry: RegistryService,
    actor: Actor,
    name: str,
    upload_id: str,
    start: int | None,
    length: int | None,
    batch: Batch,
) -> UploadState:
    """Open the upload, write the whole chunk and commit it: one trip to a worker thread."""
    appender = registry.begin_append(actor, name, upload_id, start, length)
    try:
        return appender.finish(batch.pieces)
    except BaseException:
        appender.abort()
        raise


class BlobIngest:
    """Streams blobs into the registry. Blocking work runs on `executor`, never on the event loop."""

    def __init__(self, registry: RegistryService, executor: Executor) -> None:
        self.registry = registry
        self.executor = executor

    async def append(
        self,
        actor: Actor,
        repository: str,
        upload_id: str,
        body: AsyncIterable[bytes],
        start: int | None = None,
        length: int | None = None,
    ) -> UploadState:
        """Append `body` as a chunk of the upload: at `start` if given (RangeInvalid if the upload stands
        elsewhere), of `length` bytes if known (SizeInvalid otherwise). All of it or nothing is added.

        A body that ends within the first batch (most chunks of small images, sent with or without a
        length) is received before the upload is opened: opening, writing and committing it is then one
        trip to a worker thread instead of three."""
        loop = asyncio.get_running_loop()
        stream = aiter(body)
        batch = Batch()
        if (length is None or length < FIRST_BATCH) and await _receive(stream, batch, FIRST_BATCH):
            return await loop.run_in_executor(
                self.executor,
                _append_whole,
                self.registry,
                actor,
                repository,
                upload_id,
                start,
                length,
                batch,
            )
        appender = await loop.run_in_executor(
            self.executor, self.registry.begin_append, actor, repository, upload_id, start, length
        )
        return await pump(self.executor, stream, appender, batch)

    async def ingest(
        self,
        actor: Actor,
        repository: str,
        body: AsyncIterable[bytes],
        digest: str,
        *,
        length: int | None = None,
        principal: str | None = None,
    ) -> BlobInfo:
        """Stream a whole blob into `repository`, verify that it hashes to `digest` and link it. On any
        failure (a wrong digest, a body past the limit, a broken stream) no blob becomes visible and no
        upload is left behind. `principal`: whose upload slot it takes (see start_upload)."""
        parsed = Digest.parse(digest)  # before reading any byte
        loop = asyncio.get_running_loop()
        registry = self.registry
        state = await loop.run_in_executor(self.executor, registry.start_upload, actor, repository, principal)
        try:
            appender = await loop.run_in_executor(
                self.executor, registry.begin_append, actor, repository, state.id, None, length
            )
            appended = await pump(self.executor, aiter(body), appender, Batch())
            return await loop.run_in_executor(
                self.executor, registry.complete_upload, actor, repository, state.id, str(parsed), appended
            )
        except BaseException:
            await loop.run_in_executor(self.executor, self._discard, actor, repository, state.id)
            raise

    def ingest_sync(
        self,
        actor: Actor,
        repository: str,
        chunks: Iterable[bytes],
        digest: str,
        *,
        principal: str | None = None,
    ) -> BlobInfo:
        """`ingest` for a caller in a thread of its own, with a plain iterable: it writes in that thread."""
        parsed = Digest.parse(digest)
        registry = self.registry
        state = registry.start_upload(actor, repository, principal)
        try:
            appender = registry.begin_append(actor, repository, state.id)
            try:
                for chunk in chunks:
                    appender.write(chunk)
                appended = appender.finish()
            except BaseException:
                appender.abort()
                raise
            return registry.complete_upload(actor, repository, state.id, str(parsed), appended)
        except BaseException:
            self._discard(actor, repository, state.id)
            raise

    def _discard(self, actor: Actor, repository: str, upload_id: str) -> None:
        with contextlib.suppress(Exception):
            self.registry.cancel_upload(actor, repository, upload_id)
