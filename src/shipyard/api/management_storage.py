"""Storage accounting and GC settings in the management API: an account's stored bytes, and how long
a repository keeps untagged manifests. (A repository's bytes are in its own answer.)"""

from __future__ import annotations

from fastapi import APIRouter

from shipyard.api.management import (
    AccountPath,
    Caller,
    RepositoryPath,
    repository_document,
    usage_fields,
)
from shipyard.api.management_errors import ERROR_RESPONSES, ManagementRoute
from shipyard.api.management_models import Repository, UntaggedRetention, Usage

router = APIRouter(prefix="/api/v1", route_class=ManagementRoute, responses=ERROR_RESPONSES)


@router.get("/accounts/{account}/usage", response_model=Usage, tags=["accounts"])
async def get_account_usage(call: Caller, account: AccountPath) -> Usage:
    """Bytes the account's repositories store, each blob once: unique (no other account links the blob)
    and shared."""
    usage = await call.run(call.service.account_usage, call.actor, account)
    return Usage(account=account, **usage_fields(usage))


@router.put("/repositories/{name:path}/untagged-retention", response_model=Repository, tags=["repositories"])
async def put_untagged_retention(call: Caller, name: RepositoryPath, body: UntaggedRetention) -> Repository:
    """Let GC delete the repository's manifests that have had no tag for N days (null: keep them); an
    index's children are kept while the index lives."""
    info = await call.run(
        call.service.set_untagged_retention,
        call.actor,
        name,
        body.untagged_retention_days,
        source=call.source,
    )
    return repository_document(info)
