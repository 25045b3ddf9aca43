"""The management REST API under /api/v1/: accounts, users, robots, access keys, repositories,
policies and the audit log, on FastAPI: routing, body validation and the OpenAPI document
(/api/v1/openapi.json, read at /api/v1/docs) all come from the typed models in management_models.

HTTP Basic authentication (the same credentials as /token), JSON in and out, OCI-style error bodies.
Listings are pages: `?n=` (1..1000, default 100) and `?last=`, with a `Link: <...>; rel="next"`
header while there are more. Authorization and the audit live in AccountService; this module only
translates HTTP. The service is blocking: every call to it runs on the registry's executor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from importlib.resources import files
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request, Response, Security
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from fastapi.staticfiles import StaticFiles
from pydantic import BeforeValidator
from starlette.convertors import Convertor, register_url_convertor

from shipyard import __version__
from shipyard.api.auth import basic_credentials, source_of
from shipyard.api.errors import error_body
from shipyard.api.http import JSON, respond
from shipyard.api.management_errors import (
    CONFLICT_RESPONSE,
    ERROR_RESPONSES,
    NO_STORE,
    BadRequest,
    BodyTooLarge,
    ManagementRoute,
    install_error_handlers,
    without_unused_responses,
)
from shipyard.api.management_models import (
    ACCOUNT_GRAMMAR,
    REPOSITORY_NAME_GRAMMAR,
    SECRET_WARNING,
    USER_GRAMMAR,
    AccessKeyCreate,
    AccessKeys,
    Account,
    AccountCreate,
    AccountPatch,
    Accounts,
    AuditEvent,
    AuditEvents,
    Created,
    LoginPassword,
    Policies,
    Policy,
    PolicyPut,
    Principal,
    Repositories,
    Repository,
    RepositoryCreate,
    RepositoryPatch,
    RobotCreate,
    RobotPatch,
    Robots,
    UserCreate,
    UserPatch,
    Users,
    Whoami,
)
from shipyard.api.types import Message, Receive, Scope, Send
from shipyard.domain.accounts import AccountRecord, PrincipalKind, PrincipalRecord, is_superuser
from shipyard.domain.errors import Unauthorized
from shipyard.domain.management import DEFAULT_PAGE, MAX_PAGE, AuditRecord
from shipyard.domain.records import Usage as StoredUsage
from shipyard.events.service import EventService
from shipyard.services.accounts import AccountService, RepositoryInfo, robot_login
from shipyard.services.identity import IdentityService
from shipyard.services.jobs import JobService

PREFIX = "/api/v1/"
OPENAPI_PATH = "/api/v1/openapi.json"
DOCS_PATH = "/api/v1/docs"
_ASSETS_PATH = "/api/v1/docs/assets"
MAX_BODY = 64 * 1024
# `shipyard <command>` says so in its User-Agent; the audit then records the source as cli@<address>
CLI_USER_AGENT = "shipyard-cli"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Services:
    identity: IdentityService
    accounts: AccountService
    executor: Executor
    jobs: JobService | None = None

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, partial(fn, *args, **kwargs))


@dataclass(frozen=True, slots=True)
class Call:
    """One authenticated request: who, from where (for the audit), and the services to ask."""

    actor: PrincipalRecord
    source: str
    services: _Services

    @property
    def service(self) -> AccountService:
        return self.services.accounts

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.services.run(fn, *args, **kwargs)


def _services(request: Request) -> _Services:
    services: _Services = request.app.state.services
    return services


def request_source(request: Request) -> str:
    address = source_of(request.scope)
    agent = request.headers.get("user-agent", "")
    return f"cli@{address}" if agent.startswith(CLI_USER_AGENT) else address


# declares the scheme in the OpenAPI document; the header is read below, as /token reads it
_BASIC = HTTPBasic(auto_error=False, realm="shipyard", description="the same credentials as /token")


async def authenticated(
    request: Request, _: Annotated[HTTPBasicCredentials | None, Security(_BASIC)]
) -> Call:
    credentials = basic_credentials(request.headers.get("authorization"))
    if credentials is None:
        raise Unauthorized("Basic credentials required")
    services = _services(request)
    login, secret = credentials
    actor = await services.run(services.identity.login, login, secret, source_of(request.scope))
    return Call(actor, request_source(request), services)


Caller = Annotated[Call, Depends(authenticated)]
# the grammar the service checks, documented (a name outside it is refused there, and audited)
AccountPath = Annotated[str, Path(description="an account name", json_schema_extra=ACCOUNT_GRAMMAR)]
PrincipalPath = Annotated[
    str,
    Path(description="a user name, or a robot's name without `<account>+`", json_schema_extra=USER_GRAMMAR),
]
RepositoryPath = Annotated[
    str, Path(description="`<account>/<name>`, slashes and all", json_schema_extra=REPOSITORY_NAME_GRAMMAR)
]


# -- pages -------------------------------------------------------------------------------------


def _blank_is(default: object) -> BeforeValidator:
    # `?n=` and `?last=` with no value mean "not given", as they did before the framework
    return BeforeValidator(lambda value: default if value == "" else value)


PageSize = Annotated[
    int,
    Query(ge=1, le=MAX_PAGE, description="page size; anything but an integer from 1 to 1000 is a 400"),
    _blank_is(DEFAULT_PAGE),
]
# ids of the tables that are paged by id (32-bit on PostgreSQL): a larger one would fail in the database
IdAfter = Annotated[
    int | None,
    Query(ge=0, le=2**31 - 1, description="continue after this id (the Link header carries it)"),
    _blank_is(None),
]
After = Annotated[
    str | None,
    Query(description="continue after this key (the previous page's last); the Link header carries it"),
    _blank_is(None),
]
LINK = {
    "link": {
        "description": 'present while more items follow: `<path?n=N&last=KEY>; rel="next"`',
        "schema": {"type": "string"},
    }
}


def _paged(model: type[Any], description: str) -> dict[str, Any]:
    return {"response_model": model, "responses": {200: {"description": description, "headers": LINK}}}


def link_next(request: Request, response: Response, size: int, last: str | None) -> None:
    """The Link header to the page after this one, keeping the request's other parameters."""
    if last is None:
        return
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("n", "last")]
    query = urlencode([*kept, ("n", str(size)), ("last", last)])
    response.headers["link"] = f'<{request.url.path}?{query}>; rel="next"'


