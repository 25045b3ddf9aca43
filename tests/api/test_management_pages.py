"""Every listing of the management API is a keyset page: `?n=` (1..1000, default 100), `?last=`, and a
`Link: <...>; rel="next"` header while more follow. In-process, authentication on, both databases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shipyard.auth.credentials import hash_secret
from tests.auth.conftest import PASSWORD, AuthRegistry, make_auth_registry
from tests.conftest import DATABASES

ROOT = ("admin", "pw")
BETA = ("beta-writer", PASSWORD)


@pytest.fixture(scope="module", params=DATABASES)
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthRegistry]:
    data_dir = tmp_path_factory.mktemp(f"pages-{request.param}")
    yield from make_auth_registry(request, data_dir, request.param)


@pytest.fixture(scope="module")
def api(registry: AuthRegistry) -> httpx.Client:
    return registry.client


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def pages(api: httpx.Client, path: str, key: str, n: int, auth: tuple[str, str]) -> list[list[str]]:
    """Follow the Link headers from the first page; each page's item names."""
    out: list[list[str]] = []
    url: str | None = f"{path}?n={n}"
    while url is not None:
        r = api.get(url, auth=auth)
        items = ok(r)[key]
        out.append([item.get("login") or item.get("name") or item["account"] for item in items])
        link = r.headers.get("link")
        if link is None:
            url = None
        else:
            target, _, rel = link.partition(";")
            assert rel.strip() == 'rel="next"' and target.startswith("<") and target.endswith(">"), link
            url = target[1:-1]
    return out


@pytest.fixture(scope="module")
def paged(registry: AuthRegistry, api: httpx.Client) -> str:
    """The account `paged` with the users u01..u05, straight into the store (no hashing per user)."""
    accounts = registry.identity.accounts
    accounts.create_account("paged")
    secret = hash_secret(PASSWORD)
    for i in range(1, 6):
        accounts.create_principal("paged", kind="user", login=f"u{i:02}", role="reader", secret_hash=secret)
    return "paged"


def test_users_come_in_pages_with_a_link_to_the_next(api: httpx.Client, paged: str) -> None:
    path = f"/api/v1/accounts/{paged}/users"
    r = api.get(path, params={"n": 2}, auth=ROOT)
    assert [u["login"] for u in ok(r)["users"]] == ["u01", "u02"]
    assert r.headers["link"] == f'<{path}?n=2&last=u02>; rel="next"'
    assert pages(api, path, "users", 2, ROOT) == [["u01", "u02"], ["u03", "u04"], ["u05"]]
    # a page that ends exactly at the end has no Link
    r = api.get(path, params={"n": 5}, auth=ROOT)
    assert len(ok(r)["users"]) == 5 and "link" not in r.headers
    assert pages(api, path, "users", 1000, ROOT) == [["u01", "u02", "u03", "u04", "u05"]]
    # last: strictly after it, whether or not it names an item
    assert [u["login"] for u in ok(api.get(path, params={"last": "u03"}, auth=ROOT))["users"]] == [
        "u04",
        "u05",
    ]
    assert [u["login"] for u in ok(api.get(path, params={"last": "u035"}, auth=ROOT))["users"]] == [
        "u04",
        "u05",
    ]
    # beyond the end: an empty page, no Link
    r = api.get(path, params={"last": "zzz", "n": 2}, auth=ROOT)
    assert ok(r) == {"users": []} and "link" not in r.headers


def test_the_default_page_is_100(registry: AuthRegistry, api: httpx.Client) -> None:
    accounts = registry.identity.accounts
    accounts.create_account("crowd")
    secret = hash_secret(PASSWORD)
    for i in range(105):
        accounts.create_principal(
            "crowd", kind="robot", login=f"crowd+r{i:03}", role="reader", secret_hash=secret
        )
    r = api.get("/api/v1/accounts/crowd/robots", auth=ROOT)
    robots = ok(r)["robots"]
    assert len(robots) == 100 and robots[-1]["login"] == "crowd+r099"
    assert r.headers["link"] == '</api/v1/accounts/crowd/robots?n=100&last=crowd%2Br099>; rel="next"'
    r = api.get(r.headers["link"][1:].partition(">")[0], auth=ROOT)
    assert [p["name"] for p in ok(r)["robots"]] == ["r100", "r101", "r102", "r103", "r104"]
    assert "link" not in r.headers


@pytest.fixture(scope="module")
def repository(api: httpx.Client, paged: str) -> str:
    ok(api.post(f"/api/v1/accounts/{paged}/repositories", auth=ROOT, json={"name": "app"}), 201)
    return f"{paged}/app"


LISTINGS = [
    "/api/v1/accounts",
    "/api/v1/accounts/paged/users",
    "/api/v1/accounts/paged/robots",
    "/api/v1/accounts/paged/access-keys",
    "/api/v1/accounts/paged/repositories",
    "/api/v1/repositories/paged/app/policies",
    "/api/v1/audit",
]


@pytest.mark.parametrize("path", LISTINGS)
def test_a_bad_page_size_is_a_400_with_the_error_body(api: httpx.Client, repository: str, path: str) -> None:
    for n in ("abc", "0", "-1", "1001", "1.5"):
        r = api.get(path, params={"n": n}, auth=ROOT)
        assert r.status_code == 400, (n, r.text)
        assert r.headers["content-type"] == "application/json"
        (error,) = r.json()["errors"]
        assert error["code"] == "UNSUPPORTED"
        assert error["message"] == "invalid number of results requested"
        assert "n must" in error["detail"] and n in error["detail"], error
    # the bounds themselves are fine, and an empty n is the default
    for n in ("1", "1000", ""):
        assert api.get(path, params={"n": n}, auth=ROOT).status_code == 200, n


