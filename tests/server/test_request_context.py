"""Each request's application runs in a context of its own (contextvars): what one request sets is not
seen by the next on its connection, pipelined or not."""

from __future__ import annotations

import asyncio
import contextvars
import json

import pytest

from shipyard.server.types import Receive, Scope, Send
from tests.server.apps import respond
from tests.server.conftest import Reader, request, serving

# every test here runs on both event loops
pytestmark = pytest.mark.usefixtures("server_loop")

seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


async def context_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with what the variable held when the request started, then sets it; /wait waits first."""
    inherited = seen.get()
    seen.set(scope["path"])
    if scope["path"] == "/wait":
        await asyncio.sleep(0.01)
    document = {"inherited": inherited, "now": seen.get()}
    await respond(send, 200, json.dumps(document).encode(), b"application/json")


def test_a_request_does_not_see_what_the_one_before_set() -> None:
    with serving(context_app) as server, server.connect() as sock:  # type: ignore[arg-type]
        reader = Reader(sock)
        for path in ("/wait", "/at-once"):
            sock.sendall(request("GET", path))
            assert json.loads(reader.response().body) == {"inherited": "unset", "now": path}
        # a pipelined request is started from the end of the one before it, inside that one's task
        paths = ["/wait", "/at-once", "/wait", "/at-once"]
        sock.sendall(b"".join(request("GET", path) for path in paths))
        documents = [json.loads(reader.response().body) for _ in paths]
        assert documents == [{"inherited": "unset", "now": path} for path in paths]
