"""The OpenAPI 3.1 document of the management API, written by hand (a test keeps it in step with the
router: every route is documented, and every documented operation is routed)."""

from __future__ import annotations

from typing import Any

from shipyard import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _list_of(key: str, item: str) -> dict[str, Any]:
    return {"type": "object", "properties": {key: {"type": "array", "items": _ref(item)}}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


# every listing is a page: keyset pagination as the OCI tags/list and _catalog do
PAGE_PARAMS = (
    _query(
        "n",
        "page size; a value that is not an integer from 1 to 1000 is answered with 400",
        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    ),
    _query(
        "last",
        "continue after this key (the previous page's last item); the Link header carries it",
        {"type": "string"},
    ),
)
LINK_HEADER = {
    "link": {
        "description": 'present while more items follow: `<path?n=N&last=KEY>; rel="next"`',
        "schema": {"type": "string"},
    }
}


def _param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


ACCOUNT = _param("account", "account name")
NAME = _param("name", "user name, or robot name without the `<account>+` prefix")
REPOSITORY = _param("name", "repository name, `<account>/<path>` (may contain slashes)")
KEY_ID = _param("key_id", "access key id")
LOGIN = _param("login", "the principal's login")
GRANTEE = _param("account", "the account the policy grants access to")

_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/Forbidden"},
    "404": {"$ref": "#/components/responses/NotFound"},
}


def _op(
    summary: str,
    status: str,
    response: dict[str, Any] | None,
    *,
    params: tuple[dict[str, Any], ...] = (),
    body: dict[str, Any] | None = None,
    conflict: bool = False,
    paged: bool = False,
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        status: {"description": "no content"} if response is None else _json(response, "success")
    }
    if paged:
        responses[status]["headers"] = LINK_HEADER
        params = (*params, *PAGE_PARAMS)
    responses.update(_ERRORS)
    if conflict:
        responses["409"] = {"$ref": "#/components/responses/Conflict"}
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        operation["parameters"] = list(params)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}
ROLE = {"type": "string", "enum": ["admin", "writer", "reader"]}
ROBOT_ROLE = {"type": "string", "enum": ["writer", "reader"]}
VISIBILITY = {"type": "string", "enum": ["private", "public"]}

SCHEMAS: dict[str, Any] = {
    "Account": _obj(
        ["name", "disabled", "created_at"],
        name=STRING,
        disabled=BOOLEAN,
        created_at={"type": "string", "format": "date-time"},
    ),
    "Principal": _obj(
        ["login", "name", "account", "kind", "role", "disabled", "created_at"],
        login={"type": "string", "description": "what goes into Basic credentials"},
        name=STRING,
        account=STRING,
        kind={"type": "string", "enum": ["user", "access_key", "robot"]},
        role=ROLE,
        disabled=BOOLEAN,
        description={"type": ["string", "null"]},
        created_at={"type": "string", "format": "date-time"},
    ),
    "CreatedPrincipal": {
        "allOf": [
            _ref("Principal"),
            {
                "type": "object",
                "properties": {
                    "secret": {"type": "string", "description": "returned only here, never again"},
                    "warning": STRING,
                },
            },
        ]
    },
    "Whoami": {"allOf": [_ref("Principal"), {"type": "object", "properties": {"superuser": BOOLEAN}}]},
    "Repository": _obj(
        ["name", "visibility", "policies", "actions"],
        name=STRING,
        visibility=VISIBILITY,
        policies={
            "type": "object",
            "description": "account -> actions granted",
            "additionalProperties": {"type": "array", "items": {"type": "string", "enum": ["pull", "push"]}},
        },
        actions={"type": "array", "items": STRING, "description": "what the caller may do"},
    ),
    "Policy": _obj(
        ["account", "actions"],
        account={"type": "string", "description": "the account granted access"},
        actions={"type": "array", "items": {"type": "string", "enum": ["pull", "push"]}},
    ),
    "AuditEvent": _obj(
        ["id", "at", "event", "principal", "source", "action", "account", "target", "outcome", "reason"],
        id={"type": "integer", "description": "increasing; the `last` of the next page"},
        at={"type": "string", "format": "date-time"},
        event={
            "type": "string",
            "description": "`management` for management actions; `login-failed`, `token-rejected`, "
            "`access-denied`, ... for refused registry requests",
        },
        principal={"type": ["string", "null"], "description": "who: the login that acted or tried"},
        source={
            "type": ["string", "null"],
            "description": "from where: the client address (`cli@<address>` for the shipyard CLI)",
        },
        action={"type": ["string", "null"], "description": "what, e.g. `user.create`, `policy.grant`"},
        account={"type": ["string", "null"], "description": "the account acted on"},
        target={"type": ["string", "null"], "description": "the user, robot, key or repository acted on"},
        outcome={"type": "string", "enum": ["allowed", "denied", "failed"]},
        reason={"type": "string", "description": "why it was denied or failed; what changed if allowed"},
    ),
    "Error": {
        "type": "object",
        "required": ["errors"],
        "properties": {
            "errors": {
                "type": "array",
                "items": _obj(["code", "message"], code=STRING, message=STRING, detail={}),
            }
        },
    },
}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


