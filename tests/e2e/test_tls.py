"""HTTPS: `shipyard serve --tls-cert --tls-key` with a certificate from a test CA (issue_server_certificate);
skopeo, podman and docker push and pull over it with credentials and verification on, and a client
without the CA fails on the certificate.

The server listens on the host side of a veth pair (10.213.N.1, the peer in a network namespace of this
module), not on loopback: dockerd treats 127.0.0.0/8 (and any name resolving there) as an insecure
registry and then skips certificate verification, so only a non-loopback address tests docker's TLS.
dockerd reads a registry's CA from /etc/docker/certs.d/<host:port>/ca.crt (there is no other place for a
rootful daemon): the docker test creates that directory for the server's unique port and removes it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipyard.auth.certs import IssuedCertificates, issue_server_certificate
from tests.e2e.conftest import ADMIN, Accounts, login_password, needs_shipyard_auth, start_shipyard
from tests.support.cli import ContainerStorage, Credentials, Skopeo
from tests.support.dockerd import DockerDaemon
from tests.support.oci_layout import OciLayout, build_small_image
from tests.support.server import ServerProcess
from tests.support.tools import require_root, require_tool

pytestmark = pytest.mark.e2e

DOCKER_CERTS_D = Path("/etc/docker/certs.d")
CERT_ERRORS = ("x509", "certificate signed by unknown authority", "certificate verify failed")


@dataclass
class TlsRegistry:
    server: ServerProcess
    certs: IssuedCertificates
    cert_dir: Path  # a containers-style --cert-dir: ca.crt only

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def url(self) -> str:
        return self.server.url

    def log(self) -> str:
        return self.server.log()


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def host_address() -> Iterator[str]:
    """A non-loopback address of this host: 10.213.N.1 on a veth whose peer is in a namespace of ours."""
    require_root()
    require_tool("ip")
    needs_shipyard_auth()
    used = ip("-o", "-4", "addr").stdout
    n = next((n for n in range(240, 255) if f"10.213.{n}." not in used), None)
    if n is None:
        pytest.skip("no free 10.213.N.0/30 network for the TLS test")
    netns, host_if, peer_if = f"sy-e2e-tls-{n}", f"sytls{n}h", f"sytls{n}p"
    steps = [
        ("netns", "add", netns),
        ("link", "add", host_if, "type", "veth", "peer", "name", peer_if),
        ("link", "set", peer_if, "netns", netns),
        ("addr", "add", f"10.213.{n}.1/30", "dev", host_if),
        ("link", "set", host_if, "up"),
        ("-n", netns, "addr", "add", f"10.213.{n}.2/30", "dev", peer_if),
        ("-n", netns, "link", "set", peer_if, "up"),
    ]
    try:
        for step in steps:
            result = ip(*step)
            assert result.returncode == 0, f"ip {' '.join(step)}: {result.stderr}"
        yield f"10.213.{n}.1"
    finally:
        ip("link", "del", host_if)  # takes its peer with it
        ip("netns", "del", netns)
        assert netns not in ip("netns", "list").stdout
        assert host_if not in ip("-o", "link").stdout


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, host_address: str) -> Iterator[TlsRegistry]:
    """Shipyard over HTTPS (authentication on) on `host_address`; its CA is in `cert_dir`/ca.crt."""
    base = tmp_path_factory.mktemp("tls-registry")
    certs = issue_server_certificate(base / "certs", [host_address, "127.0.0.1", "localhost"])
    cert_dir = base / "client-certs"
    cert_dir.mkdir()
    shutil.copy(certs.ca_cert, cert_dir / "ca.crt")
    server = start_shipyard(
        base / "data",
        host=host_address,
        extra_args=["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)],
        cafile=certs.ca_cert,
    )
    try:
        yield TlsRegistry(server, certs, cert_dir)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_accounts(registry: TlsRegistry) -> Iterator[Accounts]:
    store = Accounts(registry.server.data_dir)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(scope="module")
def writer(tls_accounts: Accounts) -> Credentials:
    return tls_accounts.user("secure", "secure-dev", role="writer")


def assert_certificate_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0, result.stdout
    text = result.stderr.lower()
    assert any(word in text for word in CERT_ERRORS), result.stderr


def test_server_speaks_https_only_with_its_ca(registry: TlsRegistry) -> None:
    """The challenge names an https realm; a client that trusts only the system CAs refuses the server."""
    context = ssl.create_default_context(cafile=str(registry.certs.ca_cert))
    with pytest.raises(urllib.error.HTTPError) as challenged:
        urllib.request.urlopen(f"{registry.url}/v2/", timeout=10, context=context)
    challenge = challenged.value.headers["www-authenticate"]
    challenged.value.close()
    assert challenged.value.code == 401
    assert f'realm="https://{registry.address}/token"' in challenge, challenge
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"{registry.url}/v2/", timeout=10, context=ssl.create_default_context())
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError), refused.value


def test_skopeo_over_https(
    registry: TlsRegistry,
    tls_accounts: Accounts,
    writer: Credentials,
    new_skopeo: Callable[[], Skopeo],
    tmp_path: Path,
) -> None:
    skopeo = new_skopeo()
    key = tls_accounts.access_key(writer.username)
    pair = f"{key.username}:{key.password}"
    layout, image = build_small_image(tmp_path / "src", "v1", seed="tls-skopeo")
    ref = f"docker://{registry.address}/secure/skopeo:v1"
    certs = str(registry.cert_dir)

    # without the CA: a certificate error, before any credentials are sent
    result = skopeo(
        "copy", "--dest-tls-verify=true", "--dest-creds", pair, f"oci:{layout.root}:v1", ref, check=False
    )
    assert_certificate_error(result)
    assert_certificate_error(skopeo("inspect", "--tls-verify=true", "--creds", pair, ref, check=False))

    skopeo(
        "copy",
        "--dest-tls-verify=true",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        pair,
        f"oci:{layout.root}:v1",
        ref,
    )
    raw = skopeo("inspect", "--raw", "--tls-verify=true", "--cert-dir", certs, "--creds", pair, ref).stdout
    assert raw.encode() == image.manifest_bytes
    back = tmp_path / "back"
    skopeo(
        "copy", "--src-tls-verify=true", "--src-cert-dir", certs, "--src-creds", pair, ref, f"oci:{back}:v1"
    )
    pulled = OciLayout.open(back)
    assert pulled.resolve("v1").digest == image.digest
    for digest in layout.reachable_blobs(image.digest):
        assert pulled.read_blob(digest) == layout.read_blob(digest)

    # skopeo login over HTTPS, then list tags with the stored credentials
    skopeo.login(registry.address, writer, "--tls-verify=true", "--cert-dir", certs)
    tags = json.loads(
        skopeo(
            "list-tags",
            "--tls-verify=true",
            "--cert-dir",
            certs,
            f"docker://{registry.address}/secure/skopeo",
        ).stdout
    )
    assert tags["Tags"] == ["v1"]


def test_podman_over_https(
    registry: TlsRegistry, writer: Credentials, storage: ContainerStorage, tmp_path: Path
) -> None:
    require_tool("podman")
    podman = storage
    certs = str(registry.cert_dir)
    creds = login_password(registry.url, writer, cafile=registry.certs.ca_cert)

    assert_certificate_error(
        podman.login("podman", registry.address, creds, "--tls-verify=true", check=False)
    )
    assert (
        podman.login("podman", registry.address, creds, "--tls-verify=true", "--cert-dir", certs).returncode
        == 0
    )

    layout, image = build_small_image(tmp_path / "src", "v1", seed="tls-podman")
    ref = f"{registry.address}/secure/podman:v1"
    podman.podman("pull", f"oci:{layout.root}:v1")
    podman.podman("tag", image.config.digest.removeprefix("sha256:"), ref)
    assert_certificate_error(podman.podman("push", "--tls-verify=true", ref, check=False))
    digestfile = tmp_path / "digest"
    podman.podman("push", "--tls-verify=true", "--cert-dir", certs, "--digestfile", digestfile, ref)
    pushed = digestfile.read_text().strip()

    podman.podman("rmi", "--all", "--force")
    assert_certificate_error(podman.podman("pull", "--tls-verify=true", ref, check=False))
    podman.podman("pull", "--tls-verify=true", "--cert-dir", certs, ref)
    inspected = json.loads(podman.podman("image", "inspect", ref).stdout)[0]
    assert inspected["Digest"] == pushed
    assert inspected["Id"] == image.config.digest.removeprefix("sha256:")


@pytest.fixture
def docker_trusts(registry: TlsRegistry) -> Iterator[Callable[[], None]]:
    """Call it to put the CA at /etc/docker/certs.d/<host:port>/ca.crt; removed (and certs.d, if this
    made it) afterwards."""
    created: list[Path] = []
    target = DOCKER_CERTS_D / registry.address

    def trust() -> None:
        for directory in (DOCKER_CERTS_D.parent, DOCKER_CERTS_D, target):
            if not directory.exists():
                directory.mkdir()
                created.append(directory)
        shutil.copy(registry.certs.ca_cert, target / "ca.crt")

    assert not target.exists(), f"{target} exists already"
    try:
        yield trust
    finally:
        (target / "ca.crt").unlink(missing_ok=True)
        for directory in reversed(created):
            with contextlib.suppress(OSError):  # something else put files there meanwhile: leave it
                directory.rmdir()
        assert not target.exists()


def test_docker_over_https(
    registry: TlsRegistry,
    dockerd: DockerDaemon,
    docker_trusts: Callable[[], None],
    new_skopeo: Callable[[], Skopeo],
    tmp_path: Path,
) -> None:
    docker = dockerd.client(tmp_path / "docker-config")
    # the daemon does not know the CA yet: the login fails on the certificate, and nothing is stored
    assert_certificate_error(docker.login(registry.address, ADMIN, check=False))
    assert (
        not (tmp_path / "docker-config" / "config.json").exists()
        or registry.address not in (tmp_path / "docker-config" / "config.json").read_text()
    )

    docker_trusts()
    assert "Login Succeeded" in docker.login(registry.address, ADMIN).stdout

    layout, image = build_small_image(tmp_path / "src", "v1", seed="tls-docker")
    archive = tmp_path / "image.tar"
    new_skopeo().copy(f"oci:{layout.root}:v1", f"docker-archive:{archive}:e2e/tls-local:v1")
    docker("load", "--input", str(archive))
    ref = f"{registry.address}/admin/e2e/tls/docker:v1"
    docker("tag", "e2e/tls-local:v1", ref)
    out = docker("push", ref).stdout
    assert "digest: sha256:" in out, out
    pushed = out.split("digest: ", 1)[1].split()[0]
    docker("rmi", ref, "e2e/tls-local:v1")
    out = docker("pull", ref).stdout
    assert f"Digest: {pushed}" in out
    assert docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == image.config.digest
    docker("rmi", ref)


def test_the_cli_suggests_cacert_and_works_with_it(
    registry: TlsRegistry, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shipyard.cli.main import main

    monkeypatch.setenv("SHIPYARD_PASSWORD", "wrong-but-never-sent")
    assert main(["whoami", "--registry", registry.url, "-u", "admin"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "--cacert FILE" in err and "TLS certificate" in err
    cacert = str(registry.certs.ca_cert)
    code = main(["whoami", "--registry", registry.url, "-u", "admin", "--cacert", cacert])
    err = capsys.readouterr().err
    # the server is trusted now, and refuses the password
    assert code == 1 and "UNAUTHORIZED" in err and "certificate" not in err
