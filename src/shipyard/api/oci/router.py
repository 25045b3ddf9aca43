"""Dispatch of /v2 requests: authenticate, authorize for the repository and action, then the handler.
Every error becomes the OCI JSON error body here, in one place."""

from __future__ import annotations

import logging
import re

from shipyard.api.errors import NO_SUCH_ENDPOINT, body_for, error_body, status_for
from shipyard.api.http import JSON, ClientDisconnected, Request, respond, respond_json
from shipyard.api.oci import blobs, listing, manifests, uploads
from shipyard.api.oci.context import Context
from shipyard.api.types import Receive, Scope, Send
from shipyard.domain.errors import RegistryError, TooManyUploads, Unauthorized
from shipyard.domain.names import validate_name
from shipyard.services.access import Action

log = logging.getLogger(__name__)

# The name is greedy and may hold slashes; the suffix tells the resource.
_ROUTE = re.compile(
    r"^/v2/(?P<name>.+?)/(?:"
    r"manifests/(?P<reference>[^/]+)"
    r"|blobs/uploads/(?P<upload>[^/]*)"
    r"|blobs/(?P<digest>[^/]+)"
    r"|tags/(?P<tags>list)"
    r"|referrers/(?P<subject>[^/]+)"
    r")$"
)

# host[:port] as RFC 3986 spells it: a name or IPv4 address, or an IPv6 literal in brackets
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?\Z"
)
# route templates by the group that matched last, for metrics and the access log (never the raw path)
_TEMPLATES: dict[str | None, str] = {
    "reference": "/v2/{name}/manifests/{reference}",
    "uploads": "/v2/{name}/blobs/uploads/",
    "upload": "/v2/{name}/blobs/uploads/{uuid}",
    "digest": "/v2/{name}/blobs/{digest}",
    "tags": "/v2/{name}/tags/list",
    "subject": "/v2/{name}/referrers/{digest}",
}

_ACTIONS: dict[str, Action] = {
    "GET": "pull",
    "HEAD": "pull",
    "PUT": "push",
    "POST": "push",
    "PATCH": "push",
    "DELETE": "delete",
}


