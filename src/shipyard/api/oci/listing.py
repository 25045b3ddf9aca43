"""Tag listing, the catalog and referrers."""

from __future__ import annotations

import json
from urllib.parse import quote

from shipyard.api.http import Request, respond, respond_json
from shipyard.api.oci.context import Context
from shipyard.api.types import Send
from shipyard.domain import mediatypes
from shipyard.domain.errors import PaginationInvalid
from shipyard.domain.records import Page
from shipyard.services.access import Actor, CatalogFilter

MAX_PAGE = 10_000


def _page_size(request: Request) -> int | None:
    raw = request.param("n")
    if raw is None or raw == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        raise PaginationInvalid(f"n must be an integer: {raw!r}") from None
    if n < 0:
        raise PaginationInvalid(f"n must not be negative: {n}")
    return min(n, MAX_PAGE)


def _next_link(path: str, page: Page, n: int | None) -> dict[str, str]:
    if not page.has_more or not page.items:
        return {}
    size = n if n is not None else len(page.items)
    return {"link": f'<{path}?n={size}&last={quote(page.items[-1], safe="")}>; rel="next"'}


async def list_tags(ctx: Context, request: Request, send: Send, actor: Actor, name: str) -> None:
    n = _page_size(request)
    page = await ctx.run(ctx.registry.list_tags, actor, name, n, request.param("last"))
    headers = _next_link(f"/v2/{name}/tags/list", page, n)
    await respond_json(send, 200, {"name": name, "tags": page.items}, headers)


async def catalog(
    ctx: Context, request: Request, send: Send, actor: Actor, visible: CatalogFilter | None
) -> None:
    n = _page_size(request)
    page = await ctx.run(ctx.registry.catalog, actor, n, request.param("last"), visible)
    headers = _next_link("/v2/_catalog", page, n)
    await respond_json(send, 200, {"repositories": page.items}, headers)


async def referrers(ctx: Context, request: Request, send: Send, actor: Actor, name: str, digest: str) -> None:
    artifact_type = request.param("artifactType") or None
    found = await ctx.run(ctx.registry.referrers, actor, name, digest, artifact_type)
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [r.descriptor() for r in found],
    }
    headers = {"content-type": mediatypes.OCI_INDEX}
    if artifact_type is not None:
        headers["oci-filters-applied"] = "artifactType"
    await respond(send, 200, headers, json.dumps(document).encode())
