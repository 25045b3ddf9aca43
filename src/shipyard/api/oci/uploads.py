"""Blob uploads: start, monolithic, mount, chunked PATCH, finishing PUT, status and cancel."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Executor, Future

from shipyard.api.errors import body_for, status_for
from shipyard.api.http import JSON, Request, respond
from shipyard.api.oci.context import Context
from shipyard.api.types import Send
from shipyard.domain.digest import Digest
from shipyard.domain.errors import BlobUploadInvalid, DigestInvalid, RangeInvalid, SizeInvalid
from shipyard.domain.records import UploadState
from shipyard.services.access import Identity
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
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


def _range_header(size: int) -> str:
    return f"0-{max(size - 1, 0)}"


def _upload_headers(name: str, state: UploadState) -> dict[str, str]:
    return {
        "location": f"/v2/{name}/blobs/uploads/{state.id}",
        "range": _range_header(state.size),
        "docker-upload-uuid": state.id,
    }


def _blob_created(name: str, digest: str) -> dict[str, str]:
    return {"location": f"/v2/{name}/blobs/{digest}", "docker-content-digest": digest}


def parse_content_range(value: str | None) -> tuple[int, int] | None:
    """(start, length) of a chunk's Content-Range, as clients send it (`a-b`, inclusive)."""
    if value is None:
        return None
    match = _CONTENT_RANGE.match(value.strip())
    if match is None:
        raise RangeInvalid(f"malformed Content-Range: {value!r}")
    first, last = int(match.group(1)), int(match.group(2))
    if last < first:
        raise RangeInvalid(f"malformed Content-Range: {value!r}")
    return first, last - first + 1


def _has_body(request: Request) -> bool:
    length = request.content_length()
    if length is not None:
        return length > 0
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


class _Batch:
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


class _Feeder:
    """Hands batches to the writer thread in order, without making it wait for the loop.

    The thread drains a queue and goes on to the next batch as soon as it is done with one; it calls
    back into the loop only when the loop waits for room (more than QUEUED_LIMIT bytes queued). The
    writer is not thread-safe: at most one drain runs at a time, and it takes batches in order."""

    def __init__(self, executor: Executor, appender: UploadAppender) -> None:
        self._executor = executor
        self._appender = appender
        self._lock = threading.Lock()
        # under the lock:
        self._queue: deque[_Batch] = deque()
        self._queued = 0
        self._running = False
        self._failure: BaseException | None = None
        self._room: asyncio.Future[None] | None = None
        self._drain: Future[None] | None = None  # the drain that runs, or the last one
        self._loop = asyncio.get_running_loop()

    async def feed(self, batch: _Batch) -> None:
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


def _abort_after(feeder: _Feeder, appender: UploadAppender) -> None:
    """Roll back once the writer thread is done with the batch it may still hold: a cancelled await
    does not stop the thread, and the writer must not be aborted under it."""
    feeder.stop()
    appender.abort()


async def _receive(body: AsyncIterator[bytes], batch: _Batch, limit: int) -> bool:
    """Add pieces of the body to `batch` until it holds `limit` bytes; whether the body ended first."""
    while batch.size < limit:
        try:
            piece = await anext(body)
        except StopAsyncIteration:
            return True
        batch.add(piece)
    return False


async def _pump(
    ctx: Context, body: AsyncIterator[bytes], appender: UploadAppender, batch: _Batch
) -> UploadState:
    """Stream the rest of the body into the upload after `batch`, what was received of it so far; on any
    failure nothing of this chunk remains.

    Batches go to the writer thread while the next ones fill, so receiving overlaps hashing and
    writing."""
    feeder = _Feeder(ctx.executor, appender)
    limit = FIRST_BATCH
    try:
        if batch.size >= limit:
            await feeder.feed(batch)
            batch = _Batch()
            limit = WRITE_BATCH
        async for piece in body:
            batch.add(piece)
            if batch.size >= limit:
                await feeder.feed(batch)
                batch = _Batch()
                limit = WRITE_BATCH
        await feeder.settle()
        return await ctx.run(appender.finish, batch.pieces)
    except BaseException:
        await ctx.run(_abort_after, feeder, appender)
        raise


def _append_whole(
    registry: RegistryService, name: str, upload_id: str, start: int | None, length: int | None, batch: _Batch
) -> UploadState:
    """Open the upload, write the whole chunk and commit it: one trip to a worker thread."""
    appender = registry.begin_append(name, upload_id, start, length)
    try:
        return appender.finish(batch.pieces)
    except BaseException:
        appender.abort()
        raise