class OciApi:
    def __init__(self, context: Context) -> None:
        self.ctx = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            await self._dispatch(request, send)
        except ClientDisconnected:
            log.info("client went away during %s %s", request.method, request.path)
            # the body ended before its declared end; a client that still listens (it may only have
            # half-closed) is told so, instead of the server's stand-in 500 for an unanswered request
            body = error_body("SIZE_INVALID", "the request body ended before its declared length")
            await self._error(request, send, 400, body)
        except Unauthorized as error:
            if error.record is not None:
                try:
                    await self.ctx.run(error.record)
                except Exception:
                    log.exception("could not record the refusal of %s %s", request.method, request.path)
            headers = {}
            if self.ctx.auth_service is not None:
                headers["www-authenticate"] = self._challenge(request, error)
            await self._error(request, send, status_for(error), body_for(error), headers)
        except MethodNotAllowed as error:
            await self._error(request, send, 405, body_for(error), {"allow": error.allow})
        except RegistryError as error:
            status = status_for(error)
            extra: dict[str, str] | None = None
            if status == 413:
                # a refused body may be gigabytes still on their way: swallowing them would hold the worker
                extra = {"connection": "close"}
            elif isinstance(error, TooManyUploads):
                extra = {"retry-after": str(error.retry_after)}
            elif status == 405 and (match := _ROUTE.match(request.path)) is not None:
                # deletes are off on this registry: a 405 still names what the endpoint answers
                extra = {"allow": ", ".join(m for m in _allowed_methods(match) if m != request.method)}
            await self._error(request, send, status, body_for(error), extra)
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            await self._error(request, send, 500, error_body("UNKNOWN", "internal server error"))

    def _challenge(self, request: Request, error: Unauthorized) -> str:
        base = self.ctx.public_url
        if base is None:
            scheme = "https" if request.scope.get("scheme") == "https" else "http"
            host = request.headers.get("host")
            if host is None or not _HOST.match(host):
                # the Host header goes into a quoted parameter of the challenge: anything but host[:port]
                # could end the quote and add parameters of its own, so the server's own address stands in
                server = request.scope.get("server") or ("localhost", 80)
                host = f"[{server[0]}]:{server[1]}" if ":" in str(server[0]) else f"{server[0]}:{server[1]}"
            base = f"{scheme}://{host}"
        parts = [f'realm="{base.rstrip("/")}/token"', f'service="{self.ctx.auth_service}"']
        extra = error.extra if isinstance(error.extra, dict) else {}
        if extra.get("scope"):
            parts.append(f'scope="{extra["scope"]}"')
        if extra.get("error"):
            parts.append(f'error="{extra["error"]}"')
        return "Bearer " + ",".join(parts)

    @staticmethod
    async def _error(
        request: Request, send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        head = request.method == "HEAD"
        try:
            await respond(send, status, {"content-type": JSON, **(headers or {})}, body, head=head)
        except Exception:  # the response had already started, or the client is gone
            log.debug("could not send error response", exc_info=True)

    async def _dispatch(self, request: Request, send: Send) -> None:
        ctx = self.ctx
        method = request.method
        path = request.path
        client = request.scope.get("client")
        authorization, source = request.header("authorization"), client[0] if client else None
        identity = ctx.access.known_caller(authorization, source)
        if identity is None:
            # a token not seen before is checked against the principal view, which may ask the database
            identity = await ctx.run(ctx.access.authenticate, authorization, source)
        request.scope["principal"] = None if identity.anonymous else identity.subject
        if path in ("/v2/", "/v2"):
            request.scope["route"] = "/v2/"
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed("GET, HEAD")
            ctx.access.require_authenticated(identity)
            await respond_json(send, 200, {})
            return
        if path == "/v2/_catalog":
            request.scope["route"] = "/v2/_catalog"
            if method != "GET":
                raise MethodNotAllowed("GET")
            ctx.access.authorize(identity, None, "pull")
            visible = await ctx.run(ctx.access.catalog_filter, identity)  # SQL: what is public, shared
            await listing.catalog(ctx, request, send, ctx.access.actor(identity), visible)
            return
        match = _ROUTE.match(path)
        if match is None:
            await respond(send, 404, {"content-type": JSON}, NO_SUCH_ENDPOINT)
            return
        request.scope["route"] = _TEMPLATES[match.lastgroup if match["upload"] != "" else "uploads"]
        name = validate_name(match["name"])
        allow = _allowed_methods(match)
        request.scope["repository"] = name
        action = _ACTIONS.get(method)
        if action is None or method not in allow:
            raise MethodNotAllowed(", ".join(allow))
        try:
            if ctx.access.authorizes_instantly(identity, name, action):
                ctx.access.authorize(identity, name, action)
            else:
                await ctx.run(ctx.access.authorize, identity, name, action)
        except Unauthorized as error:
            if match["upload"] == "" and method == "POST":
                _ask_for_mount_source(request, error)
            raise
        actor = ctx.access.actor(identity)
        if (reference := match["reference"]) is not None:
            if method in ("GET", "HEAD"):
                await manifests.get_manifest(ctx, request, send, actor, name, reference)
            elif method == "PUT":
                await manifests.put_manifest(ctx, request, send, actor, name, reference)
            else:
                await manifests.delete_manifest(ctx, request, send, actor, name, reference)
        elif (upload := match["upload"]) is not None:
            if upload == "":
                await uploads.start_upload(ctx, request, send, actor, name, identity)
            elif method == "PATCH":
                await uploads.patch_upload(ctx, request, send, actor, name, upload)
            elif method == "PUT":
                await uploads.finish_upload(ctx, request, send, actor, name, upload)
            elif method == "GET":
                await uploads.upload_status(ctx, request, send, actor, name, upload)
            else:
                await uploads.cancel_upload(ctx, request, send, actor, name, upload)
        elif (digest := match["digest"]) is not None:
            if method in ("GET", "HEAD"):
                await blobs.get_blob(ctx, request, send, actor, name, digest)
            else:
                await blobs.delete_blob(ctx, request, send, actor, name, digest)
        elif match["tags"] is not None:
            await listing.list_tags(ctx, request, send, actor, name)
        else:
            await listing.referrers(ctx, request, send, actor, name, match["subject"])


class MethodNotAllowed(RegistryError):
    code = "UNSUPPORTED"
    message = "method not allowed for this endpoint"

    def __init__(self, allow: str) -> None:
        super().__init__(f"this endpoint allows {allow}")
        self.allow = allow


def _allowed_methods(match: re.Match[str]) -> tuple[str, ...]:
    if match["reference"] is not None:
        return ("GET", "HEAD", "PUT", "DELETE")
    if match["upload"] == "":
        return ("POST",)
    if match["upload"] is not None:
        return ("GET", "PATCH", "PUT", "DELETE")
    if match["digest"] is not None:
        return ("GET", "HEAD", "DELETE")
    return ("GET",)  # tags/list and referrers


def _ask_for_mount_source(request: Request, error: Unauthorized) -> None:
    """A mount needs pull on the source repository too: a challenge that asks for both scopes lets a
    client fetch one token that covers the mount, instead of falling back to a full upload."""
    source = request.param("from")
    extra = error.extra
    if request.param("mount") is None or not source or not isinstance(extra, dict) or not extra.get("scope"):
        return
    try:
        source = validate_name(source)
    except RegistryError:
        return
    extra["scope"] = f"{extra['scope']} repository:{source}:pull"
