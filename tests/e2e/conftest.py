"""Fixtures for end-to-end tests with real container clients (skopeo, podman, buildah, docker).

`registry` is a real Shipyard server (`python -m shipyard serve`) on a free loopback port. With
SHIPYARD_E2E_AGAINST_REFERENCE=1 it is CNCF Distribution (Debian's `docker-registry`) instead, with a
config of its own (filesystem storage in a temp dir, deletes enabled): the same tests then show how the
reference registry behaves, for comparison.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import ContainerStorage, Skopeo
from tests.support.dockerd import DOCKER_CLIENT, DockerDaemon, find_dockerd, start_dockerd
from tests.support.oci_layout import find_busybox
from tests.support.server import free_port, start_server
from tests.support.tools import in_ci, require_root, require_tool

AGAINST_REFERENCE_ENV = "SHIPYARD_E2E_AGAINST_REFERENCE"
LOG_TAIL = 6000


def against_reference() -> bool:
    return os.environ.get(AGAINST_REFERENCE_ENV, "").lower() in {"1", "true", "yes"}


@dataclass
class ReferenceRegistry:
    """CNCF Distribution (`docker-registry serve CONFIG`) with the interface of ServerProcess."""

    host: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


REFERENCE_CONFIG = """\
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {host}:{port}
  secret: shipyard-e2e-reference
  headers:
    X-Content-Type-Options: [nosniff]
"""


def start_reference_registry(data_dir: Path, *, host: str = "127.0.0.1", timeout: float = 30.0):
    binary = require_tool("docker-registry")["docker-registry"]
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir.parent / f"reference-{port}.yml"
    config.write_text(REFERENCE_CONFIG.format(root=data_dir, host=host, port=port))
    log_path = data_dir.parent / f"reference-{port}.log"
    # Distribution reads every REGISTRY_* variable as a config override (REGISTRY_AUTH_FILE too): drop them
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    server = ReferenceRegistry(host, port, data_dir, process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.url}/v2/", timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"docker-registry did not answer within {timeout}s:\n{server.log()}")


def pytest_report_header() -> str:
    return f"e2e registry: {'CNCF Distribution (reference)' if against_reference() else 'shipyard'}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """A running registry for this module: Shipyard, or the reference one with the switch set."""
    base = tmp_path_factory.mktemp("registry")
    server = start_reference_registry(base / "data") if against_reference() else start_server(base / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """A failed test's report shows the end of the registry's log: the server side of the failure."""
    report = yield
    if report.failed and report.when == "call":
        server = getattr(item, "funcargs", {}).get("registry")
        if server is not None:
            try:
                tail = server.log()[-LOG_TAIL:]
            except OSError as exc:
                tail = f"(no log: {exc})"
            report.sections.append(("registry log (tail)", tail))
    return report


@pytest.fixture
def busybox() -> Path:
    """The host's busybox binary; it must be static (Debian's busybox-static): the images have no libc."""
    path = find_busybox()
    if path is None:
        path = Path(require_tool("busybox")["busybox"])
    return path


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    binary = require_tool("skopeo")["skopeo"]
    return Skopeo(binary, tmp_path / "skopeo-home")


@pytest.fixture
def storage() -> Iterator[ContainerStorage]:
    """A private containers-storage for podman/buildah (vfs: no mounts to leak), removed afterwards.

    Kept out of pytest's tmp_path: pytest keeps the last temp dirs, and vfs copies of images add up.
    """
    require_root()
    base = Path(tempfile.mkdtemp(prefix="sy-storage-", dir="/tmp"))
    store = ContainerStorage(base)
    try:
        yield store
    finally:
        store.cleanup()


@pytest.fixture(scope="module")
def dockerd() -> Iterator[DockerDaemon]:
    """A private dockerd for this module (overlay2, else vfs), stopped and removed at the end."""
    require_root()
    require_tool("dockerd")
    if not Path(DOCKER_CLIENT).exists():
        # /usr/local/bin/docker on these machines is a different client: do not fall back to it
        reason = f"Debian's docker client ({DOCKER_CLIENT}, package docker.io) is not installed"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    assert find_dockerd() is not None
    # short path: containerd's socket lives below it, and unix socket paths are limited to 107 bytes
    base = Path(tempfile.mkdtemp(prefix="sy-dockerd-", dir="/tmp"))
    try:
        daemon = start_dockerd(base)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
