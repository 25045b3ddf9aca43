"""The registry: blobs, uploads, manifests, tags, referrers and the catalog."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

from shipyard.db.metadata import MetadataStore
from shipyard.domain.digest import Digest, Hasher, is_digest, new_hasher
from shipyard.domain.errors import (
    BlobTooLarge,
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameUnknown,
    RangeInvalid,
    SizeInvalid,
    TooManyUploads,
    Unsupported,
)
from shipyard.domain.manifest import parse_manifest
from shipyard.domain.names import is_tag, validate_name, validate_tag
from shipyard.domain.records import BlobInfo, Page, PutManifestResult, Referrer, StoredManifest, UploadState
from shipyard.services.access import Actor, CatalogFilter
from shipyard.services.pulls import PullRecorder
from shipyard.storage.base import UPLOAD_ID, BlobStore, BlobWriter, UploadBusy, UploadMissing

log = logging.getLogger(__name__)

# Hash state of uploads in flight in this process, so that completing an upload need not re-read it.
# hashlib objects cannot be persisted: another process completing the upload re-hashes the staged bytes.
# The same number of upload states is kept: where this process last left each upload.
_HASHER_CACHE_SIZE = 512
STREAM_ALGORITHM = "sha256"
DEFAULT_PAGE_SIZE = 10_000


class UploadAppender:
    """Appends one request's bytes to an upload; nothing moves unless `finish` is reached."""

    def __init__(
        self,
        service: RegistryService,
        state: UploadState,
        writer: BlobWriter,
        hasher: Hasher | None,
        expected_length: int | None,
    ) -> None:
        self._service = service
        self.state = state
        self._writer = writer
        self._hasher = hasher
        self._expected = expected_length
        self._written = 0

    @property
    def offset(self) -> int:
        return self.state.size + self._written

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._expected is not None and self._written + len(data) > self._expected:
            raise SizeInvalid("request body is longer than its declared length")
        # a body without a length (chunked) is only known to be too large once it is
        if self.offset + len(data) > self._service.max_blob_bytes:
            raise self._service.too_large()
        self._writer.write(data)
        if self._hasher is not None:
            self._hasher.update(data)  # right after the write: the piece is still in the CPU cache
        self._written += len(data)

    def write_all(self, pieces: Iterable[bytes | bytearray | memoryview]) -> None:
        for piece in pieces:
            self.write(piece)

    def finish(self, last: Iterable[bytes | bytearray | memoryview] = ()) -> UploadState:
        """Write the `last` pieces, then make this request's bytes part of the upload."""
        self.write_all(last)
        if self._expected is not None and self._written != self._expected:
            self.abort()
            raise SizeInvalid(f"received {self._written} bytes, expected {self._expected}")
        # the database moves while this writer still holds the upload: a request waiting for it then
        # finds the upload where these bytes left it (and they are in the staged file by then)
        self._writer.flush()
        size = self._writer.offset
        if not self._service.metadata.advance_upload(self.state.id, self.state.size, size):
            self.abort()
            self._service._forget_state(self.state.id)
            raise RangeInvalid("the upload was changed by another request")
        self._writer.commit()
        if self._hasher is not None:
            self._service._remember_hasher(self.state.id, size, self._hasher)
        self.state = UploadState(self.state.id, self.state.repository, size, self.state.created_at)
        self._service._remember_state(self.state)
        return self.state

    def abort(self) -> None:
        self._writer.abort()


