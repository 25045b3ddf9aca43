"""`shipyard audit list`, and the listing commands following the API's pages, against a real
`shipyard serve` with authentication on."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from shipyard.cli import manage
from tests.support.manage_cli import ManageCli, serve_with_auth
from tests.support.server import ServerProcess

ADMIN_PASSWORD = "cli-audit-admin-password"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve_with_auth(tmp_path_factory, "cli-audit", ADMIN_PASSWORD)


@pytest.fixture
def cli(
    server: ServerProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> ManageCli:
    return ManageCli(server, capsys, monkeypatch, ADMIN_PASSWORD)


def test_listings_follow_the_pages(cli: ManageCli, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.run("accounts", "create", "pages")[0] == 0
    for name in ("p1", "p2", "p3", "p4", "p5"):
        assert cli.run("robots", "create", "pages", name)[0] == 0
    monkeypatch.setattr(manage, "PAGE_SIZE", 2)  # three requests, each with n=2
    robots = cli.json("robots", "list", "pages")["robots"]
    assert [r["login"] for r in robots] == ["pages+p1", "pages+p2", "pages+p3", "pages+p4", "pages+p5"]
    code, out, _ = cli.run("robots", "list", "pages", "--limit", "3")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["pages+p1", "pages+p2", "pages+p3"]
    assert [a["name"] for a in cli.json("accounts", "list")["accounts"]] == ["admin", "pages"]
    with pytest.raises(SystemExit) as exited:
        cli.run("robots", "list", "pages", "--limit", "0")
    assert exited.value.code == 2


def test_audit_list_shows_who_did_what_from_the_cli(cli: ManageCli) -> None:
    assert cli.run("accounts", "create", "audit-cli")[0] == 0
    assert cli.run("accounts", "create", "audit-peer")[0] == 0
    boss = cli.json("users", "create", "audit-cli", "ac-boss", "--role", "admin")
    boss_login = {"user": "ac-boss", "password": boss["secret"]}
    assert cli.run("repos", "create", "audit-cli/app", **boss_login)[0] == 0
    assert cli.run("repos", "grant", "audit-cli/app", "audit-peer", **boss_login)[0] == 0
    reader = cli.json("users", "create", "audit-cli", "ac-reader", **boss_login)

    events = cli.json("audit", "list", **boss_login)["events"]
    assert [e["action"] for e in events[:4]] == [
        "user.create",
        "policy.grant",
        "repository.create",
        "user.create",
    ]
    newest = events[0]
    assert newest["principal"] == "ac-boss" and newest["target"] == "ac-reader"
    assert newest["source"] == "cli@127.0.0.1" and newest["outcome"] == "allowed"
    assert {e["account"] for e in events} == {"audit-cli"}
    assert boss["secret"] not in json.dumps(events) and reader["secret"] not in json.dumps(events)

    code, out, _ = cli.run("audit", "list", "--limit", "2", **boss_login)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["AT", "PRINCIPAL", "SOURCE", "ACTION", "ACCOUNT", "TARGET", "OUTCOME", "REASON"]
    assert len(rows) == 2 and rows[1].split()[1:7] == [
        "ac-boss",
        "cli@127.0.0.1",
        "policy.grant",
        "audit-cli",
        "audit-cli/app",
        "allowed",
    ]
    # registry administrators read any account's; a reader reads none
    assert cli.json("audit", "list", "--account", "audit-cli", "--limit", "1")["events"] == events[:1]
    code, _, err = cli.run("audit", "list", user="ac-reader", password=reader["secret"])
    assert code == 1 and "403" in err and "DENIED" in err

    policies = cli.json("repos", "policies", "audit-cli/app", **boss_login)["policies"]
    assert policies == [{"account": "audit-peer", "actions": ["pull"]}]
