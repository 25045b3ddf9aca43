"""Background jobs: their records, their states, and what an administrator may ask of the queue."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from shipyard.domain.errors import RegistryError
from shipyard.domain.management import Listing

JobState = Literal["queued", "running", "done", "failed", "dead", "cancelled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed", "dead", "cancelled")
# waiting for a worker: new, or failed and due again after its backoff
WAITING: tuple[JobState, ...] = ("queued", "failed")
FINISHED: tuple[JobState, ...] = ("done", "dead", "cancelled")


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job. `failed` means it will run again at `run_at`; `dead` that it failed `max_attempts`
    times (or its worker died that often) and stays, with its last error, until retried by hand."""

    id: int
    kind: str
    payload: dict[str, Any]
    state: JobState
    attempts: int
    max_attempts: int
    run_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    unique_key: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class JobNotFound(RegistryError):
    code = "NOT_FOUND"
    message = "no such job"


class JobConflict(RegistryError):
    """The job's state does not allow the change (a running job cannot be cancelled, ...)."""

    code = "CONFLICT"
    message = "the job's state does not allow this"


class JobAdmin(Protocol):
    """What the management API asks of the job queue."""

    def list_jobs(
        self, *, state: JobState | None, kind: str | None, limit: int, last: int | None
    ) -> Listing[JobRecord]: ...

    def get(self, job_id: int) -> JobRecord: ...

    def retry(self, job_id: int) -> JobRecord: ...

    def cancel(self, job_id: int) -> JobRecord: ...