PATHS: dict[str, Any] = {
    "/api/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "the OpenAPI document"}},
        }
    },
    "/api/v1/auth/login-password": {
        "post": _op(
            "A 12-hour password for docker/podman login (user name `shipyard`)",
            "200",
            _obj(["username", "password", "expires_at"], username=STRING, password=STRING, expires_at=STRING),
        )
    },
    "/api/v1/whoami": {"get": _op("The authenticated principal", "200", _ref("Whoami"))},
    "/api/v1/audit": {
        "get": _op(
            "Audit events, newest first: every account's for registry administrators (or one with "
            "`account`), the caller's account's for its admins. Secrets are never recorded.",
            "200",
            _list_of("events", "AuditEvent"),
            params=(_query("account", "only this account's events", {"type": "string"}),),
            paged=True,
        )
    },
    "/api/v1/accounts": {
        "get": _op(
            "Accounts the caller may see, by name", "200", _list_of("accounts", "Account"), paged=True
        ),
        "post": _op(
            "Create an account (registry administrators)",
            "201",
            _ref("Account"),
            body=_obj(["name"], name=STRING),
            conflict=True,
        ),
    },
    "/api/v1/accounts/{account}": {
        "get": _op("One account", "200", _ref("Account"), params=(ACCOUNT,)),
        "patch": _op(
            "Enable or disable an account (registry administrators)",
            "200",
            _ref("Account"),
            params=(ACCOUNT,),
            body=_obj([], disabled=BOOLEAN),
        ),
        "delete": _op(
            "Delete an account without repositories (registry administrators)",
            "204",
            None,
            params=(ACCOUNT,),
            conflict=True,
        ),
    },
    "/api/v1/accounts/{account}/users": {
        "get": _op(
            "Users of the account, by login",
            "200",
            _list_of("users", "Principal"),
            params=(ACCOUNT,),
            paged=True,
        ),
        "post": _op(
            "Create a user (account admins); without a password one is generated and returned once",
            "201",
            _ref("CreatedPrincipal"),
            params=(ACCOUNT,),
            body=_obj(["name"], name=STRING, role=ROLE, password={"type": "string", "minLength": 8}),
            conflict=True,
        ),
    },
    "/api/v1/accounts/{account}/users/{name}": {
        "patch": _op(
            "Change a user's role, disable it, or reset its password (returned once)",
            "200",
            _ref("CreatedPrincipal"),
            params=(ACCOUNT, NAME),
            body=_obj([], role=ROLE, disabled=BOOLEAN, reset_secret=BOOLEAN),
        ),
        "delete": _op("Delete a user and its access keys", "204", None, params=(ACCOUNT, NAME)),
    },
    "/api/v1/accounts/{account}/robots": {
        "get": _op(
            "Robot accounts, by login", "200", _list_of("robots", "Principal"), params=(ACCOUNT,), paged=True
        ),
        "post": _op(
            "Create a robot account `<account>+<name>`; its secret is returned once",
            "201",
            _ref("CreatedPrincipal"),
            params=(ACCOUNT,),
            body=_obj(["name"], name=STRING, role=ROBOT_ROLE, description=STRING),
            conflict=True,
        ),
    },
    "/api/v1/accounts/{account}/robots/{name}": {
        "patch": _op(
            "Change a robot's role, disable it, or give it a new secret (returned once)",
            "200",
            _ref("CreatedPrincipal"),
            params=(ACCOUNT, NAME),
            body=_obj([], role=ROBOT_ROLE, disabled=BOOLEAN, reset_secret=BOOLEAN),
        ),
        "delete": _op("Delete a robot account", "204", None, params=(ACCOUNT, NAME)),
    },
    "/api/v1/accounts/{account}/access-keys": {
        "get": _op(
            "Access keys by key id: all of the account's for its admins, else the caller's own",
            "200",
            _list_of("access_keys", "Principal"),
            params=(ACCOUNT,),
            paged=True,
        ),
        "post": _op(
            "Create an access key of the calling user (its role); the secret is returned once",
            "201",
            _ref("CreatedPrincipal"),
            params=(ACCOUNT,),
            body=_obj([], description=STRING),
        ),
    },
    "/api/v1/accounts/{account}/access-keys/{key_id}": {
        "delete": _op(
            "Delete an access key (its owner or an account admin)", "204", None, params=(ACCOUNT, KEY_ID)
        )
    },
    "/api/v1/accounts/{account}/principals/{login}/revoke": {
        "post": _op(
            "Invalidate every login password issued to the principal",
            "200",
            _ref("Principal"),
            params=(ACCOUNT, LOGIN),
        )
    },
    "/api/v1/accounts/{account}/repositories": {
        "get": _op(
            "Repositories of the account the caller may pull, by name",
            "200",
            _list_of("repositories", "Repository"),
            params=(ACCOUNT,),
            paged=True,
        ),
        "post": _op(
            "Create an empty repository `<account>/<name>` (account admins)",
            "201",
            _ref("Repository"),
            params=(ACCOUNT,),
            body=_obj(["name"], name=STRING, visibility=VISIBILITY),
            conflict=True,
        ),
    },
    "/api/v1/repositories/{name}": {
        "get": _op("One repository", "200", _ref("Repository"), params=(REPOSITORY,)),
        "patch": _op(
            "Set the visibility (account admins)",
            "200",
            _ref("Repository"),
            params=(REPOSITORY,),
            body=_obj([], visibility=VISIBILITY),
        ),
        "delete": _op(
            "Delete a repository: tags, manifests, blob links, visibility and policies",
            "204",
            None,
            params=(REPOSITORY,),
        ),
    },
    "/api/v1/repositories/{name}/policies": {
        "get": _op(
            "The repository's policies, by grantee account",
            "200",
            _list_of("policies", "Policy"),
            params=(REPOSITORY,),
            paged=True,
        )
    },
    "/api/v1/repositories/{name}/policies/{account}": {
        "put": _op(
            "Grant another account pull, or pull and push (account admins)",
            "200",
            _ref("Repository"),
            params=(REPOSITORY, GRANTEE),
            body=_obj([], actions={"type": "array", "items": {"type": "string", "enum": ["pull", "push"]}}),
        ),
        "delete": _op("Remove a policy", "204", None, params=(REPOSITORY, GRANTEE)),
    },
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Shipyard management API",
            "version": __version__,
            "description": (
                "Accounts, users, robot accounts, access keys, repositories, policies and the audit "
                "log. Authenticate with HTTP Basic: a user's password, an access key id and secret, a "
                "robot login and secret, or a login password. Errors use the OCI error body. Listings "
                "are pages (`n`, `last`, and a `Link` header to the next page). Every change, allowed "
                "or refused, is written to the audit log."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"basic": []}],
        "paths": PATHS,
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
            "schemas": SCHEMAS,
            "responses": {
                "BadRequest": _error("invalid input"),
                "Unauthorized": _error("no or invalid credentials"),
                "Forbidden": _error("not allowed"),
                "NotFound": _error("unknown, or not visible to the caller"),
                "Conflict": _error("already exists, or still in use"),
            },
        },
    }
