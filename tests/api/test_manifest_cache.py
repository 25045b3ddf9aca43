"""Manifest GET and HEAD through the in-process cache, with two registries on one database and blob
store (two server processes, or two servers): neither serves what the other changed or deleted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shipyard.app import Shipyard, build
from shipyard.config import Settings
from tests.api.helpers import (
    OCI_MANIFEST,
    assert_error,
    encode,
    image_manifest,
    push_blob,
    put_manifest,
    unique_repo,
)
from tests.conftest import database_url
from tests.support.asgi import SyncASGITransport


@dataclass
class Node:
    app: Shipyard
    client: httpx.Client

    def heard(self) -> int:
        listener = self.app.registry.metadata.change_listener
        return 0 if listener is None else listener.heard

    def settle(self, before: int, changes: int) -> None:
        """Wait until this node has heard of `changes` more changes made by the other one (PostgreSQL
        delivers them asynchronously; SQLite needs no notice)."""
        if self.app.registry.metadata.change_listener is None:
            return
        deadline = time.monotonic() + 10
        while self.heard() < before + changes:
            assert time.monotonic() < deadline, "the change was not heard"
            time.sleep(0.01)

    def cached(self, repo: str, reference: str) -> bool:
        return self.app.registry.metadata.cached_manifest(repo, reference) is not None


@pytest.fixture(params=["sqlite", "postgresql"])
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    url = database_url(request.param, request, tmp_path)
    made: list[Node] = []
    for _ in range(2):
        app = build(Settings(data_dir=tmp_path, database_url=url, insecure_no_auth=True), run_migrations=True)
        for hook in app.asgi.on_startup:  # what the server's lifespan start-up does
            hook()
        listener = app.registry.metadata.change_listener
        if listener is not None:
            assert listener.wait_connected(10)
        client = httpx.Client(transport=SyncASGITransport(app.asgi), base_url="http://registry.test")
        made.append(Node(app, client))
    yield made[0], made[1]
    for node in made:
        node.client.close()
        for hook in node.app.asgi.on_shutdown:
            hook()
        node.app.close()


def push_image(client: httpx.Client, repo: str, tag: str, seed: str) -> str:
    config = f'{{"seed":"{seed}"}}'.encode()
    layer = f"layer {seed}".encode()
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    response = put_manifest(client, repo, tag, encode(image_manifest(config, [layer])))
    assert response.status_code == 201, response.text
    return response.headers["docker-content-digest"]


def get(client: httpx.Client, repo: str, reference: str, method: str = "GET") -> httpx.Response:
    return client.request(method, f"/v2/{repo}/manifests/{reference}", headers={"accept": OCI_MANIFEST})


def test_get_and_head_are_served_from_the_cache(nodes: tuple[Node, Node]) -> None:
    node, _ = nodes
    repo = unique_repo()
    digest = push_image(node.client, repo, "latest", "one")
    first = get(node.client, repo, "latest")
    assert first.status_code == 200
    assert node.cached(repo, "latest")
    for reference in ("latest", digest):
        for method in ("GET", "HEAD", "GET"):
            response = get(node.client, repo, reference, method)
            assert response.status_code == 200
            assert response.headers["docker-content-digest"] == digest
            assert response.headers["etag"] == f'"{digest}"'
            assert response.headers["content-type"] == OCI_MANIFEST
            assert response.headers["content-length"] == str(len(first.content))
            assert response.headers["docker-distribution-api-version"] == "registry/2.0"
            assert response.content == (b"" if method == "HEAD" else first.content)
        assert node.cached(repo, reference)
    # pulls served from the cache are still recorded
    assert node.app.registry.pulls.flush() == 1


def test_a_tag_moved_on_one_node_is_seen_on_the_other(nodes: tuple[Node, Node]) -> None:
    writer, reader = nodes
    repo = unique_repo()
    before = reader.heard()
    old = push_image(writer.client, repo, "latest", "one")
    reader.settle(before, 1)
    for method in ("GET", "HEAD"):
        assert get(reader.client, repo, "latest", method).headers["docker-content-digest"] == old
    assert reader.cached(repo, "latest")

    new = push_image(writer.client, repo, "latest", "two")
    reader.settle(before, 2)
    for method in ("HEAD", "GET"):
        assert get(reader.client, repo, "latest", method).headers["docker-content-digest"] == new
    assert get(reader.client, repo, old).status_code == 200


def test_a_manifest_deleted_on_one_node_is_gone_on_the_other(nodes: tuple[Node, Node]) -> None:
    writer, reader = nodes
    repo = unique_repo()
    before = reader.heard()
    digest = push_image(writer.client, repo, "latest", "one")
    reader.settle(before, 1)
    for reference in ("latest", digest):
        assert get(reader.client, repo, reference).status_code == 200
        assert reader.cached(repo, reference)

    assert writer.client.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
    reader.settle(before, 2)
    for reference in ("latest", digest):
        for method in ("GET", "HEAD"):
            assert_error(get(reader.client, repo, reference, method), 404, "MANIFEST_UNKNOWN")


def test_a_write_is_seen_by_the_next_request_on_the_same_node(nodes: tuple[Node, Node]) -> None:
    node, _ = nodes
    repo = unique_repo()
    old = push_image(node.client, repo, "latest", "one")
    assert get(node.client, repo, "latest").headers["docker-content-digest"] == old
    new = push_image(node.client, repo, "latest", "two")
    assert get(node.client, repo, "latest").headers["docker-content-digest"] == new
    assert node.client.delete(f"/v2/{repo}/manifests/latest").status_code == 202
    assert_error(get(node.client, repo, "latest"), 404, "MANIFEST_UNKNOWN")
    assert get(node.client, repo, old).status_code == 200
    assert node.client.delete(f"/v2/{repo}/manifests/{old}").status_code == 202
    assert_error(get(node.client, repo, old, "HEAD"), 404)
