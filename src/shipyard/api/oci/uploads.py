"""Blob uploads: start, monolithic, mount, chunked PATCH, finishing PUT, status and cancel."""

from __future__ import annotations

import re

from shipyard.api.errors import body_for, status_for
from shipyard.api.http import JSON, Request, respond
from shipyard.api.oci.context import Context
from shipyard.api.types import Send
from shipyard.domain.digest import Digest
from shipyard.domain.errors import BlobUploadInvalid, DigestInvalid, RangeInvalid, SizeInvalid
from shipyard.domain.records import UploadState
from shipyard.services.access import Actor, Identity

_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


def _range_header(size: int) -> str:
    return f"0-{max(size - 1, 0)}"


def _upload_headers(name: str, state: UploadState) -> dict[str, str]:
    return {
        "location": f"/v2/{name}/blobs/uploads/{state.id}",
        "range": _range_header(state.size),
        "docker-upload-uuid": state.id,
    }


def _blob_created(name: str, digest: str) -> dict[str, str]:
    return {"location": f"/v2/{name}/blobs/{digest}", "docker-content-digest": digest}


def parse_content_range(value: str | None) -> tuple[int, int] | None:
    """(start, length) of a chunk's Content-Range, as clients send it (`a-b`, inclusive)."""
    if value is None:
        return None
    match = _CONTENT_RANGE.match(value.strip())
    if match is None:
        raise RangeInvalid(f"malformed Content-Range: {value!r}")
    first, last = int(match.group(1)), int(match.group(2))
    if last < first:
        raise RangeInvalid(f"malformed Content-Range: {value!r}")
    return first, last - first + 1


def _has_body(request: Request) -> bool:
    length = request.content_length()
    if length is not None:
        return length > 0
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


async def _append(ctx: Context, request: Request, actor: Actor, name: str, upload_id: str) -> UploadState:
    """Append the body as a chunk. Without Content-Range it is a streamed chunk that simply appends."""
    declared = parse_content_range(request.headers.get("content-range"))
    length = request.content_length()
    start: int | None = None
    if declared is not None:
        start, range_length = declared
        if length is not None and length != range_length:
            raise SizeInvalid(f"Content-Length {length} does not match Content-Range ({range_length} bytes)")
        length = range_length
    return await ctx.ingest.append(actor, name, upload_id, request.stream(), start, length)


async def start_upload(
    ctx: Context, request: Request, send: Send, actor: Actor, name: str, identity: Identity
) -> None:
    mount = request.param("mount")
    if mount is not None:
        source = request.param("from")
        info = await ctx.run(ctx.registry.mount_blob, actor, name, mount, source)
        if info is not None:
            await respond(send, 201, _blob_created(name, info.digest))
            return
    digest = request.param("digest")
    if digest is not None:
        info = await ctx.ingest.ingest(
            actor,
            name,
            request.stream(),
            digest,
            length=request.content_length(),
            principal=_principal(identity),
        )
        await respond(send, 201, _blob_created(name, info.digest))
        return
    state = await ctx.run(ctx.registry.start_upload, actor, name, _principal(identity))
    await respond(send, 202, _upload_headers(name, state))


def _principal(identity: Identity) -> str | None:
    """Whose slot an upload takes: nobody's when authentication is off (every caller is anonymous)."""
    return None if identity.anonymous else identity.subject


async def patch_upload(
    ctx: Context, request: Request, send: Send, actor: Actor, name: str, upload_id: str
) -> None:
    try:
        state = await _append(ctx, request, actor, name, upload_id)
    except RangeInvalid as error:
        await _refuse_range(ctx, send, actor, name, upload_id, error)
        return
    await respond(send, 202, _upload_headers(name, state))


async def _refuse_range(
    ctx: Context, send: Send, actor: Actor, name: str, upload_id: str, error: RangeInvalid
) -> None:
    """A 416 says where the upload stands (Range, Location), so that the client can resume from there."""
    state = await ctx.run(ctx.registry.upload_status, actor, name, upload_id)
    headers = {"content-type": JSON, **_upload_headers(name, state)}
    await respond(send, status_for(error), headers, body_for(error))


async def finish_upload(
    ctx: Context, request: Request, send: Send, actor: Actor, name: str, upload_id: str
) -> None:
    digest = request.param("digest")
    if digest is None:
        raise DigestInvalid("the digest query parameter is required to finish an upload")
    parsed = Digest.parse(digest)
    appended: UploadState | None = None
    if _has_body(request):
        try:
            appended = await _append(ctx, request, actor, name, upload_id)
        except RangeInvalid as error:
            await _refuse_range(ctx, send, actor, name, upload_id, error)
            return
    elif request.headers.get("content-range"):
        raise BlobUploadInvalid("Content-Range without a body")
    info = await ctx.run(ctx.registry.complete_upload, actor, name, upload_id, str(parsed), appended)
    await respond(send, 201, _blob_created(name, info.digest))


async def upload_status(
    ctx: Context, request: Request, send: Send, actor: Actor, name: str, upload_id: str
) -> None:
    state = await ctx.run(ctx.registry.upload_status, actor, name, upload_id)
    await respond(send, 204, _upload_headers(name, state))


async def cancel_upload(
    ctx: Context, request: Request, send: Send, actor: Actor, name: str, upload_id: str
) -> None:
    await ctx.run(ctx.registry.cancel_upload, actor, name, upload_id)
    await respond(send, 204)
