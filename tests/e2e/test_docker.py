"""docker (a test-started dockerd 20.10) against a running registry: push, rmi, pull, run; OCI pulls.

The client is Debian's /usr/bin/docker talking to the private daemon's socket; 127.0.0.0/8 is an
insecure registry for dockerd by default, so plain HTTP on loopback needs no configuration. Each test's
client has its own DOCKER_CONFIG, logged in (`docker login`) as the superuser; pushes go below `admin/`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN
from tests.support.cli import Skopeo
from tests.support.dockerd import DockerClient, DockerDaemon
from tests.support.oci_layout import (
    MT_DOCKER_MANIFEST,
    build_busybox_image,
    build_multiplatform_index,
    sha256_digest,
)

pytestmark = pytest.mark.e2e

PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: (\d+)")


@pytest.fixture
def docker(registry, dockerd: DockerDaemon, tmp_path: Path) -> DockerClient:
    """A client of the module's dockerd with its own DOCKER_CONFIG, logged in as the superuser."""
    client = dockerd.client(tmp_path / "docker-config")
    out = client.login(registry.address, ADMIN).stdout
    assert "Login Succeeded" in out
    return client


def repo_digests(docker: DockerClient, ref: str) -> list[str]:
    out = docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref).stdout
    return list(json.loads(out))


def image_id(docker: DockerClient, ref: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


def test_push_rmi_pull_run(
    registry, docker: DockerClient, skopeo: Skopeo, tmp_path: Path, busybox: Path
) -> None:
    layout, image = build_busybox_image(tmp_path / "src", "v1", motd=b"pushed by docker\n")
    archive = tmp_path / "image.tar"
    skopeo.copy(f"oci:{layout.root}:v1", f"docker-archive:{archive}:e2e/docker-local:v1")
    loaded = docker("load", "--input", str(archive)).stdout
    assert "e2e/docker-local:v1" in loaded
    assert image_id(docker, "e2e/docker-local:v1") == image.config.digest

    repo = f"{registry.address}/admin/e2e/docker/busybox"
    docker("tag", "e2e/docker-local:v1", f"{repo}:v1")
    out = docker("push", f"{repo}:v1").stdout
    match = PUSHED_DIGEST.search(out)
    assert match, out
    pushed, size = match.group(1), int(match.group(2))

    # the registry holds a Docker schema 2 manifest under the digest docker printed
    raw = skopeo.inspect_raw(f"docker://{repo}:v1")
    assert sha256_digest(raw) == pushed
    assert len(raw) == size
    manifest = json.loads(raw)
    assert manifest["mediaType"] == MT_DOCKER_MANIFEST
    assert manifest["config"]["digest"] == image.config.digest
    assert repo_digests(docker, f"{repo}:v1") == [f"{repo}@{pushed}"]

    docker("rmi", f"{repo}:v1", "e2e/docker-local:v1")
    assert docker("images", "--quiet").stdout.strip() == ""

    out = docker("pull", f"{repo}:v1").stdout
    assert f"Digest: {pushed}" in out
    assert repo_digests(docker, f"{repo}:v1") == [f"{repo}@{pushed}"]
    assert image_id(docker, f"{repo}:v1") == image.config.digest

    result = docker("run", "--rm", "--network", "none", f"{repo}:v1")
    assert result.stdout == "hello\n"
    result = docker(
        "run", "--rm", "--network", "none", f"{repo}@{pushed}", "/bin/busybox", "cat", "/etc/motd"
    )
    assert result.stdout == "pushed by docker\n"

    # a second tag and a second repository: docker finds the layers already there (or mounts them)
    docker("tag", f"{repo}:v1", f"{repo}:v2")
    docker("tag", f"{repo}:v1", f"{registry.address}/admin/e2e/docker/other:v1")
    out_v2 = docker("push", f"{repo}:v2").stdout
    out_other = docker("push", f"{registry.address}/admin/e2e/docker/other:v1").stdout
    for out in (out_v2, out_other):
        match = PUSHED_DIGEST.search(out)
        assert match, out
        assert match.group(1) == pushed
    assert "Layer already exists" in out_v2
    assert "Mounted from admin/e2e/docker/busybox" in out_other or "Layer already exists" in out_other
    assert sorted(skopeo.list_tags(f"docker://{repo}")) == ["v1", "v2"]


def test_pull_oci_image_and_index(registry, docker: DockerClient, skopeo: Skopeo, tmp_path: Path) -> None:
    """docker pulls what skopeo pushed as OCI: an image manifest by digest, an index by tag (amd64)."""
    layout, index = build_multiplatform_index(tmp_path / "src", "multi", seed="docker-oci")
    repo = f"{registry.address}/admin/e2e/docker/oci"
    skopeo.copy(f"oci:{layout.root}:multi", f"docker://{repo}:multi", "--all")
    amd64 = next(image for image in index.images if image.platform["architecture"] == "amd64")

    out = docker("pull", f"{repo}:multi").stdout
    assert f"Digest: {index.digest}" in out
    assert image_id(docker, f"{repo}:multi") == amd64.config.digest
    assert repo_digests(docker, f"{repo}:multi") == [f"{repo}@{index.digest}"]

    out = docker("pull", f"{repo}@{amd64.digest}").stdout
    assert f"Digest: {amd64.digest}" in out
    assert image_id(docker, f"{repo}@{amd64.digest}") == amd64.config.digest

    docker("rmi", "--force", f"{repo}:multi", f"{repo}@{amd64.digest}")


def test_pull_of_unknown_image_fails(registry, docker: DockerClient) -> None:
    result = docker("pull", f"{registry.address}/admin/e2e/docker/nothing-here:v1", check=False)
    assert result.returncode != 0
    assert "manifest unknown" in result.stderr.lower() or "not found" in result.stderr.lower(), result.stderr
