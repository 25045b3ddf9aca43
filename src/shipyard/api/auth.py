"""The token service (Docker registry token auth, OAuth2 password and refresh grants), the JWKS of
the signing keys, and ECR-style login passwords."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from concurrent.futures import Executor
from typing import Any
from urllib.parse import parse_qs

from shipyard.api.errors import body_for, error_body, status_for
from shipyard.api.http import JSON, ClientDisconnected, Request, respond, respond_json
from shipyard.api.types import Receive, Scope, Send
from shipyard.auth.limiter import LoginThrottled
from shipyard.auth.scopes import Scope as AccessScope
from shipyard.auth.scopes import ScopeInvalid, parse_scopes
from shipyard.domain.accounts import PrincipalRecord
from shipyard.domain.errors import RegistryError, RequestInvalid, Unauthorized
from shipyard.services.identity import IdentityService, IssuedToken

log = logging.getLogger(__name__)

TOKEN_PATH = "/token"
JWKS_PATHS = ("/.well-known/jwks.json", "/token/jwks")
_MAX_FORM = 64 * 1024


def source_of(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    login, sep, secret = decoded.partition(":")
    # the database refuses NUL in a string (PostgreSQL): it is no one's name
    return (login, secret) if sep and "\x00" not in login else None


class AuthApi:
    def __init__(self, identity: IdentityService, executor: Executor) -> None:
        self.identity = identity
        self.executor = executor

    def handles(self, path: str) -> bool:
        # (login passwords are issued by the management API, under /api/v1/)
        return path == TOKEN_PATH or path in JWKS_PATHS

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            if request.path in JWKS_PATHS and request.method == "GET":
                await respond_json(send, 200, self.identity.keys.jwks(), {"cache-control": "max-age=60"})
            elif request.path == TOKEN_PATH and request.method == "GET":
                await self._token_get(request, send)
            elif request.path == TOKEN_PATH and request.method == "POST":
                await self._token_post(request, send)
            else:
                allow = "GET, POST" if request.path == TOKEN_PATH else "GET"
                await respond(
                    send,
                    405,
                    {"content-type": JSON, "allow": allow},
                    error_body("UNSUPPORTED", "method not allowed"),
                )
        except RegistryError as error:
            headers = {"content-type": JSON}
            if isinstance(error, Unauthorized):
                headers["www-authenticate"] = f'Basic realm="{self.identity.config.service}"'
            if isinstance(error, LoginThrottled):
                headers["retry-after"] = str(error.retry_after)
            await respond(send, status_for(error), headers, body_for(error))
        except ClientDisconnected:
            # not the server's fault: no error in the log. A client that only half-closed still
            # listens, and is told, instead of the server's stand-in 500 for an unanswered request
            log.info("client went away during %s %s", request.method, request.path)
            body = error_body("UNSUPPORTED", "the request body ended before its declared length")
            await respond(send, 400, {"content-type": JSON}, body)
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            await respond(send, 500, {"content-type": JSON}, error_body("UNKNOWN", "internal server error"))

    def _check_service(self, service: str | None) -> None:
        if service and service != self.identity.config.service:
            raise Unauthorized(f"this token service is for {self.identity.config.service!r}, not {service!r}")

    @staticmethod
    def _scopes(values: list[str]) -> list[AccessScope]:
        try:
            return parse_scopes(values)
        except ScopeInvalid as exc:
            raise _BadRequest(str(exc)) from None

    async def _principal(self, request: Request, *, required: bool) -> PrincipalRecord | None:
        credentials = basic_credentials(request.headers.get("authorization"))
        if credentials is None:
            if required or request.headers.get("authorization"):
                raise Unauthorized("Basic credentials required")
            return None
        login, secret = credentials
        principal: PrincipalRecord = await self._run(
            self.identity.login, login, secret, source_of(request.scope)
        )
        request.scope["principal"] = principal.login
        return principal

    async def _issue(
        self, request: Request, principal: PrincipalRecord | None, scopes: list[AccessScope], offline: bool
    ) -> IssuedToken:
        issued: IssuedToken = await self._run(
            lambda: self.identity.issue_token(principal, scopes, with_refresh=offline)
        )
        denied = [str(s) for s in scopes if not _covered(s, issued.access)]
        if denied:
            who = principal.login if principal else "anonymous"
            await self._run(
                # anyone may ask for any scope at any rate: aggregated as failures are
                lambda: self.identity.audit_failure(
                    "scope-denied",
                    principal=who,
                    source=source_of(request.scope),
                    action=" ".join(denied),
                    reason="requested more than the principal may do",
                )
            )
        return issued

    async def _token_get(self, request: Request, send: Send) -> None:
        self._check_service(request.param("service"))
        scopes = self._scopes(request.params("scope"))
        principal = await self._principal(request, required=False)
        offline = request.param("offline_token") == "true" and principal is not None
        issued = await self._issue(request, principal, scopes, offline)
        await respond_json(send, 200, _token_document(issued), {"cache-control": "no-store"})

    async def _token_post(self, request: Request, send: Send) -> None:
        declared = request.content_length()
        if declared is not None and declared > _MAX_FORM:
            raise _BadRequest("form too large")
        raw = await request.body(_MAX_FORM)
        if raw is None:
            raise _BadRequest("form too large")
        form = _form(raw)
        self._check_service(form.get("service"))
        scopes = self._scopes([form.get("scope", "")])
        grant = form.get("grant_type")
        source = source_of(request.scope)
        if grant == "password":
            principal = await self._run(
                self.identity.login, form.get("username", ""), form.get("password", ""), source
            )
        elif grant == "refresh_token":
            principal = await self._run(self.identity.refresh, form.get("refresh_token", ""), source)
        else:
            raise _BadRequest(f"unsupported grant_type: {grant!r}")
        request.scope["principal"] = principal.login
        offline = grant == "password" and form.get("access_type") == "offline"
        issued = await self._issue(request, principal, scopes, offline)
        document = _token_document(issued)
        document["scope"] = " ".join(str(s) for s in issued.access)
        await respond_json(send, 200, document, {"cache-control": "no-store"})


def _form(raw: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body, strictly: 400 for anything else."""
    try:
        text = raw.decode("ascii")
        fields = parse_qs(
            text, keep_blank_values=True, strict_parsing=bool(text), errors="strict", max_num_fields=32
        )
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest("the body is not a URL-encoded form") from None
    form: dict[str, str] = {}
    for name, values in fields.items():
        # the database refuses NUL in a string (PostgreSQL): it is no one's name or token
        if any("\x00" in value for value in values):
            raise _BadRequest(f"form field {name!r} holds a NUL character")
        if name == "scope":  # scopes are space-separated; some clients repeat the field instead
            form[name] = " ".join(values)
        elif len(values) != 1:
            raise _BadRequest(f"form field {name!r} given more than once")
        else:
            form[name] = values[0]
    return form


def _covered(requested: AccessScope, granted: tuple[AccessScope, ...]) -> bool:
    for scope in granted:
        if scope.type == requested.type and scope.name == requested.name:
            return "*" in requested.actions or requested.actions <= scope.actions
    return False


def _token_document(issued: IssuedToken) -> dict[str, Any]:
    document: dict[str, Any] = {
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
    }
    if issued.refresh_token:
        document["refresh_token"] = issued.refresh_token
    return document


class _BadRequest(RequestInvalid):
    message = "bad token request"
