"""Small ASGI applications for the server tests; worker processes import them as tests.server.apps:NAME."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any

from shipyard.server.types import Receive, Scope, Send


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client went away first."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def respond(send: Send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send, *, fail: bool = False) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if fail:
                await send({"type": "lifespan.startup.failed", "message": "the database is not there"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def describe(scope: Scope, body: bytes) -> bytes:
    document: dict[str, Any] = {
        "type": scope["type"],
        "asgi": scope["asgi"],
        "http_version": scope["http_version"],
        "method": scope["method"],
        "scheme": scope["scheme"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "root_path": scope["root_path"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "client": list(scope["client"]) if scope["client"] else None,
        "server": list(scope["server"]) if scope["server"] else None,
        "extensions": sorted(scope.get("extensions", {})),
        "state": scope.get("state"),
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "pid": os.getpid(),
    }
    return json.dumps(document).encode()


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the body, answers with a JSON description of the request; ?sleep=S waits first."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    query = dict(part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part)
    body = await read_body(receive)
    if body is None:
        return
    if "sleep" in query:
        await asyncio.sleep(float(query["sleep"]))
    await respond(send, 200, describe(scope, body), b"application/json")


async def failing_startup(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send, fail=True)
        return
    await respond(send, 200, b"never\n")
