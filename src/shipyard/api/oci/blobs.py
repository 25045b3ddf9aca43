"""GET, HEAD and DELETE of blobs, with single-range reads."""

from __future__ import annotations

import re

from shipyard.api.http import Request, header_list, respond
from shipyard.api.oci.context import Context
from shipyard.api.types import Send
from shipyard.services.access import Actor

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for a single satisfiable range; None to serve the whole blob
    (no header, or one we do not understand, which RFC 9110 lets us ignore)."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:
        suffix = int(last_text)
        if suffix == 0:
            raise Unsatisfiable
        if size == 0:
            # satisfiable, but no Content-Range can describe it: serve the (empty) whole
            return None
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # an invalid range-spec: ignore the header
    if first >= size:
        raise Unsatisfiable
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)


async def get_blob(ctx: Context, request: Request, send: Send, actor: Actor, name: str, digest: str) -> None:
    info = await ctx.read(ctx.registry.stat_blob, actor, name, digest)
    head = request.method == "HEAD"
    headers = {
        "content-type": "application/octet-stream",
        "docker-content-digest": info.digest,
        "etag": f'"{info.digest}"',
        "accept-ranges": "bytes",
        "cache-control": "max-age=31536000",
    }
    try:
        selected = parse_range(request.headers.get("range"), info.size)
    except Unsatisfiable:
        headers["content-range"] = f"bytes */{info.size}"
        await respond(send, 416, headers, head=head)
        return
    if selected is None:
        status, first, length = 200, 0, info.size
    else:
        first, last = selected
        status, length = 206, last - first + 1
        headers["content-range"] = f"bytes {first}-{last}/{info.size}"
    headers["content-length"] = str(length)
    if head:
        await respond(send, status, headers, head=True)
        return
    extensions = request.scope.get("extensions") or {}
    zerocopy = "http.response.zerocopysend" in extensions
    path = ctx.registry.blob_local_path(actor, name, info.digest) if zerocopy or status == 200 else None
    if path is not None and zerocopy:
        # the server hands the open file to the kernel (os.sendfile): no byte passes through Python
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed below, once the server has sent it
        except FileNotFoundError:
            pass  # deleted meanwhile: the store's reader reports it as it would anyway
        else:
            with file:
                await send({"type": "http.response.start", "status": status, "headers": header_list(headers)})
                await send(
                    {
                        "type": "http.response.zerocopysend",
                        "file": file,
                        "offset": first,
                        "count": length,
                        "more_body": False,
                    }
                )
            return
    await send({"type": "http.response.start", "status": status, "headers": header_list(headers)})
    if path is not None and status == 200 and "http.response.pathsend" in extensions:
        # the server sends the file itself, outside Python
        await send({"type": "http.response.pathsend", "path": path})
        return
    chunks = ctx.registry.read_blob(actor, name, info.digest, first, length)
    try:
        while True:
            chunk = await ctx.run(next, chunks, None)
            if chunk is None:
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    await send({"type": "http.response.body", "body": b""})


async def delete_blob(
    ctx: Context, request: Request, send: Send, actor: Actor, name: str, digest: str
) -> None:
    await ctx.run(ctx.registry.delete_blob, actor, name, digest)
    await respond(send, 202)