# -- documents ---------------------------------------------------------------------------------


def account_document(account: AccountRecord) -> Account:
    return Account(name=account.name, disabled=account.disabled, created_at=account.created_at.isoformat())


def _principal_fields(principal: PrincipalRecord) -> dict[str, Any]:
    name = principal.login
    if principal.kind == "robot":
        name = principal.login.removeprefix(robot_login(principal.account, ""))
    return {
        "login": principal.login,
        "name": name,
        "account": principal.account,
        "kind": principal.kind,
        "role": principal.role,
        "disabled": principal.disabled,
        "description": principal.description,
        "created_at": principal.created_at.isoformat(),
    }


def principal_document(principal: PrincipalRecord) -> Principal:
    return Principal(**_principal_fields(principal))


def created_document(principal: PrincipalRecord, secret: str | None) -> Created:
    if not secret:
        return Created(**_principal_fields(principal))
    return Created(**_principal_fields(principal), secret=secret, warning=SECRET_WARNING)


def repository_document(info: RepositoryInfo) -> Repository:
    return Repository(
        name=info.name,
        visibility=info.visibility,
        policies={account: sorted(actions) for account, actions in sorted(info.policies.items())},
        actions=sorted(info.actions),
        **usage_fields(info.usage),
        untagged_retention_days=info.untagged_retention_days,
    )


def usage_fields(usage: StoredUsage | None) -> dict[str, int]:
    if usage is None:
        return {"stored_bytes": 0, "unique_bytes": 0, "shared_bytes": 0, "blobs": 0}
    return {
        "stored_bytes": usage.stored_bytes,
        "unique_bytes": usage.unique_bytes,
        "shared_bytes": usage.shared_bytes,
        "blobs": usage.blobs,
    }


