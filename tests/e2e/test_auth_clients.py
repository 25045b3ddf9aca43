"""Real clients log in to Shipyard (authentication on) with each kind of credential, as users do.

Every client (podman, skopeo, buildah, docker) pushes and pulls with (a) a user's password, (b) an access
key (its key id as the user name), (c) a login password from POST /api/v1/auth/login-password (user name
`shipyard`). The user is a writer of the account `acme`, not a superuser: it pushes below `acme/`. A wrong
password makes each client fail, and stores nothing. Anonymous pulls of a private repository fail; once
the repository is public, anonymous `skopeo inspect`, podman and docker pulls work (pushes still do not).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN, LOGIN_PASSWORD_USER, Accounts, login_password, needs_shipyard_auth
from tests.support.cli import ContainerStorage, Credentials, Skopeo
from tests.support.dockerd import DockerClient, DockerDaemon
from tests.support.oci_layout import OciLayout, build_small_image, sha256_digest
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

KINDS = ("password", "access_key", "login_password")
ACCOUNT = "acme"
DENIED = (
    "unauthorized",
    "access to the resource is denied",
    "authentication required",
    "invalid username/password",
    "invalid credentials",
)


@pytest.fixture(scope="module", autouse=True)
def _shipyard_only() -> None:
    needs_shipyard_auth()


@pytest.fixture(scope="module")
def writer(accounts: Accounts) -> Credentials:
    """A writer of the account `acme` (not a superuser), with its password."""
    return accounts.user(ACCOUNT, "acme-dev", role="writer")


@pytest.fixture(params=KINDS)
def creds(request: pytest.FixtureRequest, registry, accounts: Accounts, writer: Credentials) -> Credentials:
    """The writer's credentials, as one kind: its password, an access key of its own, a login password."""
    if request.param == "password":
        return writer
    if request.param == "access_key":
        key = accounts.access_key(writer.username)
        assert key.username.startswith("SYK") and key.username != writer.username
        return key
    issued = login_password(registry.url, writer)
    assert issued.username == LOGIN_PASSWORD_USER
    return issued


def kind_of(creds: Credentials, writer: Credentials) -> str:
    if creds.username == writer.username:
        return "password"
    return "login-password" if creds.username == LOGIN_PASSWORD_USER else "access-key"


def assert_denied(result) -> None:
    assert result.returncode != 0, result.stdout
    text = (result.stderr + result.stdout).lower()
    assert any(word in text for word in DENIED), result.stderr


def auth_entries(authfile: Path) -> dict:
    return json.loads(authfile.read_text() or "{}").get("auths", {})


@pytest.fixture
def podman(storage: ContainerStorage) -> ContainerStorage:
    require_tool("podman")
    return storage


@pytest.fixture
def buildah(storage: ContainerStorage) -> ContainerStorage:
    require_tool("buildah")
    return storage


@pytest.fixture(scope="module")
def wrong_user(accounts: Accounts) -> Credentials:
    """A user whose password the wrong-password tests get wrong (failed logins count per user)."""
    real = accounts.user(ACCOUNT, "acme-fumbler", role="writer")
    return Credentials(real.username, real.password + "-wrong")


# -- podman ---------------------------------------------------------------------------------------


def test_podman_login_push_pull(
    registry, podman: ContainerStorage, creds: Credentials, writer: Credentials, tmp_path: Path
) -> None:
    kind = kind_of(creds, writer)
    layout, image = build_small_image(tmp_path / "src", "v1", seed=f"podman-{kind}")
    ref = f"{registry.address}/{ACCOUNT}/podman/{kind}:v1"
    out = podman.login("podman", registry.address, creds).stdout
    assert "Login Succeeded" in out
    assert registry.address in auth_entries(podman.authfile)

    podman.podman("pull", f"oci:{layout.root}:v1")
    podman.podman("tag", image.config.digest.removeprefix("sha256:"), ref)
    digestfile = tmp_path / "digest"
    podman.podman("push", "--tls-verify=false", "--digestfile", digestfile, ref)
    pushed = digestfile.read_text().strip()

    podman.podman("rmi", "--all", "--force")
    podman.podman("pull", "--tls-verify=false", ref)
    inspected = json.loads(podman.podman("image", "inspect", ref).stdout)[0]
    assert inspected["Digest"] == pushed
    assert inspected["Id"] == image.config.digest.removeprefix("sha256:")

    # logged out, the same pull is refused: the repository is private
    podman.podman("logout", "--authfile", podman.authfile, registry.address)
    podman.podman("rmi", "--all", "--force")
    assert_denied(podman.podman("pull", "--tls-verify=false", ref, check=False))


