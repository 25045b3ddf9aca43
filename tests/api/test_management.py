"""The management REST API against a real `shipyard serve` with authentication on: accounts, users,
access keys, robots, repositories, visibility and policies, and what each lets its holder push and pull."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import push_image
from tests.support.server import ServerProcess, start_server

ADMIN_PASSWORD = "management-admin-pw"
ADMIN = ("admin", ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("management") / "data"
    process = start_server(data_dir, auth=True, extra_env={"SHIPYARD_ADMIN_PASSWORD": ADMIN_PASSWORD})
    yield process
    process.stop()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def token(api: httpx.Client, creds: tuple[str, str] | None, scope: str) -> str:
    r = api.get("/token", params={"service": "shipyard", "scope": scope}, auth=creds)
    assert r.status_code == 200, r.text
    value: str = r.json()["token"]
    return value


def registry(server: ServerProcess, bearer: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, headers={"authorization": f"Bearer {bearer}"})


def can_push(api: httpx.Client, server: ServerProcess, creds: tuple[str, str] | None, repo: str) -> bool:
    with registry(server, token(api, creds, f"repository:{repo}:pull,push")) as client:
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        if r.status_code == 401:
            return False
        push_image(client, repo, "latest")
        return True


def pull_status(api: httpx.Client, server: ServerProcess, creds: tuple[str, str] | None, repo: str) -> int:
    with registry(server, token(api, creds, f"repository:{repo}:pull")) as client:
        return client.get(
            f"/v2/{repo}/manifests/latest", headers={"accept": "application/vnd.oci.image.manifest.v1+json"}
        ).status_code


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["errors"][0]["code"]
    return code


def test_the_whole_flow(api: httpx.Client, server: ServerProcess) -> None:
    assert ok(api.get("/api/v1/whoami", auth=ADMIN))["superuser"] is True
    assert ok(api.post("/api/v1/accounts", auth=ADMIN, json={"name": "acme"}), 201)["name"] == "acme"
    ok(api.post("/api/v1/accounts", auth=ADMIN, json={"name": "beta"}), 201)

    # an account admin, a writer, a reader, a robot, and the writer's access key
    acme_admin = ok(
        api.post("/api/v1/accounts/acme/users", auth=ADMIN, json={"name": "acme-boss", "role": "admin"}), 201
    )
    boss = ("acme-boss", acme_admin["secret"])
    assert "not be shown again" in acme_admin["warning"]
    writer = ok(
        api.post("/api/v1/accounts/acme/users", auth=boss, json={"name": "dev", "role": "writer"}), 201
    )
    dev = ("dev", writer["secret"])
    ok(
        api.post(
            "/api/v1/accounts/acme/users",
            auth=boss,
            json={"name": "viewer", "role": "reader", "password": "viewer-password"},
        ),
        201,
    )
    viewer = ("viewer", "viewer-password")
    robot = ok(
        api.post("/api/v1/accounts/acme/robots", auth=boss, json={"name": "ci", "role": "writer"}), 201
    )
    assert robot["login"] == "acme+ci" and robot["name"] == "ci"
    ci = (robot["login"], robot["secret"])
    key = ok(api.post("/api/v1/accounts/acme/access-keys", auth=dev, json={"description": "laptop"}), 201)
    assert key["role"] == "writer" and key["kind"] == "access_key"
    dev_key = (key["login"], key["secret"])
    beta_user = ok(api.post("/api/v1/accounts/beta/users", auth=ADMIN, json={"name": "beta-dev"}), 201)
    beta = ("beta-dev", beta_user["secret"])

    # secrets are shown once: no listing carries one
    for path in ("users", "robots", "access-keys"):
        listing = ok(api.get(f"/api/v1/accounts/acme/{path}", auth=boss))
        text = json.dumps(listing)
        assert "secret" not in text and writer["secret"] not in text and key["secret"] not in text
    logins = [u["login"] for u in ok(api.get("/api/v1/accounts/acme/users", auth=dev))["users"]]
    assert logins == ["acme-boss", "dev", "viewer"]

    # push and pull as each role allows
    assert can_push(api, server, dev, "acme/app")
    assert can_push(api, server, ci, "acme/ci-built")
    assert can_push(api, server, dev_key, "acme/from-key")
    assert not can_push(api, server, viewer, "acme/app")
    assert not can_push(api, server, beta, "acme/app")
    assert pull_status(api, server, viewer, "acme/app") == 200
    assert pull_status(api, server, beta, "acme/app") == 401
    assert pull_status(api, server, None, "acme/app") == 401

    # a policy lets beta pull (not push); public visibility lets anyone pull
    repo = ok(api.put("/api/v1/repositories/acme/app/policies/beta", auth=boss, json={"actions": ["pull"]}))
    assert repo["policies"] == {"beta": ["pull"]}
    assert pull_status(api, server, beta, "acme/app") == 200
    assert not can_push(api, server, beta, "acme/app")
    ok(api.delete("/api/v1/repositories/acme/app/policies/beta", auth=boss), 204)
    assert pull_status(api, server, beta, "acme/app") == 401
    assert (
        ok(api.patch("/api/v1/repositories/acme/app", auth=boss, json={"visibility": "public"}))["visibility"]
        == "public"
    )
    assert pull_status(api, server, None, "acme/app") == 200
    assert ok(api.get("/api/v1/repositories/acme/app", auth=beta))["actions"] == ["pull"]

    names = [
        r["name"] for r in ok(api.get("/api/v1/accounts/acme/repositories", auth=viewer))["repositories"]
    ]
    assert names == ["acme/app", "acme/ci-built", "acme/from-key"]
    names = [r["name"] for r in ok(api.get("/api/v1/accounts/acme/repositories", auth=beta))["repositories"]]
    assert names == ["acme/app"]

    # a login password works for the management API, until it is revoked
    lp = ok(api.post("/api/v1/auth/login-password", auth=dev))
    assert ok(api.get("/api/v1/whoami", auth=(lp["username"], lp["password"])))["login"] == "dev"
    ok(api.post("/api/v1/accounts/acme/principals/dev/revoke", auth=dev))
    assert api.get("/api/v1/whoami", auth=(lp["username"], lp["password"])).status_code == 401

    # disabling a user cuts off its password, its login passwords and its access keys
    lp = ok(api.post("/api/v1/auth/login-password", auth=dev))
    assert ok(api.patch("/api/v1/accounts/acme/users/dev", auth=boss, json={"disabled": True}))["disabled"]
    for creds in (dev, dev_key, (lp["username"], lp["password"])):
        r = api.get("/token", params={"service": "shipyard"}, auth=creds)
        assert r.status_code == 401, creds
    ok(api.patch("/api/v1/accounts/acme/users/dev", auth=boss, json={"disabled": False}))
    assert can_push(api, server, dev, "acme/app")

    # robots: a new secret replaces the old one
    renewed = ok(api.patch("/api/v1/accounts/acme/robots/ci", auth=boss, json={"reset_secret": True}))
    assert api.get("/api/v1/whoami", auth=ci).status_code == 401
    assert ok(api.get("/api/v1/whoami", auth=(ci[0], renewed["secret"])))["login"] == "acme+ci"

    # repositories: create empty, delete with everything in it
    created = ok(api.post("/api/v1/accounts/acme/repositories", auth=boss, json={"name": "empty"}), 201)
    assert created == {
        "name": "acme/empty",
        "visibility": "private",
        "policies": {},
        "actions": ["delete", "pull", "push"],
        "stored_bytes": 0,
        "unique_bytes": 0,
        "shared_bytes": 0,
        "blobs": 0,
        "untagged_retention_days": None,
    }
    assert error_code(api.post("/api/v1/accounts/acme/repositories", auth=boss, json={"name": "empty"})) == (
        "CONFLICT"
    )
    ok(api.delete("/api/v1/repositories/acme/app", auth=boss), 204)
    assert pull_status(api, server, None, "acme/app") == 401  # no longer public, and gone
    assert pull_status(api, server, boss, "acme/app") == 404
    assert api.get("/api/v1/repositories/acme/app", auth=boss).status_code == 404

    # deleting an access key and a robot cuts them off
    ok(api.delete(f"/api/v1/accounts/acme/access-keys/{dev_key[0]}", auth=dev), 204)
    assert api.get("/api/v1/whoami", auth=dev_key).status_code == 401
    ok(api.delete("/api/v1/accounts/acme/robots/ci", auth=boss), 204)
    assert api.get("/api/v1/whoami", auth=(ci[0], renewed["secret"])).status_code == 401


def test_errors_and_statuses(api: httpx.Client) -> None:
    ok(api.post("/api/v1/accounts", auth=ADMIN, json={"name": "gamma"}), 201)
    member = ok(
        api.post("/api/v1/accounts/gamma/users", auth=ADMIN, json={"name": "gamma-rw", "role": "writer"}), 201
    )
    gamma = ("gamma-rw", member["secret"])
    r = api.get("/api/v1/accounts")
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="shipyard"'
    assert error_code(r) == "UNAUTHORIZED"
    r = api.get("/api/v1/accounts", auth=("admin", "wrong"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="shipyard"'
    r = api.get("/api/v1/accounts", headers={"authorization": "Bearer abc"})
    assert r.status_code == 401
    assert api.post("/api/v1/accounts", auth=gamma, json={"name": "mine"}).status_code == 403
    assert api.post("/api/v1/accounts/gamma/users", auth=gamma, json={"name": "x"}).status_code == 403
    assert api.get("/api/v1/accounts/admin", auth=gamma).status_code == 404
    assert api.post("/api/v1/accounts", auth=ADMIN, json={"name": "gamma"}).status_code == 409
    assert api.post("/api/v1/accounts", auth=ADMIN, json={"name": "Not Valid"}).status_code == 400
    assert api.post("/api/v1/accounts", auth=ADMIN, json={}).status_code == 400
    assert api.post("/api/v1/accounts", auth=ADMIN, content=b"{not json").status_code == 400
    assert api.post("/api/v1/accounts", auth=ADMIN, json=["name"]).status_code == 400
    r = api.post("/api/v1/accounts/gamma/users", auth=ADMIN, json={"name": "y", "role": "owner"})
    assert r.status_code == 400
    assert api.patch("/api/v1/accounts/gamma", auth=ADMIN, json={"disabled": "yes"}).status_code == 400
    assert api.get("/api/v1/nothing-here", auth=ADMIN).status_code == 404
    assert api.put("/api/v1/accounts", auth=ADMIN).status_code == 405
    # a disabled account's members cannot log in
    ok(api.patch("/api/v1/accounts/gamma", auth=ADMIN, json={"disabled": True}))
    assert api.get("/api/v1/whoami", auth=gamma).status_code == 401
    ok(api.patch("/api/v1/accounts/gamma", auth=ADMIN, json={"disabled": False}))
    assert api.get("/api/v1/whoami", auth=gamma).status_code == 200
    ok(api.delete("/api/v1/accounts/gamma", auth=ADMIN), 204)
    assert api.get("/api/v1/whoami", auth=gamma).status_code == 401


_ACCOUNT = "/api/v1/accounts/{account}"
_REPOSITORY = "/api/v1/repositories/{name}"
# every endpoint of /api/v1, as clients (the CLI among them) call them
ENDPOINTS = {
    ("GET", "/api/v1/whoami"),
    ("GET", "/api/v1/accounts/{account}/usage"),
    ("PUT", "/api/v1/repositories/{name}/untagged-retention"),
    ("POST", "/api/v1/auth/login-password"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/accounts"),
    ("POST", "/api/v1/accounts"),
    ("GET", _ACCOUNT),
    ("PATCH", _ACCOUNT),
    ("DELETE", _ACCOUNT),
    ("GET", f"{_ACCOUNT}/users"),
    ("POST", f"{_ACCOUNT}/users"),
    ("PATCH", f"{_ACCOUNT}/users/{{name}}"),
    ("DELETE", f"{_ACCOUNT}/users/{{name}}"),
    ("GET", f"{_ACCOUNT}/robots"),
    ("POST", f"{_ACCOUNT}/robots"),
    ("PATCH", f"{_ACCOUNT}/robots/{{name}}"),
    ("DELETE", f"{_ACCOUNT}/robots/{{name}}"),
    ("GET", f"{_ACCOUNT}/access-keys"),
    ("POST", f"{_ACCOUNT}/access-keys"),
    ("DELETE", f"{_ACCOUNT}/access-keys/{{name}}"),
    ("POST", f"{_ACCOUNT}/principals/{{login}}/revoke"),
    ("GET", f"{_ACCOUNT}/repositories"),
    ("POST", f"{_ACCOUNT}/repositories"),
    ("GET", f"{_REPOSITORY}/policies"),
    ("PUT", f"{_REPOSITORY}/policies/{{account}}"),
    ("DELETE", f"{_REPOSITORY}/policies/{{account}}"),
    ("GET", _REPOSITORY),
    ("PATCH", _REPOSITORY),
    ("DELETE", _REPOSITORY),
    ("GET", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/{job_id}"),
    ("POST", "/api/v1/jobs/{job_id}/retry"),
    ("POST", "/api/v1/jobs/{job_id}/cancel"),
    # events and webhooks (api/webhooks.py)
    ("GET", "/api/v1/events"),
    ("GET", f"{_ACCOUNT}/webhooks"),
    ("POST", f"{_ACCOUNT}/webhooks"),
    ("GET", f"{_ACCOUNT}/webhooks/{{webhook}}"),
    ("DELETE", f"{_ACCOUNT}/webhooks/{{webhook}}"),
    ("GET", f"{_ACCOUNT}/webhooks/{{webhook}}/deliveries"),
    ("POST", f"{_ACCOUNT}/webhooks/{{webhook}}/deliveries/{{delivery}}/redeliver"),
}


def test_the_openapi_document_lists_every_endpoint_and_its_errors(api: httpx.Client) -> None:
    r = api.get("/api/v1/openapi.json")  # no credentials needed
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    document = json.loads(r.content)
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path) for path, operations in document["paths"].items() for method in operations
    }
    assert documented == ENDPOINTS
    ids = [
        operation["operationId"]
        for operations in document["paths"].values()
        for operation in operations.values()
    ]
    assert len(set(ids)) == len(ids) and {"whoami", "list_users", "delete_access_key"} <= set(ids)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"400", "401", "403", "404", "429"} <= statuses, (method, path, statuses)
            error = operation["responses"]["401"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/Errors"}
    # every $ref resolves
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/')[1:]}:
        node: Any = document
        for key in ref.split("/"):
            node = node[key]
    # the grammar the service checks is in the schema, in the form JSON Schema validators read
    account = document["components"]["schemas"]["AccountCreate"]["properties"]["name"]
    assert account["pattern"] == "^[a-z0-9]+(?:[._-][a-z0-9]+)*$" and account["maxLength"] == 64


def test_the_reference_page_is_served_with_its_own_assets(api: httpx.Client) -> None:
    page = api.get("/api/v1/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/api/v1/openapi.json" in page.text
    # no CDN: every script, style and icon the page loads comes from this server
    for attribute in ("src", "href"):
        for url in page.text.split(f'{attribute}="')[1:]:
            url = url.split('"')[0]
            assert url.startswith("/api/v1/docs/assets/"), url
            asset = api.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert "https://" not in page.text and "http://" not in page.text
    assert api.get("/api/v1/docs/assets/nothing.js").status_code == 404


def test_without_authentication_the_management_api_is_unavailable(tmp_path: Path) -> None:
    process = start_server(tmp_path / "data")
    try:
        r = httpx.get(f"{process.url}/api/v1/accounts", timeout=30)
        assert r.status_code == 503
        assert "--insecure-no-auth" in r.json()["errors"][0]["message"]
    finally:
        process.stop()


def test_the_framework_refuses_in_the_oci_format(api: httpx.Client, server: ServerProcess) -> None:
    def refused(r: httpx.Response, status: int, code: str = "UNSUPPORTED") -> str:
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        (error,) = r.json()["errors"]
        assert error["code"] == code, error
        return f"{error['message']}: {error.get('detail')}"

    # 405 names every method of the path's template
    r = api.put("/api/v1/accounts", auth=ADMIN)
    refused(r, 405)
    assert r.headers["allow"] == "GET, POST"
    r = api.request("OPTIONS", "/api/v1/accounts/acme", auth=ADMIN)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, PATCH"
    r = api.request("TRACE", "/api/v1/auth/login-password", auth=ADMIN)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    # a path shaped as a policies endpoint is one, whatever a repository could be called
    r = api.patch("/api/v1/repositories/acme/app/policies", auth=ADMIN, json={})
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    r = api.request("OPTIONS", "/api/v1/repositories/acme/app/policies/beta", auth=ADMIN)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, PUT"
    refused(api.get("/api/v1/accounts/acme/nothing", auth=ADMIN), 404, "NOT_FOUND")

    # bodies: not JSON, cut short, the wrong shape or type, too large
    assert "not valid JSON" in refused(api.post("/api/v1/accounts", auth=ADMIN, content=b'{"name": "ab'), 400)
    assert "required" in refused(api.post("/api/v1/accounts", auth=ADMIN), 400)
    form = api.post("/api/v1/accounts", auth=ADMIN, data={"name": "formed"})
    assert "must be a JSON object" in refused(form, 400)
    assert "must be a JSON object" in refused(api.post("/api/v1/accounts", auth=ADMIN, json=["name"]), 400)
    assert "'name'" in refused(api.post("/api/v1/accounts", auth=ADMIN, json={"name": 7}), 400)
    assert "'disabled'" in refused(api.patch("/api/v1/accounts/admin", auth=ADMIN, json={"disabled": 1}), 400)
    big = {"name": "x" * (64 * 1024)}
    refused(api.post("/api/v1/accounts", auth=ADMIN, json=big), 413)
    # query parameters: unknown or repeated ones are refused, not ignored
    assert "'limit'" in refused(api.get("/api/v1/accounts", params={"limit": 5}, auth=ADMIN), 400)
    repeated = api.get("/api/v1/accounts", params=[("n", "1"), ("n", "2")], auth=ADMIN)
    assert "more than once" in refused(repeated, 400)

    # a policy for the account that owns the repository conflicts with what it is
    ok(api.post("/api/v1/accounts", auth=ADMIN, json={"name": "owner"}), 201)
    ok(api.post("/api/v1/accounts/owner/repositories", auth=ADMIN, json={"name": "app"}), 201)
    r = api.put("/api/v1/repositories/owner/app/policies/owner", auth=ADMIN, json={"actions": ["pull"]})
    assert "own members" in refused(r, 409, "CONFLICT")
    r = api.put("/api/v1/repositories/owner/app/policies/acme", auth=ADMIN, json={"actions": []})
    refused(r, 400)
    assert "Traceback" not in server.log()


def test_a_client_that_goes_away_mid_body_is_no_error(server: ServerProcess) -> None:
    credentials = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    for declared in (100, 60 * 1024):
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /api/v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Basic {credentials}\r\nContent-Length: {declared}\r\n\r\n".encode()
                + b'{"name": "half'
            )
            time.sleep(0.2)
    # the server is fine, and said nothing about it beyond, at most, an informational line
    r = httpx.get(f"{server.url}/api/v1/whoami", auth=ADMIN, timeout=30)
    assert r.status_code == 200
    time.sleep(0.3)
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
