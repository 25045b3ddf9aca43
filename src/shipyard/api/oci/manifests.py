"""GET, HEAD, PUT and DELETE of manifests by tag or digest."""

from __future__ import annotations

from shipyard.api.http import API_VERSION_HEADER, Request, respond, respond_raw
from shipyard.api.oci.context import Context
from shipyard.api.types import Headers, Send
from shipyard.domain.errors import ManifestTooLarge
from shipyard.domain.manifest import MAX_MANIFEST_BYTES
from shipyard.domain.records import StoredManifest
from shipyard.services.access import Actor


async def get_manifest(
    ctx: Context, request: Request, send: Send, actor: Actor, name: str, reference: str
) -> None:
    registry = ctx.registry
    # a cache hit needs no I/O worth leaving the event loop for, on any database
    stored = registry.cached_manifest(actor, name, reference)
    if stored is None:
        stored = await ctx.read(registry.get_manifest, actor, name, reference)
    await respond_raw(send, 200, _manifest_headers(stored), stored.content, head=request.method == "HEAD")


def _manifest_headers(stored: StoredManifest) -> Headers:
    digest = stored.digest.encode("latin-1")
    return [
        API_VERSION_HEADER,
        (b"content-type", stored.media_type.encode("latin-1")),
        (b"docker-content-digest", digest),
        (b"etag", b'"' + digest + b'"'),
        (b"content-length", str(len(stored.content)).encode()),
    ]


async def put_manifest(
    ctx: Context, request: Request, send: Send, actor: Actor, name: str, reference: str
) -> None:
    declared = request.content_length()
    if declared is not None and declared > MAX_MANIFEST_BYTES:
        raise ManifestTooLarge(f"manifest is {declared} bytes; the limit is {MAX_MANIFEST_BYTES}")
    body = await request.body(MAX_MANIFEST_BYTES)
    if body is None:
        raise ManifestTooLarge(f"manifest exceeds {MAX_MANIFEST_BYTES} bytes")
    result = await ctx.run(
        ctx.registry.put_manifest,
        actor,
        name,
        reference,
        body,
        request.headers.get("content-type"),
        request.params("tag"),
    )
    headers = {"location": f"/v2/{name}/manifests/{result.digest}", "docker-content-digest": result.digest}
    if result.subject:
        headers["oci-subject"] = result.subject
    await respond(send, 201, headers)


async def delete_manifest(
    ctx: Context, request: Request, send: Send, actor: Actor, name: str, reference: str
) -> None:
    await ctx.run(ctx.registry.delete_manifest, actor, name, reference)
    await respond(send, 202)
