"""Online garbage collection: untagged manifests (where a repository asks), unused blob links, and blobs
no repository links, in that order, each from its review queue (see db/gc.py for the queues and for
why a push racing GC never loses a layer).

`GarbageCollector.run` is a plain callable for a scheduler; every batch is its own transaction, so a
run stopped at any moment (Ctrl-C, a crash) leaves the store consistent and the next run continues."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shipyard.db.gc import Freed, GcStore
from shipyard.db.metadata import MetadataStore
from shipyard.domain.digest import Digest
from shipyard.domain.records import Usage
from shipyard.storage.base import BlobStore

log = logging.getLogger(__name__)

# (phase, reviews handled so far, reviews due when the run began)
Progress = Callable[[str, int, int], None]


@dataclass
class GcReport:
    dry_run: bool
    manifests: int = 0
    links: int = 0
    by_account: dict[str, Freed] = field(default_factory=dict)

    @property
    def blobs(self) -> int:
        return sum(freed.blobs for freed in self.by_account.values())

    @property
    def bytes(self) -> int:
        return sum(freed.bytes for freed in self.by_account.values())

    def add(self, freed: dict[str, Freed]) -> None:
        for account, entry in freed.items():
            total = self.by_account.setdefault(account, Freed())
            total.blobs += entry.blobs
            total.bytes += entry.bytes


class GarbageCollector:
    def __init__(
        self,
        metadata: MetadataStore,
        blobs: BlobStore,
        *,
        grace: timedelta = timedelta(hours=24),
        batch_size: int = 500,
    ) -> None:
        self.metadata = metadata
        self.blobs = blobs
        self.store = GcStore(metadata.engine)
        self.grace = grace
        self.batch_size = batch_size

    def run(self, dry_run: bool = False, progress: Progress | None = None) -> GcReport:
        now = datetime.now(UTC)
        cutoff = now - self.grace
        report = GcReport(dry_run)
        if dry_run:
            report.manifests, report.links, freed = self.store.dry_run(now, cutoff)
            report.add(freed)
            return report
        due = self.store.pending(now)
        self._manifests(now, report, due["gc_manifest_reviews"], progress)
        # each phase looks at what the one before queued for it too; a phase's cutoff is its start
        # less the grace period, so that what it postpones is never due again within the phase
        now = datetime.now(UTC)
        due = self.store.pending(now)
        self._links(now, now - self.grace, report, due["gc_link_reviews"], progress)
        now = datetime.now(UTC)
        due = self.store.pending(now)
        self._blobs(now, now - self.grace, report, due["gc_blob_reviews"], progress)
        if report.blobs or report.manifests or report.links:
            log.info(
                "GC freed %d blobs (%d bytes), %d links, %d untagged manifests",
                report.blobs,
                report.bytes,
                report.links,
                report.manifests,
            )
        return report

    def _manifests(self, now: datetime, report: GcReport, total: int, progress: Progress | None) -> None:
        done = 0
        after = 0
        while True:
            batch = self.store.untagged_candidates(now, after, self.batch_size)
            if not batch:
                return
            after = batch[-1][0]
            drop = []
            for manifest_id, repository, days in batch:
                if days < 0:
                    drop.append(manifest_id)  # the repository keeps untagged manifests
                    continue
                cutoff = now - timedelta(days=days)

                def choose(
                    conn: Any, repository_id: int, manifest_id: int = manifest_id, cutoff: datetime = cutoff
                ) -> int | None:
                    found = self.store.collectable_untagged(conn, repository_id, manifest_id, cutoff)
                    return None if found is None else manifest_id

                if self.metadata.delete_manifest_if(repository, choose):
                    report.manifests += 1
            self.store.drop_manifest_reviews(drop)
            done += len(batch)
            if progress is not None:
                progress("manifests", done, total)

    def _links(
        self, now: datetime, cutoff: datetime, report: GcReport, total: int, progress: Progress | None
    ) -> None:
        done = 0
        after: tuple[int, str] = (0, "")
        while True:
            batch = self.store.due_links(now, after, self.batch_size)
            if not batch:
                return
            after = batch[-1]
            by_repository: dict[int, list[str]] = {}
            for repository_id, digest in batch:
                by_repository.setdefault(repository_id, []).append(digest)
            report.links += self.store.sweep_links(by_repository, cutoff, self.grace, dry_run=False).links
            done += len(batch)
            if progress is not None:
                progress("links", done, total)

    def _blobs(
        self, now: datetime, cutoff: datetime, report: GcReport, total: int, progress: Progress | None
    ) -> None:
        done = 0
        after = ""
        while True:
            batch = self.store.due_blobs(now, after, self.batch_size)
            if not batch:
                return
            after = batch[-1]
            # rows a request holds stay in review for the next run
            sweep = self.store.sweep_blobs(batch, cutoff, self.grace, self._delete_object, dry_run=False)
            report.add(sweep.freed)
            done += len(batch)
            if progress is not None:
                progress("blobs", done, total)

    def _delete_object(self, digest: str) -> None:
        self.blobs.delete(Digest.parse(digest))

    # -- accounting

    def repository_usage(self, repository: str) -> Usage | None:
        return self.store.repository_usage(repository)

    def account_usage(self, account: str) -> Usage:
        return self.store.namespace_usage(account)
