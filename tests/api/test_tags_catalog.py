"""end-8a/8b: listing tags, and the (optional) catalog, with `n`/`last` pagination and Link headers."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from tests.api.helpers import assert_error, push_blob, push_image, put_manifest, random_bytes, unique_repo
from tests.conftest import Registry

_LINK = re.compile(r'^<(?P<url>[^>]+)>;\s*rel="next"$')

# Mixed case, digits, separators: the list must come back in lexical (byte) order whatever the database.
TAGS = ["latest", "v1", "v10", "v2", "V3", "_under", "A", "a", "B", "b.1", "b-1", "b_1", "0", "9z", "Z"]


def next_link(r: httpx.Response) -> str | None:
    value = r.headers.get("link")
    if value is None:
        return None
    match = _LINK.match(value.strip())
    assert match, value
    return match["url"]


@pytest.fixture(scope="module")
def tagged(registry: Registry) -> str:
    """A repository holding TAGS, pushed in a scrambled order, all on one manifest."""
    repo = unique_repo("tags")
    image = push_image(registry.client, repo, TAGS[-1])
    for tag in sorted(TAGS, key=lambda t: uuid.uuid5(uuid.NAMESPACE_OID, t).hex):
        assert put_manifest(registry.client, repo, tag, image.body).status_code == 201
    return repo


def tags(registry: Registry, repo: str, **params: object) -> httpx.Response:
    return registry.client.get(f"/v2/{repo}/tags/list", params=params)


# -- tags ----------------------------------------------------------------------------------------


def test_tags_are_listed_in_lexical_order(registry: Registry, tagged: str) -> None:
    r = tags(registry, tagged)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"name": tagged, "tags": sorted(TAGS)}
    assert "link" not in r.headers


@pytest.mark.parametrize("n", [1, 2, 3, 7, 14])
def test_n_limits_and_link_walks_the_rest(registry: Registry, tagged: str, n: int) -> None:
    expected = sorted(TAGS)
    r = tags(registry, tagged, n=n)
    assert r.status_code == 200
    assert r.json()["tags"] == expected[:n]
    seen: list[str] = []
    pages = 0
    while True:
        body = r.json()
        assert body["name"] == tagged
        assert 0 < len(body["tags"]) <= n
        seen.extend(body["tags"])
        pages += 1
        link = next_link(r)
        if link is None:
            break
        assert pages < 100
        r = registry.client.get(link)
        assert r.status_code == 200
    assert seen == expected
    assert pages == -(-len(expected) // n)


@pytest.mark.parametrize("n", [len(TAGS), len(TAGS) + 1, 10_000, 99_999_999_999])
def test_n_at_or_past_the_end_returns_everything_without_link(
    registry: Registry, tagged: str, n: int
) -> None:
    r = tags(registry, tagged, n=n)
    assert r.status_code == 200
    assert r.json()["tags"] == sorted(TAGS)
    assert "link" not in r.headers


def test_n_zero_is_an_empty_list_without_link(registry: Registry, tagged: str) -> None:
    r = tags(registry, tagged, n=0)
    assert r.status_code == 200
    assert r.json() == {"name": tagged, "tags": []}
    assert "link" not in r.headers


def test_last_starts_after_the_given_tag(registry: Registry, tagged: str) -> None:
    expected = sorted(TAGS)
    for i, last in enumerate(expected):
        r = tags(registry, tagged, last=last)
        assert r.status_code == 200
        assert r.json()["tags"] == expected[i + 1 :], last
        r = tags(registry, tagged, n=2, last=last)
        assert r.json()["tags"] == expected[i + 1 : i + 3], last
        assert (next_link(r) is not None) == (i + 3 < len(expected)), last


def test_last_that_is_not_a_tag_starts_after_where_it_would_be(registry: Registry, tagged: str) -> None:
    for last in ("b0", "v", "0000", "zzzz", "AAA"):
        r = tags(registry, tagged, last=last)
        assert r.status_code == 200
        assert r.json()["tags"] == [t for t in sorted(TAGS) if t > last], last


def test_link_keeps_the_page_size(registry: Registry, tagged: str) -> None:
    r = tags(registry, tagged, n=4)
    link = next_link(r)
    assert link is not None
    query = httpx.URL(link).params
    assert query["n"] == "4"
    assert query["last"] == sorted(TAGS)[3]
    assert httpx.URL(link).path == f"/v2/{tagged}/tags/list"


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "1e3", " ", "0x10"])
def test_bad_n_is_400(registry: Registry, tagged: str, n: str) -> None:
    assert_error(tags(registry, tagged, n=n), 400)


def test_unknown_repository_is_404_name_unknown(registry: Registry) -> None:
    assert_error(tags(registry, unique_repo("nowhere")), 404, "NAME_UNKNOWN")
    assert_error(tags(registry, unique_repo("nowhere"), n=5, last="a"), 404, "NAME_UNKNOWN")


def test_invalid_name_is_400_name_invalid(registry: Registry) -> None:
    for name in ("UPPER", "a..b", "a/B"):
        assert_error(tags(registry, name), 400, "NAME_INVALID")


def test_repository_without_tags_lists_none(registry: Registry) -> None:
    repo = unique_repo("tags")
    push_image(registry.client, repo)  # by digest: no tag
    r = tags(registry, repo)
    assert r.status_code == 200
    assert r.json() == {"name": repo, "tags": []}


def test_deleted_tags_leave_the_list(registry: Registry) -> None:
    repo = unique_repo("tags")
    image = push_image(registry.client, repo, "a")
    for tag in ("b", "c"):
        put_manifest(registry.client, repo, tag, image.body)
    assert registry.client.delete(f"/v2/{repo}/manifests/b").status_code == 202
    assert tags(registry, repo).json()["tags"] == ["a", "c"]
    assert registry.client.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    r = tags(registry, repo)
    assert r.status_code == 200 and r.json()["tags"] == []


def test_tags_are_per_repository(registry: Registry) -> None:
    first, second = unique_repo("tags"), unique_repo("tags")
    push_image(registry.client, first, "one")
    push_image(registry.client, second, "two")
    assert tags(registry, first).json()["tags"] == ["one"]
    assert tags(registry, second).json()["tags"] == ["two"]


def test_tags_list_rejects_other_methods(registry: Registry, tagged: str) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert_error(registry.client.request(method, f"/v2/{tagged}/tags/list"), 405, "UNSUPPORTED")


# -- catalog -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalogued(registry: Registry) -> list[str]:
    """A few repositories of our own (the catalog is shared with the rest of the module)."""
    base = f"cat-{uuid.uuid4().hex[:8]}"
    names = [f"{base}/b", f"{base}/a", f"{base}/a/nested", f"{base}-x", f"{base}/c.d", f"{base}/a-b"]
    for name in names:
        push_image(registry.client, name, "v1")
    return sorted(names)


def catalog(registry: Registry, **params: object) -> httpx.Response:
    return registry.client.get("/v2/_catalog", params=params)


def test_catalog_lists_repositories_in_order(registry: Registry, catalogued: list[str]) -> None:
    r = catalog(registry)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    repositories = r.json()["repositories"]
    assert set(r.json()) == {"repositories"}
    assert repositories == sorted(repositories)
    assert len(set(repositories)) == len(repositories)
    assert [name for name in repositories if name in catalogued] == catalogued


@pytest.mark.parametrize("n", [1, 2, 5])
def test_catalog_pagination_walks_everything_once(registry: Registry, catalogued: list[str], n: int) -> None:
    everything = catalog(registry).json()["repositories"]
    seen: list[str] = []
    r = catalog(registry, n=n)
    while True:
        assert r.status_code == 200
        page = r.json()["repositories"]
        assert len(page) <= n
        seen.extend(page)
        link = next_link(r)
        if link is None:
            break
        assert page, "a Link after an empty page"
        assert len(seen) <= len(everything) + 50
        r = registry.client.get(link)
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    assert set(catalogued) <= set(seen)
    # the walk saw what a single listing saw (other tests of the module may have added more since)
    assert set(everything) <= set(seen)


def test_catalog_last(registry: Registry, catalogued: list[str]) -> None:
    # our names share a random prefix, so no other repository sorts between them
    r = catalog(registry, last=catalogued[0], n=3)
    assert r.status_code == 200
    assert r.json()["repositories"] == catalogued[1:4]
    assert next_link(r) is not None
    r = catalog(registry, last=catalogued[2])
    assert [name for name in r.json()["repositories"] if name in catalogued] == catalogued[3:]
    assert all(name > catalogued[2] for name in r.json()["repositories"])


def test_catalog_link_escapes_names(registry: Registry, catalogued: list[str]) -> None:
    r = catalog(registry, last=catalogued[0], n=1)
    link = next_link(r)
    assert link is not None
    assert httpx.URL(link).path == "/v2/_catalog"
    last = httpx.URL(link).params["last"]
    assert last == r.json()["repositories"][0]
    assert registry.client.get(link).status_code == 200


def test_catalog_n_zero(registry: Registry, catalogued: list[str]) -> None:
    r = catalog(registry, n=0)
    assert r.status_code == 200
    assert r.json() == {"repositories": []}
    assert "link" not in r.headers


@pytest.mark.parametrize("n", ["-5", "many", "2.0"])
def test_catalog_bad_n_is_400(registry: Registry, n: str) -> None:
    assert_error(catalog(registry, n=n), 400)


def test_catalog_rejects_other_methods(registry: Registry) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert_error(registry.client.request(method, "/v2/_catalog"), 405, "UNSUPPORTED")


def test_catalog_includes_a_repository_once_it_has_content(registry: Registry) -> None:
    repo = unique_repo("cat")
    push_blob(registry.client, repo, random_bytes(10))
    push_image(registry.client, repo, "v1")
    r = catalog(registry, last=repo[:-1], n=10_000)
    assert repo in r.json()["repositories"]