class RegistryService:
    def __init__(
        self,
        metadata: MetadataStore,
        blobs: BlobStore,
        *,
        delete_enabled: bool = True,
        pulls: PullRecorder | None = None,
        max_blob_bytes: int = 64 * 1024**3,
        max_uploads_per_principal: int = 100,
        upload_retry_after_seconds: int = 60,
    ) -> None:
        self.metadata = metadata
        self.max_blob_bytes = max_blob_bytes
        self.max_uploads_per_principal = max_uploads_per_principal
        self.upload_retry_after_seconds = upload_retry_after_seconds
        self.blobs = blobs
        self.delete_enabled = delete_enabled
        self.pulls = pulls or PullRecorder(metadata)
        self._hashers: OrderedDict[str, tuple[int, Hasher]] = OrderedDict()
        self._states: OrderedDict[str, UploadState] = OrderedDict()
        self._hashers_lock = threading.Lock()
        # plain counts (the manifest GET path is hot); the metrics read them when sampled
        self.manifest_cache_hits = 0
        self.manifest_cache_misses = 0

    @property
    def reads_are_instant(self) -> bool:
        """Whether get_manifest and stat_blob may run on the event loop (they do no slow I/O)."""
        return self.metadata.reads_are_instant

    # -- blobs -------------------------------------------------------------------------------

    def stat_blob(self, actor: Actor, repository: str, digest: str) -> BlobInfo:
        actor.require(repository, "pull")
        validate_name(repository)
        parsed = Digest.parse(digest)
        size = self.metadata.linked_blob_size(repository, str(parsed))
        if size is None:
            raise BlobUnknown(f"blob unknown to repository: {digest}")
        return BlobInfo(str(parsed), size)

    def blob_local_path(self, actor: Actor, repository: str, digest: str) -> str | None:
        """Where the blob lies on local disk, if it does; for a blob `stat_blob` found linked."""
        actor.require(repository, "pull")
        return self.blobs.local_path(Digest.parse(digest))

    def read_blob(
        self, actor: Actor, repository: str, digest: str, offset: int = 0, length: int | None = None
    ) -> Iterator[bytes]:
        """The blob's bytes; for a blob `stat_blob` found linked (this does not ask the database again)."""
        actor.require(repository, "pull")
        return self.blobs.read(Digest.parse(digest), offset, length)

    def delete_blob(self, actor: Actor, repository: str, digest: str) -> None:
        actor.require(repository, "delete")
        validate_name(repository)
        parsed = Digest.parse(digest)
        if not self.delete_enabled:
            raise Unsupported("deletes are disabled on this registry")
        if not self.metadata.unlink_blob(repository, str(parsed)):
            raise BlobUnknown(f"blob unknown to repository: {digest}")

    def mount_blob(self, actor: Actor, repository: str, digest: str, source: str | None) -> BlobInfo | None:
        """Link a blob held by `source` (or, with no source, by any repository the actor may pull from).
        None when it cannot be mounted: the caller then falls back to an upload."""
        actor.require(repository, "push")
        validate_name(repository)
        try:
            parsed = Digest.parse(digest)
        except DigestInvalid:
            return None
        candidates: Iterable[str]
        if source is not None:
            try:
                validate_name(source)
            except Exception:
                return None
            candidates = [source]
        else:
            candidates = self.metadata.repositories_with_blob(str(parsed))
        for candidate in candidates:
            size = self.metadata.linked_blob_size(candidate, str(parsed))
            if size is None or not actor.may(candidate, "pull"):
                continue
            if self.blobs.stat(parsed) != size:
                log.warning("blob %s is in the database but not in the store; not mounting", parsed)
                return None
            # None: GC collected the blob meanwhile, and the client uploads it
            linked = self.metadata.link_stored_blob(repository, str(parsed), candidate)
            return None if linked is None else BlobInfo(str(parsed), linked)
        return None

    # -- uploads -----------------------------------------------------------------------------

    def start_upload(self, actor: Actor, repository: str, principal: str | None = None) -> UploadState:
        """Open an upload session. With a `principal`, refuse it (TOOMANYREQUESTS) while that principal
        already holds max_uploads_per_principal sessions: completing, cancelling or the purge of
        abandoned ones frees them. Without one (authentication off) there is no cap."""
        actor.require(repository, "push")
        validate_name(repository)
        upload_id = uuid.uuid4().hex
        if principal is None:
            self.blobs.create_upload(upload_id)
            state = self.metadata.create_upload(upload_id, repository)
        else:
            # the row first: a refused start must leave no staged file behind
            capped = self.metadata.create_upload_capped(
                upload_id, repository, principal, self.max_uploads_per_principal
            )
            if capped is None:
                raise TooManyUploads(
                    f"{principal} has {self.max_uploads_per_principal} upload sessions open; finish or "
                    "cancel one (abandoned ones are purged)",
                    self.upload_retry_after_seconds,
                )
            state = capped
            try:
                self.blobs.create_upload(upload_id)
            except BaseException:
                self.metadata.delete_upload(upload_id)
                raise
        self._remember_state(state)
        return state

    def upload_status(self, actor: Actor, repository: str, upload_id: str) -> UploadState:
        # the /v2 edge asks for pull (every GET does); a pusher is told where its upload stands
        actor.require_any(repository, ("pull", "push"))
        return self._upload_state(repository, upload_id)

    def _upload_state(self, repository: str, upload_id: str) -> UploadState:
        validate_name(repository)
        if not UPLOAD_ID.match(upload_id):
            raise BlobUploadUnknown(f"upload unknown: {upload_id!r}")
        state = self.metadata.get_upload(upload_id)
        if state is None or state.repository != repository:
            raise BlobUploadUnknown(f"upload unknown: {upload_id!r}")
        return state

    def begin_append(
        self,
        actor: Actor,
        repository: str,
        upload_id: str,
        start: int | None = None,
        length: int | None = None,
    ) -> UploadAppender:
        """Prepare to append a chunk. `start` is where the client says the chunk begins (416 if that is
        not where the upload stands); `length` is the chunk's declared length, when known.

        Where this process left the upload is where it still stands if the staged bytes end there (see
        _check_still_at): then the database need not be asked."""
        actor.require(repository, "push")
        remembered = self._remembered_state(repository, upload_id)
        if remembered is not None and start in (None, remembered.size):
            self._check_room(remembered.size, length)
            writer = self._hold(upload_id, remembered.size)
            try:
                still = self._staged_size_is(upload_id, remembered.size)
            except BaseException:
                writer.abort()
                raise
            if still:
                hasher = self._take_hasher(upload_id, remembered.size)
                return UploadAppender(self, remembered, writer, hasher, length)
            writer.abort()
        state = self._upload_state(repository, upload_id)
        if start is not None and start != state.size:
            raise RangeInvalid(f"chunk starts at {start}, the upload stands at {state.size}")
        self._check_room(state.size, length)
        writer = self._hold(upload_id, state.size)
        try:
            self._check_still_at(upload_id, state.size)
        except BaseException:
            writer.abort()
            raise
        return UploadAppender(self, state, writer, self._take_hasher(upload_id, state.size), length)

    def _check_room(self, size: int, length: int | None) -> None:
        """Refuse a declared length that would take the upload past the limit, before any byte is read."""
        if length is not None and size + length > self.max_blob_bytes:
            raise self.too_large()

    def too_large(self) -> BlobTooLarge:
        return BlobTooLarge(f"a blob may hold at most {self.max_blob_bytes} bytes")

    def _hold(self, upload_id: str, size: int) -> BlobWriter:
        """The upload's writer at `size`, which holds it (flock) until commit or abort."""
        try:
            return self.blobs.open_upload(upload_id, size)
        except UploadMissing:
            raise BlobUploadUnknown(f"upload data is gone: {upload_id}") from None
        except UploadBusy:
            raise RangeInvalid("another request is writing to this upload") from None

    def _check_still_at(self, upload_id: str, size: int) -> None:
        """With the upload held: another request may have moved it between our read and taking it.
        Only a holder moves an upload (the database before it lets go), staged data is never shorter
        than the database says, and the database never goes back; so staged data of exactly `size`
        bytes means the upload is still there. Anything else (it moved, or a request died mid-write
        and left bytes past the end) asks the database."""
        if self._staged_size_is(upload_id, size):
            return
        current = self.metadata.get_upload(upload_id)
        if current is None or current.size != size:
            raise RangeInvalid("the upload moved on while this request started")

    def _staged_size_is(self, upload_id: str, size: int) -> bool:
        try:
            return self.blobs.upload_size(upload_id) == size
        except UploadMissing:  # completed or cancelled meanwhile
            raise BlobUploadUnknown(f"upload data is gone: {upload_id}") from None

    def complete_upload(
        self, actor: Actor, repository: str, upload_id: str, digest: str, state: UploadState | None = None
    ) -> BlobInfo:
        """Verify the digest and make the blob visible. `state`: the upload as the caller's own append
        just left it (saves reading it again; whatever moved since, commit_upload notices). Without it,
        where this process last left the upload, if the staged bytes still end there."""
        actor.require(repository, "push")
        if state is None or state.id != upload_id or state.repository != repository:
            state = self._remembered_state(repository, upload_id)
            if state is None or not self._staged_size_is(upload_id, state.size):
                state = self._upload_state(repository, upload_id)
        parsed = Digest.parse(digest)
        actual = self._cached_digest(upload_id, state.size, parsed.algorithm)
        if actual is None:
            # hold the upload while hashing it: a request still writing to it means it is not finished
            # (with the hash of this process's own appends there is nothing to read: commit_upload
            # holds the upload and checks its size)
            guard = self._hold(upload_id, state.size)
            try:
                actual = self._upload_digest(upload_id, state.size, parsed.algorithm)
            finally:
                guard.abort()  # it wrote nothing: this only lets go
        if actual != parsed:
            self._drop_upload(upload_id)
            raise DigestInvalid(f"content hashes to {actual}, not {parsed}")
        self.metadata.pin_upload(upload_id, str(parsed))
        try:
            self.blobs.commit_upload(upload_id, parsed, state.size)
        except UploadMissing:
            raise BlobUploadUnknown(f"upload data is gone: {upload_id}") from None
        except UploadBusy:
            raise RangeInvalid("another request is writing to this upload") from None
        self.metadata.link_blob(repository, str(parsed), state.size, finished_upload=upload_id)
        self._forget_state(upload_id)
        return BlobInfo(str(parsed), state.size)

    def cancel_upload(self, actor: Actor, repository: str, upload_id: str) -> None:
        # the /v2 edge asks for delete (every DELETE does); the pusher itself may always give up
        actor.require_any(repository, ("push", "delete"))
        self._upload_state(repository, upload_id)
        self._drop_upload(upload_id)

    def purge_uploads(self, actor: Actor, max_age: timedelta) -> int:
        """Remove uploads untouched for `max_age`, in the database and in the store."""
        actor.require_system()
        cutoff = datetime.now(UTC) - max_age
        purged = 0
        for upload_id in self.metadata.stale_uploads(cutoff):
            self._drop_upload(upload_id)
            purged += 1
        known = self.metadata.upload_ids()
        for upload_id, mtime in list(self.blobs.uploads()):
            if upload_id not in known and mtime < cutoff.timestamp():
                self.blobs.cancel_upload(upload_id)
                purged += 1
        if purged:
            log.info("purged %d abandoned uploads older than %s", purged, max_age)
        return purged

    def _drop_upload(self, upload_id: str) -> None:
        self.blobs.cancel_upload(upload_id)
        self.metadata.delete_upload(upload_id)
        with self._hashers_lock:
            self._hashers.pop(upload_id, None)
            self._states.pop(upload_id, None)

    def _take_hasher(self, upload_id: str, offset: int) -> Hasher | None:
        with self._hashers_lock:
            cached = self._hashers.pop(upload_id, None)
        if cached is not None and cached[0] == offset:
            return cached[1]
        if offset == 0:
            return new_hasher(STREAM_ALGORITHM)
        # the bytes so far went through another process: hash them all at the end instead
        return None

    def _remember_hasher(self, upload_id: str, offset: int, hasher: Hasher) -> None:
        with self._hashers_lock:
            self._hashers[upload_id] = (offset, hasher)
            while len(self._hashers) > _HASHER_CACHE_SIZE:
                self._hashers.popitem(last=False)

    def _remember_state(self, state: UploadState) -> None:
        with self._hashers_lock:
            self._states[state.id] = state
            self._states.move_to_end(state.id)
            while len(self._states) > _HASHER_CACHE_SIZE:
                self._states.popitem(last=False)

    def _remembered_state(self, repository: str, upload_id: str) -> UploadState | None:
        """Where this process last left the upload (another process may have moved it since)."""
        with self._hashers_lock:
            state = self._states.get(upload_id)
        return state if state is not None and state.repository == repository else None

    def _forget_state(self, upload_id: str) -> None:
        with self._hashers_lock:
            self._states.pop(upload_id, None)

    def _cached_digest(self, upload_id: str, size: int, algorithm: str) -> Digest | None:
        """The digest of the upload's first `size` bytes from this process's hash of them, if it has one
        (those bytes never change once the database says `size`)."""
        with self._hashers_lock:
            cached = self._hashers.pop(upload_id, None)
        if cached is not None and cached[0] == size and algorithm == STREAM_ALGORITHM:
            return Digest(algorithm, cached[1].hexdigest())
        return None

    def _upload_digest(self, upload_id: str, size: int, algorithm: str) -> Digest:
        hasher = new_hasher(algorithm)
        seen = 0
        try:
            for chunk in self.blobs.read_upload(upload_id):
                take = min(len(chunk), size - seen)
                hasher.update(chunk[:take] if take < len(chunk) else chunk)
                seen += take
                if seen >= size:
                    break
        except UploadMissing:
            raise BlobUploadUnknown(f"upload data is gone: {upload_id}") from None
        if seen != size:
            raise BlobUploadInvalid(f"upload holds {seen} bytes, expected {size}")
        return Digest(algorithm, hasher.hexdigest())

    # -- manifests ---------------------------------------------------------------------------

    def put_manifest(
        self,
        actor: Actor,
        repository: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        extra_tags: Iterable[str] = (),
    ) -> PutManifestResult:
        actor.require(repository, "push")
        validate_name(repository)
        tags = [validate_tag(tag) for tag in extra_tags]
        expected: Digest | None = None
        if is_digest(reference):
            expected = Digest.parse(reference)
            actual = Digest.of(body, expected.algorithm)
            if actual != expected:
                raise DigestInvalid(f"manifest hashes to {actual}, not {expected}")
        else:
            tags.insert(0, validate_tag(reference))
        manifest = parse_manifest(body, content_type, expected)
        self.metadata.put_manifest(repository, manifest, body, dict.fromkeys(tags))
        return PutManifestResult(
            str(manifest.digest), str(manifest.subject.digest) if manifest.subject else None
        )

    def cached_manifest(self, actor: Actor, repository: str, reference: str) -> StoredManifest | None:
        """The manifest if the in-process cache holds it (the pull is recorded), else None: no slow
        I/O, so callers may ask on the event loop before falling back to `get_manifest`."""
        actor.require(repository, "pull")
        found = self.metadata.cached_manifest(repository, reference)
        if found is not None:
            self.manifest_cache_hits += 1
            # only validated references are ever cached, so a hit needs no parsing
            self.pulls.record(found.id)
        else:
            self.manifest_cache_misses += 1
        return found

    def get_manifest(self, actor: Actor, repository: str, reference: str) -> StoredManifest:
        actor.require(repository, "pull")
        validate_name(repository)
        if is_digest(reference):
            found = self.metadata.manifest_by_digest(repository, str(Digest.parse(reference)))
        elif is_tag(reference):
            found = self.metadata.manifest_by_tag(repository, reference)
        else:
            # no manifest can be known by a name that is not a tag: 404, as the conformance suite and
            # Distribution answer, rather than a 400 that clients take for a broken request
            found = None
        if found is None:
            raise ManifestUnknown(f"manifest unknown: {reference}")
        self.pulls.record(found.id)
        return found

    def delete_manifest(self, actor: Actor, repository: str, reference: str) -> None:
        actor.require(repository, "delete")
        validate_name(repository)
        if not self.delete_enabled:
            raise Unsupported("deletes are disabled on this registry")
        if is_digest(reference):
            deleted = self.metadata.delete_manifest(repository, str(Digest.parse(reference)))
        else:
            deleted = self.metadata.delete_tag(repository, validate_tag(reference))
        if not deleted:
            raise ManifestUnknown(f"manifest unknown: {reference}")

    # -- listing -----------------------------------------------------------------------------

    def list_tags(self, actor: Actor, repository: str, n: int | None, last: str | None) -> Page:
        actor.require(repository, "pull")
        validate_name(repository)
        page = self.metadata.list_tags(repository, DEFAULT_PAGE_SIZE if n is None else n, _comparable(last))
        if page is None:
            raise NameUnknown(f"repository unknown: {repository}")
        return page

    def catalog(
        self, actor: Actor, n: int | None, last: str | None, visible: CatalogFilter | None = None
    ) -> Page:
        actor.require_catalog()
        limit = DEFAULT_PAGE_SIZE if n is None else n
        if visible is None:
            return self.metadata.catalog(limit, _comparable(last))
        return self.metadata.catalog(
            limit, _comparable(last), namespaces=visible.namespaces, repositories=visible.repositories
        )

    def referrers(
        self, actor: Actor, repository: str, digest: str, artifact_type: str | None
    ) -> list[Referrer]:
        actor.require(repository, "pull")
        validate_name(repository)
        parsed = Digest.parse(digest)
        if artifact_type is not None and "\x00" in artifact_type:
            return []  # no stored media type holds a NUL (and PostgreSQL cannot compare one)
        return self.metadata.referrers(repository, str(parsed), artifact_type)


def _comparable(last: str | None) -> str | None:
    """`last` as PostgreSQL can compare it. Names and tags never hold a NUL, and in byte order a name
    sorts after `p + NUL + rest` exactly when it sorts after `p`, so cutting at the NUL changes nothing."""
    if last is None or "\x00" not in last:
        return last
    return last.split("\x00", 1)[0]