def test_podman_wrong_password_fails(registry, podman: ContainerStorage, wrong_user: Credentials) -> None:
    result = podman.login("podman", registry.address, wrong_user, check=False)
    assert_denied(result)
    assert registry.address not in auth_entries(podman.authfile)


# -- skopeo ---------------------------------------------------------------------------------------


def test_skopeo_creds_copy_both_ways(
    registry, new_skopeo: Callable[[], Skopeo], creds: Credentials, writer: Credentials, tmp_path: Path
) -> None:
    skopeo = new_skopeo()  # never logged in: only the --creds flags carry credentials
    kind = kind_of(creds, writer)
    layout, image = build_small_image(tmp_path / "src", "v1", seed=f"skopeo-{kind}")
    ref = f"docker://{registry.address}/{ACCOUNT}/skopeo/{kind}:v1"
    pair = f"{creds.username}:{creds.password}"

    skopeo.copy(f"oci:{layout.root}:v1", ref, "--dest-creds", pair)
    raw = skopeo.inspect_raw(ref, "--creds", pair)
    assert raw == image.manifest_bytes and sha256_digest(raw) == image.digest
    skopeo.copy(ref, f"oci:{tmp_path / 'back'}:v1", "--src-creds", pair)
    back = OciLayout.open(tmp_path / "back")
    assert back.resolve("v1").digest == image.digest
    for digest in layout.reachable_blobs(image.digest):
        assert back.read_blob(digest) == layout.read_blob(digest)

    # without credentials: refused
    result = skopeo("inspect", "--raw", "--tls-verify=false", ref, check=False)
    assert_denied(result)


def test_skopeo_login_authfile(
    registry, new_skopeo: Callable[[], Skopeo], writer: Credentials, tmp_path: Path
):
    skopeo = new_skopeo()
    out = skopeo.login(registry.address, writer).stdout
    assert "Login Succeeded" in out
    layout, image = build_small_image(tmp_path / "src", "v1", seed="skopeo-login")
    ref = f"docker://{registry.address}/{ACCOUNT}/skopeo/login:v1"
    skopeo.copy(f"oci:{layout.root}:v1", ref)
    assert skopeo.inspect(ref)["Digest"] == image.digest
    skopeo("logout", "--authfile", skopeo.authfile, registry.address)
    assert_denied(skopeo("inspect", "--tls-verify=false", ref, check=False))


def test_skopeo_wrong_password_fails(
    registry, new_skopeo: Callable[[], Skopeo], wrong_user: Credentials, tmp_path: Path
) -> None:
    skopeo = new_skopeo()
    layout, _ = build_small_image(tmp_path / "src", "v1", seed="skopeo-wrong")
    ref = f"docker://{registry.address}/{ACCOUNT}/skopeo/wrong:v1"
    result = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"{wrong_user.username}:{wrong_user.password}",
        f"oci:{layout.root}:v1",
        ref,
        check=False,
    )
    assert_denied(result)
    assert_denied(skopeo.login(registry.address, wrong_user, check=False))
    assert registry.address not in auth_entries(skopeo.authfile)


