"""A push needs an account for its namespace; challenges of mounts ask for the source repository too;
the token realm never carries what a Host header smuggles in."""

from __future__ import annotations

import httpx
import pytest

from tests.api.helpers import OCI_LAYER, digest_of, push_blob, push_image, random_bytes
from tests.auth.conftest import AuthRegistry, challenge, error_code


def admin(registry: AuthRegistry, *scopes: str) -> httpx.Client:
    return registry.authed(registry.token(list(scopes), login="admin", password="pw"))


def test_a_push_into_a_namespace_without_an_account_is_name_unknown(auth_registry: AuthRegistry) -> None:
    client = admin(auth_registry, "repository:ghost/app:pull,push")
    r = client.post("/v2/ghost/app/blobs/uploads/")
    assert r.status_code == 404, r.text
    assert error_code(r) == "NAME_UNKNOWN"
    assert "no account 'ghost'" in r.json()["errors"][0]["detail"]
    r = client.put("/v2/ghost/app/manifests/v1", content=b"{}", headers={"content-type": OCI_LAYER})
    assert error_code(r) == "NAME_UNKNOWN"
    # nothing was created on the way: no repository shows up for the namespace
    catalog = admin(auth_registry, "registry:catalog:*").get("/v2/_catalog").json()["repositories"]
    assert not [name for name in catalog if name.startswith("ghost/")]


def test_the_push_works_once_the_account_exists(fresh_registry: AuthRegistry) -> None:
    client = admin(fresh_registry, "repository:later/app:pull,push")
    assert error_code(client.post("/v2/later/app/blobs/uploads/")) == "NAME_UNKNOWN"
    # created through the store, as another server process would: the view must look again
    fresh_registry.identity.accounts.create_account("later")
    image = push_image(client, "later/app", "v1")
    assert client.get("/v2/later/app/manifests/v1").content == image.body


def test_a_name_without_a_namespace_is_name_unknown(auth_registry: AuthRegistry) -> None:
    r = admin(auth_registry, "repository:lonely:pull,push").post("/v2/lonely/blobs/uploads/")
    assert r.status_code == 404
    assert error_code(r) == "NAME_UNKNOWN"


def test_pulls_of_a_namespace_without_an_account_are_plain_unknowns(auth_registry: AuthRegistry) -> None:
    r = admin(auth_registry, "repository:ghost/app:pull").get("/v2/ghost/app/tags/list")
    assert r.status_code == 404
    assert error_code(r) == "NAME_UNKNOWN"


def test_a_mount_challenge_asks_for_the_source_repository_too(auth_registry: AuthRegistry) -> None:
    blob = random_bytes(300)
    digest = digest_of(blob)
    push_blob(admin(auth_registry, "repository:beta/source:pull,push"), "beta/source", blob)
    path = f"/v2/alpha/target/blobs/uploads/?mount={digest}&from=beta/source"
    r = auth_registry.client.post(path)
    assert r.status_code == 401
    params = challenge(r)
    assert params["scope"] == "repository:alpha/target:pull,push repository:beta/source:pull"
    # as docker does: one token for every scope of the challenge, then the mount succeeds
    token = auth_registry.token(params["scope"].split(" "), login="admin", password="pw")
    r = auth_registry.authed(token).post(path)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest


@pytest.mark.parametrize(
    "source", ["Not/Valid", "", 'beta/source" error="x'], ids=["invalid", "empty", "quote"]
)
def test_a_mount_challenge_ignores_a_bad_source(auth_registry: AuthRegistry, source: str) -> None:
    r = auth_registry.client.post(
        "/v2/alpha/target/blobs/uploads/", params={"mount": digest_of(b"x"), "from": source}
    )
    assert challenge(r)["scope"] == "repository:alpha/target:pull,push"


def test_a_valid_host_makes_the_realm(auth_registry: AuthRegistry) -> None:
    r = auth_registry.client.get("/v2/alpha/app/tags/list", headers={"host": "registry.local:5000"})
    assert challenge(r)["realm"] == "http://registry.local:5000/token"
    r = auth_registry.client.get("/v2/alpha/app/tags/list", headers={"host": "[::1]:5000"})
    assert challenge(r)["realm"] == "http://[::1]:5000/token"


@pytest.mark.parametrize(
    "host",
    ['evil.example",error="injected', "evil.example/path", "evil example", "a@b", 'x"'],
)
def test_a_host_header_cannot_inject_into_the_challenge(auth_registry: AuthRegistry, host: str) -> None:
    r = auth_registry.client.get("/v2/alpha/app/tags/list", headers={"host": host})
    assert r.status_code == 401
    header = r.headers["www-authenticate"]
    assert "injected" not in header and "evil" not in header and "@" not in header
    assert header.count('"') == 6  # realm, service and scope, each quoted once
    assert set(challenge(r)) == {"realm", "service", "scope"}
