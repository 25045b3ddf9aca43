"""A small OCI distribution client over http.client, for setting up data and for chunked uploads.

One keep-alive connection per thread; request bodies from files go out with sendfile(2), so the client
costs little next to the servers it measures.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_ACCEPT = f"{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    def __init__(self, url: str, authorization: str | None = None) -> None:
        self.url = url.rstrip("/")
        # sent with every request when set (a registry with authentication on: "Bearer <token>")
        self.authorization = authorization
        parts = urlsplit(self.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._local = threading.local()

    # -- transport -------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
            self._local.conn = conn
        return conn

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        if self.authorization is None:
            return headers or {}
        return {"Authorization": self.authorization, **(headers or {})}

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _path(self, url_or_path: str) -> str:
        parts = urlsplit(urljoin(self.url + "/", url_or_path))
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, self._path(path), body=body, headers=self._headers(headers))
                response = conn.getresponse()
                data = response.read()
            except (ConnectionError, http.client.HTTPException):
                # a keep-alive connection the server closed: one retry on a fresh one
                self.close()
                if attempt == 2:
                    raise
                continue
            if response.getheader("connection", "").lower() == "close":
                self.close()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        raise AssertionError("unreachable")

    def send_file(
        self, method: str, path: str, file: BinaryIO, offset: int, length: int, headers: dict[str, str]
    ) -> Response:
        """A request whose body is `length` bytes of `file` from `offset`, sent with sendfile(2)."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.putrequest(method, self._path(path), skip_accept_encoding=True)
                for key, value in self._headers({"Content-Length": str(length), **headers}).items():
                    conn.putheader(key, value)
                conn.endheaders()
            except (ConnectionError, http.client.HTTPException):
                # a keep-alive connection the server closed before we sent anything: one retry
                self.close()
                if attempt == 2:
                    raise
                continue
            sock = conn.sock
            assert sock is not None
            if length and sock.sendfile(file, offset, length) != length:
                raise RegistryError("connection closed while sending the body")
            response = conn.getresponse()
            data = response.read()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        raise AssertionError("unreachable")

    @staticmethod
    def _expect(response: Response, *statuses: int, what: str) -> Response:
        if response.status not in statuses:
            raise RegistryError(f"{what}: HTTP {response.status} {response.body[:300]!r}")
        return response

    # -- blobs ---------------------------------------------------------------------------------

    def start_upload(self, repo: str) -> str:
        response = self._expect(
            self.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"}),
            202,
            what=f"start upload in {repo}",
        )
        return urljoin(self.url + "/", response.headers["location"])

    @staticmethod
    def with_digest(location: str, digest: str) -> str:
        return f"{location}{'&' if '?' in location else '?'}digest={digest}"

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256_digest(data)
        if self.request("HEAD", f"/v2/{repo}/blobs/{digest}").status == 200:
            return digest
        location = self.start_upload(repo)
        self._expect(
            self.request(
                "PUT",
                self.with_digest(location, digest),
                data,
                {"Content-Type": "application/octet-stream"},
            ),
            201,
            what=f"upload blob to {repo}",
        )
        return digest

    def upload_file(
        self, repo: str, path: Path, digest: str, *, chunk: int | None = None, finish: bool = True
    ) -> str:
        """Upload a file: one PUT with the body, or PATCHes of `chunk` bytes with Content-Range
        followed by an empty PUT ?digest=. Returns the upload location if not finished."""
        size = path.stat().st_size
        location = self.start_upload(repo)
        with path.open("rb") as file:
            if chunk is None:
                response = self.send_file(
                    "PUT",
                    self.with_digest(location, digest),
                    file,
                    0,
                    size,
                    {"Content-Type": "application/octet-stream"},
                )
                self._expect(response, 201, what=f"monolithic upload to {repo}")
                return location
            offset = 0
            while offset < size:
                length = min(chunk, size - offset)
                response = self.send_file(
                    "PATCH",
                    location,
                    file,
                    offset,
                    length,
                    {
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + length - 1}",
                    },
                )
                self._expect(response, 202, what=f"PATCH chunk at {offset} to {repo}")
                location = urljoin(self.url + "/", response.headers["location"])
                offset += length
        if finish:
            self._expect(
                self.request("PUT", self.with_digest(location, digest), headers={"Content-Length": "0"}),
                201,
                what=f"finish chunked upload to {repo}",
            )
        return location

    def mount(self, repo: str, digest: str, source: str) -> None:
        response = self.request(
            "POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={source}", headers={"Content-Length": "0"}
        )
        if response.status == 202:  # not mounted: the registry opened an upload instead
            self.request("DELETE", response.headers["location"])
            raise RegistryError(f"mount of {digest} from {source} into {repo} was refused")
        self._expect(response, 201, what=f"mount into {repo}")

    def delete_blob(self, repo: str, digest: str) -> None:
        self._expect(
            self.request("DELETE", f"/v2/{repo}/blobs/{digest}"), 202, 404, what=f"delete blob in {repo}"
        )

    # -- manifests -------------------------------------------------------------------------

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
        response = self._expect(
            self.request("PUT", f"/v2/{repo}/manifests/{reference}", body, {"Content-Type": media_type}),
            201,
            what=f"put manifest {repo}:{reference}",
        )
        return response.headers.get("docker-content-digest", sha256_digest(body))

    def get_json(self, path: str) -> dict[str, Any]:
        response = self._expect(self.request("GET", path), 200, what=f"GET {path}")
        data: dict[str, Any] = json.loads(response.body)
        return data


@dataclass(frozen=True)
class ImageBlobs:
    """A small image: its config and layer blobs and its manifest, identical on every registry."""

    config: bytes
    layers: tuple[bytes, ...]
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def blob_digests(self) -> list[str]:
        return [sha256_digest(self.config), *(sha256_digest(layer) for layer in self.layers)]

    def push(self, registry: Registry, repo: str, tag: str) -> str:
        registry.push_blob(repo, self.config)
        for layer in self.layers:
            registry.push_blob(repo, layer)
        return registry.put_manifest(repo, tag, self.manifest)

    def mount_and_tag(self, registry: Registry, repo: str, tag: str, source: str) -> str:
        for digest in self.blob_digests:
            registry.mount(repo, digest, source)
        return registry.put_manifest(repo, tag, self.manifest)


def make_image(layers: int, seed: str, layer_bytes: int = 1024) -> ImageBlobs:
    """An image whose manifest is a realistic ~2 KB JSON with `layers` layers."""
    import random

    rng = random.Random(f"shipyard-bench:{seed}")
    layer_blobs = tuple(rng.randbytes(layer_bytes) for _ in range(layers))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": [sha256_digest(rng.randbytes(32)) for _ in range(layers)],
            },
        },
        sort_keys=True,
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": sha256_digest(blob), "size": len(blob)} for blob in layer_blobs
        ],
        "annotations": {"org.opencontainers.image.title": f"shipyard bench image {seed}"},
    }
    return ImageBlobs(config, layer_blobs, json.dumps(manifest, indent=3).encode())


def basic_authorization(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def fetch_token(url: str, user: str, password: str, scope: str) -> str:
    """A registry token from Shipyard's /token endpoint (Docker token flow, Basic credentials)."""
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"service": "shipyard", "scope": scope})
    request = urllib.request.Request(f"{url.rstrip('/')}/token?{query}")
    request.add_header("Authorization", basic_authorization(user, password))
    with urllib.request.urlopen(request, timeout=30) as response:
        token = json.loads(response.read())["token"]
    if not isinstance(token, str):
        raise RegistryError("the token endpoint returned no token")
    return token
