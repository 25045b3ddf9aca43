"""GET|HEAD /healthz (the process answers) and /readyz (what it depends on is usable), for balancers."""

from __future__ import annotations

import json

from shipyard.api.http import JSON, refused_unless_read, respond
from shipyard.api.oci.context import Context
from shipyard.api.types import Receive, Scope, Send
from shipyard.services.health import ReadinessService

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
PATHS = (HEALTH_PATH, READY_PATH)
_ALIVE = json.dumps({"status": "ok"}).encode()
_HEADERS = {"content-type": JSON, "cache-control": "no-store"}


class HealthApi:
    def __init__(self, context: Context, readiness: ReadinessService | None) -> None:
        self.ctx = context
        self.readiness = readiness or ReadinessService({})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if await refused_unless_read(method, send):
            return
        head = method == "HEAD"
        if scope["path"] == HEALTH_PATH:
            await respond(send, 200, _HEADERS, _ALIVE, head=head)
            return
        # the checks wait on the database and the disk: off the event loop
        result = await self.ctx.run(self.readiness.check)
        body = json.dumps(result.document()).encode()
        await respond(send, 200 if result.ready else 503, _HEADERS, body, head=head)
