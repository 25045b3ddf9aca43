"""Ingesting a layer through the service, with no HTTP at all: a real RegistryService on SQLite and
PostgreSQL and the filesystem blob store."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shipyard.db import migrate
from shipyard.db.engine import make_engine
from shipyard.db.metadata import MetadataStore
from shipyard.domain.digest import Digest
from shipyard.domain.errors import BlobTooLarge, BlobUnknown, DigestInvalid
from shipyard.services.access import Actor
from shipyard.services.ingest import WRITE_BATCH, BlobIngest
from shipyard.services.registry import RegistryService
from shipyard.storage.filesystem import FilesystemBlobStore
from tests.conftest import DATABASES, database_url

REPO = "team/app"
# the caller of these tests, as a token granting every action on their repositories carries it
ACTOR = Actor.granted("tester", [("repository", name, ["*"]) for name in (REPO,)])
MiB = 1024 * 1024


@pytest.fixture(params=DATABASES)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryService]:
    engine = make_engine(database_url(request.param, request, tmp_path))
    migrate.upgrade(engine)
    yield RegistryService(
        MetadataStore(engine), FilesystemBlobStore(tmp_path / "blobs"), max_blob_bytes=8 * MiB
    )
    engine.dispose()


@pytest.fixture
def ingest(service: RegistryService) -> Iterator[BlobIngest]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield BlobIngest(service, executor)


def layer(size: int) -> tuple[list[bytes], str]:
    """A layer as a builder produces it: pieces of uneven sizes, and its digest."""
    data = os.urandom(size)
    cuts = [0, 1, 70_000, WRITE_BATCH + 3, 3 * WRITE_BATCH, size]
    pieces = [data[a:b] for a, b in itertools.pairwise(cuts) if a < b]
    return pieces, "sha256:" + hashlib.sha256(data).hexdigest()


async def stream(pieces: list[bytes], fail_after: int | None = None) -> AsyncIterator[bytes]:
    for number, piece in enumerate(pieces):
        if number == fail_after:
            raise ConnectionResetError("the producer went away")
        await asyncio.sleep(0)
        yield piece


def assert_nothing_left(service: RegistryService, digest: str) -> None:
    with pytest.raises(BlobUnknown):
        service.stat_blob(ACTOR, REPO, digest)
    assert service.blobs.stat(Digest.parse(digest)) is None
    assert list(service.blobs.uploads()) == []
    assert service.metadata.upload_ids() == set()


def test_a_layer_streams_in_is_verified_and_linked(service: RegistryService, ingest: BlobIngest) -> None:
    pieces, digest = layer(5 * MiB + 17)
    info = asyncio.run(ingest.ingest(ACTOR, REPO, stream(pieces), digest))
    assert (info.digest, info.size) == (digest, 5 * MiB + 17)
    assert service.stat_blob(ACTOR, REPO, digest).size == info.size
    assert b"".join(service.read_blob(ACTOR, REPO, digest)) == b"".join(pieces)
    assert list(service.blobs.uploads()) == []


def test_a_layer_from_a_plain_iterable_in_the_callers_thread(
    service: RegistryService, ingest: BlobIngest
) -> None:
    pieces, digest = layer(3 * MiB)
    info = ingest.ingest_sync(ACTOR, REPO, iter(pieces), digest)
    assert info.size == 3 * MiB
    assert b"".join(service.read_blob(ACTOR, REPO, digest)) == b"".join(pieces)


def test_a_wrong_digest_leaves_no_blob_and_no_upload(service: RegistryService, ingest: BlobIngest) -> None:
    pieces, digest = layer(2 * MiB)
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DigestInvalid):
        asyncio.run(ingest.ingest(ACTOR, REPO, stream(pieces), wrong))
    with pytest.raises(DigestInvalid):
        ingest.ingest_sync(ACTOR, REPO, iter(pieces), wrong)
    assert_nothing_left(service, digest)
    assert_nothing_left(service, wrong)


def test_a_broken_stream_leaves_no_blob_and_no_upload(service: RegistryService, ingest: BlobIngest) -> None:
    pieces, digest = layer(5 * MiB)
    with pytest.raises(ConnectionResetError):
        asyncio.run(ingest.ingest(ACTOR, REPO, stream(pieces, fail_after=3), digest))
    assert_nothing_left(service, digest)


def test_a_layer_past_the_limit_is_refused_as_it_streams(
    service: RegistryService, ingest: BlobIngest
) -> None:
    pieces, digest = layer(9 * MiB)  # the limit is 8 MiB and the stream declares no length
    with pytest.raises(BlobTooLarge):
        asyncio.run(ingest.ingest(ACTOR, REPO, stream(pieces), digest))
    with pytest.raises(BlobTooLarge):
        ingest.ingest_sync(ACTOR, REPO, iter(pieces), digest)
    assert_nothing_left(service, digest)


def test_a_declared_length_past_the_limit_is_refused_before_reading(
    service: RegistryService, ingest: BlobIngest
) -> None:
    read = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal read
        read += 1
        yield b"x"

    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
    with pytest.raises(BlobTooLarge):
        asyncio.run(ingest.ingest(ACTOR, REPO, counted(), digest, length=9 * MiB))
    assert read == 0
    assert_nothing_left(service, digest)


def test_a_malformed_digest_is_refused_before_an_upload_opens(
    service: RegistryService, ingest: BlobIngest
) -> None:
    with pytest.raises(DigestInvalid):
        asyncio.run(ingest.ingest(ACTOR, REPO, stream([b"abc"]), "sha256:nothex"))
    assert service.metadata.upload_ids() == set()
