"""Fixtures for end-to-end tests with real container clients (skopeo, podman, buildah, docker).

`registry` is a real Shipyard server (`python -m shipyard serve`) on a free loopback port, with
authentication ON as users run it: the account `admin` with the superuser `admin` (password
`ADMIN.password`). Every client logs in as the real ones do (`skopeo login`, `podman login`, `buildah
login`, `docker login`) and pushes below `admin/`. `accounts` creates more accounts, users and access
keys through the service layer, in the server's own database.

With SHIPYARD_E2E_AGAINST_REFERENCE=1 `registry` is CNCF Distribution (Debian's `docker-registry`)
instead, without authentication (logins to it succeed and change nothing), with a config of its own
(filesystem storage in a temp dir, deletes enabled): the same tests then show how the reference registry
behaves, for comparison. Tests of Shipyard's own authentication skip there.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipyard.app import build
from shipyard.auth.credentials import hash_secret, new_key_id, new_secret
from shipyard.config import Settings
from shipyard.db.accounts import AccountStore
from tests.support.cli import ContainerStorage, Credentials, Skopeo
from tests.support.dockerd import DOCKER_CLIENT, DockerDaemon, find_dockerd, start_dockerd
from tests.support.oci_layout import find_busybox
from tests.support.server import ServerProcess, free_port, start_server
from tests.support.tools import in_ci, require_root, require_tool

AGAINST_REFERENCE_ENV = "SHIPYARD_E2E_AGAINST_REFERENCE"
LOG_TAIL = 6000
# the superuser `shipyard serve` creates on its first start (SHIPYARD_ADMIN_PASSWORD)
ADMIN = Credentials("admin", "e2e-admin-Pa55word")
LOGIN_PASSWORD_USER = "shipyard"


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


def needs_shipyard_auth() -> None:
    if against_reference():
        pytest.skip("tests Shipyard's own authentication: the reference registry runs without")


def start_shipyard(data_dir: Path, **options) -> ServerProcess:
    """`shipyard serve` with authentication on and ADMIN as its superuser."""
    extra_env = {"SHIPYARD_ADMIN_PASSWORD": ADMIN.password, **options.pop("extra_env", {})}
    return start_server(data_dir, auth=True, extra_env=extra_env, **options)


class Accounts:
    """Accounts, users and access keys, written through the service layer into a server's database
    (the server reads principals and repository settings from the database on every login and token)."""

    def __init__(self, data_dir: Path) -> None:
        self.app = build(Settings(data_dir=data_dir, insecure_no_auth=False))
        assert self.app.identity is not None
        self.store: AccountStore = self.app.identity.accounts

    def close(self) -> None:
        self.app.close()

    def account(self, name: str) -> str:
        if self.store.get_account(name) is None:
            self.store.create_account(name)
        return name

    def user(
        self, account: str, login: str, role: str = "writer", password: str | None = None
    ) -> Credentials:
        self.account(account)
        password = password or new_secret(18)
        self.store.create_principal(
            account, kind="user", login=login, role=role, secret_hash=hash_secret(password)
        )
        return Credentials(login, password)

    def access_key(self, owner: str, role: str | None = None) -> Credentials:
        """An access key of user `owner` (same account, the owner's role unless `role`)."""
        found = self.store.get_principal(owner)
        assert found is not None, owner
        principal = found[0]
        key_id, secret = new_key_id(), new_secret()
        self.store.create_principal(
            principal.account,
            kind="access_key",
            login=key_id,
            role=role or principal.role,
            secret_hash=hash_secret(secret),
            owner_id=principal.id,
        )
        return Credentials(key_id, secret)

    def set_visibility(self, repository: str, visibility: str) -> None:
        self.store.set_visibility(repository, visibility)


def login_password(url: str, creds: Credentials, *, cafile: Path | None = None) -> Credentials:
    """POST /api/v1/auth/login-password with Basic `creds`: the 12-hour password for user `shipyard`."""
    basic = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    request = urllib.request.Request(
        f"{url}/api/v1/auth/login-password", method="POST", headers={"Authorization": f"Basic {basic}"}
    )
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        assert response.status == 200
        body = json.loads(response.read())
    assert body["username"] == LOGIN_PASSWORD_USER, body
    expires = datetime.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert expires.timestamp() > time.time() + 3600, body
    return Credentials(body["username"], body["password"])


def pytest_report_header() -> str:
    return f"e2e registry: {'CNCF Distribution (reference)' if against_reference() else 'shipyard'}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """A running registry for this module: Shipyard with authentication on (superuser ADMIN), or the
    reference one with the switch set."""
    base = tmp_path_factory.mktemp("registry")
    server = start_reference_registry(base / "data") if against_reference() else start_shipyard(base / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def accounts(registry) -> Iterator[Accounts]:
    """Creates accounts, users and access keys in the `registry` server's database."""
    needs_shipyard_auth()
    store = Accounts(registry.data_dir)
    try:
        yield store
    finally:
        store.close()


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
def new_skopeo(tmp_path: Path):
    """Makes skopeo clients, each with its own home (auth file, registries.conf): none logged in."""
    binary = require_tool("skopeo")["skopeo"]
    count = 0

    def make() -> Skopeo:
        nonlocal count
        count += 1
        return Skopeo(binary, tmp_path / f"skopeo-home-{count}")

    return make


@pytest.fixture
def skopeo(registry, new_skopeo) -> Skopeo:
    """skopeo logged in to `registry` as ADMIN (`skopeo login --authfile`)."""
    client = new_skopeo()
    client.login(registry.address, ADMIN)
    return client


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