def test_user_of_another_account_cannot_push_into_admin(
    registry, new_skopeo: Callable[[], Skopeo], writer: Credentials, tmp_path: Path
) -> None:
    skopeo = new_skopeo()
    layout, _ = build_small_image(tmp_path / "src", "v1", seed="foreign")
    pair = f"{writer.username}:{writer.password}"
    ref = f"docker://{registry.address}/admin/e2e/not-yours:v1"
    assert_denied(
        skopeo(
            "copy", "--dest-tls-verify=false", "--dest-creds", pair, f"oci:{layout.root}:v1", ref, check=False
        )
    )


# -- buildah --------------------------------------------------------------------------------------


def test_buildah_login_push_pull(
    registry, buildah: ContainerStorage, creds: Credentials, writer: Credentials, tmp_path: Path
) -> None:
    kind = kind_of(creds, writer)
    ref = f"{registry.address}/{ACCOUNT}/buildah/{kind}:v1"
    out = buildah.login("buildah", registry.address, creds).stdout
    assert "Login Succeeded" in out

    (tmp_path / "hello.txt").write_text(f"built by buildah, pushed with a {kind}\n")
    container = buildah.buildah("from", "scratch").stdout.strip()
    buildah.buildah("copy", container, str(tmp_path / "hello.txt"), "/etc/hello.txt")
    buildah.buildah("config", "--cmd", '["/bin/true"]', "--os", "linux", "--arch", "amd64", container)
    iidfile = tmp_path / "iid"
    buildah.buildah("commit", "--iidfile", str(iidfile), "--rm", container, "localhost/e2e/auth:v1")
    image_id = iidfile.read_text().strip().removeprefix("sha256:")
    digestfile = tmp_path / "digest"
    buildah.buildah(
        "push",
        "--tls-verify=false",
        "--digestfile",
        str(digestfile),
        "localhost/e2e/auth:v1",
        f"docker://{ref}",
    )
    pushed = digestfile.read_text().strip()

    buildah.buildah("rmi", "--all", "--force")
    pulled = buildah.buildah("pull", "--tls-verify=false", f"docker://{ref}").stdout.strip().splitlines()[-1]
    assert pulled.removeprefix("sha256:") == image_id
    images = json.loads(buildah.buildah("images", "--json", "--digests", "--no-trunc").stdout)
    assert [i["digest"] for i in images] == [pushed]


def test_buildah_wrong_password_fails(registry, buildah: ContainerStorage, wrong_user: Credentials) -> None:
    assert_denied(buildah.login("buildah", registry.address, wrong_user, check=False))
    assert registry.address not in auth_entries(buildah.authfile)


# -- docker ---------------------------------------------------------------------------------------


def docker_archive(new_skopeo: Callable[[], Skopeo], tmp_path: Path, seed: str, name: str):
    layout, image = build_small_image(tmp_path / "src", "v1", seed=seed)
    archive = tmp_path / "image.tar"
    new_skopeo().copy(f"oci:{layout.root}:v1", f"docker-archive:{archive}:{name}")
    return archive, image


def test_docker_login_push_pull(
    registry,
    dockerd: DockerDaemon,
    new_skopeo: Callable[[], Skopeo],
    creds: Credentials,
    writer: Credentials,
    tmp_path: Path,
) -> None:
    kind = kind_of(creds, writer)
    docker = dockerd.client(tmp_path / "docker-config")
    assert "Login Succeeded" in docker.login(registry.address, creds).stdout
    saved = json.loads((tmp_path / "docker-config" / "config.json").read_text())
    assert registry.address in saved["auths"]

    archive, image = docker_archive(new_skopeo, tmp_path, f"docker-{kind}", f"e2e/auth-{kind}:v1")
    docker("load", "--input", str(archive))
    ref = f"{registry.address}/{ACCOUNT}/docker/{kind}:v1"
    docker("tag", f"e2e/auth-{kind}:v1", ref)
    out = docker("push", ref).stdout
    assert "digest: sha256:" in out, out
    pushed = out.split("digest: ", 1)[1].split()[0]
    docker("rmi", ref, f"e2e/auth-{kind}:v1")

    out = docker("pull", ref).stdout
    assert f"Digest: {pushed}" in out
    assert docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == image.config.digest
    docker("rmi", ref)

    # a client without the login may not pull it
    anonymous = dockerd.client(tmp_path / "anonymous-config")
    assert_denied(anonymous("pull", ref, check=False))