def audit_document(event: AuditRecord) -> AuditEvent:
    return AuditEvent(
        id=event.id,
        at=event.at.isoformat(),
        event=event.event,
        principal=event.principal,
        source=event.source,
        action=event.action,
        account=event.account,
        target=event.target,
        outcome=event.outcome,
        reason=event.reason,
    )


# -- routes ------------------------------------------------------------------------------------

router = APIRouter(prefix="/api/v1", route_class=ManagementRoute, responses=ERROR_RESPONSES)
_ACCOUNT = "/accounts/{account}"
_POLICIES = "/repositories/{name:path}/policies"


class _RepositoryConvertor(Convertor[str]):
    """A repository name spans slashes, so `/repositories/a/policies` could name the repository
    `a/policies` or the policies of `a`: paths shaped as a policies (or untagged-retention) endpoint
    belong to it alone (and a method it lacks is a 405 there, not an operation on another repository)."""

    regex = r"(?!.*/policies(?:/[^/]*)?$)(?!.*/untagged-retention$).*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("repository", _RepositoryConvertor())
_REPOSITORY = "/repositories/{name:repository}"
_NO_CONTENT: dict[str, Any] = {"status_code": 204, "response_class": Response}


@router.get("/whoami", response_model=Whoami, tags=["principals"])
async def whoami(call: Caller) -> Whoami:
    """The caller's own principal, and whether it is a registry administrator."""
    return Whoami(**_principal_fields(call.actor), superuser=is_superuser(call.actor))


@router.post(
    "/auth/login-password",
    response_model=LoginPassword,
    tags=["principals"],
    responses={200: {"description": "a password for `docker login`, valid until `expires_at`"}},
)
async def login_password(call: Caller) -> LoginPassword:
    """A short-lived password for registry clients, issued to the caller."""
    password, expires_at = await call.run(
        call.services.identity.issue_login_password, call.actor, call.source
    )
    return LoginPassword(
        username=call.services.identity.config.login_password_user,
        password=password,
        expires_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at)),
    )


@router.get("/audit", tags=["audit"], **_paged(AuditEvents, "audit events, newest first"))
async def list_audit(
    call: Caller,
    request: Request,
    response: Response,
    n: PageSize = DEFAULT_PAGE,
    last: IdAfter = None,
    account: Annotated[str | None, Query(description="only this account's events"), _blank_is(None)] = None,
) -> AuditEvents:
    found = await call.run(call.service.audit_events, call.actor, account, limit=n, last=last)
    link_next(request, response, n, found.next)
    return AuditEvents(events=[audit_document(e) for e in found])


@router.get("/accounts", tags=["accounts"], **_paged(Accounts, "the accounts the caller sees"))
async def list_accounts(
    call: Caller, request: Request, response: Response, n: PageSize = DEFAULT_PAGE, last: After = None
) -> Accounts:
    found = await call.run(call.service.list_accounts, call.actor, limit=n, last=last)
    link_next(request, response, n, found.next)
    return Accounts(accounts=[account_document(a) for a in found])


@router.post(
    "/accounts", status_code=201, response_model=Account, tags=["accounts"], responses=CONFLICT_RESPONSE
)
async def create_account(call: Caller, body: AccountCreate) -> Account:
    account = await call.run(call.service.create_account, call.actor, body.name, source=call.source)
    return account_document(account)


@router.get(_ACCOUNT, response_model=Account, tags=["accounts"])
async def get_account(call: Caller, account: AccountPath) -> Account:
    return account_document(await call.run(call.service.get_account, call.actor, account))


@router.patch(_ACCOUNT, response_model=Account, tags=["accounts"])
async def patch_account(
    call: Caller, account: AccountPath, body: Annotated[AccountPatch | None, Body()] = None
) -> Account:
    if body is None or body.disabled is None:
        return account_document(await call.run(call.service.get_account, call.actor, account))
    found = await call.run(
        call.service.set_account_disabled, call.actor, account, body.disabled, source=call.source
    )
    return account_document(found)


