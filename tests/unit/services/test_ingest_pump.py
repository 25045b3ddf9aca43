"""How a blob's body reaches the writer thread: batched, in order, one batch at a time,
queued while the thread writes (up to a limit), and rolled back only once the thread has let go of
the writer."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from shipyard.api.http import ClientDisconnected, Request
from shipyard.domain.errors import BlobUploadUnknown
from shipyard.domain.records import UploadState
from shipyard.services import ingest
from shipyard.services.access import SYSTEM, Actor
from shipyard.services.ingest import BlobIngest
from shipyard.services.registry import UploadAppender

KiB = 1024
MiB = 1024 * KiB


class FakeAppender:
    """Records what the pump hands over, from whichever thread, and how many batches overlap."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.events: list[str] = []
        self.batches: list[list[bytes]] = []
        self.handed: list[list[bytes | bytearray]] = []
        self.received = bytearray()
        self._busy = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def write_all(self, pieces: Sequence[bytes | bytearray]) -> None:
        with self._lock:
            self._busy += 1
            self.most_at_once = max(self.most_at_once, self._busy)
            self.events.append("write started")
        if self.gate is not None:
            assert self.gate.wait(10)
        with self._lock:
            self.handed.append(list(pieces))
            self.batches.append([bytes(piece) for piece in pieces])
            for piece in pieces:
                self.received += piece
            self._busy -= 1
            self.events.append("write done")

    def finish(self, last: Sequence[bytes | bytearray] = ()) -> UploadState:
        if last:
            self.write_all(last)
        self.events.append("finished")
        return cast(UploadState, "state")

    def abort(self) -> None:
        self.events.append("aborted")


class Body:
    """An ASGI receive() that yields `pieces`, then a disconnect if `disconnect` is set."""

    def __init__(self, pieces: list[bytes], *, disconnect: bool = False) -> None:
        self._pieces: Iterator[bytes] = iter(pieces)
        self._count = len(pieces)
        self.disconnect = disconnect
        self.delivered = 0

    async def receive(self) -> dict[str, Any]:
        await asyncio.sleep(0)
        piece = next(self._pieces, None)
        if piece is None:
            return {"type": "http.disconnect"}
        self.delivered += 1
        more = self.disconnect or self.delivered < self._count
        return {"type": "http.request", "body": piece, "more_body": more}


