"""podman against a running registry: push, pull, run the pulled image; manifest lists with --all.

podman runs as root with a private store (--root/--runroot/--tmpdir, vfs driver) and `--runtime runc`:
crun fails on this machine's hybrid cgroups, and the default ulimits exceed the sandbox's hard limits.
It logs in (`podman login`, its own auth file) as the superuser and pushes below `admin/`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN
from tests.support.cli import ContainerStorage, Skopeo
from tests.support.oci_layout import (
    MT_DOCKER_MANIFEST_LIST,
    MT_OCI_INDEX,
    OciLayout,
    build_busybox_image,
    build_multiplatform_index,
    sha256_digest,
)
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

RUN_FLAGS = ("--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


@pytest.fixture
def podman(registry, storage: ContainerStorage) -> ContainerStorage:
    """podman with a private store, logged in to `registry` as the superuser (`podman login`)."""
    require_tool("podman", "runc", "conmon")
    storage.login("podman", registry.address, ADMIN)
    return storage


def test_push_pull_and_run(registry, podman: ContainerStorage, skopeo: Skopeo, tmp_path: Path, busybox: Path):
    layout, image = build_busybox_image(tmp_path / "src", "v1", motd=b"pushed by podman\n")
    ref = f"{registry.address}/admin/e2e/podman/busybox:v1"

    podman.podman("pull", f"oci:{layout.root}:v1")
    image_id = image.config.digest.removeprefix("sha256:")
    podman.podman("tag", image_id, ref)
    digestfile = tmp_path / "pushed.digest"
    podman.podman("push", "--tls-verify=false", "--digestfile", digestfile, ref)
    pushed = digestfile.read_text().strip()

    # what the registry holds: the digest podman reported, the same config, one layer
    raw = skopeo.inspect_raw(f"docker://{ref}")
    assert sha256_digest(raw) == pushed
    manifest = json.loads(raw)
    assert manifest["config"]["digest"] == image.config.digest
    assert len(manifest["layers"]) == 1
    assert skopeo.inspect_raw(f"docker://{ref}", "--config") == image.config_bytes

    podman.podman("rmi", "--all", "--force")
    assert podman.podman("images", "--quiet").stdout.strip() == ""

    podman.podman("pull", "--tls-verify=false", ref)
    inspected = json.loads(podman.podman("image", "inspect", ref).stdout)[0]
    assert inspected["Id"] == image_id
    assert inspected["Digest"] == pushed
    assert f"{registry.address}/admin/e2e/podman/busybox@{pushed}" in inspected["RepoDigests"]

    result = podman.podman("run", "--rm", *RUN_FLAGS, ref)
    assert result.stdout == "hello\n"
    result = podman.podman("run", "--rm", *RUN_FLAGS, ref, "/bin/busybox", "cat", "/etc/motd")
    assert result.stdout == "pushed by podman\n"

    # pull by digest, into a clean store, and run that
    podman.podman("rmi", "--all", "--force")
    by_digest = f"{registry.address}/admin/e2e/podman/busybox@{pushed}"
    podman.podman("pull", "--tls-verify=false", by_digest)
    result = podman.podman("run", "--rm", *RUN_FLAGS, by_digest, "/bin/busybox", "sh", "-c", "echo $((6*7))")
    assert result.stdout == "42\n"


def test_pull_of_unknown_tag_fails(registry, podman: ContainerStorage) -> None:
    result = podman.podman(
        "pull", "--tls-verify=false", f"{registry.address}/admin/e2e/podman/nothing-here:v1", check=False
    )
    assert result.returncode != 0
    assert "manifest unknown" in result.stderr.lower() or "not found" in result.stderr.lower(), result.stderr


def test_manifest_push_all(registry, podman: ContainerStorage, skopeo: Skopeo, tmp_path: Path) -> None:
    layout, index = build_multiplatform_index(tmp_path / "src", "multi", seed="podman-manifest")
    for image in index.images:
        layout.tag(image, image.platform["architecture"])
    local_list = "localhost/e2e/podman-list:v1"
    ref = f"{registry.address}/admin/e2e/podman/list:v1"

    podman.podman("manifest", "create", local_list)
    for image in index.images:
        podman.podman("manifest", "add", local_list, f"oci:{layout.root}:{image.platform['architecture']}")
    local = json.loads(podman.podman("manifest", "inspect", local_list).stdout)
    assert [m["digest"] for m in local["manifests"]] == [image.digest for image in index.images]

    digestfile = tmp_path / "list.digest"
    podman.podman(
        "manifest",
        "push",
        "--all",
        "--tls-verify=false",
        "--digestfile",
        digestfile,
        local_list,
        f"docker://{ref}",
    )
    pushed = digestfile.read_text().strip()

    raw = skopeo.inspect_raw(f"docker://{ref}")
    assert sha256_digest(raw) == pushed
    served = json.loads(raw)
    assert served["mediaType"] in {MT_OCI_INDEX, MT_DOCKER_MANIFEST_LIST}
    children = {m["platform"]["architecture"]: m for m in served["manifests"]}
    assert sorted(children) == ["amd64", "arm64"]
    assert children["arm64"]["platform"].get("variant") == "v8"
    for image in index.images:
        child = children[image.platform["architecture"]]
        assert child["digest"] == image.digest
        assert child["size"] == image.manifest.size
        # every child arrived (with --all) under its own digest, byte for byte
        assert skopeo.inspect_raw(f"docker://{registry.address}/admin/e2e/podman/list@{image.digest}") == (
            image.manifest_bytes
        )

    # and the whole index can be pulled back by skopeo with all its blobs
    skopeo.copy(f"docker://{ref}", f"oci:{tmp_path / 'back'}:v1", "--all")
    back = OciLayout.open(tmp_path / "back")
    assert back.resolve("v1").digest == pushed
    for image in index.images:
        for digest in image.blob_digests:
            assert back.read_blob(digest) == layout.read_blob(digest)
