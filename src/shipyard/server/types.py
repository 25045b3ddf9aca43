"""ASGI type aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NamedTuple

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class AccessRecord(NamedTuple):
    """One finished request, as the server hands it to the application's `access_observer` or, in a
    list, to its `access_batch_observer`, in batches at least once a second. A named tuple, not a
    frozen dataclass: it is made for every request, and was five times dearer as one."""

    time: float  # epoch seconds when the request head was complete
    client: str  # the client's address, after trusted proxy headers
    method: str
    path: str
    route: str | None  # scope["route"] as the application left it
    status: int
    bytes_received: int  # request body bytes
    bytes_sent: int  # response body bytes
    duration: float  # seconds
    request_id: str
    principal: str | None
    repository: str | None
