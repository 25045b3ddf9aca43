"""Every refusal of the management API in the OCI error format: domain errors, the framework's own
validation errors, unknown paths, and methods a path does not allow (405 with `Allow`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.routing import Match

from shipyard.api.errors import body_for, error_body, status_for
from shipyard.api.http import JSON
from shipyard.api.management_models import Errors
from shipyard.domain.errors import PaginationInvalid, RegistryError, RequestInvalid, Unauthorized

log = logging.getLogger(__name__)

NO_STORE = "no-store"


class BadRequest(RequestInvalid):
    message = "bad request"


class BodyTooLarge(RequestInvalid):
    message = "request body too large"


def _schema(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"model": Errors, "description": description}
    if headers:
        response["headers"] = headers
    return response


# What any authenticated operation may answer besides its success.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _schema("the request is malformed or a value is refused"),
    401: _schema(
        "Basic credentials are missing or wrong",
        {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Basic realm=...`"}},
    ),
    403: _schema("the caller may not do this"),
    404: _schema("no such account, principal or repository (or not one the caller may see)"),
    413: _schema("the request body is larger than 64 KiB"),
    429: _schema(
        "too many failed logins from this source",
        {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}},
    ),
}
CONFLICT_RESPONSE: dict[int | str, dict[str, Any]] = {409: _schema("it exists already")}


def error_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status, headers={"cache-control": NO_STORE, **(headers or {})}, media_type=JSON)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
        return f"body field {'.'.join(parts)!r}" if parts else "body"
    return f"{parts[0]} parameter {'.'.join(parts[1:])!r}" if len(parts) > 1 else ".".join(parts)


def _from_validation(errors: list[dict[str, Any]]) -> RegistryError:
    """A validation error as the domain error clients know: pages keep their own wording."""
    for error in errors:
        loc = tuple(error.get("loc", ()))
        if loc == ("query", "n"):
            return PaginationInvalid(f"n must be an integer from 1 to 1000: {error.get('input')!r}")
        if loc == ("query", "last"):
            return BadRequest(f"last must be an event id: {error.get('input')!r}")
    problems = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            problems.append("the request body is not valid JSON")
        elif error.get("type") == "missing" and loc == ("body",):
            problems.append("a JSON request body is required")
        else:
            problems.append(f"{_location(loc)}: {error.get('msg', 'invalid')}")
    return BadRequest("; ".join(problems))


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at this path: the framework names only the first route's."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and route_methods:
            methods |= set(route_methods)
    return sorted(methods) or ["GET", "HEAD"]


def install_error_handlers(app: FastAPI, realm: Callable[[], str]) -> None:
    async def registry_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RegistryError)
        headers = {}
        if isinstance(exc, Unauthorized):
            headers["www-authenticate"] = f'Basic realm="{realm()}"'
        return error_response(status_for(exc), body_for(exc), headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return await registry_error(request, _from_validation(list(exc.errors())))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error_response(404, error_body("NOT_FOUND", "no such endpoint"))
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(app, request))
            body = error_body("UNSUPPORTED", "method not allowed")
            return error_response(405, body, {"allow": allow})
        if exc.status_code == 400:
            # the framework could not read the body: the client went away or sent garbage
            return error_response(400, error_body("UNSUPPORTED", "bad request", str(exc.detail)))
        return error_response(exc.status_code, error_body("UNKNOWN", str(exc.detail)))

    app.add_exception_handler(RegistryError, registry_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


class ManagementRoute(APIRoute):
    """Answers an unexpected exception with a 500 in the error format here, where the framework would
    hand it to its outermost middleware, which logs it a second time and re-raises it to the server."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await inner(request)
            except (HTTPException, RequestValidationError, RegistryError):
                raise
            except Exception:
                log.exception("unexpected error in %s %s", request.method, request.url.path)
                return error_response(500, error_body("UNKNOWN", "internal server error"))

        return handler
