from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from shipyard.db.metadata import MetadataStore
from shipyard.db.models import Manifest
from shipyard.domain import mediatypes as mt
from shipyard.services.access import Actor
from shipyard.services.pulls import PullRecorder
from shipyard.services.registry import RegistryService

# the caller of these tests, as a token granting every action on their repositories carries it
ACTOR = Actor.granted("tester", [("repository", name, ["*"]) for name in ("app",)])


class Sink:
    def __init__(self, failures: int = 0) -> None:
        self.batches: list[dict[int, datetime]] = []
        self.failures = failures
        self.on_call: list[Callable[[], object]] = []

    def record_pulls(self, pulls: dict[int, datetime]) -> None:
        for hook in self.on_call:
            hook()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database is down")
        self.batches.append(dict(pulls))


def test_pulls_are_batched_until_flushed() -> None:
    sink = Sink()
    recorder = PullRecorder(sink)
    before = datetime.now(UTC)
    for manifest_id in (1, 2, 1, 3, 1):
        recorder.record(manifest_id)
    assert sink.batches == []  # nothing on the request path
    assert recorder.flush() == 3
    assert len(sink.batches) == 1
    batch = sink.batches[0]
    assert set(batch) == {1, 2, 3}
    assert all(before <= t <= datetime.now(UTC) and t.tzinfo is not None for t in batch.values())


def test_the_latest_pull_of_a_manifest_wins() -> None:
    sink = Sink()
    recorder = PullRecorder(sink)
    recorder.record(1)
    recorder.record(2)
    recorder.record(1)
    recorder.flush()
    batch = sink.batches[0]
    assert batch[1] >= batch[2]


def test_an_empty_flush_does_not_call_the_sink() -> None:
    sink = Sink()
    calls: list[None] = []
    sink.on_call.append(lambda: calls.append(None))
    recorder = PullRecorder(sink)
    assert recorder.flush() == 0
    recorder.record(1)
    assert recorder.flush() == 1
    assert recorder.flush() == 0
    assert len(calls) == 1


def test_a_failed_flush_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(failures=2)
    recorder = PullRecorder(sink)
    recorder.record(1)
    recorder.record(2)
    with caplog.at_level(logging.ERROR, logger="shipyard.services.pulls"):
        assert recorder.flush() == 0
        assert recorder.flush() == 0
    assert [r.message for r in caplog.records] == ["could not record 2 manifest pulls; will retry"] * 2
    assert sink.batches == []
    assert recorder.flush() == 2
    assert [set(b) for b in sink.batches] == [{1, 2}]
    assert recorder.flush() == 0


def test_a_pull_during_a_failed_flush_is_not_overwritten_by_the_older_one() -> None:
    sink = Sink(failures=1)
    recorder = PullRecorder(sink)
    recorder.record(1)
    recorder.record(2)
    first = {}

    def pull_again() -> None:
        if not first:
            first["time"] = datetime.now(UTC)
            recorder.record(1)  # the sink is slow; a new pull arrives meanwhile

    sink.on_call.append(pull_again)
    assert recorder.flush() == 0
    assert recorder.flush() == 2
    batch = sink.batches[0]
    assert batch[1] >= first["time"] > batch[2]


def test_concurrent_pulls_and_flushes_lose_nothing() -> None:
    sink = Sink()
    recorder = PullRecorder(sink)
    stop = threading.Event()

    def flusher() -> None:
        while not stop.is_set():
            recorder.flush()

    def puller(start: int) -> None:
        for manifest_id in range(start, start + 500):
            recorder.record(manifest_id)

    background = threading.Thread(target=flusher)
    background.start()
    pullers = [threading.Thread(target=puller, args=(i * 500,)) for i in range(4)]
    for thread in pullers:
        thread.start()
    for thread in pullers:
        thread.join()
    stop.set()
    background.join()
    recorder.flush()
    recorded = set().union(*(set(b) for b in sink.batches))
    assert recorded == set(range(2000))


def test_pulls_of_a_manifest_reach_the_database(service: RegistryService, metadata: MetadataStore) -> None:
    config = b"{}"
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    upload = service.start_upload(ACTOR, "app")
    appender = service.begin_append(ACTOR, "app", upload.id)
    appender.write(config)
    appender.finish()
    service.complete_upload(ACTOR, "app", upload.id, config_digest)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_EMPTY_JSON, "digest": config_digest, "size": 2},
            "layers": [],
        }
    ).encode()
    digest = service.put_manifest(ACTOR, "app", "latest", body, mt.OCI_MANIFEST).digest

    def last_pulled() -> datetime | None:
        with metadata.engine.connect() as conn:
            return conn.execute(select(Manifest.last_pulled_at).where(Manifest.digest == digest)).scalar_one()

    before = datetime.now(UTC).replace(tzinfo=None)
    service.get_manifest(ACTOR, "app", "latest")
    service.get_manifest(ACTOR, "app", digest)
    assert last_pulled() is None  # not on the request path
    assert service.pulls.flush() == 1
    pulled = last_pulled()
    assert pulled is not None
    assert before <= pulled.replace(tzinfo=None) <= datetime.now(UTC).replace(tzinfo=None)
