"""How an upload request's body reaches the writer thread: batched, in order, one batch at a time,
overlapping the receiving of the next; and rolled back only once the thread has let go of the writer."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from shipyard.api.http import ClientDisconnected, Request
from shipyard.api.oci import uploads
from shipyard.api.oci.context import Context
from shipyard.domain.records import UploadState
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


def _request(body: Body) -> Request:
    scope = {"type": "http", "method": "PATCH", "path": "/v2/a/blobs/uploads/x", "headers": []}
    return Request(scope, body.receive)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


def _context(executor: ThreadPoolExecutor) -> Context:
    return Context(registry=cast(Any, None), access=cast(Any, None), executor=executor)


def _pump(executor: ThreadPoolExecutor, body: Body, appender: FakeAppender) -> Any:
    return uploads._pump(_context(executor), _request(body), cast(UploadAppender, appender))


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
        limit = uploads.FIRST_BATCH if number == 0 else uploads.WRITE_BATCH
        assert limit <= sum(map(len, batch)) < limit + largest
    # large pieces are handed over as they came (not copied); tiny ones are joined up
    handed = [piece for batch in appender.handed for piece in batch]
    assert all(
        any(piece is given for given in handed) for piece in pieces if len(piece) >= uploads.SMALL_PIECE
    )
    for batch in appender.batches:
        for first, second in itertools.pairwise(batch):
            assert len(first) >= uploads.SMALL_PIECE or len(second) >= uploads.SMALL_PIECE


PIECE = 512 * KiB
# with the first batch held up in the writer thread, the pump receives the pieces of the first two
# batches and then waits
HELD_UP_AFTER = -(-uploads.FIRST_BATCH // PIECE) + -(-uploads.WRITE_BATCH // PIECE)


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def test_the_next_batch_is_received_while_the_thread_writes(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    appender = FakeAppender(gate)
    pieces = [bytes([i]) * PIECE for i in range(HELD_UP_AFTER + 4)]
    body = Body(pieces)

    async def run() -> None:
        task = asyncio.create_task(_pump(executor, body, appender))
        # the first batch is stuck in the writer thread, yet the body keeps coming
        await _until(lambda: body.delivered == HELD_UP_AFTER, "the second batch to be received")
        await asyncio.sleep(0.05)
        assert body.delivered == HELD_UP_AFTER  # and no further: one batch waits, one is written
        assert appender.events == ["write started"]
        gate.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(run())
    assert bytes(appender.received) == b"".join(pieces)
    assert appender.most_at_once == 1


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
