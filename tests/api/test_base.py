"""end-1: GET /v2/ tells a client that the registry speaks the distribution API."""

from __future__ import annotations

import pytest

from tests.api.helpers import assert_error
from tests.conftest import Registry


def test_base_endpoint_answers_200_with_api_version(registry: Registry) -> None:
    r = registry.client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {}


def test_base_endpoint_head(registry: Registry) -> None:
    r = registry.client.head("/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert r.content == b""


def test_base_endpoint_without_trailing_slash(registry: Registry) -> None:
    r = registry.client.get("/v2")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_base_endpoint_rejects_other_methods(registry: Registry, method: str) -> None:
    r = registry.client.request(method, "/v2/")
    assert_error(r, 405, "UNSUPPORTED")


def test_every_response_carries_the_api_version_header(registry: Registry) -> None:
    for path in ("/v2/_catalog", "/v2/nope/tags/list", "/v2/nope/manifests/latest", "/v2/Bad/tags/list"):
        r = registry.client.get(path)
        assert r.headers["docker-distribution-api-version"] == "registry/2.0", path


def test_unknown_endpoint_under_v2_is_404_with_a_spec_error(registry: Registry) -> None:
    for path in ("/v2/foo", "/v2/foo/bar", "/v2/foo/blobs", "/v2/foo/manifests/", "/v2/foo/tags/other"):
        r = registry.client.get(path)
        assert_error(r, 404)


def test_path_outside_v2_is_404(registry: Registry) -> None:
    r = registry.client.get("/v1/")
    assert r.status_code == 404
    r = registry.client.get("/")
    assert r.status_code == 404
