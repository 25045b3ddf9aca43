"""The job queue as the management API sees it: cluster-wide, so for registry administrators only."""

from __future__ import annotations

from collections.abc import Callable

from shipyard.domain.accounts import PrincipalRecord, is_superuser
from shipyard.domain.errors import Denied
from shipyard.domain.jobs import JobAdmin, JobRecord, JobState
from shipyard.domain.management import Listing

# (action, principal, source, target): an administrator retried or cancelled a job
AuditWriter = Callable[[str, str, str, str], None]


class JobService:
    def __init__(self, queue: JobAdmin, audit: AuditWriter | None = None) -> None:
        self.queue = queue
        self.audit = audit

    def _require_admin(self, actor: PrincipalRecord) -> None:
        # jobs carry every account's work (GC, webhooks of any repository): no account sees only its own
        if not is_superuser(actor):
            raise Denied("only registry administrators may see or change jobs")

    def list_jobs(
        self,
        actor: PrincipalRecord,
        *,
        state: JobState | None = None,
        kind: str | None = None,
        limit: int,
        last: int | None = None,
    ) -> Listing[JobRecord]:
        self._require_admin(actor)
        return self.queue.list_jobs(state=state, kind=kind, limit=limit, last=last)

    def get(self, actor: PrincipalRecord, job_id: int) -> JobRecord:
        self._require_admin(actor)
        return self.queue.get(job_id)

    def retry(self, actor: PrincipalRecord, job_id: int, *, source: str) -> JobRecord:
        self._require_admin(actor)
        job = self.queue.retry(job_id)
        self._audited("retry-job", actor, source, job)
        return job

    def cancel(self, actor: PrincipalRecord, job_id: int, *, source: str) -> JobRecord:
        self._require_admin(actor)
        job = self.queue.cancel(job_id)
        self._audited("cancel-job", actor, source, job)
        return job

    def _audited(self, action: str, actor: PrincipalRecord, source: str, job: JobRecord) -> None:
        if self.audit is not None:
            self.audit(action, actor.login, source, f"job {job.id} ({job.kind})")
