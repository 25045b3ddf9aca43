"""What a token grants: the intersection of the requested scopes and the principal's rights, public
repositories for anonymous callers, and a catalog that lists only what the caller may see."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.helpers import push_blob, push_image
from tests.auth.conftest import SOURCE, AuthRegistry, bearer, challenge, decode, error_code


def access_of(token: str) -> dict[str, list[str]]:
    _, payload = decode(token)
    entries: list[dict[str, Any]] = payload.get("access", [])
    return {f"{e['type']}:{e['name']}": e["actions"] for e in entries}


def test_the_token_document(auth_registry: AuthRegistry) -> None:
    r = auth_registry.token_response("repository:alpha/app:pull", login="alpha-writer")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    document = r.json()
    assert document["token"] == document["access_token"]
    assert document["expires_in"] == 300
    assert document["issued_at"].endswith("Z") and "T" in document["issued_at"]
    assert "refresh_token" not in document
    header, payload = decode(document["token"])
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": auth_registry.identity.keys.active.kid}
    assert payload["iss"] == "shipyard" and payload["aud"] == "shipyard"
    assert payload["sub"] == "alpha-writer"
    assert payload["exp"] - payload["iat"] == 300
    assert payload["acct"] == "alpha"


@pytest.mark.parametrize(
    ("login", "requested", "granted"),
    [
        ("alpha-writer", ["repository:alpha/app:pull,push"], {"repository:alpha/app": ["pull", "push"]}),
        ("alpha-writer", ["repository:alpha/app:*"], {"repository:alpha/app": ["delete", "pull", "push"]}),
        ("alpha-reader", ["repository:alpha/app:pull,push,delete"], {"repository:alpha/app": ["pull"]}),
        ("alpha-reader", ["repository:alpha/app:push"], {}),
        # two scope parameters, one of them outside the account: only the own one is granted
        (
            "alpha-writer",
            ["repository:alpha/app:pull", "repository:beta/app:pull,push"],
            {"repository:alpha/app": ["pull"]},
        ),
        # scopes for one repository are merged
        (
            "alpha-writer",
            ["repository:alpha/app:pull repository:alpha/app:push"],
            {"repository:alpha/app": ["pull", "push"]},
        ),
        (
            "admin",
            ["repository:beta/app:pull,push,delete"],
            {"repository:beta/app": ["delete", "pull", "push"]},
        ),
        # unknown actions and invalid names are never granted
        ("alpha-writer", ["repository:alpha/app:pull,own"], {"repository:alpha/app": ["pull"]}),
        ("alpha-writer", ["repository:Alpha/APP:pull"], {}),
        ("alpha-writer", ["registry:catalog:*"], {"registry:catalog": ["*"]}),
        ("alpha-writer", ["registry:catalog:pull"], {}),
    ],
)
def test_the_grant_is_the_intersection(
    auth_registry: AuthRegistry, login: str, requested: list[str], granted: dict[str, list[str]]
) -> None:
    password = "pw" if login == "admin" else "secret-pw"
    token = auth_registry.token(requested, login=login, password=password)
    assert access_of(token) == granted


def test_a_denied_scope_request_is_audited(auth_registry: AuthRegistry) -> None:
    marker = auth_registry.mark()
    auth_registry.token("repository:alpha/app:pull,push", login="alpha-reader")
    events = [e for e in auth_registry.audit_since(marker) if e["event"] == "scope-denied"]
    assert len(events) == 1
    assert events[0]["principal"] == "alpha-reader"
    assert events[0]["source"] == SOURCE
    assert events[0]["action"] == "repository:alpha/app:pull,push"
    assert events[0]["reason"]


def test_a_reader_token_pulls_but_does_not_push(auth_registry: AuthRegistry) -> None:
    writer = auth_registry.authed(
        auth_registry.token("repository:alpha/readme:pull,push", login="alpha-writer")
    )
    image = push_image(writer, "alpha/readme", "v1")
    token = auth_registry.token("repository:alpha/readme:pull,push", login="alpha-reader")
    assert access_of(token) == {"repository:alpha/readme": ["pull"]}
    reader = auth_registry.authed(token)
    r = reader.get(f"/v2/alpha/readme/manifests/{image.digest}")
    assert r.status_code == 200 and r.content == image.body
    r = reader.post("/v2/alpha/readme/blobs/uploads/")
    assert r.status_code == 401
    assert challenge(r)["error"] == "insufficient_scope"


def test_policies_share_what_the_grantee_role_allows(auth_registry: AuthRegistry) -> None:
    accounts = auth_registry.identity.accounts
    accounts.set_policy("beta/shared", "alpha", frozenset({"pull", "push"}))
    token = auth_registry.token("repository:beta/shared:pull,push,delete", login="alpha-writer")
    assert access_of(token) == {"repository:beta/shared": ["pull", "push"]}
    token = auth_registry.token("repository:beta/shared:pull,push", login="alpha-reader")
    assert access_of(token) == {"repository:beta/shared": ["pull"]}


def test_anonymous_tokens_cover_public_repositories_only(auth_registry: AuthRegistry) -> None:
    beta = auth_registry.authed(auth_registry.token("repository:beta/open:pull,push", login="beta-writer"))
    image = push_image(beta, "beta/open", "v1")
    auth_registry.identity.accounts.set_visibility("beta/open", "public")
    token = auth_registry.token(["repository:beta/open:pull,push", "repository:beta/app:pull"])
    _, payload = decode(token)
    assert payload["sub"] == ""
    assert "pid" not in payload
    assert access_of(token) == {"repository:beta/open": ["pull"]}
    anonymous = auth_registry.authed(token)
    assert anonymous.get(f"/v2/beta/open/manifests/{image.digest}").status_code == 200
    r = anonymous.post("/v2/beta/open/blobs/uploads/")
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"
    assert challenge(r)["scope"] == "repository:beta/open:pull,push"
    # without any token, even a public repository answers the challenge: the client gets a token
    r = auth_registry.client.get(f"/v2/beta/open/manifests/{image.digest}")
    assert r.status_code == 401
    assert challenge(r)["scope"] == "repository:beta/open:pull"


def test_bad_basic_credentials_get_no_anonymous_token(auth_registry: AuthRegistry) -> None:
    r = auth_registry.token_response("repository:alpha/app:pull", login="alpha-writer", password="wrong")
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"
    assert r.headers["www-authenticate"] == 'Basic realm="shipyard"'
    r = auth_registry.client.get("/token", headers={"authorization": "Basic !!!"})
    assert r.status_code == 401


def test_token_for_another_service_is_refused(auth_registry: AuthRegistry) -> None:
    r = auth_registry.client.get(
        "/token",
        params={"service": "other", "scope": "repository:alpha/app:pull"},
        auth=("alpha-writer", "secret-pw"),
    )
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"


def test_a_malformed_scope_is_a_400(auth_registry: AuthRegistry) -> None:
    r = auth_registry.client.get("/token", params={"scope": "repository"}, auth=("alpha-writer", "secret-pw"))
    assert r.status_code == 400
    assert error_code(r) == "UNSUPPORTED"


def catalog(client: httpx.Client) -> list[str]:
    r = client.get("/v2/_catalog")
    assert r.status_code == 200, r.text
    repositories: list[str] = r.json()["repositories"]
    return repositories


def test_the_catalog_lists_only_what_the_principal_may_see(fresh_registry: AuthRegistry) -> None:
    registry = fresh_registry
    accounts = registry.identity.accounts
    for login, repos in {
        "alpha-writer": ["alpha/app", "alpha/tools/cli"],
        "beta-writer": ["beta/app", "beta/open", "beta/shared"],
    }.items():
        for repo in repos:
            client = registry.authed(registry.token(f"repository:{repo}:pull,push", login=login))
            push_blob(client, repo, repo.encode())
            push_image(client, repo, "v1")
    accounts.set_visibility("beta/open", "public")
    accounts.set_policy("beta/shared", "alpha", frozenset({"pull"}))

    def as_(login: str | None, password: str = "secret-pw") -> httpx.Client:
        return registry.authed(registry.token("registry:catalog:*", login=login, password=password))

    assert catalog(as_("alpha-writer")) == ["alpha/app", "alpha/tools/cli", "beta/open", "beta/shared"]
    assert catalog(as_("alpha-reader")) == ["alpha/app", "alpha/tools/cli", "beta/open", "beta/shared"]
    assert catalog(as_("beta-writer")) == ["beta/app", "beta/open", "beta/shared"]
    assert catalog(as_(None)) == ["beta/open"]
    everything = ["alpha/app", "alpha/tools/cli", "beta/app", "beta/open", "beta/shared"]
    assert catalog(as_("admin", "pw")) == everything
    # a disabled principal's token stops working: its holder is anonymous at best
    token = registry.token("registry:catalog:*", login="alpha-writer")
    accounts.update_principal("alpha-writer", disabled=True)
    r = registry.authed(token).get("/v2/_catalog")
    assert r.status_code == 401
    assert challenge(r)["error"] == "invalid_token"
    # the catalog needs the catalog scope
    r = registry.authed(registry.token("repository:alpha/app:pull", login="alpha-reader")).get("/v2/_catalog")
    assert r.status_code == 401
    assert challenge(r)["scope"] == "registry:catalog:*"
    assert challenge(r)["error"] == "insufficient_scope"
    r = registry.client.get("/v2/_catalog", headers=bearer("x.y.z"))
    assert r.status_code == 401
