"""The ASGI application: routes /v2 to the OCI API and runs the lifespan hooks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from shipyard.api.auth import AuthApi
from shipyard.api.errors import NO_SUCH_ENDPOINT, error_body
from shipyard.api.health import PATHS as HEALTH_PATHS
from shipyard.api.health import HealthApi
from shipyard.api.http import JSON, respond
from shipyard.api.management import PREFIX as MANAGEMENT_PREFIX
from shipyard.api.management import ManagementApi
from shipyard.api.metrics import PATH as METRICS_PATH
from shipyard.api.metrics import MetricsEndpoint
from shipyard.api.oci.context import Context
from shipyard.api.oci.router import OciApi
from shipyard.api.types import Receive, Scope, Send
from shipyard.services.health import ReadinessService

log = logging.getLogger(__name__)

MANAGEMENT_OFF = error_body(
    "UNAVAILABLE",
    "the management API needs authentication, and this registry runs with --insecure-no-auth",
)


class ShipyardASGI:
    def __init__(
        self,
        context: Context,
        *,
        auth: AuthApi | None = None,
        management: ManagementApi | None = None,
        on_startup: list[Callable[[], object]] | None = None,
        on_shutdown: list[Callable[[], object]] | None = None,
        readiness: ReadinessService | None = None,
        metrics: MetricsEndpoint | None = None,
    ) -> None:
        self.context = context
        self.oci = OciApi(context)
        self.auth = auth
        self.management = management
        self.on_startup = on_startup or []
        self.on_shutdown = on_shutdown or []
        self.health = HealthApi(context, readiness)
        self.metrics = metrics
        # the server calls this with its finished requests in batches, at least once a second (see
        # server/access.py); absent, it skips noting them
        if metrics is not None:
            self.access_batch_observer: Callable[[Any], None] = metrics.metrics.observe_all

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path.startswith("/v2"):
                await self.oci(scope, receive, send)
            elif path.startswith(MANAGEMENT_PREFIX):
                # /api/v1/auth/login-password included: the management app serves and documents it
                scope["route"] = "/api/v1/..."
                if self.management is None:
                    await respond(send, 503, {"content-type": JSON}, MANAGEMENT_OFF)
                else:
                    await self.management(scope, receive, send)
            elif self.auth is not None and self.auth.handles(path):
                scope["route"] = path  # one of a few fixed paths
                await self.auth(scope, receive, send)
            elif path in HEALTH_PATHS:
                scope["route"] = path
                await self.health(scope, receive, send)
            elif path == METRICS_PATH and self.metrics is not None:
                scope["route"] = path
                await self.metrics(scope, receive, send)
            else:
                await respond(send, 404, {"content-type": JSON}, NO_SUCH_ENDPOINT)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for hook in self.on_startup:
                        hook()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for hook in self.on_shutdown:
                    try:
                        hook()
                    except Exception:
                        log.exception("shutdown hook failed")
                await send({"type": "lifespan.shutdown.complete"})
                return
