"""The management REST API under /api/v1/: accounts, users, robots, access keys, repositories,
policies and the audit log. HTTP Basic authentication (the same credentials as /token), JSON in and
out, OCI-style error bodies. Listings are pages: `?n=` (1..1000, default 100) and `?last=`, with a
`Link: <...>; rel="next"` header while there are more. Authorization and the audit live in
AccountService; this module only translates HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from shipyard.api.auth import basic_credentials, source_of
from shipyard.api.errors import body_for, error_body, status_for
from shipyard.api.http import JSON, ClientDisconnected, Request, respond
from shipyard.api.openapi import openapi_document
from shipyard.api.types import Receive, Scope, Send
from shipyard.domain.accounts import AccountRecord, PrincipalKind, PrincipalRecord, is_superuser
from shipyard.domain.errors import PaginationInvalid, RegistryError, RequestInvalid, Unauthorized
from shipyard.domain.management import DEFAULT_PAGE, AuditRecord
from shipyard.services.accounts import AccountService, Created, RepositoryInfo, robot_login
from shipyard.services.identity import IdentityService

log = logging.getLogger(__name__)

PREFIX = "/api/v1/"
OPENAPI_PATH = "/api/v1/openapi.json"
_MAX_BODY = 64 * 1024
SECRET_WARNING = "store this secret now: it will not be shown again"
# `shipyard <command>` says so in its User-Agent; the audit then records the source as cli@<address>
CLI_USER_AGENT = "shipyard-cli"

Params = dict[str, str]
Body = dict[str, Any]


class BadRequest(RequestInvalid):
    message = "bad request"


@dataclass(frozen=True, slots=True)
class Call:
    """One authenticated request: who, from where (for the audit), and its query parameters."""

    actor: PrincipalRecord
    source: str
    query: dict[str, list[str]]

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def page_size(self) -> int:
        raw = self.param("n")
        if raw is None or raw == "":
            return DEFAULT_PAGE
        try:
            return int(raw)
        except ValueError:
            raise PaginationInvalid(f"n must be an integer: {raw!r}") from None

    def last(self) -> str | None:
        return self.param("last") or None


@dataclass(frozen=True, slots=True)
class Page:
    """A listing's answer: the documents under `key`, and the `last` of the next page if any."""

    key: str
    items: Sequence[Any]
    next: str | None
    size: int


Answer = tuple[int, Any]
Handler = Callable[["ManagementApi", Call, Params, Body], Answer]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler

    @property
    def pattern(self) -> re.Pattern[str]:
        # {name...} spans slashes (repository names); {name} is one path segment
        regex = re.sub(r"\{(\w+)\.\.\.\}", r"(?P<\1>.+?)", self.template)
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
        return re.compile(f"^{regex}$")


# -- documents ---------------------------------------------------------------------------------


def account_document(account: AccountRecord) -> dict[str, Any]:
    return {"name": account.name, "disabled": account.disabled, "created_at": account.created_at.isoformat()}


def principal_document(principal: PrincipalRecord) -> dict[str, Any]:
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


def created_document(created: Created) -> dict[str, Any]:
    document = principal_document(created.principal)
    if created.secret:
        document["secret"] = created.secret
        document["warning"] = SECRET_WARNING
    return document


def repository_document(info: RepositoryInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "visibility": info.visibility,
        "policies": {account: sorted(actions) for account, actions in sorted(info.policies.items())},
        "actions": sorted(info.actions),
    }


def audit_document(event: AuditRecord) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "event": event.event,
        "principal": event.principal,
        "source": event.source,
        "action": event.action,
        "account": event.account,
        "target": event.target,
        "outcome": event.outcome,
        "reason": event.reason,
    }


# -- body fields -------------------------------------------------------------------------------


def _text(body: Body, key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"missing field {key!r}")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"field {key!r} must be a string")
    return value


def _flag(body: Body, key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"field {key!r} must be true or false")
    return value


def _required_text(body: Body, key: str) -> str:
    value = _text(body, key, required=True)
    assert value is not None
    return value


# -- handlers ----------------------------------------------------------------------------------


