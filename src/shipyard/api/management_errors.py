"""Every refusal of the management API in the OCI error format: domain errors, the framework's own
validation errors, unknown paths, and methods a path does not allow (405 with `Allow`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match

from shipyard.api.errors import body_for, error_body, status_for
from shipyard.api.http import JSON
from shipyard.api.management_models import Errors
from shipyard.domain.errors import (
    PaginationInvalid,
    RegistryError,
    RequestInvalid,
    TooManyRequests,
    Unauthorized,
)

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
        elif loc == ("body",):
            problems.append("the request body must be a JSON object (Content-Type: application/json)")
        else:
            problems.append(f"{_location(loc)}: {error.get('msg', 'invalid')}")
    return BadRequest("; ".join(problems))


def allowed_methods(routes: Sequence[BaseRoute], request: Request) -> list[str]:
    """The methods of the first template that matches the path, which is the one that owns it (the
    framework names only the first route's methods, not those of the template's other routes)."""
    owner: str | None = None
    methods: set[str] = set()
    for route in routes:
        template = getattr(route, "path", None)
        if owner is None and route.matches(request.scope)[0] != Match.NONE:
            owner = template
        if owner is not None and template == owner:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods) or ["GET", "HEAD"]


def without_unused_responses(document: dict[str, Any]) -> dict[str, Any]:
    """The framework documents a 422 for its validation errors on every operation; they are 400s here
    (ERROR_RESPONSES), so the 422 and its schemas go."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


def install_error_handlers(app: FastAPI, routes: Sequence[BaseRoute], realm: Callable[[], str]) -> None:
    """`routes`: every route of the application, as they were declared (with their full paths)."""

    async def registry_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RegistryError)
        headers = {}
        if isinstance(exc, Unauthorized):
            headers["www-authenticate"] = f'Basic realm="{realm()}"'
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(exc, TooManyRequests) and retry_after is not None:
            headers["retry-after"] = str(retry_after)
        return error_response(status_for(exc), body_for(exc), headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return await registry_error(request, _from_validation(list(exc.errors())))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error_response(404, error_body("NOT_FOUND", "no such endpoint"))
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(routes, request))
            body = error_body("UNSUPPORTED", "method not allowed")
            return error_response(405, body, {"allow": allow})
        if exc.status_code == 401:
            # the framework's Basic scheme refused a header it could not decode
            return await registry_error(request, Unauthorized("Basic credentials required"))
        if exc.status_code == 400:
            # the framework could not read the body: the client went away or sent garbage
            return error_response(400, error_body("UNSUPPORTED", "bad request", str(exc.detail)))
        return error_response(exc.status_code, error_body("UNKNOWN", str(exc.detail)))

    app.add_exception_handler(RegistryError, registry_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


class ManagementRoute(APIRoute):
    """Refuses query parameters the operation does not declare (a misspelt `?limit=` would otherwise
    be silently ignored) or that come more than once (the framework would keep one silently).
    Answers an unexpected exception with a 500 in the error format here, where the framework would
    hand it to its outermost middleware, which logs it a second time and re-raises it to the server."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()
        declared = _query_names(self.dependant)

        async def handler(request: Request) -> Response:
            unknown = sorted({name for name in request.query_params if name not in declared})
            if unknown:
                raise BadRequest(f"unknown query parameter(s): {', '.join(map(repr, unknown))}")
            repeated = sorted(
                {name for name in request.query_params if len(request.query_params.getlist(name)) > 1}
            )
            if repeated:
                raise BadRequest(f"query parameter(s) given more than once: {', '.join(map(repr, repeated))}")
            try:
                return await inner(request)
            except (HTTPException, RequestValidationError, RegistryError):
                raise
            except Exception:
                log.exception("unexpected error in %s %s", request.method, request.url.path)
                return error_response(500, error_body("UNKNOWN", "internal server error"))

        return handler