@router.delete(_ACCOUNT, tags=["accounts"], responses=CONFLICT_RESPONSE, **_NO_CONTENT)
async def delete_account(call: Caller, account: AccountPath) -> Response:
    await call.run(call.service.delete_account, call.actor, account, source=call.source)
    return Response(status_code=204)


def _lister(kind: PrincipalKind, model: type[Any], key: str) -> Callable[..., Any]:
    async def handler(
        call: Caller,
        request: Request,
        response: Response,
        account: AccountPath,
        n: PageSize = DEFAULT_PAGE,
        last: After = None,
    ) -> Any:
        found = await call.run(call.service.list_principals, call.actor, account, kind, limit=n, last=last)
        link_next(request, response, n, found.next)
        return model(**{key: [principal_document(p) for p in found]})

    handler.__name__ = f"list_{key}"
    return handler


def _login(kind: PrincipalKind, account: str, name: str) -> str:
    return robot_login(account, name) if kind == "robot" else name


async def _update(
    call: Call, kind: PrincipalKind, account: str, name: str, patch: UserPatch | None
) -> Created:
    patch = patch or UserPatch()
    principal, secret = await call.run(
        call.service.update_principal,
        call.actor,
        account,
        _login(kind, account, name),
        kind,
        role=patch.role,
        disabled=patch.disabled,
        reset_secret=bool(patch.reset_secret),
        source=call.source,
    )
    return created_document(principal, secret)


def _deleter(kind: PrincipalKind) -> Callable[..., Any]:
    async def handler(call: Caller, account: AccountPath, name: str) -> Response:
        await call.run(
            call.service.delete_principal,
            call.actor,
            account,
            name if kind == "access_key" else _login(kind, account, name),
            kind,
            source=call.source,
        )
        return Response(status_code=204)

    handler.__name__ = f"delete_{kind}"
    return handler


router.get(f"{_ACCOUNT}/users", tags=["principals"], **_paged(Users, "the account's users"))(
    _lister("user", Users, "users")
)


@router.post(
    f"{_ACCOUNT}/users",
    status_code=201,
    response_model=Created,
    tags=["principals"],
    responses=CONFLICT_RESPONSE,
)
async def create_user(call: Caller, account: AccountPath, body: UserCreate) -> Created:
    """A user; without a password, a generated secret is answered once."""
    created = await call.run(
        call.service.create_user,
        call.actor,
        account,
        body.name,
        body.role,
        body.password,
        source=call.source,
    )
    return created_document(created.principal, created.secret)


@router.patch(f"{_ACCOUNT}/users/{{name}}", response_model=Created, tags=["principals"])
async def patch_user(
    call: Caller, account: AccountPath, name: PrincipalPath, body: Annotated[UserPatch | None, Body()] = None
) -> Created:
    """Change a user's role, disable or enable it, or give it a new secret (answered once)."""
    return await _update(call, "user", account, name, body)


router.delete(f"{_ACCOUNT}/users/{{name}}", tags=["principals"], **_NO_CONTENT)(_deleter("user"))
router.get(f"{_ACCOUNT}/robots", tags=["principals"], **_paged(Robots, "the account's robots"))(
    _lister("robot", Robots, "robots")
)


@router.post(
    f"{_ACCOUNT}/robots",
    status_code=201,
    response_model=Created,
    tags=["principals"],
    responses=CONFLICT_RESPONSE,
)
async def create_robot(call: Caller, account: AccountPath, body: RobotCreate) -> Created:
    """A robot `<account>+<name>`; its secret is answered once."""
    created = await call.run(
        call.service.create_robot,
        call.actor,
        account,
        body.name,
        body.role,
        body.description,
        source=call.source,
    )
    return created_document(created.principal, created.secret)


@router.patch(f"{_ACCOUNT}/robots/{{name}}", response_model=Created, tags=["principals"])
async def patch_robot(
    call: Caller, account: AccountPath, name: PrincipalPath, body: Annotated[RobotPatch | None, Body()] = None
) -> Created:
    """Change a robot's role, disable or enable it, or give it a new secret (answered once)."""
    return await _update(call, "robot", account, name, body)


