"""The management commands (`shipyard accounts|users|robots|access-keys|repos|whoami`) against a real
`shipyard serve` with authentication on."""

from __future__ import annotations

import io
import os
import subprocess
import sys
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


def test_errors_are_one_line_with_the_servers_detail(cli: ManageCli) -> None:
    code, out, err = cli.run("accounts", "delete", "nosuch")
    assert code == 1 and out == ""
    assert err.count("\n") == 1, err
    assert "nosuch" in err and "404" in err
    code, _, err = cli.run("repos", "show", "nosuch/app")
    assert code == 1 and "nosuch/app" in err and err.count("\n") == 1


def test_no_terminal_and_no_password_is_one_line(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHIPYARD_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal, as under CI or a pipe
    assert main(["whoami", "--registry", server.url, "-u", "admin"]) == 1
    err = capsys.readouterr().err
    assert err == "shipyard: no terminal to ask for the password of admin: set SHIPYARD_PASSWORD\n"


def test_a_reader_that_goes_away_is_no_traceback(server: ServerProcess) -> None:
    """`shipyard audit list | head -1`: the pipe closes while the CLI still writes."""
    env = {**os.environ, "SHIPYARD_PASSWORD": ADMIN_PASSWORD, "SHIPYARD_REGISTRY": server.url}
    env["SHIPYARD_USER"] = "admin"
    process = subprocess.Popen(
        [sys.executable, "-m", "shipyard", "audit", "list", "--limit", "1000", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the answer arrives: every write of the CLI meets a closed pipe
    with process.stderr:
        err = process.stderr.read().decode()
    process.wait(timeout=60)
    assert "Traceback" not in err and "Exception" not in err, err
    assert err == ""


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
