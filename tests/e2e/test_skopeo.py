"""skopeo against a running registry: pushes and pulls keep every digest, indexes, tags, deletes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import CommandFailed, Skopeo
from tests.support.oci_layout import (
    MT_DOCKER_CONFIG,
    MT_DOCKER_LAYER_GZIP,
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    OciLayout,
    build_busybox_image,
    build_multiplatform_index,
    build_small_image,
    docker_schema2_manifest,
    files_layer,
    random_layer,
    sha256_digest,
)

pytestmark = pytest.mark.e2e


def test_push_and_pull_keep_manifest_and_blob_digests(
    registry, skopeo: Skopeo, tmp_path: Path, busybox: Path
) -> None:
    layout, image = build_busybox_image(tmp_path / "src", "v1", random_bytes=3 * 1024 * 1024)
    # the builder is deterministic: the expected digests are known before any client runs
    assert build_busybox_image(tmp_path / "again", "v1", random_bytes=3 * 1024 * 1024)[1] == image
    ref = f"docker://{registry.address}/admin/e2e/skopeo/roundtrip:v1"

    digestfile = tmp_path / "pushed.digest"
    skopeo.copy(f"oci:{layout.root}:v1", ref, "--digestfile", str(digestfile))
    assert digestfile.read_text().strip() == image.digest

    # the registry serves the manifest bytes as pushed, under the digest they hash to
    raw = skopeo.inspect_raw(ref)
    assert raw == image.manifest_bytes
    assert sha256_digest(raw) == image.digest
    info = skopeo.inspect(ref)
    assert info["Digest"] == image.digest
    assert info["Layers"] == [layer.digest for layer in image.layers]
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert skopeo.inspect_raw(f"docker://{registry.address}/admin/e2e/skopeo/roundtrip@{image.digest}") == raw

    config = skopeo.inspect_raw(ref, "--config")
    assert config == image.config_bytes
    assert json.loads(config)["config"]["Cmd"] == ["/bin/busybox", "echo", "hello"]

    skopeo.copy(ref, f"oci:{tmp_path / 'pulled'}:v1")
    pulled = OciLayout.open(tmp_path / "pulled")
    assert pulled.resolve("v1").digest == image.digest
    # every blob arrived byte for byte: read_blob checks each against its digest
    assert pulled.reachable_blobs(image.digest) == layout.reachable_blobs(image.digest)
    for digest in layout.reachable_blobs(image.digest):
        assert pulled.read_blob(digest) == layout.read_blob(digest)


def test_copy_all_multiplatform_index_round_trip(registry, skopeo: Skopeo, tmp_path: Path) -> None:
    layout, index = build_multiplatform_index(tmp_path / "src", "multi", seed="skopeo-all")
    repo = f"{registry.address}/admin/e2e/skopeo/multi"

    skopeo.copy(f"oci:{layout.root}:multi", f"docker://{repo}:multi", "--all")

    raw = skopeo.inspect_raw(f"docker://{repo}:multi")
    assert raw == index.index_bytes
    served = json.loads(raw)
    assert served["mediaType"] == MT_OCI_INDEX
    assert [(m["digest"], m["platform"]["architecture"]) for m in served["manifests"]] == [
        (image.digest, image.platform["architecture"]) for image in index.images
    ]
    for image in index.images:
        assert skopeo.inspect_raw(f"docker://{repo}@{image.digest}") == image.manifest_bytes

    skopeo.copy(f"docker://{repo}:multi", f"oci:{tmp_path / 'back'}:multi", "--all")
    back = OciLayout.open(tmp_path / "back")
    assert back.resolve("multi").digest == index.digest
    assert back.reachable_blobs(index.digest) == layout.reachable_blobs(index.digest)

    # without --all, skopeo picks one platform out of the index
    arm = next(image for image in index.images if image.platform["architecture"] == "arm64")
    skopeo(
        "--override-arch",
        "arm64",
        "--override-variant",
        "v8",
        "copy",
        "--src-tls-verify=false",
        f"docker://{repo}:multi",
        f"oci:{tmp_path / 'arm'}:arm",
    )
    assert OciLayout.open(tmp_path / "arm").resolve("arm").digest == arm.digest


def test_copy_between_repositories_keeps_digests(registry, skopeo: Skopeo, tmp_path: Path) -> None:
    """Registry to registry: skopeo mounts the blobs from the source repository (or uploads them)."""
    layout, image = build_small_image(tmp_path / "src", "v1", seed="mount", size=64 * 1024)
    src = f"docker://{registry.address}/admin/e2e/skopeo/mount-src:v1"
    dst = f"docker://{registry.address}/admin/e2e/skopeo/mount-dst:copied"
    skopeo.copy(f"oci:{layout.root}:v1", src)
    skopeo.copy(src, dst)
    assert skopeo.inspect_raw(dst) == image.manifest_bytes
    skopeo.copy(dst, f"oci:{tmp_path / 'out'}:v1")
    out = OciLayout.open(tmp_path / "out")
    assert out.reachable_blobs(image.digest) == layout.reachable_blobs(image.digest)


def test_list_tags(registry, skopeo: Skopeo, tmp_path: Path) -> None:
    repo = f"{registry.address}/admin/e2e/skopeo/tags"
    layout, first = build_small_image(tmp_path / "src", "one", seed="tags-1")
    _, second = build_small_image(tmp_path / "src", "two", seed="tags-2")
    tags = ["1.0", "1.1", "2.0-rc1", "latest", "z_last", "A-upper"]
    for tag in tags[:4]:
        skopeo.copy(f"oci:{layout.root}:one", f"docker://{repo}:{tag}")
    for tag in tags[4:]:
        skopeo.copy(f"oci:{layout.root}:two", f"docker://{repo}:{tag}")

    listed = skopeo.list_tags(f"docker://{repo}")
    assert sorted(listed) == sorted(tags)
    assert len(listed) == len(set(listed))
    assert skopeo.inspect(f"docker://{repo}:latest")["Digest"] == first.digest
    assert skopeo.inspect(f"docker://{repo}:z_last")["Digest"] == second.digest

    # re-pointing a tag moves it, without a duplicate in the list
    skopeo.copy(f"oci:{layout.root}:two", f"docker://{repo}:latest")
    assert skopeo.inspect(f"docker://{repo}:latest")["Digest"] == second.digest
    assert sorted(skopeo.list_tags(f"docker://{repo}")) == sorted(tags)


def test_list_tags_of_unknown_repository_fails(registry, skopeo: Skopeo) -> None:
    with pytest.raises(CommandFailed) as failed:
        skopeo.list_tags(f"docker://{registry.address}/admin/e2e/skopeo/never-pushed")
    assert "unknown" in failed.value.stderr.lower() or "not found" in failed.value.stderr.lower()


def test_delete(registry, skopeo: Skopeo, tmp_path: Path) -> None:
    repo = f"{registry.address}/admin/e2e/skopeo/delete"
    layout, image = build_small_image(tmp_path / "src", "doomed", seed="delete-1")
    _, survivor = build_small_image(tmp_path / "src", "survivor", seed="delete-2")
    skopeo.copy(f"oci:{layout.root}:doomed", f"docker://{repo}:doomed")
    skopeo.copy(f"oci:{layout.root}:doomed", f"docker://{repo}:doomed-too")
    skopeo.copy(f"oci:{layout.root}:survivor", f"docker://{repo}:survivor")
    assert skopeo.inspect(f"docker://{repo}:doomed")["Digest"] == image.digest

    # skopeo resolves the tag and deletes the manifest by digest: every tag of it goes with it
    skopeo("delete", "--tls-verify=false", f"docker://{repo}:doomed")

    for ref in (f"docker://{repo}:doomed", f"docker://{repo}:doomed-too", f"docker://{repo}@{image.digest}"):
        with pytest.raises(CommandFailed) as failed:
            skopeo.inspect_raw(ref)
        assert "manifest unknown" in failed.value.stderr.lower(), failed.value.stderr
    assert skopeo.list_tags(f"docker://{repo}") == ["survivor"]
    assert skopeo.inspect_raw(f"docker://{repo}:survivor") == survivor.manifest_bytes

    # a second delete of what is gone fails
    with pytest.raises(CommandFailed):
        skopeo("delete", "--tls-verify=false", f"docker://{repo}@{image.digest}")

    # and the same image can be pushed again afterwards
    skopeo.copy(f"oci:{layout.root}:doomed", f"docker://{repo}:again")
    assert skopeo.inspect_raw(f"docker://{repo}:again") == image.manifest_bytes


def test_push_docker_schema2_and_pull_back(registry, skopeo: Skopeo, tmp_path: Path, busybox: Path) -> None:
    layout, image = build_busybox_image(tmp_path / "src", "v2s2", motd=b"docker schema 2\n")
    ref = f"docker://{registry.address}/admin/e2e/skopeo/schema2:v1"
    digestfile = tmp_path / "digest"
    skopeo.copy(f"oci:{layout.root}:v2s2", ref, "--format", "v2s2", "--digestfile", str(digestfile))

    raw = skopeo.inspect_raw(ref)
    pushed_digest = digestfile.read_text().strip()
    assert sha256_digest(raw) == pushed_digest
    manifest = json.loads(raw)
    assert manifest["mediaType"] == MT_DOCKER_MANIFEST
    expected = json.loads(docker_schema2_manifest(image))
    assert manifest["config"] == expected["config"]
    assert manifest["layers"] == expected["layers"]
    assert {layer["mediaType"] for layer in manifest["layers"]} == {MT_DOCKER_LAYER_GZIP}
    assert manifest["config"]["mediaType"] == MT_DOCKER_CONFIG

    info = skopeo.inspect(ref)
    assert info["Digest"] == pushed_digest
    assert info["Layers"] == [layer.digest for layer in image.layers]

    # dir: keeps the manifest exactly as served
    skopeo.copy(ref, f"dir:{tmp_path / 'dir'}")
    assert (tmp_path / "dir" / "manifest.json").read_bytes() == raw
    for layer in image.layers:
        blob = tmp_path / "dir" / layer.digest.removeprefix("sha256:")
        assert blob.read_bytes() == layout.read_blob(layer.digest)

    # pulling into an OCI layout converts the manifest back (skopeo re-serializes the config on the way:
    # its digest changes, its content does not); the layers stay the same blobs
    skopeo.copy(ref, f"oci:{tmp_path / 'oci'}:back")
    back = OciLayout.open(tmp_path / "oci")
    desc, oci_manifest = back.manifest_of("back")
    assert desc.media_type == MT_OCI_MANIFEST
    assert [layer["digest"] for layer in oci_manifest["layers"]] == [layer.digest for layer in image.layers]
    for layer in image.layers:
        assert back.read_blob(layer.digest) == layout.read_blob(layer.digest)
    config = json.loads(back.read_blob(oci_manifest["config"]["digest"]))
    original = json.loads(image.config_bytes)
    for key in ("os", "architecture", "rootfs"):
        assert config[key] == original[key]
    assert config["config"]["Cmd"] == original["config"]["Cmd"]


def test_big_layer_round_trip(registry, skopeo: Skopeo, tmp_path: Path) -> None:
    """A 24 MiB layer (many upload chunks on the way in, a long body on the way out) arrives intact."""
    layout = OciLayout.create(tmp_path / "src")
    big = random_layer(24 * 1024 * 1024, seed="big", level=1)
    image = layout.add_image([big, files_layer({"etc/small": b"small\n"})], cmd=["/bin/true"])
    layout.tag(image, "big")
    ref = f"docker://{registry.address}/admin/e2e/skopeo/big:v1"
    skopeo.copy(f"oci:{layout.root}:big", ref)
    skopeo.copy(ref, f"oci:{tmp_path / 'back'}:big")
    back = OciLayout.open(tmp_path / "back")
    assert back.resolve("big").digest == image.digest
    assert back.blob_path(big.digest).stat().st_size == big.size
    assert back.read_blob(big.digest) == big.gz


def test_sync_every_tag_of_a_repository(registry, skopeo: Skopeo, tmp_path: Path) -> None:
    """`skopeo sync` lists the tags and copies each image: what it writes is what was pushed."""
    repo = f"{registry.address}/admin/e2e/skopeo/sync"
    images = {}
    for n in range(3):
        layout, images[f"t{n}"] = build_small_image(tmp_path / "src", f"t{n}", seed=f"sync-{n}")
        skopeo.copy(f"oci:{layout.root}:t{n}", f"docker://{repo}:t{n}")
    out = tmp_path / "synced"
    skopeo("sync", "--src", "docker", "--dest", "dir", "--src-tls-verify=false", repo, str(out), timeout=180)
    # without --scoped, sync names each copy after the last path component of the repository
    assert sorted(p.name for p in out.iterdir()) == [f"sync:{tag}" for tag in sorted(images)]
    for tag, image in images.items():
        assert (out / f"sync:{tag}" / "manifest.json").read_bytes() == image.manifest_bytes, tag