def _request(body: Body, headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    scope = {"type": "http", "method": "PATCH", "path": "/v2/a/blobs/uploads/x", "headers": headers or []}
    return Request(scope, body.receive)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


def _pump(executor: ThreadPoolExecutor, body: Body, appender: FakeAppender) -> Any:
    stream = aiter(_request(body).stream())
    return ingest.pump(executor, stream, cast(UploadAppender, appender), ingest.Batch())


def test_pieces_arrive_whole_in_order_and_in_large_batches(executor: ThreadPoolExecutor) -> None:
    sizes = [700, 300 * KiB, 5, 1 * MiB, 3 * KiB, 3 * KiB, 2 * MiB + 1, 100, 256 * KiB] * 4
    pieces = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    appender = FakeAppender()

    assert asyncio.run(_pump(executor, Body(pieces), appender)) == "state"

    assert bytes(appender.received) == b"".join(pieces)
    assert appender.events[-1] == "finished" and "aborted" not in appender.events
    assert appender.most_at_once == 1  # the writer is never used by two threads at once
    *full, _ = appender.batches
    assert full, "a body of many MiB goes in several batches"
    largest = max(sizes)
    for number, batch in enumerate(full):
        limit = ingest.FIRST_BATCH if number == 0 else ingest.WRITE_BATCH
        assert limit <= sum(map(len, batch)) < limit + largest
    # large pieces are handed over as they came (not copied); tiny ones are joined up
    handed = [piece for batch in appender.handed for piece in batch]
    assert all(
        any(piece is given for given in handed) for piece in pieces if len(piece) >= ingest.SMALL_PIECE
    )
    for batch in appender.batches:
        for first, second in itertools.pairwise(batch):
            assert len(first) >= ingest.SMALL_PIECE or len(second) >= ingest.SMALL_PIECE


PIECE = 512 * KiB


def _received_before_the_pump_waits(piece: int) -> int:
    """How many pieces of `piece` bytes the pump takes while the first batch is stuck in the writer
    thread: batches queue up until more than QUEUED_LIMIT bytes are handed over and not written."""
    batch = queued = delivered = 0
    limit = ingest.FIRST_BATCH
    while True:
        delivered += 1
        batch += piece
        if batch >= limit:
            queued += batch
            batch, limit = 0, ingest.WRITE_BATCH
            if queued > ingest.QUEUED_LIMIT:
                return delivered


HELD_UP_AFTER = _received_before_the_pump_waits(PIECE)


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def test_the_body_keeps_coming_while_the_thread_writes() -> None:
    gate = threading.Event()
    appender = FakeAppender(gate)
    pieces = [bytes([i]) * PIECE for i in range(HELD_UP_AFTER + 4)]
    body = Body(pieces)
    executor = CountingExecutor()

    async def run() -> None:
        task = asyncio.create_task(_pump(executor, body, appender))
        # the first batch is stuck in the writer thread, yet the body keeps coming
        await _until(lambda: body.delivered == HELD_UP_AFTER, "the queued batches to be received")
        await asyncio.sleep(0.05)
        assert body.delivered == HELD_UP_AFTER  # and no further: the queue is full
        assert appender.events == ["write started"]
        # one thread call takes the queued batches one after another, without a hop back to the loop
        assert executor.submitted == 1
        gate.set()
        await asyncio.wait_for(task, 10)

    with executor:
        asyncio.run(run())
    assert bytes(appender.received) == b"".join(pieces)
    assert appender.most_at_once == 1
    assert len(appender.batches) >= 5


class FailingAppender(FakeAppender):
    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    def write_all(self, pieces: Sequence[bytes | bytearray]) -> None:
        if len(self.batches) == self.fail_at:
            self.events.append("write failed")
            raise OSError(28, "No space left on device")
        super().write_all(pieces)


def test_a_failed_write_stops_the_body_and_rolls_back(executor: ThreadPoolExecutor) -> None:
    appender = FailingAppender(fail_at=2)
    body = Body([b"w" * PIECE] * 200)  # 100 MiB: far more than arrives before the failure shows

    with pytest.raises(OSError, match="No space"):
        asyncio.run(_pump(executor, body, appender))

    assert appender.events[-2:] == ["write failed", "aborted"]
    assert len(appender.batches) == 2  # nothing was written after the failure
    assert body.delivered < 200


def test_a_disconnect_rolls_back_after_the_thread_is_done(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    appender = FakeAppender(gate)
    body = Body([b"y" * PIECE] * (HELD_UP_AFTER - 1), disconnect=True)

    async def run() -> None:
        task = asyncio.create_task(_pump(executor, body, appender))
        await _until(lambda: body.delivered == HELD_UP_AFTER - 1, "the body to be received")
        await asyncio.sleep(0.05)  # the pump has seen the disconnect and waits for the writer
        assert not task.done()
        assert appender.events == ["write started"]  # no roll-back under the thread's feet
        gate.set()
        with pytest.raises(ClientDisconnected):
            await asyncio.wait_for(task, 10)

    asyncio.run(run())
    assert appender.events == ["write started", "write done", "aborted"]


def test_a_cancelled_request_rolls_back_after_the_thread_is_done(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    appender = FakeAppender(gate)
    body = Body([b"z" * PIECE] * (HELD_UP_AFTER + 4))

    async def run() -> None:
        task = asyncio.create_task(_pump(executor, body, appender))
        await _until(lambda: body.delivered == HELD_UP_AFTER, "the pump to wait for the writer thread")
        task.cancel()
        await asyncio.sleep(0.05)
        assert appender.events == ["write started"]  # the thread still holds the writer: no roll-back yet
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)

    asyncio.run(run())
    assert appender.events == ["write started", "write done", "aborted"]


class FakeRegistry:
    """begin_append hands out `appender`, noting how much of the body had arrived by then."""

    def __init__(self, appender: FakeAppender, body: Body, error: Exception | None = None) -> None:
        self.appender = appender
        self.body = body
        self.error = error
        self.opened: list[tuple[object, ...]] = []

    def begin_append(
        self, actor: Actor, name: str, upload_id: str, start: int | None, length: int | None
    ) -> FakeAppender:
        self.opened.append((name, upload_id, start, length, self.body.delivered))
        if self.error is not None:
            raise self.error
        return self.appender


def _append(
    executor: ThreadPoolExecutor, registry: FakeRegistry, headers: list[tuple[bytes, bytes]] | None = None
) -> Any:
    request = _request(registry.body, headers)
    length = request.content_length()
    return BlobIngest(cast(Any, registry), executor).append(SYSTEM, "a", "x", request.stream(), None, length)


def test_a_body_that_ends_in_the_first_batch_is_appended_in_one_thread_call() -> None:
    pieces = [b"a" * 700, b"b" * 100 * KiB, b"c" * 5]  # sent without a length, as streaming clients do
    body, appender = Body(pieces), FakeAppender()
    registry = FakeRegistry(appender, body)
    executor = CountingExecutor()
    with executor:
        assert asyncio.run(_append(executor, registry)) == "state"
    assert executor.submitted == 1
    assert registry.opened == [("a", "x", None, None, 3)]  # opened once the whole body was in
    assert bytes(appender.received) == b"".join(pieces)
    assert appender.events == ["write started", "write done", "finished"]


def test_a_longer_body_of_unknown_length_streams_after_the_first_batch() -> None:
    pieces = [bytes([i]) * 100 * KiB for i in range(40)]  # 4 MiB
    body, appender = Body(pieces), FakeAppender()
    registry = FakeRegistry(appender, body)
    with ThreadPoolExecutor(max_workers=4) as executor:
        assert asyncio.run(_append(executor, registry)) == "state"
    (opened,) = registry.opened
    assert opened[-1] * 100 * KiB >= ingest.FIRST_BATCH  # the first batch was in before it opened
    assert opened[-1] < len(pieces)
    assert bytes(appender.received) == b"".join(pieces)
    assert len(appender.batches) > 2 and appender.events[-1] == "finished"


def test_a_body_declared_large_opens_the_upload_before_reading() -> None:
    pieces = [b"d" * PIECE] * 4
    body, appender = Body(pieces), FakeAppender()
    registry = FakeRegistry(appender, body)
    headers = [(b"content-length", str(4 * PIECE).encode())]
    with ThreadPoolExecutor(max_workers=4) as executor:
        assert asyncio.run(_append(executor, registry, headers)) == "state"
    assert registry.opened == [("a", "x", None, 4 * PIECE, 0)]
    assert bytes(appender.received) == b"".join(pieces)


class FailingFinish(FakeAppender):
    def finish(self, last: Sequence[bytes | bytearray] = ()) -> UploadState:
        self.write_all(last)
        raise OSError(28, "No space left on device")


def test_a_small_body_that_fails_to_commit_is_rolled_back(executor: ThreadPoolExecutor) -> None:
    body, appender = Body([b"e" * 2 * KiB]), FailingFinish()
    with pytest.raises(OSError, match="No space"):
        asyncio.run(_append(executor, FakeRegistry(appender, body)))
    assert appender.events[-1] == "aborted"


def test_a_small_body_for_an_unknown_upload_is_refused(executor: ThreadPoolExecutor) -> None:
    body, appender = Body([b"f" * 2 * KiB]), FakeAppender()
    registry = FakeRegistry(appender, body, BlobUploadUnknown("blob upload unknown"))
    with pytest.raises(BlobUploadUnknown):
        asyncio.run(_append(executor, registry))
    assert appender.events == []
