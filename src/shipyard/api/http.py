"""Small, fast request and response helpers over raw ASGI (no framework on the hot paths)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import parse_qs

from shipyard.api.errors import error_body
from shipyard.api.types import Headers, Receive, Scope, Send

API_VERSION_HEADER = (b"docker-distribution-api-version", b"registry/2.0")
JSON = "application/json"


class ClientDisconnected(Exception):
    pass


class Request:
    __slots__ = ("_headers", "_query", "method", "path", "query_string", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query_string: bytes = scope.get("query_string", b"")
        self._query: dict[str, list[str]] | None = None
        # decoded on first use: the manifest GET path only ever looks at one header
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Header names in lower case; repeated headers joined with ", "."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for key, value in self.scope["headers"]:
                name = key.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[name] = f"{headers[name]}, {text}" if name in headers else text
            self._headers = headers
        return self._headers

    def header(self, name: str) -> str | None:
        """One header (`name` in lower case), as `headers.get(name)` gives it, without decoding the rest."""
        if self._headers is not None:
            return self._headers.get(name)
        wanted = name.encode("latin-1")
        found: str | None = None
        for key, value in self.scope["headers"]:
            if key == wanted or (len(key) == len(wanted) and key.lower() == wanted):
                text = value.decode("latin-1")
                found = text if found is None else f"{found}, {text}"
        return found

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(self.query_string.decode("latin-1"), keep_blank_values=True)
        return self._query

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def params(self, name: str) -> list[str]:
        return self.query.get(name, [])

    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            return None
        return value if value >= 0 else None

    async def stream(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            body = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                return

    async def body(self, limit: int) -> bytes | None:
        """The whole body, or None when it is longer than `limit`."""
        parts: list[bytes] = []
        total = 0
        async for chunk in self.stream():
            total += len(chunk)
            if total > limit:
                return None
            parts.append(chunk)
        return b"".join(parts)


def header_list(headers: dict[str, str] | Iterable[tuple[str, str]]) -> Headers:
    items = headers.items() if isinstance(headers, dict) else headers
    out: Headers = [API_VERSION_HEADER]
    out.extend([(k.encode("latin-1"), v.encode("latin-1")) for k, v in items])
    return out


async def respond(
    send: Send,
    status: int,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    head: bool = False,
    content_length: int | None = None,
) -> None:
    raw = header_list(headers) if headers else [API_VERSION_HEADER]
    if headers is None or "content-length" not in headers:
        length = len(body) if content_length is None else content_length
        raw.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def respond_raw(send: Send, status: int, headers: Headers, body: bytes, *, head: bool = False) -> None:
    """Send a response whose header list is already encoded (and holds content-length): hot paths."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def respond_json(send: Send, status: int, document: Any, headers: dict[str, str] | None = None) -> None:
    merged = {"content-type": JSON, **(headers or {})}
    await respond(send, status, merged, json.dumps(document).encode())


async def refused_unless_read(method: str, send: Send) -> bool:
    """For endpoints that only serve reads: answer anything but GET and HEAD with 405 and `Allow`.
    True when it did, and the caller is done."""
    if method in ("GET", "HEAD"):
        return False
    body = error_body("UNSUPPORTED", "method not allowed")
    await respond(send, 405, {"content-type": JSON, "allow": "GET, HEAD"}, body)
    return True