router.delete(f"{_ACCOUNT}/robots/{{name}}", tags=["principals"], **_NO_CONTENT)(_deleter("robot"))
router.get(
    f"{_ACCOUNT}/access-keys", tags=["principals"], **_paged(AccessKeys, "access keys the caller may see")
)(_lister("access_key", AccessKeys, "access_keys"))


@router.post(f"{_ACCOUNT}/access-keys", status_code=201, response_model=Created, tags=["principals"])
async def create_access_key(
    call: Caller, account: AccountPath, body: Annotated[AccessKeyCreate | None, Body()] = None
) -> Created:
    """An access key of the calling user, with its role; the secret is answered once."""
    description = None if body is None else body.description
    created = await call.run(
        call.service.create_access_key, call.actor, account, description, source=call.source
    )
    return created_document(created.principal, created.secret)


router.delete(f"{_ACCOUNT}/access-keys/{{name}}", tags=["principals"], **_NO_CONTENT)(_deleter("access_key"))


@router.post(f"{_ACCOUNT}/principals/{{login}}/revoke", response_model=Principal, tags=["principals"])
async def revoke(call: Caller, account: AccountPath, login: str) -> Principal:
    """Every login password issued to the principal stops working."""
    principal = await call.run(call.service.revoke, call.actor, account, login, source=call.source)
    return principal_document(principal)


@router.get(
    f"{_ACCOUNT}/repositories",
    tags=["repositories"],
    **_paged(Repositories, "repositories the caller may pull"),
)
async def list_repositories(
    call: Caller,
    request: Request,
    response: Response,
    account: AccountPath,
    n: PageSize = DEFAULT_PAGE,
    last: After = None,
) -> Repositories:
    found = await call.run(call.service.list_repositories, call.actor, account, limit=n, last=last)
    link_next(request, response, n, found.next)
    return Repositories(repositories=[repository_document(i) for i in found])


@router.post(
    f"{_ACCOUNT}/repositories",
    status_code=201,
    response_model=Repository,
    tags=["repositories"],
    responses=CONFLICT_RESPONSE,
)
async def create_repository(call: Caller, account: AccountPath, body: RepositoryCreate) -> Repository:
    """An empty repository `<account>/<name>`."""
    info = await call.run(
        call.service.create_repository,
        call.actor,
        f"{account}/{body.name}",
        body.visibility,
        source=call.source,
    )
    return repository_document(info)


@router.get(_POLICIES, tags=["repositories"], **_paged(Policies, "the repository's policies"))
async def list_policies(
    call: Caller,
    request: Request,
    response: Response,
    name: RepositoryPath,
    n: PageSize = DEFAULT_PAGE,
    last: After = None,
) -> Policies:
    found = await call.run(call.service.list_policies, call.actor, name, limit=n, last=last)
    link_next(request, response, n, found.next)
    return Policies(policies=[Policy(account=a, actions=sorted(actions)) for a, actions in found])


@router.put(
    f"{_POLICIES}/{{account}}", response_model=Repository, tags=["repositories"], responses=CONFLICT_RESPONSE
)
async def put_policy(call: Caller, name: RepositoryPath, account: AccountPath, body: PolicyPut) -> Repository:
    """Let another account's members pull (or push)."""
    info = await call.run(
        call.service.set_policy, call.actor, name, account, frozenset(body.actions), source=call.source
    )
    return repository_document(info)


@router.delete(f"{_POLICIES}/{{account}}", tags=["repositories"], **_NO_CONTENT)
async def delete_policy(call: Caller, name: RepositoryPath, account: AccountPath) -> Response:
    await call.run(call.service.remove_policy, call.actor, name, account, source=call.source)
    return Response(status_code=204)


@router.get(_REPOSITORY, response_model=Repository, tags=["repositories"])
async def get_repository(call: Caller, name: RepositoryPath) -> Repository:
    return repository_document(await call.run(call.service.get_repository, call.actor, name))


