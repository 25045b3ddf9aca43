"""The management commands (`shipyard accounts|users|robots|access-keys|repos|whoami`) against a real
`shipyard serve` with authentication on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shipyard.cli.main import main
from tests.support.manage_cli import ManageCli, serve_with_auth
from tests.support.server import ServerProcess

ADMIN_PASSWORD = "cli-admin-password"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve_with_auth(tmp_path_factory, "cli-manage", ADMIN_PASSWORD)


@pytest.fixture
def cli(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> ManageCli:
    return ManageCli(server, capsys, monkeypatch, ADMIN_PASSWORD)


def test_whoami_prints_a_table(cli: ManageCli) -> None:
    code, out, _ = cli.run("whoami")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["LOGIN", "ACCOUNT", "KIND", "ROLE", "SUPERUSER"]
    assert row.split() == ["admin", "admin", "user", "admin", "True"]
    assert cli.json("whoami")["superuser"] is True


def test_bad_credentials_and_missing_registry(cli: ManageCli, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = cli.run("whoami", password="wrong")
    assert code == 1 and "401" in err and "UNAUTHORIZED" in err
    monkeypatch.delenv("SHIPYARD_REGISTRY", raising=False)
    monkeypatch.setenv("SHIPYARD_PASSWORD", "x")
    assert main(["whoami", "-u", "admin"]) == 2


def test_accounts_users_keys_robots_and_repos(cli: ManageCli) -> None:
    code, out, _ = cli.run("accounts", "create", "acme")
    assert code == 0 and "acme" in out
    code, out, _ = cli.run("accounts", "list")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["acme", "admin"]

    code, out, _ = cli.run("users", "create", "acme", "boss", "--role", "admin")
    assert code == 0
    assert "WARNING: store it now; it will not be shown again." in out
    boss_secret = out.split("secret for boss:\n")[1].split()[0]
    boss = {"user": "boss", "password": boss_secret}
    dev = cli.json("users", "create", "acme", "dev", "--role", "writer", **boss)
    assert dev["role"] == "writer" and dev["secret"]
    code, out, _ = cli.run("users", "list", "acme", **boss)
    assert dev["secret"] not in out and boss_secret not in out
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["boss", "dev"]

    # a writer cannot create users
    code, _, err = cli.run("users", "create", "acme", "nope", user="dev", password=dev["secret"])
    assert code == 1 and "403" in err

    key = cli.json(
        "access-keys", "create", "acme", "--description", "laptop", user="dev", password=dev["secret"]
    )
    assert key["login"].startswith("SYK") and key["secret"]
    listed = cli.json("access-keys", "list", "acme", user=key["login"], password=key["secret"])
    assert [k["login"] for k in listed["access_keys"]] == [key["login"]]
    assert "secret" not in listed["access_keys"][0]

    robot = cli.json("robots", "create", "acme", "ci", "--role", "writer", **boss)
    assert robot["login"] == "acme+ci"
    assert cli.json("whoami", user="acme+ci", password=robot["secret"])["kind"] == "robot"

    cli.json("accounts", "create", "beta")
    repo = cli.json("repos", "create", "acme/app", **boss)
    assert repo["name"] == "acme/app" and repo["visibility"] == "private"
    assert cli.json("repos", "grant", "acme/app", "beta", **boss)["policies"] == {"beta": ["pull"]}
    assert cli.json("repos", "grant", "acme/app", "beta", "--push", **boss)["policies"] == {
        "beta": ["pull", "push"]
    }
    assert cli.json("repos", "visibility", "acme/app", "public", **boss)["visibility"] == "public"
    code, out, _ = cli.run("repos", "list", "acme", user="dev", password=dev["secret"])
    assert code == 0 and out.splitlines()[1].split()[:2] == ["acme/app", "public"]
    code, out, _ = cli.run("repos", "revoke", "acme/app", "beta", **boss)
    assert code == 0 and out.strip() == "done"
    assert cli.json("repos", "show", "acme/app", **boss)["policies"] == {}

    # disable, then delete
    code, _, _ = cli.run("users", "disable", "acme", "dev", **boss)
    assert code == 0
    code, _, err = cli.run("whoami", user="dev", password=dev["secret"])
    assert code == 1 and "401" in err
    code, _, _ = cli.run("users", "disable", "acme", "dev", "--enable", **boss)
    assert cli.json("whoami", user="dev", password=dev["secret"])["login"] == "dev"
    assert cli.run("access-keys", "delete", "acme", key["login"], user="dev", password=dev["secret"])[0] == 0
    assert cli.run("robots", "delete", "acme", "ci", **boss)[0] == 0
    code, _, err = cli.run("accounts", "delete", "acme")
    assert code == 1 and "409" in err  # it still has a repository
    assert cli.run("repos", "delete", "acme/app", **boss)[0] == 0
    assert cli.run("accounts", "delete", "acme")[0] == 0
    code, _, err = cli.run("repos", "create", "noslash")
    assert code == 1 and "ACCOUNT/NAME" in err