async def _append(ctx: Context, request: Request, name: str, upload_id: str) -> UploadState:
    """Append the body as a chunk. Without Content-Range it is a streamed chunk that simply appends.

    A body that ends within the first batch (most chunks of small images, sent with or without a
    length) is received before the upload is opened: opening, writing and committing it is then one
    trip to a worker thread instead of three."""
    declared = parse_content_range(request.headers.get("content-range"))
    length = request.content_length()
    start: int | None = None
    if declared is not None:
        start, range_length = declared
        if length is not None and length != range_length:
            raise SizeInvalid(f"Content-Length {length} does not match Content-Range ({range_length} bytes)")
        length = range_length
    body = aiter(request.stream())
    batch = _Batch()
    if (length is None or length < FIRST_BATCH) and await _receive(body, batch, FIRST_BATCH):
        return await ctx.run(_append_whole, ctx.registry, name, upload_id, start, length, batch)
    appender = await ctx.run(ctx.registry.begin_append, name, upload_id, start, length)
    return await _pump(ctx, body, appender, batch)


async def start_upload(ctx: Context, request: Request, send: Send, name: str, identity: Identity) -> None:
    mount = request.param("mount")
    if mount is not None:
        source = request.param("from")
        info = await ctx.run(
            ctx.registry.mount_blob,
            name,
            mount,
            source,
            lambda repo: ctx.access.allowed(identity, repo, "pull"),
        )
        if info is not None:
            await respond(send, 201, _blob_created(name, info.digest))
            return
    digest = request.param("digest")
    if digest is not None:
        parsed = Digest.parse(digest)  # reject a bad digest before reading any body
        state = await ctx.run(ctx.registry.start_upload, name, _principal(identity))
        try:
            appender = await ctx.run(
                ctx.registry.begin_append, name, state.id, None, request.content_length()
            )
            appended = await _pump(ctx, aiter(request.stream()), appender, _Batch())
            info = await ctx.run(ctx.registry.complete_upload, name, state.id, str(parsed), appended)
        except BaseException:
            await ctx.run(_discard, ctx, name, state.id)
            raise
        await respond(send, 201, _blob_created(name, info.digest))
        return
    state = await ctx.run(ctx.registry.start_upload, name, _principal(identity))
    await respond(send, 202, _upload_headers(name, state))


def _principal(identity: Identity) -> str | None:
    """Whose slot an upload takes: nobody's when authentication is off (every caller is anonymous)."""
    return None if identity.anonymous else identity.subject


def _discard(ctx: Context, name: str, upload_id: str) -> None:
    with contextlib.suppress(Exception):
        ctx.registry.cancel_upload(name, upload_id)


async def patch_upload(ctx: Context, request: Request, send: Send, name: str, upload_id: str) -> None:
    try:
        state = await _append(ctx, request, name, upload_id)
    except RangeInvalid as error:
        await _refuse_range(ctx, send, name, upload_id, error)
        return
    await respond(send, 202, _upload_headers(name, state))


async def _refuse_range(ctx: Context, send: Send, name: str, upload_id: str, error: RangeInvalid) -> None:
    """A 416 says where the upload stands (Range, Location), so that the client can resume from there."""
    state = await ctx.run(ctx.registry.upload_status, name, upload_id)
    headers = {"content-type": JSON, **_upload_headers(name, state)}
    await respond(send, status_for(error), headers, body_for(error))


async def finish_upload(ctx: Context, request: Request, send: Send, name: str, upload_id: str) -> None:
    digest = request.param("digest")
    if digest is None:
        raise DigestInvalid("the digest query parameter is required to finish an upload")
    parsed = Digest.parse(digest)
    appended: UploadState | None = None
    if _has_body(request):
        try:
            appended = await _append(ctx, request, name, upload_id)
        except RangeInvalid as error:
            await _refuse_range(ctx, send, name, upload_id, error)
            return
    elif request.headers.get("content-range"):
        raise BlobUploadInvalid("Content-Range without a body")
    info = await ctx.run(ctx.registry.complete_upload, name, upload_id, str(parsed), appended)
    await respond(send, 201, _blob_created(name, info.digest))


async def upload_status(ctx: Context, request: Request, send: Send, name: str, upload_id: str) -> None:
    state = await ctx.run(ctx.registry.upload_status, name, upload_id)
    await respond(send, 204, _upload_headers(name, state))


async def cancel_upload(ctx: Context, request: Request, send: Send, name: str, upload_id: str) -> None:
    await ctx.run(ctx.registry.cancel_upload, name, upload_id)
    await respond(send, 204)