def test_accounts_pages_and_a_members_own_account(api: httpx.Client, paged: str) -> None:
    names = [name for page in pages(api, "/api/v1/accounts", "accounts", 1, ROOT) for name in page]
    assert names == sorted(names) and {"admin", "alpha", "beta", "paged"} <= set(names)
    assert all(len(page) == 1 for page in pages(api, "/api/v1/accounts", "accounts", 1, ROOT))
    assert pages(api, "/api/v1/accounts", "accounts", 1, BETA) == [["beta"]]
    assert ok(api.get("/api/v1/accounts", params={"last": "beta"}, auth=BETA)) == {"accounts": []}


def test_access_keys_a_member_sees_only_its_own_page_by_page(
    registry: AuthRegistry, api: httpx.Client
) -> None:
    ok(api.post("/api/v1/accounts", auth=ROOT, json={"name": "keyring"}), 201)
    users = "/api/v1/accounts/keyring/users"
    ok(api.post(users, auth=ROOT, json={"name": "kr-boss", "role": "admin", "password": "kr-boss-pw"}), 201)
    ok(api.post(users, auth=ROOT, json={"name": "kr-one", "role": "writer", "password": "kr-one-pw"}), 201)
    ok(api.post(users, auth=ROOT, json={"name": "kr-two", "role": "writer", "password": "kr-two-pw"}), 201)
    one, two = ("kr-one", "kr-one-pw"), ("kr-two", "kr-two-pw")
    path = "/api/v1/accounts/keyring/access-keys"
    mine = sorted(ok(api.post(path, auth=one, json={}), 201)["login"] for _ in range(3))
    theirs = sorted(ok(api.post(path, auth=two, json={}), 201)["login"] for _ in range(2))
    assert pages(api, path, "access_keys", 2, one) == [mine[:2], mine[2:]]
    assert pages(api, path, "access_keys", 2, two) == [theirs]
    every = sorted(mine + theirs)
    assert pages(api, path, "access_keys", 2, ("kr-boss", "kr-boss-pw")) == [every[:2], every[2:4], every[4:]]


def test_repositories_pages_hold_only_what_the_caller_may_pull(api: httpx.Client) -> None:
    ok(api.post("/api/v1/accounts", auth=ROOT, json={"name": "shelf"}), 201)
    for name in ("r1", "r2", "r3", "r4", "r5"):
        ok(api.post("/api/v1/accounts/shelf/repositories", auth=ROOT, json={"name": name}), 201)
    ok(api.patch("/api/v1/repositories/shelf/r2", auth=ROOT, json={"visibility": "public"}))
    ok(api.put("/api/v1/repositories/shelf/r4/policies/beta", auth=ROOT, json={"actions": ["pull"]}))
    ok(api.put("/api/v1/repositories/shelf/r5/policies/alpha", auth=ROOT, json={"actions": ["pull"]}))
    path = "/api/v1/accounts/shelf/repositories"
    assert pages(api, path, "repositories", 2, ROOT) == [
        ["shelf/r1", "shelf/r2"],
        ["shelf/r3", "shelf/r4"],
        ["shelf/r5"],
    ]
    # beta: the public one and the one shared with it; full pages, filtered in the query
    assert pages(api, path, "repositories", 1, BETA) == [["shelf/r2"], ["shelf/r4"]]
    assert pages(api, path, "repositories", 2, BETA) == [["shelf/r2", "shelf/r4"]]
    r = api.get(path, params={"last": "shelf/r4"}, auth=BETA)
    assert ok(r) == {"repositories": []} and "link" not in r.headers
    # a neighbouring namespace is not part of the account's
    ok(api.post("/api/v1/accounts", auth=ROOT, json={"name": "shelf-b"}), 201)
    ok(api.post("/api/v1/accounts/shelf-b/repositories", auth=ROOT, json={"name": "x"}), 201)
    assert [name for page in pages(api, path, "repositories", 1000, ROOT) for name in page][-1] == "shelf/r5"


def test_policies_of_a_repository_are_paged_by_grantee(api: httpx.Client, repository: str) -> None:
    path = f"/api/v1/repositories/{repository}/policies"
    # a caller who may not see the repository sees no policies either
    assert api.get(path, auth=BETA).status_code == 404
    for account in ("alpha", "beta", "crowd"):
        ok(api.put(f"{path}/{account}", auth=ROOT, json={"actions": ["pull"]}))
    assert pages(api, path, "policies", 2, ROOT) == [["alpha", "beta"], ["crowd"]]
    assert ok(api.get(path, params={"last": "alpha"}, auth=ROOT))["policies"] == [
        {"account": "beta", "actions": ["pull"]},
        {"account": "crowd", "actions": ["pull"]},
    ]
    # beta may pull now; it sees the policies like any other reader of the repository
    assert pages(api, path, "policies", 1, BETA) == [["alpha"], ["beta"], ["crowd"]]


@pytest.mark.parametrize("last", ["-1", "-99999999999999999999", "2147483648", "x"])
@pytest.mark.parametrize("path", ["/api/v1/audit", "/api/v1/events", "/api/v1/accounts/paged/webhooks"])
def test_an_id_to_continue_after_out_of_range_is_a_400(api: httpx.Client, path: str, last: str) -> None:
    # ids are 32-bit in the database: a larger one is refused by the API, never a 500 of the database
    r = api.get(path, params={"last": last}, auth=ROOT)
    assert r.status_code == 400, (path, last, r.text)
    assert r.headers["content-type"] == "application/json"
    assert "last" in r.json()["errors"][0]["detail"]
