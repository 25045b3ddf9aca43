"""Build OCI image layouts on disk from scratch, with the standard library only.

Everything here is deterministic: the same inputs give byte-identical layers, configs, manifests and
indexes (tar entries sorted, mtime 0, uid/gid 0, gzip with mtime 0), so a test can compute the digests
it expects before any client touches the image.

    layout = OciLayout.create(tmp_path / "img")
    image = layout.add_image(
        [busybox_layer(), files_layer({"etc/motd": b"hello\n"})], cmd=["/bin/busybox", "echo", "hello"]
    )
    layout.tag(image, "v1")
    # skopeo copy oci:<tmp_path>/img:v1 docker://127.0.0.1:PORT/repo:v1

Layers are stored gzip-compressed (`application/vnd.oci.image.layer.v1.tar+gzip`), so skopeo pushes
them as they are instead of compressing them itself: the digests on the registry are the digests here.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_LAYOUT_VERSION = "1.0.0"

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Compact, key-sorted JSON: stable bytes for configs, manifests and indexes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# --------------------------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class Layer:
    """One image layer: the uncompressed tar (its digest is the config's diff_id) and its gzip form."""

    tar: bytes
    gz: bytes

    @property
    def diff_id(self) -> str:
        return sha256_digest(self.tar)

    @property
    def digest(self) -> str:
        return sha256_digest(self.gz)

    @property
    def size(self) -> int:
        return len(self.gz)


def deterministic_gzip(data: bytes, level: int = 6) -> bytes:
    """gzip with mtime 0 and no file name in the header: same input, same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=level, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


FileSpec = bytes | str | Path | tuple[bytes, int]
"""Content of a file in a layer: bytes (mode 0644), a host path (mode taken from it), or (bytes, mode)."""


def make_tar(files: Mapping[str, FileSpec]) -> bytes:
    """A deterministic tar of `files` ({path in image: content}), with parent directories added.

    Entries are sorted, owned by 0:0, dated 1970-01-01; paths are relative ("bin/busybox").
    """
    entries: dict[str, tuple[bytes, int]] = {}
    for raw_path, spec in files.items():
        path = raw_path.strip("/")
        if not path or ".." in path.split("/"):
            raise ValueError(f"bad path in layer: {raw_path!r}")
        if isinstance(spec, tuple):
            content, mode = spec
        elif isinstance(spec, bytes):
            content, mode = spec, 0o644
        else:
            host = Path(spec)
            content, mode = host.read_bytes(), host.stat().st_mode & 0o7777
        entries[path] = (content, mode)

    dirs: set[str] = set()
    for path in entries:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs | set(entries)):
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if name in entries:
                content, mode = entries[name]
                info.type = tarfile.REGTYPE
                info.mode = mode
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
    return buf.getvalue()


def files_layer(files: Mapping[str, FileSpec], *, level: int = 6) -> Layer:
    tar = make_tar(files)
    return Layer(tar, deterministic_gzip(tar, level))


def random_layer(
    size: int = 4096, *, seed: int | str = 0, name: str = "data/random.bin", level: int = 6
) -> Layer:
    """A layer with one file of `size` pseudo-random bytes: a distinct digest for every seed.

    Random bytes do not compress: for big layers pass level=1, which is as small and much quicker.
    """
    rng = random.Random(f"shipyard-test-layer:{seed}")
    return files_layer({name: rng.randbytes(size)}, level=level)


def find_busybox() -> Path | None:
    """The host's static busybox (Debian's busybox-static installs /bin/busybox)."""
    for candidate in BUSYBOX_PATHS:
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def busybox_layer(extra_files: Mapping[str, FileSpec] | None = None) -> Layer:
    """A layer with /bin/busybox (from the host, mode 0755) plus `extra_files`.

    The host binary must be static (busybox-static): the image has no libc.
    """
    busybox = find_busybox()
    if busybox is None:
        raise FileNotFoundError("no busybox binary on this host (install busybox-static)")
    files: dict[str, FileSpec] = {"bin/busybox": (busybox.read_bytes(), 0o755)}
    files.update(extra_files or {})
    return files_layer(files)


# --------------------------------------------------------------------------------------------- descriptors


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            obj["platform"] = dict(self.platform)
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return obj

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Descriptor:
        return cls(
            media_type=obj["mediaType"],
            digest=obj["digest"],
            size=int(obj["size"]),
            platform=dict(obj["platform"]) if obj.get("platform") else None,
            annotations=dict(obj["annotations"]) if obj.get("annotations") else None,
        )

    def with_platform(self, platform: Mapping[str, str] | None) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, dict(platform) if platform else None)


@dataclass(frozen=True)
class Image:
    """An image manifest written into a layout, with what went into it."""

    manifest: Descriptor
    manifest_bytes: bytes
    config: Descriptor
    config_bytes: bytes
    layers: tuple[Descriptor, ...]
    platform: dict[str, str]

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def blob_digests(self) -> list[str]:
        """Config and layer digests, in manifest order."""
        return [self.config.digest, *(layer.digest for layer in self.layers)]


@dataclass(frozen=True)
class Index:
    """An image index written into a layout, with its child images."""

    descriptor: Descriptor
    index_bytes: bytes
    images: tuple[Image, ...]

    @property
    def digest(self) -> str:
        return self.descriptor.digest


def image_config(
    diff_ids: Iterable[str],
    *,
    os_name: str = "linux",
    architecture: str = "amd64",
    variant: str | None = None,
    cmd: list[str] | None = None,
    entrypoint: list[str] | None = None,
    env: list[str] | None = None,
    labels: Mapping[str, str] | None = None,
    created: str = "1970-01-01T00:00:00Z",
) -> dict[str, Any]:
    config: dict[str, Any] = {"Env": env if env is not None else ["PATH=/bin"]}
    if cmd is not None:
        config["Cmd"] = cmd
    if entrypoint is not None:
        config["Entrypoint"] = entrypoint
    if labels:
        config["Labels"] = dict(labels)
    obj: dict[str, Any] = {
        "created": created,
        "architecture": architecture,
        "os": os_name,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": created, "created_by": "shipyard tests (tests/support/oci_layout.py)"}],
    }
    if variant:
        obj["variant"] = variant
    return obj


# --------------------------------------------------------------------------------------------- layout


@dataclass
class OciLayout:
    """An OCI image layout directory (oci-layout, index.json, blobs/<alg>/<hex>)."""

    root: Path
    _manifests: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @classmethod
    def create(cls, root: Path) -> OciLayout:
        root.mkdir(parents=True, exist_ok=True)
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        layout = cls(root)
        layout._write_index()
        return layout

    @classmethod
    def open(cls, root: Path) -> OciLayout:
        """An existing layout, e.g. one that `skopeo copy ... oci:DIR:tag` wrote."""
        layout = cls(root)
        layout._manifests = list(layout.index_json().get("manifests", []))
        return layout

    # -- blobs

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        return self.root / "blobs" / algorithm / hexpart

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        data = self.blob_path(digest).read_bytes()
        algorithm = digest.partition(":")[0]
        actual = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        if actual != digest:
            raise ValueError(f"blob {digest} in {self.root} hashes to {actual}")
        return data

    def write_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return Descriptor(media_type, digest, len(data))

    # -- index.json

    def index_json(self) -> dict[str, Any]:
        return json.loads((self.root / "index.json").read_text())

    def _write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": self._manifests}
        (self.root / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True))

    def tag(self, target: Image | Index | Descriptor, tag: str) -> None:
        """Name `target` in index.json (annotation org.opencontainers.image.ref.name), replacing the tag."""
        if isinstance(target, Image):
            desc = target.manifest
        elif isinstance(target, Index):
            desc = target.descriptor
        else:
            desc = target
        entry = desc.to_json()
        entry.pop("platform", None)
        entry["annotations"] = {ANNOTATION_REF_NAME: tag}
        self._manifests = [
            m for m in self._manifests if (m.get("annotations") or {}).get(ANNOTATION_REF_NAME) != tag
        ]
        self._manifests.append(entry)
        self._write_index()

    def tags(self) -> dict[str, Descriptor]:
        """{tag: descriptor} from index.json."""
        out: dict[str, Descriptor] = {}
        for entry in self.index_json().get("manifests", []):
            name = (entry.get("annotations") or {}).get(ANNOTATION_REF_NAME)
            if name:
                out[name] = Descriptor.from_json(entry)
        return out

    def resolve(self, tag: str) -> Descriptor:
        try:
            return self.tags()[tag]
        except KeyError:
            raise KeyError(f"no tag {tag!r} in {self.root}/index.json (has {sorted(self.tags())})") from None

    # -- images

    def add_image(
        self,
        layers: Iterable[Layer],
        *,
        os_name: str = "linux",
        architecture: str = "amd64",
        variant: str | None = None,
        cmd: list[str] | None = None,
        entrypoint: list[str] | None = None,
        env: list[str] | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> Image:
        """Write layers, config and an OCI image manifest; the manifest is not tagged (see `tag`)."""
        layers = list(layers)
        layer_descs = tuple(self.write_blob(layer.gz, MT_OCI_LAYER_GZIP) for layer in layers)
        config_obj = image_config(
            [layer.diff_id for layer in layers],
            os_name=os_name,
            architecture=architecture,
            variant=variant,
            cmd=cmd,
            entrypoint=entrypoint,
            env=env,
            labels=labels,
        )
        config_bytes = canonical_json(config_obj)
        config_desc = self.write_blob(config_bytes, MT_OCI_CONFIG)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [d.to_json() for d in layer_descs],
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        manifest_bytes = canonical_json(manifest)
        platform = {"architecture": architecture, "os": os_name}
        if variant:
            platform["variant"] = variant
        manifest_desc = self.write_blob(manifest_bytes, MT_OCI_MANIFEST).with_platform(platform)
        return Image(manifest_desc, manifest_bytes, config_desc, config_bytes, layer_descs, platform)

    def add_index(self, images: Iterable[Image], *, annotations: Mapping[str, str] | None = None) -> Index:
        """Write an OCI image index over `images` (each with its platform); not tagged (see `tag`)."""
        images = tuple(images)
        index: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": [image.manifest.to_json() for image in images],
        }
        if annotations:
            index["annotations"] = dict(annotations)
        index_bytes = canonical_json(index)
        desc = self.write_blob(index_bytes, MT_OCI_INDEX)
        return Index(desc, index_bytes, images)

    # -- reading back

    def manifest_of(self, tag_or_digest: str) -> tuple[Descriptor, dict[str, Any]]:
        desc = (
            self.resolve(tag_or_digest)
            if not tag_or_digest.startswith("sha256:")
            else Descriptor(MT_OCI_MANIFEST, tag_or_digest, 0)
        )
        return desc, json.loads(self.read_blob(desc.digest))

    def reachable_blobs(self, digest: str) -> list[str]:
        """Every digest reachable from the manifest or index `digest` (itself first), depth first.

        Raises if a referenced blob is missing from the layout or does not hash to its digest.
        """
        seen: list[str] = []

        def walk(d: str) -> None:
            if d in seen:
                return
            seen.append(d)
            obj = json.loads(self.read_blob(d))
            for child in obj.get("manifests", []):
                walk(child["digest"])
            if "config" in obj:
                cfg = obj["config"]["digest"]
                self.read_blob(cfg)
                if cfg not in seen:
                    seen.append(cfg)
            for layer in obj.get("layers", []):
                self.read_blob(layer["digest"])
                if layer["digest"] not in seen:
                    seen.append(layer["digest"])

        walk(digest)
        return seen


# --------------------------------------------------------------------------------------------- shortcuts


PLATFORMS: tuple[dict[str, str], ...] = (
    {"os": "linux", "architecture": "amd64"},
    {"os": "linux", "architecture": "arm64", "variant": "v8"},
)


def build_busybox_image(
    root: Path, tag: str = "latest", *, motd: bytes = b"hello from shipyard\n", random_bytes: int = 0
) -> tuple[OciLayout, Image]:
    """A runnable linux/amd64 image: busybox + /etc/motd (+ optionally a random layer), Cmd echo hello."""
    layout = OciLayout.create(root)
    layers = [busybox_layer({"etc/motd": motd})]
    if random_bytes:
        layers.append(random_layer(random_bytes, seed=f"{tag}:{motd!r}", level=1))
    image = layout.add_image(layers, cmd=["/bin/busybox", "echo", "hello"])
    layout.tag(image, tag)
    return layout, image


def build_small_image(
    root: Path, tag: str = "latest", *, seed: int | str = 0, size: int = 2048, architecture: str = "amd64"
) -> tuple[OciLayout, Image]:
    """A tiny (not runnable) image of two random-file layers: quick to push many of."""
    layout = OciLayout.create(root) if not (root / "oci-layout").exists() else OciLayout.open(root)
    image = layout.add_image(
        [random_layer(size, seed=f"{seed}:a"), random_layer(size // 2 + 1, seed=f"{seed}:b", name="data/b")],
        architecture=architecture,
        cmd=["/bin/true"],
    )
    layout.tag(image, tag)
    return layout, image


def build_multiplatform_index(
    root: Path,
    tag: str = "latest",
    *,
    platforms: Iterable[Mapping[str, str]] = PLATFORMS,
    seed: int | str = 0,
    size: int = 2048,
) -> tuple[OciLayout, Index]:
    """An OCI index with one small image per platform; every platform has its own distinct layer."""
    layout = OciLayout.create(root) if not (root / "oci-layout").exists() else OciLayout.open(root)
    images = []
    for platform in platforms:
        arch = platform["architecture"]
        images.append(
            layout.add_image(
                [
                    random_layer(size, seed=f"{seed}:{arch}"),
                    files_layer({"etc/arch": f"{platform['os']}/{arch}\n".encode()}),
                ],
                os_name=platform["os"],
                architecture=arch,
                variant=platform.get("variant"),
                cmd=["/bin/busybox", "uname", "-m"],
            )
        )
    index = layout.add_index(images)
    layout.tag(index, tag)
    return layout, index


def docker_schema2_manifest(image: Image) -> bytes:
    """The Docker schema 2 manifest over the same config and layer blobs as the OCI `image`.

    What a registry holds after `skopeo copy --format v2s2` of that image need not be these exact bytes
    (skopeo serializes on its own), but it points at the same digests with these media types.
    """
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_DOCKER_MANIFEST,
        "config": {"mediaType": MT_DOCKER_CONFIG, "digest": image.config.digest, "size": image.config.size},
        "layers": [
            {"mediaType": MT_DOCKER_LAYER_GZIP, "digest": d.digest, "size": d.size} for d in image.layers
        ],
    }
    return json.dumps(manifest, indent=3).encode()