@router.patch(_REPOSITORY, response_model=Repository, tags=["repositories"])
async def patch_repository(
    call: Caller, name: RepositoryPath, body: Annotated[RepositoryPatch | None, Body()] = None
) -> Repository:
    if body is None or body.visibility is None:
        return repository_document(await call.run(call.service.get_repository, call.actor, name))
    info = await call.run(call.service.set_visibility, call.actor, name, body.visibility, source=call.source)
    return repository_document(info)


@router.delete(_REPOSITORY, tags=["repositories"], **_NO_CONTENT)
async def delete_repository(call: Caller, name: RepositoryPath) -> Response:
    """The repository and everything in it."""
    await call.run(call.service.delete_repository, call.actor, name, source=call.source)
    return Response(status_code=204)


# -- the application ---------------------------------------------------------------------------


def _docs_page() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=OPENAPI_PATH,
        title="Shipyard management API",
        swagger_js_url=f"{_ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{_ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{_ASSETS_PATH}/favicon.png",
    )


class _ManagementApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = without_unused_responses(super().openapi())
        return self.openapi_schema


def build_app(
    identity: IdentityService,
    service: AccountService,
    executor: Executor,
    jobs: JobService | None = None,
    events: EventService | None = None,
) -> FastAPI:
    # here, not at the top: the jobs and webhooks modules build their routes on this module's dependencies
    from shipyard.api.management_jobs import router as jobs_router
    from shipyard.api.management_storage import router as storage_router
    from shipyard.api.webhooks import router as webhooks_router

    app = _ManagementApp(
        title="Shipyard management API",
        version=__version__,
        description=(
            "Accounts, users, robots, access keys, repositories, policies and the audit log. "
            "HTTP Basic authentication with the same credentials as `/token`; every refusal is an "
            'OCI error body `{"errors": [{"code", "message", "detail"}]}`.'
        ),
        openapi_url=OPENAPI_PATH,
        # a body without a Content-Type is read as JSON, as it was before the framework
        strict_content_type=False,
        # operation ids are the handlers' names (`list_users`), not names derived from the path
        generate_unique_id_function=lambda route: route.name,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = _Services(identity, service, executor, jobs)
    app.include_router(router)
    app.include_router(jobs_router)
    app.state.events = events
    app.include_router(webhooks_router)
    app.include_router(storage_router)
    app.get(DOCS_PATH, include_in_schema=False)(_docs_page)
    # Swagger UI's script and style from a package, so that the page works with no internet access
    assets = files("fastapi_offline").joinpath("static")
    app.mount(_ASSETS_PATH, StaticFiles(directory=str(assets)), name="docs-assets")
    included = (router, jobs_router, webhooks_router, storage_router)
    routes = [route for r in included for route in r.routes] + list(app.router.routes)
    install_error_handlers(app, routes, lambda: identity.config.service)
    return app


class ManagementApi:
    """The ASGI entry of /api/v1/: a body-size guard and no-store answers around the framework."""

    def __init__(
        self,
        identity: IdentityService,
        service: AccountService,
        executor: Executor,
        jobs: JobService | None = None,
        events: EventService | None = None,
    ) -> None:
        self.app = build_app(identity, service, executor, jobs, events)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _content_length(scope)
        if declared is not None and declared > MAX_BODY:
            body = error_body("UNSUPPORTED", BodyTooLarge.message, f"at most {MAX_BODY} bytes")
            await respond(
                send, 413, {"content-type": JSON, "cache-control": NO_STORE, "connection": "close"}, body
            )
            return
        cacheable = scope["path"].startswith(_ASSETS_PATH)
        await self.app(scope, _limited(receive), send if cacheable else _no_store(send))


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _limited(receive: Receive) -> Receive:
    """A chunked body larger than MAX_BODY fails as it arrives (the framework answers 400)."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > MAX_BODY:
            raise BadRequest(f"request body larger than {MAX_BODY} bytes")
        return message

    return limited


def _no_store(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(key.lower() == b"cache-control" for key, _ in headers):
                headers.append((b"cache-control", NO_STORE.encode()))
            message["headers"] = headers
        await send(message)

    return wrapped
