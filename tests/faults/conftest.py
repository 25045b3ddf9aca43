"""Fault tests: real `shipyard serve` processes that lose clients mid-request or are SIGKILLed.

Helpers here speak HTTP over raw sockets, so a test decides exactly how many body bytes reach the server
before the connection goes away.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.server import ServerProcess, start_server

DATABASES = ["sqlite", "postgresql"]
MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def payload(seed: str, size: int) -> bytes:
    """Deterministic, incompressible bytes (fast: SHAKE-256 stretched from the seed)."""
    return hashlib.shake_256(seed.encode()).digest(size)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class FaultRegistry:
    """A real server on a data directory and database that outlive it (restart = a new process)."""

    data_dir: Path
    database_url: str
    server: ServerProcess | None = None
    client: httpx.Client | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"SHIPYARD_DATABASE_URL": self.database_url}

    @property
    def http(self) -> httpx.Client:
        assert self.client is not None, "server not running"
        return self.client

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None, "server not running"
        return self.server.host, self.server.port

    def start(self) -> None:
        self.server = start_server(self.data_dir, extra_env=self.env)
        self.logs.append(self.server.log_path)
        self.client = httpx.Client(base_url=self.server.url, timeout=60)

    def _close_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def kill(self) -> None:
        """SIGKILL the server's whole process group: a crash."""
        assert self.server is not None
        self.server.kill()
        self._close_client()

    def stop(self) -> None:
        self._close_client()
        if self.server is not None:
            self.server.stop()

    def log(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs if path.exists())

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        wait_for(lambda: text in self.log(), timeout, what=f"the server to log {text!r}")

    def wait_went_away(self, method: str, path: str) -> None:
        """Until the server has given up on a request whose client disconnected (it logs that last)."""
        self.wait_for_log(f"client went away during {method} {path.split('?')[0]}\n")

    def purge_uploads(self, older_than: int = 0) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
        env.update(self.env)
        cmd = [sys.executable, "-m", "shipyard", "purge-uploads", "--data-dir", str(self.data_dir)]
        return subprocess.run(
            [*cmd, "--older-than", str(older_than)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def staged_size(registry: FaultRegistry, upload_id: str) -> int:
    """Bytes in an upload's staging file (-1 when there is none, or it went away while looking: the
    churn's uploads complete all along)."""
    try:
        return (registry.data_dir / "uploads" / upload_id).stat().st_size
    except FileNotFoundError:
        return -1


def new_database_url(database: str, request: pytest.FixtureRequest, data_dir: Path) -> str:
    if database == "sqlite":
        return f"sqlite:///{data_dir / 'shipyard.db'}"
    return str(request.getfixturevalue("postgres").create_database("faults"))


@pytest.fixture
def new_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], FaultRegistry]]:
    """Build a registry on a fresh data dir and database ("sqlite" or "postgresql"); not started."""
    made: list[FaultRegistry] = []

    def factory(database: str) -> FaultRegistry:
        data_dir = tmp_path / f"data-{database}-{len(made)}"
        data_dir.mkdir()
        registry = FaultRegistry(data_dir, new_database_url(database, request, data_dir))
        made.append(registry)
        return registry

    yield factory
    for registry in made:
        registry.stop()


@pytest.fixture(scope="module", params=DATABASES)
def running_registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultRegistry]:
    """One server per database for a whole module."""
    data_dir = tmp_path_factory.mktemp(f"faults-{request.param}") / "data"
    data_dir.mkdir()
    registry = FaultRegistry(data_dir, new_database_url(request.param, request, data_dir))
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


class RawRequest:
    """One HTTP/1.1 request written by hand: headers first, then as much of the body as the test likes."""

    def __init__(
        self, address: tuple[str, int], method: str, target: str, headers: dict[str, str], timeout: float = 30
    ) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sent = 0
        host, port = address
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def __enter__(self) -> RawRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def close(self, reset: bool = False) -> None:
        """Close the connection: an orderly FIN, or with `reset` an RST (SO_LINGER 0)."""
        if self.sock.fileno() < 0:
            return
        if reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """Read one response (status, headers, body) after the whole body was sent."""
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed before a response: {buffer!r}")
            buffer += chunk
        head, _, body = buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(status_line.split()[1]), headers, body


def path_of(location: str) -> str:
    """The path (and query) of a Location header, absolute or not."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def start_session(client: httpx.Client, name: str) -> str:
    response = client.post(f"/v2/{name}/blobs/uploads/")
    assert response.status_code == 202, response.text
    return path_of(response.headers["location"])


def upload_range(client: httpx.Client, location: str) -> str:
    """The Range header an upload's status (GET on its URL) reports."""
    response = client.get(location)
    assert response.status_code == 204, f"{response.status_code} {response.text}"
    return response.headers["range"]


def range_header(size: int) -> str:
    """What the registry answers as Range for an upload holding `size` bytes."""
    return f"0-{max(size - 1, 0)}"


def patch_chunk(client: httpx.Client, location: str, start: int, data: bytes) -> str:
    response = client.patch(
        location,
        content=data,
        headers={
            "content-type": "application/octet-stream",
            "content-range": f"{start}-{start + len(data) - 1}",
        },
    )
    assert response.status_code == 202, f"{response.status_code} {response.text}"
    return path_of(response.headers["location"])


def finish(client: httpx.Client, location: str, digest: str, data: bytes = b"") -> httpx.Response:
    separator = "&" if "?" in location else "?"
    return client.put(f"{location}{separator}digest={digest}", content=data)


def push_blob(client: httpx.Client, name: str, data: bytes) -> str:
    digest = sha256(data)
    response = client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, f"{response.status_code} {response.text}"
    assert response.headers["docker-content-digest"] == digest
    return digest


def assert_blob(client: httpx.Client, name: str, data: bytes) -> None:
    digest = sha256(data)
    head = client.head(f"/v2/{name}/blobs/{digest}")
    assert head.status_code == 200, f"HEAD {name}@{digest}: {head.status_code}"
    assert int(head.headers["content-length"]) == len(data)
    try:
        got = client.get(f"/v2/{name}/blobs/{digest}")
    except httpx.RemoteProtocolError as exc:  # e.g. fewer bytes on disk than the Content-Length it sent
        raise AssertionError(f"GET {name}@{digest}: the response broke off: {exc}") from exc
    assert got.status_code == 200, f"GET {name}@{digest}: {got.status_code}"
    assert got.content == data, f"GET {name}@{digest}: {len(got.content)} bytes differ from what was pushed"


def assert_no_blob(client: httpx.Client, name: str, digest: str) -> None:
    response = client.head(f"/v2/{name}/blobs/{digest}")
    assert response.status_code == 404, f"HEAD {name}@{digest}: {response.status_code}, expected 404"