def test_docker_wrong_password_fails(
    registry, dockerd: DockerDaemon, wrong_user: Credentials, tmp_path: Path
) -> None:
    docker = dockerd.client(tmp_path / "docker-config")
    assert_denied(docker.login(registry.address, wrong_user, check=False))
    config = tmp_path / "docker-config" / "config.json"
    assert not config.exists() or registry.address not in json.loads(config.read_text()).get("auths", {})


# -- anonymous access -----------------------------------------------------------------------------


def test_anonymous_pull_private_fails_public_works(
    registry,
    accounts: Accounts,
    skopeo: Skopeo,
    new_skopeo: Callable[[], Skopeo],
    podman: ContainerStorage,
    dockerd: DockerDaemon,
    tmp_path: Path,
) -> None:
    """`skopeo` is logged in as the superuser; everything else here is anonymous."""
    layout, image = build_small_image(tmp_path / "src", "v1", seed="public")
    repo = "admin/e2e/visibility"
    ref = f"{registry.address}/{repo}:v1"
    skopeo.copy(f"oci:{layout.root}:v1", f"docker://{ref}")
    anonymous = new_skopeo()
    anonymous_docker: DockerClient = dockerd.client(tmp_path / "anonymous-docker")

    # private (the default): nobody without credentials reads it
    assert_denied(anonymous("inspect", "--raw", "--tls-verify=false", f"docker://{ref}", check=False))
    assert_denied(podman.podman("pull", "--tls-verify=false", ref, check=False))
    assert_denied(anonymous_docker("pull", ref, check=False))

    accounts.set_visibility(repo, "public")
    try:
        assert anonymous.inspect_raw(f"docker://{ref}") == image.manifest_bytes
        assert anonymous.inspect(f"docker://{ref}")["Digest"] == image.digest
        anonymous.copy(f"docker://{ref}", f"oci:{tmp_path / 'back'}:v1")
        assert OciLayout.open(tmp_path / "back").resolve("v1").digest == image.digest
        podman.podman("pull", "--tls-verify=false", ref)
        inspected = json.loads(podman.podman("image", "inspect", ref).stdout)[0]
        assert inspected["Digest"] == image.digest
        out = anonymous_docker("pull", ref).stdout
        assert "Digest: sha256:" in out
        anonymous_docker("rmi", ref)

        # public means anyone may pull, not push
        _, other = build_small_image(tmp_path / "src", "v2", seed="public-2")
        result = anonymous(
            "copy",
            "--dest-tls-verify=false",
            f"oci:{layout.root}:v2",
            f"docker://{registry.address}/{repo}:v2",
            check=False,
        )
        assert_denied(result)
        assert skopeo.list_tags(f"docker://{registry.address}/{repo}") == ["v1"]
        assert other.digest != image.digest
    finally:
        accounts.set_visibility(repo, "private")
    assert_denied(anonymous("inspect", "--raw", "--tls-verify=false", f"docker://{ref}", check=False))


def test_superuser_reads_another_accounts_repository(
    registry, skopeo: Skopeo, new_skopeo: Callable[[], Skopeo], writer: Credentials, tmp_path: Path
) -> None:
    """The admins of the `admin` account are superusers: they read (and write) every account's images."""
    layout, image = build_small_image(tmp_path / "src", "v1", seed="superuser")
    ref = f"docker://{registry.address}/{ACCOUNT}/skopeo/by-admin:v1"
    skopeo.copy(f"oci:{layout.root}:v1", ref)  # logged in as ADMIN
    other = new_skopeo()
    other.login(registry.address, writer)
    assert other.inspect_raw(ref) == image.manifest_bytes
    assert ADMIN.username != writer.username