def whoami(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    return 200, {**principal_document(call.actor), "superuser": is_superuser(call.actor)}


def list_accounts(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    n = call.page_size()
    found = api.service.list_accounts(call.actor, limit=n, last=call.last())
    return 200, Page("accounts", [account_document(a) for a in found], found.next, n)


def create_account(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    account = api.service.create_account(call.actor, _required_text(body, "name"), source=call.source)
    return 201, account_document(account)


def get_account(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    return 200, account_document(api.service.get_account(call.actor, params["account"]))


def patch_account(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    disabled = _flag(body, "disabled")
    if disabled is None:
        return 200, account_document(api.service.get_account(call.actor, params["account"]))
    account = api.service.set_account_disabled(call.actor, params["account"], disabled, source=call.source)
    return 200, account_document(account)


def delete_account(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    api.service.delete_account(call.actor, params["account"], source=call.source)
    return 204, None


def _lister(kind: PrincipalKind, key: str) -> Handler:
    def handler(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
        n = call.page_size()
        found = api.service.list_principals(call.actor, params["account"], kind, limit=n, last=call.last())
        return 200, Page(key, [principal_document(p) for p in found], found.next, n)

    return handler


def create_user(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    created = api.service.create_user(
        call.actor,
        params["account"],
        _required_text(body, "name"),
        _text(body, "role") or "reader",
        _text(body, "password"),
        source=call.source,
    )
    return 201, created_document(created)


def create_robot(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    created = api.service.create_robot(
        call.actor,
        params["account"],
        _required_text(body, "name"),
        _text(body, "role") or "reader",
        _text(body, "description"),
        source=call.source,
    )
    return 201, created_document(created)


def _login(kind: PrincipalKind, params: Params) -> str:
    return robot_login(params["account"], params["name"]) if kind == "robot" else params["name"]


def _patcher(kind: PrincipalKind) -> Handler:
    def handler(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
        principal, secret = api.service.update_principal(
            call.actor,
            params["account"],
            _login(kind, params),
            kind,
            role=_text(body, "role"),
            disabled=_flag(body, "disabled"),
            reset_secret=bool(_flag(body, "reset_secret")),
            source=call.source,
        )
        document = principal_document(principal)
        if secret is not None:
            document.update(secret=secret, warning=SECRET_WARNING)
        return 200, document

    return handler


def _deleter(kind: PrincipalKind) -> Handler:
    def handler(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
        login = params["key_id"] if kind == "access_key" else _login(kind, params)
        api.service.delete_principal(call.actor, params["account"], login, kind, source=call.source)
        return 204, None

    return handler


def create_access_key(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    created = api.service.create_access_key(
        call.actor, params["account"], _text(body, "description"), source=call.source
    )
    return 201, created_document(created)


def revoke(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    principal = api.service.revoke(call.actor, params["account"], params["login"], source=call.source)
    return 200, principal_document(principal)


def list_repositories(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    n = call.page_size()
    found = api.service.list_repositories(call.actor, params["account"], limit=n, last=call.last())
    return 200, Page("repositories", [repository_document(i) for i in found], found.next, n)


def create_repository(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    name = f"{params['account']}/{_required_text(body, 'name')}"
    visibility = _text(body, "visibility") or "private"
    info = api.service.create_repository(call.actor, name, visibility, source=call.source)
    return 201, repository_document(info)


def get_repository(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    return 200, repository_document(api.service.get_repository(call.actor, params["name"]))


def patch_repository(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    visibility = _text(body, "visibility")
    if visibility is None:
        return 200, repository_document(api.service.get_repository(call.actor, params["name"]))
    info = api.service.set_visibility(call.actor, params["name"], visibility, source=call.source)
    return 200, repository_document(info)


def delete_repository(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    api.service.delete_repository(call.actor, params["name"], source=call.source)
    return 204, None


def list_policies(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    n = call.page_size()
    found = api.service.list_policies(call.actor, params["name"], limit=n, last=call.last())
    documents = [{"account": account, "actions": sorted(actions)} for account, actions in found]
    return 200, Page("policies", documents, found.next, n)


def put_policy(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    actions = body.get("actions", ["pull"])
    if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
        raise BadRequest("field 'actions' must be a list of strings")
    info = api.service.set_policy(
        call.actor, params["name"], params["account"], frozenset(actions), source=call.source
    )
    return 200, repository_document(info)


def delete_policy(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    api.service.remove_policy(call.actor, params["name"], params["account"], source=call.source)
    return 204, None


def list_audit(api: ManagementApi, call: Call, params: Params, body: Body) -> Answer:
    n = call.page_size()
    raw = call.last()
    try:
        last = None if raw is None else int(raw)
    except ValueError:
        raise BadRequest(f"last must be an event id: {raw!r}") from None
    found = api.service.audit_events(call.actor, call.param("account") or None, limit=n, last=last)
    return 200, Page("events", [audit_document(e) for e in found], found.next, n)


_ACCOUNT = "/api/v1/accounts/{account}"
_REPOSITORY = "/api/v1/repositories/{name...}"

# More specific templates first: a repository path may end in /policies or /policies/<account>.
ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/v1/whoami", whoami),
    Route("GET", "/api/v1/audit", list_audit),
    Route("GET", "/api/v1/accounts", list_accounts),
    Route("POST", "/api/v1/accounts", create_account),
    Route("GET", _ACCOUNT, get_account),
    Route("PATCH", _ACCOUNT, patch_account),
    Route("DELETE", _ACCOUNT, delete_account),
    Route("GET", f"{_ACCOUNT}/users", _lister("user", "users")),
    Route("POST", f"{_ACCOUNT}/users", create_user),
    Route("PATCH", f"{_ACCOUNT}/users/{{name}}", _patcher("user")),
    Route("DELETE", f"{_ACCOUNT}/users/{{name}}", _deleter("user")),
    Route("GET", f"{_ACCOUNT}/robots", _lister("robot", "robots")),
    Route("POST", f"{_ACCOUNT}/robots", create_robot),
    Route("PATCH", f"{_ACCOUNT}/robots/{{name}}", _patcher("robot")),
    Route("DELETE", f"{_ACCOUNT}/robots/{{name}}", _deleter("robot")),
    Route("GET", f"{_ACCOUNT}/access-keys", _lister("access_key", "access_keys")),
    Route("POST", f"{_ACCOUNT}/access-keys", create_access_key),
    Route("DELETE", f"{_ACCOUNT}/access-keys/{{key_id}}", _deleter("access_key")),
    Route("POST", f"{_ACCOUNT}/principals/{{login}}/revoke", revoke),
    Route("GET", f"{_ACCOUNT}/repositories", list_repositories),
    Route("POST", f"{_ACCOUNT}/repositories", create_repository),
    Route("GET", f"{_REPOSITORY}/policies", list_policies),
    Route("PUT", f"{_REPOSITORY}/policies/{{account}}", put_policy),
    Route("DELETE", f"{_REPOSITORY}/policies/{{account}}", delete_policy),
    Route("GET", _REPOSITORY, get_repository),
    Route("PATCH", _REPOSITORY, patch_repository),
    Route("DELETE", _REPOSITORY, delete_repository),
)
_COMPILED = tuple((route, route.pattern) for route in ROUTES)


def match(method: str, path: str) -> tuple[Route, Params] | bool | None:
    """The route and its parameters; False when the path is known but not the method; None if unknown."""
    known = False
    for route, pattern in _COMPILED:
        found = pattern.match(path)
        if found is None:
            continue
        if route.method == method:
            return route, found.groupdict()
        known = True
    return False if known else None


def next_link(path: str, query: dict[str, list[str]], page: Page) -> str | None:
    """The Link header to the page after `page`, keeping the request's other parameters."""
    if page.next is None:
        return None
    kept = [(k, v) for k, values in query.items() if k not in ("n", "last") for v in values]
    return f'<{path}?{urlencode([*kept, ("n", str(page.size)), ("last", page.next)])}>; rel="next"'


def request_source(request: Request) -> str:
    address = source_of(request.scope)
    agent = request.headers.get("user-agent", "")
    return f"cli@{address}" if agent.startswith(CLI_USER_AGENT) else address


class ManagementApi:
    def __init__(self, identity: IdentityService, service: AccountService, executor: Executor) -> None:
        self.identity = identity
        self.service = service
        self.executor = executor
        self._openapi = json.dumps(openapi_document()).encode()

    def handles(self, path: str) -> bool:
        return path.startswith(PREFIX)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            await self._dispatch(request, send)
        except ClientDisconnected:
            return
        except RegistryError as error:
            headers = {"content-type": JSON, "cache-control": "no-store"}
            if isinstance(error, Unauthorized):
                headers["www-authenticate"] = f'Basic realm="{self.identity.config.service}"'
            await respond(send, status_for(error), headers, body_for(error))
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            await respond(send, 500, {"content-type": JSON}, error_body("UNKNOWN", "internal server error"))

    async def _dispatch(self, request: Request, send: Send) -> None:
        if request.path == OPENAPI_PATH:
            if request.method != "GET":
                raise _MethodNotAllowed
            await respond(send, 200, {"content-type": JSON}, self._openapi)
            return
        found = match(request.method, request.path)
        if found is None:
            await respond(send, 404, {"content-type": JSON}, error_body("NOT_FOUND", "no such endpoint"))
            return
        if found is False:
            raise _MethodNotAllowed
        assert isinstance(found, tuple)
        route, params = found
        actor = await self._authenticate(request)
        body = await self._body(request) if route.method in ("POST", "PUT", "PATCH") else {}
        call = Call(actor, request_source(request), request.query)
        loop = asyncio.get_running_loop()
        status, document = await loop.run_in_executor(self.executor, route.handler, self, call, params, body)
        headers = {"cache-control": "no-store"}
        if isinstance(document, Page):
            link = next_link(request.path, request.query, document)
            if link is not None:
                headers["link"] = link
            document = {document.key: list(document.items)}
        if document is None:
            await respond(send, status, headers)
        else:
            headers["content-type"] = JSON
            await respond(send, status, headers, json.dumps(document).encode())

    async def _authenticate(self, request: Request) -> PrincipalRecord:
        credentials = basic_credentials(request.headers.get("authorization"))
        if credentials is None:
            raise Unauthorized("Basic credentials required")
        login, secret = credentials
        loop = asyncio.get_running_loop()
        principal: PrincipalRecord = await loop.run_in_executor(
            self.executor, self.identity.login, login, secret, source_of(request.scope)
        )
        return principal

    @staticmethod
    async def _body(request: Request) -> Body:
        raw = await request.body(_MAX_BODY)
        if raw is None:
            raise BadRequest("request body too large")
        if not raw.strip():
            return {}
        try:
            document = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("the request body is not JSON") from None
        if not isinstance(document, dict):
            raise BadRequest("the request body must be a JSON object")
        return document


class _MethodNotAllowed(RegistryError):
    code = "UNSUPPORTED"
    message = "method not allowed"
