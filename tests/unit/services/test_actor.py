"""Services check the acting principal themselves: a call without the grant is refused, whoever makes
it (the /v2 edge, a builder, a worker)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from shipyard.domain import mediatypes as mt
from shipyard.domain.errors import Denied
from shipyard.services.access import NOBODY, SYSTEM, Actor
from shipyard.services.ingest import BlobIngest
from shipyard.services.registry import RegistryService

REPO = "team/app"
OTHER = "team/other"
OWNER = Actor.granted("owner", [("repository", REPO, ["*"]), ("repository", OTHER, ["*"])])
READER = Actor.granted("reader", [("repository", REPO, ["pull"])])
PUSHER = Actor.granted("pusher", [("repository", REPO, ["pull", "push"])])
STRANGER = Actor.granted("stranger", [("repository", OTHER, ["*"])])


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = b"{}"
MANIFEST = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":'
    b'"application/vnd.oci.image.config.v1+json","digest":"' + digest_of(CONFIG).encode() + b'","size":2},'
    b'"layers":[]}'
)


@pytest.fixture
def filled(service: RegistryService) -> RegistryService:
    """REPO holds a blob and a manifest tagged v1, put there by its owner."""
    upload = service.start_upload(OWNER, REPO)
    appender = service.begin_append(OWNER, REPO, upload.id)
    state = appender.finish([CONFIG])
    service.complete_upload(OWNER, REPO, upload.id, digest_of(CONFIG), state)
    service.put_manifest(OWNER, REPO, "v1", MANIFEST, mt.OCI_MANIFEST)
    return service


def calls(service: RegistryService, upload_id: str) -> dict[str, tuple[str, Callable[[Actor], Any]]]:
    """Every service call that reads or changes REPO, with the action it needs."""
    blob = digest_of(CONFIG)
    return {
        "stat_blob": ("pull", lambda a: service.stat_blob(a, REPO, blob)),
        "read_blob": ("pull", lambda a: service.read_blob(a, REPO, blob)),
        "blob_local_path": ("pull", lambda a: service.blob_local_path(a, REPO, blob)),
        "cached_manifest": ("pull", lambda a: service.cached_manifest(a, REPO, "v1")),
        "get_manifest": ("pull", lambda a: service.get_manifest(a, REPO, "v1")),
        "list_tags": ("pull", lambda a: service.list_tags(a, REPO, None, None)),
        "referrers": ("pull", lambda a: service.referrers(a, REPO, blob, None)),
        "upload_status": ("pull", lambda a: service.upload_status(a, REPO, upload_id)),
        "start_upload": ("push", lambda a: service.start_upload(a, REPO)),
        "begin_append": ("push", lambda a: service.begin_append(a, REPO, upload_id).abort()),
        "complete_upload": ("push", lambda a: service.complete_upload(a, REPO, upload_id, digest_of(b""))),
        "mount_blob": ("push", lambda a: service.mount_blob(a, REPO, blob, OTHER)),
        "put_manifest": ("push", lambda a: service.put_manifest(a, REPO, "v2", MANIFEST, mt.OCI_MANIFEST)),
        "cancel_upload": ("push", lambda a: service.cancel_upload(a, REPO, upload_id)),
        "delete_manifest": ("delete", lambda a: service.delete_manifest(a, REPO, "v1")),
        "delete_blob": ("delete", lambda a: service.delete_blob(a, REPO, blob)),
    }


@pytest.mark.parametrize("actor", [NOBODY, STRANGER], ids=["no grants", "grants elsewhere"])
def test_every_call_on_a_repository_is_refused_without_a_grant(filled: RegistryService, actor: Actor) -> None:
    upload = filled.start_upload(OWNER, REPO)
    for name, (_, call) in calls(filled, upload.id).items():
        with pytest.raises(Denied):
            call(actor)
            pytest.fail(f"{name} let {actor.name} through")
    # nothing was changed by the refused calls
    assert filled.get_manifest(OWNER, REPO, "v1").content == MANIFEST
    assert filled.upload_status(OWNER, REPO, upload.id).size == 0
    assert filled.list_tags(OWNER, REPO, None, None).items == ["v1"]


def test_a_reader_reads_and_is_refused_every_change(filled: RegistryService) -> None:
    upload = filled.start_upload(OWNER, REPO)
    for name, (action, call) in calls(filled, upload.id).items():
        if action == "pull":
            call(READER)
        else:
            with pytest.raises(Denied):
                call(READER)
                pytest.fail(f"{name} let a reader {action}")
    assert filled.get_manifest(OWNER, REPO, "v1").content == MANIFEST


def test_a_pusher_may_not_delete(filled: RegistryService) -> None:
    with pytest.raises(Denied):
        filled.delete_manifest(PUSHER, REPO, "v1")
    with pytest.raises(Denied):
        filled.delete_blob(PUSHER, REPO, digest_of(CONFIG))
    upload = filled.start_upload(PUSHER, REPO)
    filled.cancel_upload(PUSHER, REPO, upload.id)  # giving up one's own upload is part of pushing


def test_a_mount_takes_only_from_repositories_the_actor_may_pull(filled: RegistryService) -> None:
    blob = digest_of(CONFIG)
    mounter = Actor.granted("mounter", [("repository", OTHER, ["push"])])
    assert filled.mount_blob(mounter, OTHER, blob, REPO) is None
    assert filled.mount_blob(mounter, OTHER, blob, None) is None
    allowed = Actor.granted("mounter", [("repository", OTHER, ["push"]), ("repository", REPO, ["pull"])])
    info = filled.mount_blob(allowed, OTHER, blob, None)
    assert info is not None and info.digest == blob


def test_the_catalog_needs_its_grant(filled: RegistryService) -> None:
    with pytest.raises(Denied):
        filled.catalog(OWNER, None, None)
    lister = Actor.granted("lister", [("registry", "catalog", ["*"])])
    assert filled.catalog(lister, None, None).items == [REPO]


def test_housekeeping_is_for_the_system_actor_only(filled: RegistryService) -> None:
    for actor in (NOBODY, OWNER, Actor.everything("anonymous")):
        with pytest.raises(Denied):
            filled.purge_uploads(actor, timedelta(0))
    assert filled.purge_uploads(SYSTEM, timedelta(hours=1)) == 0


@pytest.fixture
def ingest(service: RegistryService) -> Iterator[BlobIngest]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield BlobIngest(service, executor)


def test_ingest_without_push_is_refused_before_anything_is_staged(
    service: RegistryService, ingest: BlobIngest
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"layer"

    with pytest.raises(Denied):
        asyncio.run(ingest.ingest(READER, REPO, body(), digest_of(b"layer")))
    with pytest.raises(Denied):
        ingest.ingest_sync(STRANGER, REPO, [b"layer"], digest_of(b"layer"))
    assert list(service.blobs.uploads()) == []
    assert service.metadata.upload_ids() == set()
    assert ingest.ingest_sync(PUSHER, REPO, [b"layer"], digest_of(b"layer")).size == 5


def test_grants_as_tokens_carry_them() -> None:
    actor = Actor.granted(
        "someone",
        [
            ("repository", "a/one", ["pull"]),
            ("repository", "a/one", ["push"]),  # a second entry for the same repository adds up
            ("repository", "a/two", ["*"]),
            ("repository", "a/three", ["pull", "admin"]),  # unknown actions grant nothing
            ("registry", "catalog", ["pull"]),  # only `*` grants the catalog, as at the edge
        ],
    )
    assert actor.may("a/one", "pull") and actor.may("a/one", "push") and not actor.may("a/one", "delete")
    assert all(actor.may("a/two", action) for action in ("pull", "push", "delete"))
    assert actor.repositories["a/three"] == frozenset({"pull"})
    assert not actor.may("a/four", "pull")
    assert not actor.catalog
    assert not actor.unrestricted
