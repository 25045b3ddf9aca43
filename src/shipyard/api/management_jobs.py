"""/api/v1/jobs: the background job queue, for registry administrators: what is queued, running,
done, failed (and due again) and dead, and a retry or cancel by hand."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from shipyard.api.management import Call, Caller, PageSize, _blank_is, _paged, link_next
from shipyard.api.management_errors import ERROR_RESPONSES, ManagementRoute
from shipyard.api.management_models import Errors
from shipyard.domain.jobs import JobNotFound, JobRecord, JobState
from shipyard.domain.management import DEFAULT_PAGE
from shipyard.services.jobs import JobService


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int
    kind: str
    payload: dict[str, object]
    state: JobState = Field(
        description="queued; running (leased by a worker); done; failed (runs again at `run_at`); "
        "dead (failed `max_attempts` times, kept with its error); cancelled"
    )
    attempts: int
    max_attempts: int
    run_at: str = Field(description="when it is (or was) due")
    lease_owner: str | None = Field(description="the worker that runs it, while it runs")
    lease_expires_at: str | None
    last_error: str | None
    unique_key: str | None
    created_at: str
    updated_at: str
    finished_at: str | None


class Jobs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[Job]


CONFLICT: dict[int | str, dict[str, object]] = {
    409: {"model": Errors, "description": "the job's state does not allow it"}
}

router = APIRouter(prefix="/api/v1", route_class=ManagementRoute, responses=ERROR_RESPONSES)
JobPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="the job's id")]


def _at(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def job_document(job: JobRecord) -> Job:
    return Job(
        id=job.id,
        kind=job.kind,
        payload=job.payload,
        state=job.state,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        run_at=job.run_at.isoformat(),
        lease_owner=job.lease_owner,
        lease_expires_at=_at(job.lease_expires_at),
        last_error=job.last_error,
        unique_key=job.unique_key,
        created_at=job.created_at.isoformat(),
        updated_at=job.updated_at.isoformat(),
        finished_at=_at(job.finished_at),
    )


def _jobs(call: Call) -> JobService:
    service = call.services.jobs
    if service is None:
        raise JobNotFound("this server has no job queue")
    return service


@router.get("/jobs", tags=["jobs"], **_paged(Jobs, "jobs, newest first"))
async def list_jobs(
    call: Caller,
    request: Request,
    response: Response,
    n: PageSize = DEFAULT_PAGE,
    # no blank-means-absent here: the document says an integer and a state, and so does the check
    last: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="continue after this job id")] = None,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    kind: Annotated[
        str | None, Query(max_length=100, description="only jobs of this kind"), _blank_is(None)
    ] = None,
) -> Jobs:
    found = await call.run(_jobs(call).list_jobs, call.actor, state=state, kind=kind, limit=n, last=last)
    link_next(request, response, n, found.next)
    return Jobs(jobs=[job_document(job) for job in found])


@router.get("/jobs/{job_id}", response_model=Job, tags=["jobs"])
async def get_job(call: Caller, job_id: JobPath) -> Job:
    return job_document(await call.run(_jobs(call).get, call.actor, job_id))


@router.post("/jobs/{job_id}/retry", response_model=Job, tags=["jobs"], responses=CONFLICT)
async def retry_job(call: Caller, job_id: JobPath) -> Job:
    """Run a dead, failed or cancelled job again now, with all its attempts."""
    return job_document(await call.run(_jobs(call).retry, call.actor, job_id, source=call.source))


@router.post("/jobs/{job_id}/cancel", response_model=Job, tags=["jobs"], responses=CONFLICT)
async def cancel_job(call: Caller, job_id: JobPath) -> Job:
    """A queued job, or a failed one waiting to run again, never runs; a running job cannot be cancelled."""
    return job_document(await call.run(_jobs(call).cancel, call.actor, job_id, source=call.source))
