"""buildah against a running registry: build from scratch, commit, push, pull back, check the content.

buildah runs with a private store (global --root/--runroot, vfs driver): nothing touches the host's.
It logs in (`buildah login`, its own auth file) as the superuser and pushes below `admin/`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN
from tests.support.cli import ContainerStorage, Skopeo
from tests.support.oci_layout import MT_DOCKER_MANIFEST, MT_OCI_MANIFEST, sha256_digest
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

CMD = ["/bin/busybox", "cat", "/etc/hello.txt"]


@pytest.fixture
def buildah(registry, storage: ContainerStorage) -> ContainerStorage:
    """buildah with a private store, logged in to `registry` as the superuser (`buildah login`)."""
    require_tool("buildah")
    storage.login("buildah", registry.address, ADMIN)
    return storage


def build_image(buildah: ContainerStorage, busybox: Path, workdir: Path, name: str, fmt: str) -> str:
    """from scratch + busybox + a file + Cmd/label, committed as `name` in `fmt`; returns the image ID."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "hello.txt").write_text(f"built by buildah as {fmt}\n")
    container = buildah.buildah("from", "scratch").stdout.strip()
    buildah.buildah("copy", "--chmod", "0755", container, str(busybox), "/bin/busybox")
    buildah.buildah("copy", container, str(workdir / "hello.txt"), "/etc/hello.txt")
    buildah.buildah(
        "config",
        "--cmd",
        json.dumps(CMD),
        "--label",
        "org.example.built-by=shipyard-e2e",
        "--os",
        "linux",
        "--arch",
        "amd64",
        container,
    )
    iidfile = workdir / "iid"
    buildah.buildah("commit", "--format", fmt, "--iidfile", str(iidfile), "--rm", container, name)
    return iidfile.read_text().strip().removeprefix("sha256:")


@pytest.mark.parametrize(
    ("fmt", "media_type"), [("oci", MT_OCI_MANIFEST), ("docker", MT_DOCKER_MANIFEST)], ids=["oci", "docker"]
)
def test_build_push_pull(
    registry,
    buildah: ContainerStorage,
    skopeo: Skopeo,
    tmp_path: Path,
    busybox: Path,
    fmt: str,
    media_type: str,
) -> None:
    image_id = build_image(buildah, busybox, tmp_path / "ctx", f"localhost/e2e/buildah-{fmt}:v1", fmt)
    ref = f"{registry.address}/admin/e2e/buildah/{fmt}:v1"

    digestfile = tmp_path / "pushed.digest"
    buildah.buildah(
        "push",
        "--tls-verify=false",
        "--digestfile",
        str(digestfile),
        f"localhost/e2e/buildah-{fmt}:v1",
        f"docker://{ref}",
    )
    pushed = digestfile.read_text().strip()

    raw = skopeo.inspect_raw(f"docker://{ref}")
    assert sha256_digest(raw) == pushed
    manifest = json.loads(raw)
    assert manifest["mediaType"] == media_type
    assert manifest["config"]["digest"] == f"sha256:{image_id}"
    config = json.loads(skopeo.inspect_raw(f"docker://{ref}", "--config"))
    assert config["config"]["Cmd"] == CMD
    assert config["config"]["Labels"]["org.example.built-by"] == "shipyard-e2e"
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) >= 1

    # remove everything locally, pull it back
    buildah.buildah("rmi", "--all", "--force")
    assert buildah.buildah("images", "--quiet").stdout.strip() == ""
    pulled_id = (
        buildah.buildah("pull", "--tls-verify=false", f"docker://{ref}").stdout.strip().splitlines()[-1]
    )
    assert pulled_id.removeprefix("sha256:") == image_id
    images = json.loads(buildah.buildah("images", "--json", "--digests", "--no-trunc").stdout)
    assert [(i["id"].removeprefix("sha256:"), i["digest"]) for i in images] == [(image_id, pushed)]

    # the pulled image holds what was built: look at its files (vfs: the "mount" is a plain directory)
    container = buildah.buildah("from", "--pull-never", ref).stdout.strip()
    root = Path(buildah.buildah("mount", container).stdout.strip())
    assert (root / "etc" / "hello.txt").read_text() == f"built by buildah as {fmt}\n"
    assert (root / "bin" / "busybox").read_bytes() == busybox.read_bytes()
    assert (root / "bin" / "busybox").stat().st_mode & 0o777 == 0o755
    buildah.buildah("umount", container)
    buildah.buildah("rm", container)


def test_push_to_second_repository_and_pull_by_digest(
    registry, buildah: ContainerStorage, skopeo: Skopeo, tmp_path: Path, busybox: Path
) -> None:
    build_image(buildah, busybox, tmp_path / "ctx", "localhost/e2e/buildah-two:v1", "oci")
    digests = []
    for repo in ("admin/e2e/buildah/first", "admin/e2e/buildah/second"):
        digestfile = tmp_path / f"{repo.replace('/', '_')}.digest"
        buildah.buildah(
            "push",
            "--tls-verify=false",
            "--digestfile",
            str(digestfile),
            "localhost/e2e/buildah-two:v1",
            f"docker://{registry.address}/{repo}:v1",
        )
        digests.append(digestfile.read_text().strip())
    # the same local image pushed twice gives the same manifest, blobs already on the registry or not
    assert digests[0] == digests[1]
    buildah.buildah("rmi", "--all", "--force")
    by_digest = f"docker://{registry.address}/admin/e2e/buildah/second@{digests[1]}"
    buildah.buildah("pull", "--tls-verify=false", by_digest)
    images = json.loads(buildah.buildah("images", "--json", "--digests", "--no-trunc").stdout)
    assert [i["digest"] for i in images] == [digests[1]]
